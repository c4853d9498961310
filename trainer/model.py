"""The source separation network of SegMix (IJCV 2023 Sect. 3.2, BMVC 2020 Sect. 3.2).

    from trainer.model import ModelConfig, build_model
    model = build_model(ModelConfig(num_classes=21, backbone="resnet101", output_stride=8))
    out = model(x)  # x (B, 3, H, W) normalised -> {"t": S_t, "p": S_p, "ss": S_ss}
    logits = out["t"]  # (B, K, H, W), as every output

A DeepLabv3 encoder f_enc feeds two DeepLabv3 heads on its last-stage features (res5c): the
dominant branch F_t and the phantom branch F_p (IJCV Eq. 2). The source separation head (SSH)
F_ss concatenates their logits and applies two 1x1 convolutions with a ReLU between them (IJCV
Eq. 3). Every output is bilinearly upsampled to the input size, where the losses compare it with
the label maps (IJCV 3.2.2: "we upsample them to the size of G_a").

Variants: ``ssh=False`` is the "w/o SSH" ablation (IJCV Table 8); ``two_branch=False`` is the
plain single-head DeepLabv3 the baselines (standard training, Mixup, CutMix) use.

The encoder and heads come from torchvision's public API, so the attribute names follow its
``DeepLabV3`` (``backbone``, ``classifier``): a torchvision DeepLabv3 state dict loads into the
encoder and the dominant branch through ``ModelConfig.init``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")
# Basic-block ResNets (no 1x1 bottleneck): torchvision cannot dilate them, so dilate_basic_blocks does.
BASIC_BLOCK_BACKBONES = ("resnet18", "resnet34")
BACKBONE_WEIGHTS = (None, "imagenet")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved into every checkpoint."""

    num_classes: int
    backbone: str = "mobilenet_v3_large"
    ssh: bool = True  # source separation head F_ss; False = the "w/o SSH" ablation
    # (ours) the SSH reads S_t and S_p through a stop-gradient: its CE trains F_ss alone, not the
    # branches or the encoder (docs/experiments.md section 9). The papers train all end to end.
    ssh_detach: bool = False
    two_branch: bool = True  # False = plain single-head DeepLabv3 (baselines); ``ssh`` then ignored
    # None = random init; "imagenet" = torchvision's ImageNet weights for the backbone, downloaded
    # into $TORCH_HOME on first use (no download ever happens with None).
    backbone_weights: str | None = None
    init: str | None = None  # local state dict, loaded non-strictly after building (load_init)
    output_stride: int = 16  # resnets: 8 or 16 (the papers use both); mobilenet_v3_large: 16 only
    hidden: int = 256  # hidden channels between the SSH's two 1x1 convolutions (ours)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {self.num_classes}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone_weights not in BACKBONE_WEIGHTS:
            raise ValueError(
                f"backbone_weights: expected one of {BACKBONE_WEIGHTS}, "
                f"got {self.backbone_weights!r}"
            )
        allowed = (16,) if self.backbone == "mobilenet_v3_large" else (8, 16)
        if self.output_stride not in allowed:
            raise ValueError(
                f"output_stride: {self.backbone} supports {allowed}, got {self.output_stride}"
            )
        if self.hidden < 1:
            raise ValueError(f"hidden: expected >= 1, got {self.hidden}")

    @property
    def has_ssh(self) -> bool:
        return self.two_branch and self.ssh


# -- encoder f_enc ------------------------------------------------------------------------------
def _imagenet_weights(backbone: str):
    """The ImageNet weights torchvision's own DeepLabv3 builders start from (IMAGENET1K_V1)."""
    enums = {
        "resnet18": torchvision.models.ResNet18_Weights,
        "resnet34": torchvision.models.ResNet34_Weights,
        "resnet50": torchvision.models.ResNet50_Weights,
        "resnet101": torchvision.models.ResNet101_Weights,
        "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights,
    }
    return enums[backbone].IMAGENET1K_V1


