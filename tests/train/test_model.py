"""FusionNet: shapes, argument checks, parameter names and groups, offline ImageNet init, frozen encoders."""

from __future__ import annotations

import io
import socket
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models import resnet18, resnet34

from fuse_runtime.errors import FuseError
from fuse_train.encoders import ResNetEncoder, imagenet_cache_path, one_channel_conv
from fuse_train.losses import FusionLoss
from fuse_train.model import FusionNet, grouped_parameters, parameter_group, set_encoders_frozen

#: The design's parameter count (design-notes: ≈ 56.4 M) and state-dict size (562 pretrained + 4 new).
EXPECTED_PARAMETERS = 56_401_274
EXPECTED_STATE_TENSORS = 566


@pytest.fixture(scope="module")
def model() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet(imagenet=False).eval()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (a download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("FusionNet tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _inputs(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


@pytest.mark.parametrize(
    ("batch", "height", "width"),
    [(2, 64, 64), (2, 96, 96), (2, 256, 256), (1, 64, 128), (3, 96, 32)],
)
def test_forward_shape_and_range(model: FusionNet, batch: int, height: int, width: int) -> None:
    first, second = _inputs(batch, height, width)
    with torch.no_grad():
        fused = model(first, second)
    assert fused.shape == (batch, 3, height, width)
    assert fused.dtype == torch.float32
    assert torch.isfinite(fused).all()
    assert fused.min() >= 0.0 and fused.max() <= 1.0


@pytest.mark.parametrize(
    ("first_shape", "second_shape", "match"),
    [
        ((2, 1, 64, 64), (2, 1, 64, 64), r"first \(ct\) must be \[N,3,H,W\]"),
        ((2, 3, 64, 64), (2, 3, 64, 64), r"second \(mri\) must be \[N,1,H,W\]"),
        ((3, 64, 64), (2, 1, 64, 64), r"first \(ct\) must be \[N,3,H,W\]"),
        ((2, 3, 64, 64), (1, 64, 64), r"second \(mri\) must be \[N,1,H,W\]"),
        ((2, 3, 64, 70), (2, 1, 64, 70), r"first \(ct\) height and width must be positive multiples of 32"),
        ((2, 3, 48, 64), (2, 1, 48, 64), r"multiples of 32, got 48x64"),
        ((2, 3, 64, 64), (2, 1, 64, 80), r"second \(mri\) height and width must be positive multiples"),
        ((2, 3, 64, 64), (2, 1, 96, 96), r"must have the same batch size and H, W"),
        ((2, 3, 64, 64), (1, 1, 64, 64), r"must have the same batch size and H, W"),
    ],
)
def test_forward_rejects_bad_inputs(
    model: FusionNet, first_shape: tuple[int, ...], second_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        model(torch.rand(first_shape), torch.rand(second_shape))


@pytest.mark.parametrize(
    "modalities",
    [("ct",), ("ct", "mri", "pet"), ("ct", "ct"), ("CT", "mri"), ("ct", "m-ri"), ("ct", ""), "ctmri", ("ct", 1)],
)
def test_constructor_rejects_bad_modalities(modalities: object) -> None:
    with pytest.raises(ValueError, match="modalities must be two different lower-case identifiers"):
        FusionNet(modalities=modalities, imagenet=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("first", "second"), [("ct", "mri"), ("vis", "ir")])
def test_parameter_names_follow_modalities(first: str, second: str) -> None:
    net = FusionNet((first, second), imagenet=False)
    assert net.modalities == (first, second)
    names = [name for name, _ in net.named_parameters()]
    tops = {name.split(".")[0] for name in names}
    assert tops == {
        f"{first}_encoder",
        f"{second}_encoder",
        *(f"fusion{i}" for i in range(1, 5)),
        *(f"decoder{i}" for i in range(1, 5)),
        "final",
        "medical_attention",
    }
    assert net.state_dict()[f"{first}_encoder.conv1.weight"].shape == (64, 3, 7, 7)
    assert net.state_dict()[f"{second}_encoder.conv1.weight"].shape == (64, 1, 7, 7)
    assert sum(p.numel() for p in net.parameters()) == EXPECTED_PARAMETERS
    assert len(net.state_dict()) == EXPECTED_STATE_TENSORS


def test_visir_state_maps_onto_ctmri_by_renaming_prefixes() -> None:
    """The transfer the trainer does: vis_→ct_, ir_→mri_ must cover every tensor with equal shapes."""
    visir = FusionNet(("vis", "ir"), imagenet=False).state_dict()
    renamed = {k.replace("vis_", "ct_", 1).replace("ir_", "mri_", 1): v for k, v in visir.items()}
    ctmri = FusionNet(("ct", "mri"), imagenet=False)
    result = ctmri.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(
        ctmri.state_dict()["mri_encoder.layer4.2.conv2.weight"], visir["ir_encoder.layer4.2.conv2.weight"]
    )


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("ct_encoder.conv1.weight", "encoder"),
        ("mri_encoder.layer4.2.bn2.bias", "encoder"),
        ("fusion1.channel_attention.fc.0.weight", "fusion"),
        ("fusion4.spatial_attention.conv.bias", "fusion"),
        ("fusion3.fusion_conv.4.weight", "fusion"),
        ("decoder4.0.weight", "decoder"),
        ("decoder1.3.weight", "decoder"),
        ("final.1.weight", "decoder"),
        ("medical_attention.0.weight", "decoder"),
        ("medical_attention.2.bias", "decoder"),
    ],
)
def test_parameter_group_on_real_names(model: FusionNet, name: str, group: str) -> None:
    assert name in dict(model.named_parameters()), f"{name} is not a real parameter name"
    assert parameter_group(name) == group
    assert parameter_group(f"module.{name}") == group  # DDP wrapper prefix


def test_grouped_parameters_cover_each_parameter_once(model: FusionNet) -> None:
    groups = grouped_parameters(model)
    assert list(groups) == ["encoder", "fusion", "decoder"]
    names = [name for members in groups.values() for name, _ in members]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())
    assert all(name.startswith(("ct_encoder.", "mri_encoder.")) for name, _ in groups["encoder"])
    assert all(name.startswith("fusion") for name, _ in groups["fusion"])
    assert {name.split(".")[0] for name, _ in groups["decoder"]} == {
        "decoder1", "decoder2", "decoder3", "decoder4", "final", "medical_attention"
    }
    encoder_count = sum(p.numel() for _, p in groups["encoder"])
    assert encoder_count == sum(p.numel() for e in model.encoders for p in e.parameters())


