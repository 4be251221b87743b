"""ResNet34 feature encoders and offline ImageNet initialisation.

ImageNet weights come through torchvision's weights API (``ResNet34_Weights.IMAGENET1K_V1``) but are
read only from the local torch hub cache: nothing here ever downloads. When the file is missing the
caller gets random initialisation and one warning that says where to put the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet, ResNet34_Weights, resnet34

from fuse_runtime.errors import FuseError

#: The torchvision weights used for ImageNet initialisation.
IMAGENET_WEIGHTS = ResNet34_Weights.IMAGENET1K_V1
#: Output channels of layer1..layer4 (strides 4, 8, 16, 32).
ENCODER_CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)


class ResNetEncoder(nn.Module):
    """ResNet stem (conv1, bn1, relu, maxpool) and layer1–layer4 of a torchvision ResNet.

    ``forward(x [N,C_in,H,W]) -> (f1, f2, f3, f4)`` with 64, 128, 256, 512 channels at H/4, H/8,
    H/16, H/32. The stem output itself is not returned. With ``in_channels=1`` the stem conv is
    replaced by a 1-channel conv whose weight is the backbone's conv1 weight averaged over its
    input channels (see :func:`one_channel_conv`).
    """

    def __init__(self, backbone: ResNet, in_channels: int = 3) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.conv1 = backbone.conv1 if in_channels == 3 else one_channel_conv(backbone.conv1)
        self.bn1 = backbone.bn1
        self.relu = backbone.relu
        self.maxpool = backbone.maxpool
        self.layer1 = backbone.layer1
        self.layer2 = backbone.layer2
        self.layer3 = backbone.layer3
        self.layer4 = backbone.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return f1, f2, f3, f4


def one_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` taking 1 input channel, its weight the mean over the input channels.

    For a gray image this keeps the original filters' shape response (scaled by 1/C_in).
    """
    new = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def imagenet_cache_path() -> Path:
    """Where the ImageNet ResNet34 file is expected: ``torch.hub.get_dir()/checkpoints/<file>``.

    ``torch.hub.get_dir()`` honours ``TORCH_HOME``; the file name is the one in the weights' URL.
    """
    file_name = os.path.basename(urlparse(IMAGENET_WEIGHTS.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def imagenet_state_dict() -> dict[str, torch.Tensor] | None:
    """The cached ImageNet ResNet34 state dict, or ``None`` (with one warning) when it is not cached.

    Never downloads. Raises FuseError when the cached file exists but is unreadable or is not a
    ResNet34 state dict: training silently from random weights would hide that.
    """
    path = imagenet_cache_path()
    if not path.is_file():
        warnings.warn(
            f"ImageNet ResNet34 weights not found at {path}: encoders start from random "
            f"initialisation (nothing is downloaded). To use ImageNet weights, place "
            f"{IMAGENET_WEIGHTS.url} at that path (TORCH_HOME moves it to $TORCH_HOME/hub/checkpoints/); "
            "pass imagenet=False (--no-imagenet) to ask for random initialisation without this warning.",
            UserWarning,
            stacklevel=3,
        )
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        resnet34(weights=None).load_state_dict(state)
    except Exception as exc:  # truncated download or a foreign file: the user must replace it
        raise FuseError(
            f"not a readable torchvision ResNet34 state dict ({exc}); replace it with a fresh copy of "
            f"{IMAGENET_WEIGHTS.url}, or train with imagenet=False (--no-imagenet)",
            path=path,
        ) from exc
    return state


def resnet34_backbone(state_dict: dict[str, torch.Tensor] | None = None) -> ResNet:
    """A torchvision ResNet34, randomly initialised, then loaded from ``state_dict`` when given."""
    backbone = resnet34(weights=None)
    if state_dict is not None:
        backbone.load_state_dict(state_dict)
    return backbone