def build_encoder(config: ModelConfig) -> tuple[nn.Module, int]:
    """f_enc: a module mapping (B, 3, H, W) to {"out": (B, C, H/os, W/os)}, and C."""
    weights = _imagenet_weights(config.backbone) if config.backbone_weights == "imagenet" else None
    if config.backbone == "mobilenet_v3_large":
        # torchvision's DeepLabv3-MobileNetV3 setup: dilated last stage, C5 at output stride 16.
        # We keep only its backbone; the heads are built below like those of the resnets.
        seg = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=weights, num_classes=config.num_classes, aux_loss=False
        )
        last = list(seg.backbone.children())[-1]  # C5, a Conv2dNormActivation
        return seg.backbone, last.out_channels
    # DeepLabv3 (Chen et al. 2017): output stride 16 dilates layer4, output stride 8 layer3 too.
    # torchvision's deeplabv3_resnet* builders fix stride 8, so build the trunk directly.
    dilate = [False, config.output_stride == 8, True]
    make = getattr(torchvision.models, config.backbone)
    if config.backbone in BASIC_BLOCK_BACKBONES:
        trunk = make(weights=weights)
        dilate_basic_blocks(trunk, dilate)
    else:
        trunk = make(weights=weights, replace_stride_with_dilation=dilate)
    # "res5c" of the papers is layer4's last block.
    return IntermediateLayerGetter(trunk, return_layers={"layer4": "out"}), trunk.fc.in_features


def dilate_basic_blocks(trunk: nn.Module, dilate: Sequence[bool]) -> None:
    """Trade layer2-4's strides for dilation in a basic-block ResNet (ResNet-18/34), in place.

    The same rule as torchvision's ``replace_stride_with_dilation`` for bottleneck ResNets
    (and the dilated ResNet-18 that segmentation toolkits call R-18-D8): a dilated layer keeps
    its input resolution, its first 3x3 convolution the dilation of the layer before, every
    later one the layer's own. Works on built modules so ImageNet weights load unchanged (a
    dilation changes no weight shape)."""
    dilation = 1
    for layer, dilated in zip((trunk.layer2, trunk.layer3, trunk.layer4), dilate):
        if not dilated:
            continue
        previous, dilation = dilation, dilation * 2
        first = layer[0]
        first.conv1.stride = (1, 1)
        if first.downsample is not None:
            first.downsample[0].stride = (1, 1)
        convs = [(first.conv1, previous), (first.conv2, dilation)]
        convs += [(conv, dilation) for block in layer[1:] for conv in (block.conv1, block.conv2)]
        for conv, d in convs:
            conv.dilation, conv.padding = (d, d), (d, d)


def atrous_rates(config: ModelConfig) -> tuple[int, int, int]:
    """ASPP rates: DeepLabv3 uses (6, 12, 18) at output stride 16 and doubles them at 8.
    MobileNetV3 keeps torchvision's (12, 24, 36) so it matches torchvision's model exactly."""
    if config.backbone != "mobilenet_v3_large" and config.output_stride == 16:
        return (6, 12, 18)
    return (12, 24, 36)


# -- source separation head F_ss ------------------------------------------------------------------
class SeparationHead(nn.Sequential):
    """F_ss(concat(S_t, S_p)): two 1x1 convolutions with a ReLU between them (IJCV Eq. 3).

    Applied at feature resolution, before upsampling (ours): a 1x1 convolution commutes with the
    bilinear upsampling, the ReLU nearly so, and the head then costs (os^2)x less.
    """

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__(
            nn.Conv2d(2 * num_classes, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, kernel_size=1),
        )


