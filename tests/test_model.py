"""The source separation network: outputs, variants, gradients, initialisation. CPU, random
weights (weights=None: nothing is ever downloaded), 64 x 64 inputs."""

import logging

import pytest
import torch
import torchvision

from trainer.losses import stage1_loss, stage2_loss
from trainer.model import (
    BACKBONES,
    ModelConfig,
    SourceSeparationNet,
    atrous_rates,
    build_model,
    configure_stage,
    load_init,
    prediction,
)

K = 5
B, H, W = 2, 64, 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Intra-op threads on a loaded 2-core machine thrash (10x slower measured) and tiny inputs
    # gain nothing from them.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return build_model(ModelConfig(num_classes=K))


def _image(b=B, h=H, w=W):
    return torch.randn(b, 3, h, w)


@pytest.mark.parametrize(
    "backbone, output_stride, channels",
    [("mobilenet_v3_large", 16, 960), ("resnet50", 16, 2048), ("resnet50", 8, 2048)],
)
def test_outputs_are_three_logit_maps_at_input_size(backbone, output_stride, channels):
    model = build_model(ModelConfig(num_classes=K, backbone=backbone, output_stride=output_stride))
    x = _image(h=H, w=W + 16)  # non-square: H and W must not be swapped
    out = model(x)
    assert set(out) == {"t", "p", "ss"}
    for s in out.values():
        assert s.shape == (B, K, H, W + 16) and s.dtype == torch.float32
    # The encoder's res5c features come at the configured output stride.
    f = model.backbone(x)["out"]
    assert f.shape == (B, channels, H // output_stride, (W + 16) // output_stride)


def test_resnet101_builds_and_runs():
    model = build_model(ModelConfig(num_classes=K, backbone="resnet101")).eval()
    with torch.no_grad():
        out = model(_image(b=1))
    assert {k: tuple(v.shape) for k, v in out.items()} == {h: (1, K, H, W) for h in ("t", "p", "ss")}


def test_atrous_rates_follow_deeplabv3_for_each_output_stride():
    assert atrous_rates(ModelConfig(K, "resnet50", output_stride=16)) == (6, 12, 18)
    assert atrous_rates(ModelConfig(K, "resnet50", output_stride=8)) == (12, 24, 36)
    # MobileNetV3 keeps torchvision's head exactly.
    assert atrous_rates(ModelConfig(K, "mobilenet_v3_large")) == (12, 24, 36)


def test_ssh_is_two_1x1_convs_with_relu_over_concatenated_branches(mobilenet):
    conv1, relu, conv2 = mobilenet.ssh
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size) == (2 * K, 256, (1, 1))
    assert isinstance(relu, torch.nn.ReLU)
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size) == (256, K, (1, 1))

    # S_ss is F_ss applied to [S_t, S_p] at feature resolution, then upsampled.
    model = mobilenet.eval()
    x = _image()
    with torch.no_grad():
        f = model.backbone(x)["out"]
        s_t, s_p = model.classifier(f), model.phantom_classifier(f)
        s_ss = model.ssh(torch.cat([s_t, s_p], dim=1))
        expected = torch.nn.functional.interpolate(
            s_ss, size=(H, W), mode="bilinear", align_corners=False
        )
        assert torch.allclose(model(x)["ss"], expected, atol=1e-5)
    model.train()


def test_no_ssh_variant_has_no_ss_output_and_no_ssh_parameters():
    model = build_model(ModelConfig(num_classes=K, ssh=False))
    assert set(model(_image())) == {"t", "p"}
    assert model.ssh is None
    assert not any(name.startswith("ssh.") for name, _ in model.named_parameters())


def test_single_head_variant_is_plain_deeplabv3():
    model = build_model(ModelConfig(num_classes=K, two_branch=False))  # ssh=True is ignored
    assert set(model(_image())) == {"t"}
    assert model.phantom_classifier is None and model.ssh is None
    # Same parameter count as torchvision's own DeepLabv3-MobileNetV3 without aux head.
    ref = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=K, aux_loss=False
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(ref)


def test_stage1_gradients_reach_encoder_both_branches_and_ssh(mobilenet):
    mobilenet.zero_grad()
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    loss, _ = stage1_loss(mobilenet(_image()), label, phantom, torch.tensor([0.7, 0.9]))
    loss.backward()
    for part in ("backbone", "classifier", "phantom_classifier", "ssh"):
        grads = [p.grad for p in getattr(mobilenet, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part


def test_a_detached_ssh_predicts_the_same_but_its_loss_trains_only_itself(mobilenet):
    detached = build_model(ModelConfig(num_classes=K, ssh_detach=True))
    detached.load_state_dict(mobilenet.state_dict())
    x, label = _image(), torch.randint(0, K, (B, H, W))
    with torch.no_grad():
        same = [m.eval()(x) for m in (mobilenet, detached)]
    for name in ("t", "p", "ss"):
        assert torch.equal(same[0][name], same[1][name]), name
    for model, reaches_encoder in ((mobilenet, True), (detached, False)):
        model.train().zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x)["ss"], label).backward()  # the SSH's term alone
        assert sum(p.grad.abs().sum() for p in model.ssh.parameters()) > 0
        for part in ("backbone", "classifier", "phantom_classifier"):
            grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
            reached = sum(g.abs().sum() for g in grads) > 0 if grads else False
            assert reached == reaches_encoder, (part, reaches_encoder)


