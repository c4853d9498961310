"""Adversarial perturbations in pixel units: white-box FGSM and PGD, universal perturbations.

    trainer eval --checkpoint runs/demo/stage2.pt --shards out/ --suite adversarial --eps 8 --pgd-steps 10
    trainer uap --checkpoint runs/a/stage2.pt --shards out/ --mode data-free --eps 10 --out uap.npy
    trainer eval --checkpoint runs/b/stage2.pt --shards out/ --suite adversarial --uap uap.npy

Every attack works on float images of pixel values in [0, 255] *before* the ImageNet
normalisation (:class:`PixelModel` normalises inside the differentiated graph), so ε is in the
units the papers quote: the UAP and GD-UAP perturbations of IJCV Table 6 / BMVC Table 4 are
bounded by ξ = 10 on [0, 255]. Adversarial images are clipped to [0, 255] and kept as floats,
not rounded to integers (ours: rounding could only weaken the attack, by < 0.5 per pixel).

White-box attacks (FGSM, Goodfellow et al. 2015; PGD, Madry et al. 2018) ascend the pixel-wise
cross-entropy of the model's *final* prediction (S_t after denoising, S_ss after stage 1 alone)
against the ground truth, ignore pixels excluded, under an L∞ bound.

Universal perturbations are one (h, w, 3) array for every image, stored as ``.npy`` in pixel
units, RGB, like the public UAP (Moosavi-Dezfooli et al. 2017) and GD-UAP (Mopuri et al. 2018)
releases, so a perturbation made on one (surrogate) model attacks any other (grey/black box, as
in the papers). It meets an image of another size by *tiling* (ours, the default): repeated
from the top-left corner and cut to H x W, which keeps its pixel-scale pattern and its L∞ norm;
``resize`` (bilinear) is the alternative. Two generators:

- ``data``: projected stochastic sign-gradient ascent of the cross-entropy over batches of
  training images (ours: the iterative, projected-to-ε scheme of stochastic-gradient UAPs,
  not UAP's DeepFool inner loop, which has no natural dense-prediction form);
- ``data-free``: GD-UAP's objective without data, maximise Σ_l log ||f_l(δ)||_2 over the encoder's
  layers (the product of activation norms) for the perturbation fed alone, i.e. on the mean
  image, whose normalised input is δ itself; optimised by projected sign-gradient ascent (ours;
  GD-UAP uses Adam with a saturation-driven rescaling).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import prediction
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

FIT_MODES = ("tile", "resize")
UAP_MODES = ("data", "data-free")


# -- the model as an attack sees it -------------------------------------------------------------
class PixelModel:
    """``model`` with pixels in and the final prediction's logits out: (B, 3, H, W) uint8 or
    float pixel values in [0, 255] -> (B, K, H, W) float32 logits of ``head``.

    Float input is normalised by a differentiable affine map equal to
    :func:`trainer.transforms.normalize` (which takes uint8 only), so gradients reach the pixels.
    """

    def __init__(self, model: nn.Module, head: str = "t", amp_dtype: torch.dtype | None = None) -> None:
        self.model, self.head, self.amp_dtype = model, head, amp_dtype

    def __call__(self, x: Tensor) -> Tensor:
        x = normalize(x) if x.dtype == torch.uint8 else normalize_pixels(x)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            out = self.model(x)
        return prediction(out, self.head).float()

    def encoder(self, x: Tensor) -> Tensor:
        """f_enc only (the data-free attack never needs the heads)."""
        autocast = torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            return self.model.backbone(normalize_pixels(x))["out"]


def normalize_pixels(x: Tensor) -> Tensor:
    """(B, 3, H, W) float pixels -> ImageNet-normalised, (x - 255 mean) / (255 std)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def mean_pixels(device: torch.device | str = "cpu") -> Tensor:
    """(3, 1, 1) the mean colour in pixel units: the image that normalises to zero."""
    return torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1) * 255


def pixel_ce(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Summed pixel-wise cross-entropy, ignore pixels excluded. A sum, not a mean: the attacks
    use the gradient's sign only, and an image with no labelled pixel gives 0 rather than NaN."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while attacking (the gradient is the input's);
    the previous ``requires_grad`` flags and mode are restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    training = model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(training)


def input_gradient(pm: PixelModel, x: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """d CE / d x for float pixels x (B, 3, H, W)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(pixel_ce(pm(x), target, ignore_index), x)
    return grad


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Back into the L∞ ball of radius ``eps`` around x, then into the pixel range [0, 255]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0, 255)


# -- white box ----------------------------------------------------------------------------------
def fgsm(pm: PixelModel, x: Tensor, target: Tensor, eps: float, ignore_index: int = 255) -> Tensor:
    """One signed-gradient step of size ε (Goodfellow et al. 2015): x + ε sign(∇x CE), clipped."""
    _check_eps(eps)
    x = x.float()
    return project(x + eps * input_gradient(pm, x, target, ignore_index).sign(), x, eps)


def pgd(pm: PixelModel, x: Tensor, target: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
        ignore_index: int = 255, random_start: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent on the loss (Madry et al. 2018): from a uniform random start
    in the ε-ball, ``steps`` signed steps of ``step_size`` (default 2.5 ε / steps, Madry's
    choice, so the walk can cross the ball), each projected back to the ball and to [0, 255]."""
    _check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.float()
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device if generator is None else generator.device)
        x_adv = project(x + eps * (2 * noise.to(x.device) - 1), x, eps)
    for _ in range(steps):
        x_adv = project(x_adv + alpha * input_gradient(pm, x_adv, target, ignore_index).sign(), x, eps)
    return x_adv