def test_one_channel_stem_is_mean_of_rgb_stem() -> None:
    torch.manual_seed(1)
    backbone = resnet34(weights=None)
    rgb = backbone.conv1.weight.detach().clone()
    gray = one_channel_conv(backbone.conv1)
    assert gray.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(gray.weight, rgb.mean(dim=1, keepdim=True))
    assert (gray.stride, gray.padding, gray.bias) == ((2, 2), (3, 3), None)
    # A gray image repeated ×3 through the RGB stem gives 3× the 1-channel stem's response.
    image = torch.rand(1, 1, 32, 32)
    assert torch.allclose(backbone.conv1(image.expand(1, 3, 32, 32)), 3 * gray(image), atol=1e-5)
    encoder = ResNetEncoder(resnet34(weights=None), in_channels=1)
    assert [f.shape[1:] for f in encoder(torch.rand(1, 1, 64, 64))] == [
        (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)
    ]


def test_missing_imagenet_file_warns_once_and_never_downloads(
    tmp_path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert imagenet_cache_path() == expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = FusionNet(imagenet=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1
    assert str(expected) in messages[0] and "random initialisation" in messages[0]
    assert net.imagenet_loaded is False
    assert list(tmp_path.rglob("*")) == []  # nothing was fetched or created


def test_imagenet_false_is_silent(tmp_path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = FusionNet(imagenet=False)
    assert [w for w in caught if issubclass(w.category, UserWarning)] == []
    assert net.imagenet_loaded is False


def test_cached_imagenet_file_initialises_both_encoders(
    tmp_path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    cached = resnet34(weights=None).state_dict()
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.save(cached, imagenet_cache_path())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = FusionNet(imagenet=True)
    assert [w for w in caught if issubclass(w.category, UserWarning)] == []
    assert net.imagenet_loaded is True
    ct = mri = net.state_dict()
    for key, value in cached.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(ct[f"ct_encoder.{key}"], value), key
        if key != "conv1.weight":
            assert torch.equal(mri[f"mri_encoder.{key}"], value), key
    assert torch.allclose(mri["mri_encoder.conv1.weight"], cached["conv1.weight"].mean(dim=1, keepdim=True))


@pytest.mark.parametrize("content", ["garbage", "resnet18"])
def test_unusable_cached_imagenet_file_raises_fuse_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch, no_network: None, content: str
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_cache_path()
    path.parent.mkdir(parents=True)
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(FuseError, match="not a readable torchvision ResNet34 state dict") as info:
        FusionNet(imagenet=True)
    assert info.value.path == path
    assert "--no-imagenet" in str(info.value)


def _bn_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k}


def test_frozen_encoders_get_no_gradients_and_keep_bn_statistics() -> None:
    torch.manual_seed(3)
    net = FusionNet(imagenet=False)
    set_encoders_frozen(net, True)
    net.eval()
    net.train()  # train() must keep frozen encoders in eval mode
    assert net.encoders_frozen and net.training
    assert all(not m.training for e in net.encoders for m in e.modules())
    assert net.fusion1.training and net.decoder1.training

    encoder_before = {k: v.clone() for e in net.encoders for k, v in e.state_dict().items()}
    fusion_stats_before = _bn_stats(net.fusion1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    first, second = _inputs(2, 64, 64)
    total, _ = FusionLoss()(net(first, second), first, second)
    total.backward()
    optimizer.step()

    for name, param in net.named_parameters():
        if parameter_group(name) == "encoder":
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None, name
    encoder_after = {k: v for e in net.encoders for k, v in e.state_dict().items()}
    assert all(torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)
    assert not torch.equal(fusion_stats_before["fusion_conv.1.running_mean"], net.fusion1.fusion_conv[1].running_mean)


def test_unfreezing_restores_gradients_and_bn_updates() -> None:
    torch.manual_seed(4)
    net = FusionNet(imagenet=False).train()
    set_encoders_frozen(net, True)
    set_encoders_frozen(net, False)
    assert not net.encoders_frozen
    assert all(m.training for e in net.encoders for m in e.modules())
    stats_before = _bn_stats(net.encoders[1])
    first, second = _inputs(2, 64, 64)
    net(first, second).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    stats_after = _bn_stats(net.encoders[1])
    assert not torch.equal(stats_before["bn1.running_mean"], stats_after["bn1.running_mean"])


def test_set_encoders_frozen_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="expects a FusionNet"):
        set_encoders_frozen(torch.nn.Linear(2, 2), True)


@pytest.fixture(scope="module")
def select_model() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet(imagenet=False, head="select").eval()


@pytest.mark.parametrize("head", ["design", "blend", "select"])
def test_exports_to_onnx_with_dynamic_batch(head: str, model: FusionNet, select_model: FusionNet) -> None:
    """Traceable without data-dependent control flow: ONNX Runtime matches eager at another batch size."""
    model = {"design": model, "select": select_model}.get(head) or FusionNet(imagenet=False, head=head).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            _inputs(2, 64, 64),
            buffer,
            dynamo=False,
            input_names=["ct", "mri"],
            output_names=["fused"],
            dynamic_axes={"ct": {0: "n"}, "mri": {0: "n"}, "fused": {0: "n"}},
            opset_version=17,
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    first, second = _inputs(3, 64, 64, seed=5)
    (onnx_fused,) = session.run(None, {"ct": first.numpy(), "mri": second.numpy()})
    with torch.no_grad():
        eager = model(first, second).numpy()
    np.testing.assert_allclose(onnx_fused, eager, atol=1e-5)


@pytest.fixture(scope="module")
def blend_model() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet(imagenet=False, head="blend").eval()


def test_untrained_blend_head_outputs_the_gated_mean_of_the_sources(blend_model: FusionNet) -> None:
    first, second = _inputs(2, 64, 96)
    with torch.no_grad():
        fused = blend_model(first, second)
    mean = (first + second) / 2
    gate = torch.nn.Sequential(*blend_model.medical_attention)(mean)
    assert torch.allclose(fused, mean * gate, atol=1e-6)
    assert gate.min() > 0.8  # the gate starts almost open instead of halving the image


def test_blend_head_can_pass_a_source_through_unchanged(blend_model: FusionNet) -> None:
    """Saturated blend weights and no detail reproduce the first source exactly: the head has
    full-resolution access to the sources, which the design's head lacks."""
    net = FusionNet(imagenet=False, head="blend").eval()
    last = net.final.body[-1]
    with torch.no_grad():
        last.bias[:3] = 50.0
        net.medical_attention[2].bias.fill_(50.0)
    first, second = _inputs(1, 64, 64, seed=3)
    with torch.no_grad():
        fused = net(first, second)
    assert torch.allclose(fused, first, atol=1e-5)


def test_blend_head_trains_its_head_and_keeps_the_parameter_groups() -> None:
    net = FusionNet(imagenet=False, head="blend")
    assert {parameter_group(name) for name, _ in net.named_parameters() if name.startswith("final.")} == {"decoder"}
    first, second = _inputs(2, 64, 64)
    loss, _ = FusionLoss()(net(first, second), first, second)
    loss.backward()
    assert net.final.body[-1].weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in net.parameters()) > EXPECTED_PARAMETERS


def test_untrained_select_head_outputs_a_soft_maximum_of_the_sources(select_model: FusionNet) -> None:
    """Where the sources differ by 0.1 or more the select head starts within 0.02 of their maximum
    (0.01 on average; far from their mean), and the gate starts open."""
    first, second = _inputs(2, 64, 96, seed=7)
    gray = first[:, :1].expand_as(first).contiguous()
    with torch.no_grad():
        fused = select_model(gray, second)
    maximum, mean = torch.maximum(gray, second), (gray + second) / 2
    clear = (gray - second).abs().expand_as(fused) > 0.1
    assert (fused - maximum)[clear].abs().max() < 0.02
    assert (fused - maximum)[clear].abs().mean() < 0.01
    assert (fused - mean)[clear].abs().mean() > 0.1
    assert torch.sigmoid(select_model.medical_attention[2].bias).min() > 0.99


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="head must be one of design, blend, select"):
        FusionNet(imagenet=False, head="unet")