def test_stage2_trains_encoder_and_both_branches_not_ssh(mobilenet):
    configure_stage(mobilenet, 2)
    try:
        mobilenet.zero_grad(set_to_none=True)
        loss, _ = stage2_loss(mobilenet(_image()), torch.randint(0, K, (B, H, W)))
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in mobilenet.ssh.parameters())
        for part in ("backbone", "classifier", "phantom_classifier"):
            assert all(p.grad is not None for p in getattr(mobilenet, part).parameters()), part
    finally:
        configure_stage(mobilenet, 1)
    assert all(p.requires_grad for p in mobilenet.ssh.parameters())


def test_channels_last_gives_the_same_outputs(mobilenet):
    model = mobilenet.eval()
    x = _image()
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    model.train()
    for k in ref:
        assert torch.allclose(out[k], ref[k], atol=1e-4), k


def test_prediction_selects_a_head():
    out = {"t": torch.zeros(1), "p": torch.ones(1)}
    assert prediction(out) is out["t"]
    assert prediction(out, head="p") is out["p"]
    with pytest.raises(KeyError, match="ss"):
        prediction(out, head="ss")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": K, "backbone": "vgg16"}, "backbone"),
        ({"num_classes": K, "backbone_weights": "coco"}, "backbone_weights"),
        ({"num_classes": K, "backbone": "resnet50", "output_stride": 32}, "output_stride"),
        ({"num_classes": K, "backbone": "mobilenet_v3_large", "output_stride": 8}, "output_stride"),
        ({"num_classes": K, "hidden": 0}, "hidden"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_imagenet_weights_are_torchvisions_v1_enums():
    # Checked without building (building would download them).
    from trainer.model import _imagenet_weights

    assert _imagenet_weights("resnet50") is torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert _imagenet_weights("resnet101") is torchvision.models.ResNet101_Weights.IMAGENET1K_V1
    mnv3 = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    assert _imagenet_weights("mobilenet_v3_large") is mnv3


def test_init_loads_a_ddp_checkpoint(tmp_path, mobilenet):
    state = {"module." + k: v for k, v in mobilenet.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")
    torch.manual_seed(1)
    model = build_model(ModelConfig(num_classes=K, init=str(tmp_path / "ckpt.pt")))
    for (name, a), b in zip(model.state_dict().items(), mobilenet.state_dict().values()):
        assert torch.equal(a, b), name


def test_init_from_torchvision_deeplabv3_fills_encoder_and_dominant_branch(tmp_path, caplog):
    # A torchvision DeepLabv3 trained for another label set: its encoder loads, its classifier's
    # last layer (21 classes) is skipped as mismatched, our extra branches stay as built.
    ref = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    model = SourceSeparationNet(ModelConfig(num_classes=K))
    with caplog.at_level(logging.WARNING, logger="trainer.model"):
        report = load_init(model, tmp_path / "tv.pth")
    assert report["mismatched"] == ["classifier.4.weight", "classifier.4.bias"]
    assert all(k.startswith("aux_classifier.") for k in report["unexpected"])
    assert report["missing"] and all(
        k.startswith(("phantom_classifier.", "ssh.")) for k in report["missing"]
    )
    assert "mismatched" in caplog.text
    for k, v in ref.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert torch.equal(model.classifier[1].weight, ref.classifier[1].weight)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_basic_block_resnets_are_dilated_to_the_output_stride(backbone, output_stride):
    model = build_model(ModelConfig(num_classes=K, backbone=backbone, output_stride=output_stride))
    features = model.backbone(_image(h=64, w=96))["out"]
    assert features.shape == (B, 512, 64 // output_stride, 96 // output_stride)
    assert model(_image())["t"].shape == (B, K, H, W)
    # the torchvision-style rule: a dilated layer's first conv keeps the previous dilation
    layer4 = model.backbone.layer4
    assert layer4[0].conv1.dilation == ((1, 1) if output_stride == 16 else (2, 2))
    assert layer4[-1].conv2.dilation == ((2, 2) if output_stride == 16 else (4, 4))
    assert model.backbone.layer3[-1].conv2.dilation == ((1, 1) if output_stride == 16 else (2, 2))


def test_dilated_resnet18_takes_torchvisions_state_dict_unchanged(tmp_path):
    # dilation changes no weight shape: an ImageNet resnet18 state dict (written here) loads strictly
    plain = torchvision.models.resnet18(weights=None)
    model = build_model(ModelConfig(num_classes=K, backbone="resnet18", output_stride=8))
    trunk_keys = {k for k in plain.state_dict() if not k.startswith("fc.")}
    missing = model.backbone.load_state_dict({k: plain.state_dict()[k] for k in trunk_keys}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    for k in trunk_keys:
        assert torch.equal(model.backbone.state_dict()[k], plain.state_dict()[k])