def _check_eps(eps: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps: expected a positive number of pixel levels, got {eps}")


# -- universal perturbations: applying ---------------------------------------------------------
def fit_perturbation(delta: Tensor, size: tuple[int, int], mode: str = "tile") -> Tensor:
    """(3, h, w) -> (3, H, W): tiled from the top-left corner and cut, or resized bilinearly.
    Both are differentiable, so generation applies a perturbation exactly as evaluation does."""
    H, W = size
    if mode == "tile":
        reps = (1, -(-H // delta.shape[1]), -(-W // delta.shape[2]))
        return delta.repeat(reps)[:, :H, :W]
    if mode == "resize":
        return F.interpolate(delta[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    raise ValueError(f"fit: expected one of {FIT_MODES}, got {mode!r}")


def apply_universal(x: Tensor, delta: Tensor, mode: str = "tile") -> Tensor:
    """The same perturbation added to every image of the batch (B, 3, H, W), clipped to [0, 255].
    Padded batches keep every image's top-left corner at (0, 0), so each image meets the same
    tile whatever the batch."""
    return (x.float() + fit_perturbation(delta.to(x.device, torch.float32), x.shape[-2:], mode)).clamp(0, 255)


def load_perturbation(path: str | Path) -> Tensor:
    """A ``.npy`` universal perturbation -> (3, h, w) float32 pixel units. Accepts (h, w, 3) and
    the (1, h, w, 3) of the UAP release; channels are taken as RGB."""
    path = Path(path)
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"uap: {path} is not a readable .npy file ({exc})") from None
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[2] != 3 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"uap: {path} holds a {a.shape} {a.dtype} array, expected (H, W, 3) numbers in pixel units")
    if not np.isfinite(a).all():
        raise ValueError(f"uap: {path} holds non-finite values")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))


def save_perturbation(path: str | Path, delta: Tensor, meta: dict | None = None) -> Path:
    """Write (3, h, w) as an (h, w, 3) float32 ``.npy`` (pixel units, RGB) and, beside it,
    ``<stem>.json`` with how it was made. Returns the ``.npy`` path."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"out: expected a .npy file name, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, delta.detach().float().cpu().numpy().transpose(1, 2, 0))
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


# -- universal perturbations: generating -------------------------------------------------------
@dataclass(frozen=True)
class UapConfig:
    """``trainer uap``: one universal perturbation made on a surrogate checkpoint."""

    checkpoint: str
    out: str  # .npy path
    shards: str | None = None  # needed by mode "data" (images of SHARDS/train)
    mode: str = "data"
    eps: float = 10.0  # ξ = 10 on [0, 255], the UAP / GD-UAP setting of IJCV Table 6
    size: int = 513  # the perturbation's side; 513 covers a VOC image (IJCV evaluation crop)
    iters: int = 200  # optimisation steps (batches of images in mode "data")
    step_size: float | None = None  # default ε / 10
    batch_size: int = 8
    split: str = "train"
    fit: str = "tile"
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    head: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in UAP_MODES:
            raise ValueError(f"mode: expected one of {UAP_MODES}, got {self.mode!r}")
        if self.mode == "data" and not self.shards:
            raise ValueError("shards: mode 'data' needs the shard root whose train/ images it attacks")
        _check_eps(self.eps)
        if self.size < 16:
            raise ValueError(f"size: expected >= 16, got {self.size}")
        for name in ("iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size: expected > 0, got {self.step_size}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit: expected one of {FIT_MODES}, got {self.fit!r}")
        if not self.out.endswith(".npy"):
            raise ValueError(f"out: expected a .npy file name, got {self.out!r}")

    @property
    def alpha(self) -> float:
        return self.eps / 10 if self.step_size is None else self.step_size


def random_perturbation(size: int, eps: float, seed: int, device: torch.device) -> Tensor:
    """(3, size, size) uniform in [-ε, ε], GD-UAP's starting point; seeded."""
    g = torch.Generator().manual_seed(seed)
    return (eps * (2 * torch.rand(3, size, size, generator=g) - 1)).to(device)


def universal_from_data(pm: PixelModel, batches: Iterable[tuple[Tensor, Tensor]], delta: Tensor, eps: float,
                        alpha: float, iters: int, ignore_index: int = 255, fit: str = "tile") -> Tensor:
    """Data-driven UAP: for each batch (x uint8 (B, 3, H, W), label (B, H, W)) of training
    images, one signed ascent step of the summed CE of every image carrying the *same* δ, then
    projection to [-ε, ε]. Cycles through ``batches`` until ``iters`` steps are taken."""
    delta = delta.detach().clone()
    steps = 0
    while steps < iters:
        seen = False
        for x, y in batches:
            seen = True
            with torch.enable_grad():
                d = delta.requires_grad_(True)
                loss = pixel_ce(pm(apply_universal(x, d, fit)), y, ignore_index)
                (grad,) = torch.autograd.grad(loss, d)
            delta = (delta.detach() + alpha * grad.sign()).clamp_(-eps, eps)
            steps += 1
            if steps == iters:
                break
        if not seen:  # a one-shot iterator ran dry: say so rather than return a weaker δ
            raise ValueError(f"uap: the training batches ran out after {steps} of {iters} steps")
    return delta


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose activations GD-UAP excites: every top-level stage of f_enc (ResNet: the
    stem's ReLU and max-pool, layer1-4; MobileNetV3: its 17 feature blocks). A bare convolution
    or BatchNorm is skipped: its output is a pre-activation, which the next ReLU overwrites in place."""
    skip = (nn.Conv2d, nn.BatchNorm2d)
    layers = [m for m in model.backbone.children() if not isinstance(m, skip)]
    if not layers:
        raise ValueError("uap: the model's encoder has no layers to hook")
    return layers


def activation_objective(pm: PixelModel, x: Tensor, layers: list[nn.Module]) -> Tensor:
    """GD-UAP's loss, Σ_l log ||f_l(x)||_2 over ``layers`` (the log of the product of norms)."""
    acts: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out)) for m in layers]
    try:
        pm.encoder(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(torch.log(torch.linalg.vector_norm(a.float()) + 1e-12) for a in acts if isinstance(a, Tensor))


def universal_data_free(pm: PixelModel, delta: Tensor, eps: float, alpha: float, iters: int) -> Tensor:
    """GD-UAP without data: the perturbation alone on the mean image (normalised input = δ
    scaled), maximising the activation objective; signed steps, projected to [-ε, ε]."""
    layers = encoder_layers(pm.model)
    base = mean_pixels(delta.device)
    delta = delta.detach().clone()
    for _ in range(iters):
        with torch.enable_grad():
            d = delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(activation_objective(pm, (base + d)[None], layers), d)
        delta = (delta.detach() + alpha * grad.sign()).clamp_(-eps, eps)
    return delta


def generate_uap(config: UapConfig) -> tuple[Path, dict]:
    """``trainer uap``: load the surrogate, build the perturbation, save ``.npy`` + ``.json``."""
    from blendgen.shards import ShardDir

    from . import checkpoint as ckpt_io
    from .data import ShardStream, make_loader
    from .distributed import resolve_device
    from .evaluate import eval_head, model_from_checkpoint
    from .transforms import Compose, RandomCrop, pad_collate

    device = resolve_device(config.device)
    ckpt = ckpt_io.load(config.checkpoint)
    model = model_from_checkpoint(ckpt, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    head = eval_head(model, ckpt["stage"], config.head)
    pm = PixelModel(model, head, torch.bfloat16 if device.type == "cuda" else None)
    delta = random_perturbation(config.size, config.eps, config.seed, device)
    meta = {"mode": config.mode, "checkpoint": config.checkpoint, "head": head, "eps": config.eps, "size": config.size,
            "iters": config.iters, "step_size": config.alpha, "seed": config.seed,
            "units": "pixel values on [0, 255], RGB, (H, W, 3)"}
    with frozen(model):
        if config.mode == "data-free":
            delta = universal_data_free(pm, delta, config.eps, config.alpha, config.iters)
        else:
            shards = ShardDir.open(Path(config.shards) / config.split)
            ckpt_io.check_compatible(ckpt, config.checkpoint, classes=shards.classes)
            # Random size x size windows (padded with the mean colour / ignore when smaller), so
            # a batch stacks and δ of the same size is added to each without tiling.
            stream = ShardStream(shards, Compose([RandomCrop(config.size)]), config.batch_size, shuffle=True,
                                 drop_last=False, seed=config.seed, collate_fn=pad_collate)
            loader = make_loader(stream, config.workers, pin_memory=device.type == "cuda")
            batches = ((b["image"].to(device), b["label"].to(device)) for b in _epochs(stream, loader))
            delta = universal_from_data(pm, batches, delta, config.eps, config.alpha, config.iters,
                                        shards.classes.ignore_index, config.fit)
            meta |= {"shards": config.shards, "split": config.split, "images": shards.num_samples,
                     "batch_size": config.batch_size, "fit": config.fit}
    meta["linf"] = float(delta.abs().max())
    return save_perturbation(config.out, delta, meta), meta


def _epochs(stream, loader) -> Iterator[dict]:
    """Batches of epoch 0, 1, 2, ... without end (the caller stops)."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from loader
        epoch += 1