# -- the network ---------------------------------------------------------------------------------
class SourceSeparationNet(nn.Module):
    """f_enc + F_t (+ F_p (+ F_ss)). forward: (B, 3, H, W) -> {"t", "p", "ss"} of (B, K, H, W)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, channels = build_encoder(config)
        rates = atrous_rates(config)
        K = config.num_classes
        # F_t, named like torchvision's DeepLabV3.classifier so its checkpoints load into it.
        self.classifier = DeepLabHead(channels, K, rates)
        self.phantom_classifier = DeepLabHead(channels, K, rates) if config.two_branch else None
        self.ssh = SeparationHead(K, config.hidden) if config.has_ssh else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        f = self.backbone(x)["out"]  # (B, C, H/os, W/os), res5c
        logits = {"t": self.classifier(f)}  # S_t (B, K, h, w)
        if self.phantom_classifier is not None:
            logits["p"] = self.phantom_classifier(f)  # S_p (B, K, h, w)
        if self.ssh is not None:
            branches = torch.cat([logits["t"], logits["p"]], dim=1)  # (B, 2K, h, w)
            logits["ss"] = self.ssh(branches.detach() if self.config.ssh_detach else branches)  # (B, K, h, w)
        return {name: upsample(s, size) for name, s in logits.items()}  # each (B, K, H, W)


def scaled_forward(model: nn.Module, x: Tensor, scale: float = 1.0) -> dict[str, Tensor]:
    """The model's outputs for normalised images ``x`` (B, 3, H, W), the network run at ``scale``
    times their size (ours, ``--eval-scale``: a model trained on downscaled photos sees them at the
    size it learned) and every output resized back to (H, W), so labels are scored as stored."""
    if scale == 1.0:
        return model(x)
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))  # as RandomScale rounds in training
    out = model(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    return {k: F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False) for k, v in out.items()}


def upsample(logits: Tensor, size: Sequence[int]) -> Tensor:
    """(B, K, h, w) -> (B, K, H, W), bilinear as DeepLabv3 and torchvision do."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def prediction(outputs: dict[str, Tensor], head: str = "t") -> Tensor:
    """The logits to predict from. After stage 2 that is S_t (ours: the denoising stage trains
    no SSH, METHOD.md); after stage 1 alone the paper's final prediction is S_ss (IJCV 3.2.2)."""
    if head not in outputs:
        raise KeyError(f"head {head!r} not in the model's outputs {sorted(outputs)}")
    return outputs[head]


# -- building and initialising ------------------------------------------------------------------
def build_model(config: ModelConfig) -> SourceSeparationNet:
    model = SourceSeparationNet(config)
    if config.init is not None:
        load_init(model, config.init)
    return model


def load_init(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local state dict into ``model`` non-strictly and log what did not match.

    Accepts a bare state dict, a checkpoint holding one under "model" or "state_dict", and
    DDP-saved keys ("module." prefix). Tensors whose shape differs from the model's (e.g. a
    classifier trained for another number of classes) are skipped, not loaded. Returns the key
    lists {"missing", "unexpected", "mismatched"}."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"init: {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        del state[k]
    result = model.load_state_dict(state, strict=False)
    report = {
        "missing": [k for k in result.missing_keys if k not in mismatched],
        "unexpected": list(result.unexpected_keys),
        "mismatched": mismatched,
    }
    loaded = len(state) - len(report["unexpected"])
    log.info("init from %s: %d tensors loaded", path, loaded)
    for what, keys in report.items():
        if keys:
            log.warning("init: %d %s keys not loaded: %s", len(keys), what, _abbreviate(keys))
    return report


def _abbreviate(keys: Sequence[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def configure_stage(model: SourceSeparationNet, stage: int) -> None:
    """Freeze what a stage does not train. Stage 1 trains f_enc, F_t, F_p and F_ss end to end;
    stage 2 fine-tunes f_enc, F_t and F_p only (IJCV 3.3), so F_ss is frozen: L2 never reaches it,
    and frozen parameters keep DDP from waiting for gradients that never come."""
    if stage not in (1, 2):
        raise ValueError(f"stage: expected 1 or 2, got {stage}")
    if model.ssh is not None:
        model.ssh.requires_grad_(stage == 1)
