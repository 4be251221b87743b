"""The fusion network: two ResNet34 encoders, dual-attention fusion at 4 scales, a U-Net style decoder.

Layout as in ../shared/docs/design-notes.md ("Model"). The same class serves both tasks through its
modality names: ``FusionNet(("ct", "mri"))`` has ``ct_encoder.*``/``mri_encoder.*`` parameters,
``FusionNet(("vis", "ir"))`` has ``vis_encoder.*``/``ir_encoder.*``, everything else is shared, so a
visible–infrared checkpoint maps onto a CT–MRI model by renaming the two prefixes.

Frozen encoders: :func:`set_encoders_frozen` turns the encoders' gradients off AND keeps their
BatchNorm layers in eval mode, so running statistics do not drift while "frozen" (the original's bug).
``FusionNet.train()`` re-applies this, so ``model.train()`` after freezing keeps the encoders in eval.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from fuse_train.attention import DualAttentionFusion, MedicalAttention
from fuse_train.config import Head
from fuse_train.encoders import ENCODER_CHANNELS, ResNetEncoder, imagenet_state_dict, resnet34_backbone

ParameterGroup = Literal["encoder", "fusion", "decoder"]
#: Output heads (``fuse_train.config.Head``): "design" (the design's decoder head), "blend" (sees the
#: sources at full size) and "select" (the blend head starting from a soft per-pixel maximum).
HEADS: tuple[Head, ...] = get_args(Head)
#: Optimiser groups in a fixed order (design: encoders 0.1×, fusion 0.5×, decoder 1× the base LR).
PARAMETER_GROUPS: tuple[ParameterGroup, ...] = ("encoder", "fusion", "decoder")
#: Input sides must be multiples of this (the encoders' total stride).
SIZE_MULTIPLE = 32
#: Channels entering the output head (decoder1's output at H/2).
HEAD_CHANNELS = 32
#: Hidden channels of the output head (conv3×3 32→16, conv1×1 16→3).
HEAD_HIDDEN = 16
#: Largest detail the blend head may add to or take from its blend of the sources (in [0,1] units).
BLEND_RESIDUAL_RANGE = 0.5
#: Initial bias of the medical attention's last conv with the blend head: sigmoid(3) ≈ 0.95, so the
#: gate starts almost open instead of halving the image.
BLEND_ATTENTION_BIAS = 3.0
#: The select head's fixed prior on the blend logit per unit of (first − second) in [0,1] units: a
#: difference of 0.05 (13 gray levels) already gives w = sigmoid(2.5) ≈ 0.92, so an untrained head
#: outputs a soft per-pixel maximum; the learnt logit moves it from there.
SELECT_GAIN = 50.0
#: Initial bias of the medical attention's last conv with the select head: sigmoid(5) ≈ 0.993, so the
#: starting maximum is not dimmed.
SELECT_ATTENTION_BIAS = 5.0


class FusionNet(nn.Module):
    """Fuse a 3-channel image and a 1-channel image of the same scene into one RGB image.

    ``forward(first [N,3,H,W], second [N,1,H,W]) -> fused [N,3,H,W]`` with inputs and output in
    [0,1] (no ImageNet mean/std normalisation) and H, W positive multiples of 32. ``first`` is
    ``modalities[0]`` (CT: gray repeated ×3; visible), ``second`` is ``modalities[1]`` (MRI; infrared).

    Args:
        modalities: names of the 3-channel and the 1-channel input; they prefix the encoders'
            parameter names (``f"{name}_encoder.*"``).
        imagenet: start the encoders from torchvision's ImageNet ResNet34 when the file is in the
            local torch hub cache (never downloaded; one warning when missing). ``False``: random.
        head: ``"design"`` — the design's output head (bilinear ×2 of the H/2 decoder features,
            conv3×3 32→16, BN, ReLU, conv1×1 16→3, sigmoid). ``"blend"`` — :class:`BlendHead`, which
            also sees both sources at full size and outputs a per-pixel blend of them plus a bounded
            detail term; the design's head has no full-resolution input (its finest skip is H/4), so
            it cannot reproduce the sources' finest edges. ``"select"`` — the same head with a fixed
            prior ``SELECT_GAIN · (first − second)`` added to its blend logit, so it starts from a soft
            per-pixel maximum of the sources (what the content loss asks for) instead of their mean.

    Attributes:
        modalities: the two modality names.
        imagenet_loaded: whether the encoders were initialised from ImageNet weights.
    """

    def __init__(
        self, modalities: tuple[str, str] = ("ct", "mri"), imagenet: bool = True, head: Head = "design"
    ) -> None:
        super().__init__()
        self.modalities: tuple[str, str] = _check_modalities(modalities)
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.head: Head = head
        state = imagenet_state_dict() if imagenet else None
        self.imagenet_loaded: bool = state is not None
        first, second = self.modalities
        self.add_module(f"{first}_encoder", ResNetEncoder(resnet34_backbone(state), in_channels=3))
        self.add_module(f"{second}_encoder", ResNetEncoder(resnet34_backbone(state), in_channels=1))

        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.fusion1 = DualAttentionFusion(c1)
        self.fusion2 = DualAttentionFusion(c2)
        self.fusion3 = DualAttentionFusion(c3)
        self.fusion4 = DualAttentionFusion(c4)

        self.decoder4 = _upsample(c4, c3)  # H/32 → H/16
        self.decoder3 = nn.Sequential(*_conv_bn_relu(c3 * 2, c3), *_upsample(c3, c2))  # → H/8
        self.decoder2 = nn.Sequential(*_conv_bn_relu(c2 * 2, c2), *_upsample(c2, c1))  # → H/4
        self.decoder1 = nn.Sequential(*_conv_bn_relu(c1 * 2, c1), *_upsample(c1, HEAD_CHANNELS))  # → H/2
        if head == "design":
            self.final: nn.Module = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),  # → H
                nn.Conv2d(HEAD_CHANNELS, HEAD_HIDDEN, 3, padding=1),
                nn.BatchNorm2d(HEAD_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Conv2d(HEAD_HIDDEN, 3, 1),
                nn.Sigmoid(),
            )
        else:
            self.final = BlendHead(select_gain=SELECT_GAIN if head == "select" else 0.0)
        self.medical_attention = MedicalAttention()
        if head != "design":
            bias = SELECT_ATTENTION_BIAS if head == "select" else BLEND_ATTENTION_BIAS
            nn.init.constant_(self.medical_attention[2].bias, bias)
        self._encoders_frozen = False

    @property
    def encoders(self) -> tuple[ResNetEncoder, ResNetEncoder]:
        """The (3-channel, 1-channel) encoders."""
        return getattr(self, f"{self.modalities[0]}_encoder"), getattr(self, f"{self.modalities[1]}_encoder")

    @property
    def encoders_frozen(self) -> bool:
        return self._encoders_frozen

    def set_encoders_frozen(self, frozen: bool) -> None:
        """See :func:`set_encoders_frozen`."""
        self._encoders_frozen = bool(frozen)
        for encoder in self.encoders:
            encoder.requires_grad_(not frozen)
            encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> FusionNet:
        """Set train/eval mode; frozen encoders stay in eval mode so their BatchNorm stats hold."""
        super().train(mode)
        if self._encoders_frozen:
            for encoder in self.encoders:
                encoder.eval()
        return self

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        self._check_inputs(first, second)
        first_encoder, second_encoder = self.encoders
        a1, a2, a3, a4 = first_encoder(first)
        b1, b2, b3, b4 = second_encoder(second)
        f1 = self.fusion1(a1, b1)
        f2 = self.fusion2(a2, b2)
        f3 = self.fusion3(a3, b3)
        f4 = self.fusion4(a4, b4)
        x = self.decoder4(f4)
        x = self.decoder3(torch.cat([x, f3], dim=1))
        x = self.decoder2(torch.cat([x, f2], dim=1))
        x = self.decoder1(torch.cat([x, f1], dim=1))
        fused = self.final(x) if self.head == "design" else self.final(x, first, second)
        return self.medical_attention(fused)

    def _check_inputs(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """Shape checks in eager mode; skipped while tracing, exporting or compiling, where shapes
        may be symbolic and the checks would only add guards (the exporter validates its inputs)."""
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return
        names = {"first": f"first ({self.modalities[0]})", "second": f"second ({self.modalities[1]})"}
        for arg, tensor, channels in (("first", first, 3), ("second", second, 1)):
            if tensor.dim() != 4 or tensor.shape[1] != channels:
                raise ValueError(
                    f"{names[arg]} must be [N,{channels},H,W], got shape {tuple(tensor.shape)}"
                )
            height, width = tensor.shape[-2:]
            if height < SIZE_MULTIPLE or width < SIZE_MULTIPLE or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
                raise ValueError(
                    f"{names[arg]} height and width must be positive multiples of {SIZE_MULTIPLE}, "
                    f"got {height}x{width}: pad or resize the input (fuse_runtime.preprocess.to_model_size)"
                )
        if first.shape[0] != second.shape[0] or first.shape[-2:] != second.shape[-2:]:
            raise ValueError(
                f"{names['first']} and {names['second']} must have the same batch size and H, W, "
                f"got {tuple(first.shape)} and {tuple(second.shape)}"
            )


class BlendHead(nn.Module):
    """Full-resolution output head: ``fused = w·first + (1 − w)·second + r``, clamped to [0,1].

    ``forward(features [N,32,H/2,W/2], first [N,3,H,W], second [N,1,H,W]) -> [N,3,H,W]``. The
    decoder features are upsampled bilinearly and concatenated with both sources; two conv3×3 + BN +
    ReLU layers and a conv1×1 give per-pixel, per-channel blend weights ``w = sigmoid(·)`` and a detail
    term ``r = BLEND_RESIDUAL_RANGE · tanh(·)``. The last conv starts at zero, so an untrained head
    outputs the mean of the sources; maximum-like selection (w → 0 or 1) and edge detail are learnt.
    ``select_gain`` > 0 adds the fixed ``select_gain · (first − second)`` to the blend logit, so the
    untrained head outputs a soft per-pixel maximum instead; a sigmoid learns saturation slowly.
    """

    def __init__(self, channels: int = HEAD_CHANNELS, hidden: int = HEAD_HIDDEN, select_gain: float = 0.0) -> None:
        super().__init__()
        self.select_gain = float(select_gain)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.body = nn.Sequential(
            *_conv_bn_relu(channels + 4, hidden),
            *_conv_bn_relu(hidden, hidden),
            nn.Conv2d(hidden, 6, 1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, features: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        out = self.body(torch.cat([self.upsample(features), first, second], dim=1))
        logit = out[:, :3]
        if self.select_gain:
            logit = logit + self.select_gain * (first - second)
        weight = torch.sigmoid(logit)
        detail = BLEND_RESIDUAL_RANGE * torch.tanh(out[:, 3:])
        return (weight * first + (1 - weight) * second + detail).clamp(0.0, 1.0)


def parameter_group(name: str) -> ParameterGroup:
    """Optimiser group of a parameter name: ``*_encoder.*`` → "encoder", ``*fusion*`` → "fusion",
    everything else (decoders, output head, medical attention) → "decoder"."""
    if "_encoder." in name:
        return "encoder"
    if "fusion" in name:
        return "fusion"
    return "decoder"


def grouped_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """All named parameters (frozen ones included) split by :func:`parameter_group`.

    Keys are always "encoder", "fusion", "decoder" in that order; a DDP/DataParallel wrapper's
    ``module.`` prefix does not change the grouping.
    """
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for group in PARAMETER_GROUPS}
    for name, param in model.named_parameters():
        groups[parameter_group(name)].append((name, param))
    return groups


def set_encoders_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) both encoders of a FusionNet (optionally wrapped in DDP/DataParallel).

    Frozen: ``requires_grad=False`` on every encoder parameter AND the encoders in eval mode, so
    their BatchNorm running statistics do not move. The model remembers the state: a later
    ``model.train()`` keeps frozen encoders in eval mode. Unfrozen: gradients on, and the encoders
    follow the model's train/eval mode again.
    """
    inner = model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model
    if not isinstance(inner, FusionNet):
        raise TypeError(f"set_encoders_frozen expects a FusionNet, got {type(inner).__name__}")
    inner.set_encoders_frozen(frozen)


def _check_modalities(modalities: tuple[str, str]) -> tuple[str, str]:
    if (
        not isinstance(modalities, (tuple, list))
        or len(modalities) != 2
        or not all(isinstance(m, str) and m.isidentifier() and m.islower() for m in modalities)
        or modalities[0] == modalities[1]
    ):
        raise ValueError(
            "modalities must be two different lower-case identifiers such as ('ct', 'mri') or "
            f"('vis', 'ir'), got {modalities!r}"
        )
    return (modalities[0], modalities[1])


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _upsample(in_channels: int, out_channels: int) -> nn.Sequential:
    """×2 learned upsampling: ConvTranspose 4×4 stride 2 padding 1, BN, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
