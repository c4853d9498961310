"""Adversarial perturbations in pixel units: white-box FGSM and PGD, universal perturbations.

    trainer eval --checkpoint runs/demo/stage2.pt --shards out/ --suite adversarial --eps 8 --pgd-steps 10
    trainer uap --checkpoint runs/a/stage2.pt --shards out/ --mode all-data --eps 10 --out uap.npy
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
``resize`` (bilinear) is the alternative. The generators (``trainer uap --mode``):

- ``data``: projected stochastic sign-gradient ascent of the cross-entropy over batches of
  training images (ours: the iterative, projected-to-ε scheme of stochastic-gradient UAPs,
  not UAP's DeepFool inner loop, which has no natural dense-prediction form);
- GD-UAP (Mopuri et al., TPAMI 2018), IJCV Table 6's three settings and GD-UAP's range prior:
  maximise Σ_l log ||f_l(x + δ)||_2 over every activation of the encoder (the log of the product
  of activation norms) with Adam, δ clipped to [-ξ, ξ] after each step and halved when it
  saturates (:class:`Saturation`), optionally stopped by the flip rate on held-out images.
  x is nothing (``no-data``, R-No: δ alone, on the mean image), Gaussian pseudo-images
  (``range-prior``), training images with the least background (``partial-data``, R-Part) or
  all training images (``all-data``, R-All). ``data-free`` is the old name of ``no-data``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import prediction, scaled_forward
from .precision import Precision, resolve_precision
from .transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCrop, normalize

FIT_MODES = ("tile", "resize")


# -- the model as an attack sees it -------------------------------------------------------------
class PixelModel:
    """``model`` with pixels in and the final prediction's logits out: (B, 3, H, W) uint8 or
    float pixel values in [0, 255] -> (B, K, H, W) float32 logits of ``head``.

    Float input is normalised by a differentiable affine map equal to
    :func:`trainer.transforms.normalize` (which takes uint8 only), so gradients reach the pixels.
    """

    def __init__(self, model: nn.Module, head: str = "t", precision: Precision | None = None,
                 scale: float = 1.0) -> None:
        self.model, self.head, self.precision, self.scale = model, head, precision, scale

    def _precision(self, x: Tensor) -> Precision:
        return self.precision or resolve_precision("none", x.device)  # fp32 unless told

    def __call__(self, x: Tensor) -> Tensor:
        x = normalize(x) if x.dtype == torch.uint8 else normalize_pixels(x)
        p = self._precision(x)
        with p.autocast(x.device):
            out = scaled_forward(self.model, p.prepare_input(x), self.scale)  # the run's --eval-scale (differentiable)
        return prediction(out, self.head).float()

    def encoder(self, x: Tensor) -> Tensor:
        """f_enc only (GD-UAP never needs the heads)."""
        p = self._precision(x)
        with p.autocast(x.device):
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
# GD-UAP's settings (Mopuri et al., TPAMI 2018, and its segmentation release) as IJCV Table 6 names
# them; "range-prior" is GD-UAP's third prior, which Table 6 does not report (docs/evaluation.md).
GDUAP_MODES = ("no-data", "range-prior", "partial-data", "all-data")
UAP_MODES = ("data", *GDUAP_MODES)
MODE_ALIASES = {"data-free": "no-data"}  # the earlier name of GD-UAP without data
TABLE6_NAMES = {"no-data": "R-No", "partial-data": "R-Part", "all-data": "R-All", "range-prior": "range prior"}
# GD-UAP's partial list for VOC holds 2,840 of the 10,582 VOC-aug training images ("data with less
# background"), 26.8%: the default share of ``partial-data``.
PARTIAL_SHARE = 0.268
# GD-UAP's range prior: Gaussian pseudo-images around the mean colour with these standard
# deviations (its release: 52, 58, 62 for B, G, R), so ~95% of the samples lie in [0, 255].
RANGE_STD = (62.0, 58.0, 52.0)  # R, G, B


@dataclass(frozen=True)
class UapConfig:
    """``trainer uap``: one universal perturbation made on a surrogate checkpoint."""

    checkpoint: str
    out: str  # .npy path
    shards: str | None = None  # the training images of the data modes, and the validation images
    mode: str = "data"
    eps: float = 10.0  # ξ = 10 on [0, 255], the UAP / GD-UAP setting of IJCV Table 6
    size: int = 513  # the perturbation's side; 513 covers a VOC image (IJCV evaluation crop)
    iters: int | None = None  # optimisation steps; None = 200 (mode data) or 2000 (GD-UAP modes)
    step_size: float | None = None  # mode data's signed step; default ε / 10
    lr: float = 0.1  # GD-UAP modes: Adam's learning rate, in pixel levels (GD-UAP's)
    part: float = PARTIAL_SHARE  # partial-data: the share of the training images it may use
    val_images: int = 0  # GD-UAP modes: held-out images for the stopping rule; 0 = run all iters
    val_split: str = "train"  # where those images come from (they are never the training batch)
    batch_size: int = 8
    split: str = "train"
    fit: str = "tile"
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    head: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", MODE_ALIASES.get(self.mode, self.mode))
        if self.mode not in UAP_MODES:
            raise ValueError(f"mode: expected one of {UAP_MODES}, got {self.mode!r}")
        if self.uses_data and not self.shards:
            raise ValueError(f"shards: mode {self.mode!r} needs the shard root whose {self.split}/ images it uses")
        if self.val_images and not self.shards:
            raise ValueError("shards: --val-images needs the shard root its validation images come from")
        _check_eps(self.eps)
        if self.size < 16:
            raise ValueError(f"size: expected >= 16, got {self.size}")
        if self.iters is None:
            object.__setattr__(self, "iters", 200 if self.mode == "data" else 2000)
        for name in ("iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.val_images < 0:
            raise ValueError(f"val_images: expected >= 0, got {self.val_images}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size: expected > 0, got {self.step_size}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not 0 < self.part <= 1:
            raise ValueError(f"part: expected a share in (0, 1], got {self.part}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit: expected one of {FIT_MODES}, got {self.fit!r}")
        if not self.out.endswith(".npy"):
            raise ValueError(f"out: expected a .npy file name, got {self.out!r}")

    @property
    def alpha(self) -> float:
        return self.eps / 10 if self.step_size is None else self.step_size

    @property
    def uses_data(self) -> bool:
        """Whether the optimisation itself sees training images (not only the stopping rule)."""
        return self.mode in ("data", "partial-data", "all-data")


def random_perturbation(size: int, eps: float, seed: int, device: torch.device) -> Tensor:
    """(3, size, size) uniform in [-ε, ε], GD-UAP's starting point; seeded."""
    g = torch.Generator().manual_seed(seed)
    return (eps * (2 * torch.rand(3, size, size, generator=g) - 1)).to(device)


def universal_from_data(pm: PixelModel, batches: Iterable[tuple[Tensor, Tensor]], delta: Tensor, eps: float,
                        alpha: float, iters: int, ignore_index: int = 255, fit: str = "tile") -> Tensor:
    """Data-driven UAP (ours): for each batch (x uint8 (B, 3, H, W), label (B, H, W)) of training
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


# -- GD-UAP ---------------------------------------------------------------------------------------
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish)


def activation_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs GD-UAP excites: every activation module of f_enc (its release
    hooks every ReLU of DeepLab-ResNet). A module applied several times (torchvision's
    Bottleneck calls its one ReLU three times) is hooked once and counts at every call."""
    layers = [m for m in model.backbone.modules() if isinstance(m, ACTIVATIONS)]
    if not layers:
        raise ValueError("uap: the model's encoder has no activation layers to hook")
    return layers


def activation_objective(pm: PixelModel, x: Tensor, layers: list[nn.Module]) -> Tensor:
    """GD-UAP's objective for pixels x (B, 3, H, W): Σ_l log ||f_l(x)||_2 over every call of
    ``layers`` (the log of the product of activation norms), each norm over the whole batch.
    The norm is taken inside the hook: in-place ops later in the network cannot change it."""
    logs: list[Tensor] = []

    def hook(_module, _inputs, out):
        if isinstance(out, Tensor):
            logs.append(torch.log(torch.linalg.vector_norm(out.float()) + 1e-12))

    hooks = [m.register_forward_hook(hook) for m in layers]
    try:
        pm.encoder(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(logs).sum()


class Saturation:
    """GD-UAP's rescaling rule: the saturation is the share of δ's values at the bound ±ξ; when
    more than half are saturated (``threshold``) and that share changed by less than
    ``min_change`` since the previous step, δ has stopped moving inside the box and is halved,
    so the optimisation can go on (GD-UAP's release: 0.5 and 1e-5)."""

    def __init__(self, eps: float, threshold: float = 0.5, min_change: float = 1e-5) -> None:
        self.eps, self.threshold, self.min_change = eps, threshold, min_change
        self.previous = 0.0
        self.value = 0.0

    def update(self, delta: Tensor) -> bool:
        """Measure δ after a projected step; True when it is time to rescale."""
        self.value = float((delta.abs() >= self.eps).float().mean())
        change, self.previous = abs(self.value - self.previous), self.value
        return change < self.min_change and self.value > self.threshold


@dataclass
class GdUapLog:
    """What happened during one GD-UAP optimisation (saved in the perturbation's .json)."""

    iters: int = 0
    rescales: list[tuple[int, float]] = field(default_factory=list)  # (step, saturation) at each halving
    validations: list[tuple[int, float]] = field(default_factory=list)  # (step, flip rate)
    best_step: int | None = None
    stopped: str = "iters"  # "iters" or "patience"
    saturation: float = 0.0  # at the end


def gd_uap(objective: Callable[[Tensor], Tensor], delta: Tensor, eps: float, iters: int, lr: float = 0.1,
           validate: Callable[[Tensor], float] | None = None, val_every: int = 400, val_before_rescale: int = 200,
           patience: int = 10) -> tuple[Tensor, GdUapLog]:
    """GD-UAP's optimisation: Adam (lr in pixel levels) ascending ``objective(δ)``, δ clipped to
    [-ε, ε] after every step, halved by the saturation rule (:class:`Saturation`).

    With ``validate(δ) -> flip rate`` (share of held-out pixels whose prediction δ changes), as
    in GD-UAP's release: it is measured every ``val_every`` steps and before a rescale that comes
    more than ``val_before_rescale`` steps after the last measurement, and at the end (ours: a
    short run may never reach ``val_every``); the best δ is kept, and the run stops after
    ``patience`` measurements without improvement. Without it, the last δ is returned."""
    d = delta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([d], lr=lr)
    saturation, log = Saturation(eps), GdUapLog()
    best, best_rate, stale, last = d.detach().clone(), -math.inf, 0, 0
    for step in range(1, iters + 1):
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            (-objective(d)).backward()  # Adam minimises; GD-UAP's loss is minus the objective
        optimizer.step()
        with torch.no_grad():
            d.clamp_(-eps, eps)
        log.iters = step
        rescale = saturation.update(d.detach())
        since = step - last
        if validate is not None and (since >= val_every or (rescale and since > val_before_rescale)):
            last = step
            rate = validate(d.detach())
            log.validations.append((step, rate))
            if rate >= best_rate:  # ties keep the later δ, as the release does
                stale = 0 if rate > best_rate else stale
                best, best_rate, log.best_step = d.detach().clone(), rate, step
            else:
                stale += 1
            if stale == patience:
                log.stopped = "patience"
                break
        if rescale:
            with torch.no_grad():
                d.div_(2)
            log.rescales.append((step, saturation.value))
            last = step
    log.saturation = saturation.value
    if validate is None:
        return d.detach(), log
    if log.stopped == "iters" and (not log.validations or log.validations[-1][0] != log.iters):
        rate = validate(d.detach())  # the last δ competes too (a short run may not reach val_every)
        log.validations.append((log.iters, rate))
        if rate >= best_rate:
            best, log.best_step = d.detach().clone(), log.iters
    return best, log


def prior_images(mode: str, batch_size: int, size: int, generator: torch.Generator,
                 pool: ImagePool | None) -> Callable[[], Tensor | None]:
    """The images δ is added to at each GD-UAP step: none (δ alone, i.e. on the mean image),
    Gaussian pseudo-images (range prior), or random crops of training images (data priors)."""
    if mode == "no-data":
        return lambda: None
    if mode == "range-prior":
        return lambda: range_prior_batch(batch_size, size, generator)
    if pool is None:
        raise ValueError(f"uap: mode {mode!r} needs training images")
    return lambda: pool.batch(batch_size)


def range_prior_batch(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 3, size, size) float pixels ~ N(mean colour, RANGE_STD), clipped to [0, 255]:
    images that know only the data's range (GD-UAP's range prior; fresh samples each step, ours)."""
    std = torch.tensor(RANGE_STD).view(1, 3, 1, 1)
    noise = torch.randn(n, 3, size, size, generator=generator)
    return (mean_pixels()[None] + std * noise).clamp_(0, 255)


def gduap_objective(pm: PixelModel, layers: list[nn.Module], images: Callable[[], Tensor | None],
                    fit: str = "tile") -> Callable[[Tensor], Tensor]:
    """δ -> the activation objective of δ added to the prior's images (or alone)."""
    def objective(d: Tensor) -> Tensor:
        x = images()
        if x is None:
            return activation_objective(pm, (mean_pixels(d.device) + d)[None], layers)
        return activation_objective(pm, apply_universal(x.to(d.device), d, fit), layers)
    return objective


class ImagePool:
    """Random size x size crops of some images of a shard directory, read when drawn (the data
    priors' training batches; a data set need not fit in memory). ``items``: (shard, index)."""

    def __init__(self, shards, items: list[tuple[int, int]], size: int, seed: int) -> None:
        if not items:
            raise ValueError(f"uap: no images to draw from in {shards.path}")
        self.readers, self.items = shards.readers(), items
        self.crop, self.rng = RandomCrop(size), np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, n: int) -> Tensor:
        """(n, 3, size, size) uint8, drawn with replacement."""
        return self._crops(self.rng.integers(0, len(self.items), n))

    def in_order(self, batch_size: int) -> list[Tensor]:
        """Every image once, one crop each, in batches (the held-out images of the stopping rule)."""
        return [self._crops(range(i, min(i + batch_size, len(self.items))))
                for i in range(0, len(self.items), batch_size)]

    def _crops(self, picks) -> Tensor:
        crops = []
        for p in picks:
            shard, index = self.items[p]
            s = self.readers[shard].read(index)
            image, _, _ = self.crop(s.image, s.label, None, self.rng)
            crops.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        return torch.stack(crops)  # (n, 3, size, size) uint8


def every_image(shards) -> list[tuple[int, int]]:
    """(shard, index) of every sample of a split, in stored order."""
    return [(r, i) for r, reader in enumerate(shards.readers()) for i in range(len(reader))]


def least_background(shards, share: float) -> list[tuple[int, int]]:
    """The ``share`` of a split's images with the smallest background fraction of their labelled
    pixels (R-Part: GD-UAP's partial data is "data with less background"; ranking by the
    fraction is ours, its list gives no rule). Ties keep the stored order. Reads labels only."""
    from blendgen.shards.schema import decode_label

    background = np.array(shards.classes.background)
    ignore = shards.classes.ignore_index
    scored = []
    for r, reader in enumerate(shards.readers()):
        for i in range(len(reader)):
            label = decode_label(reader.read_raw(i)["label"])
            labelled = label != ignore
            fraction = np.isin(label[labelled], background).mean() if labelled.any() else 1.0
            scored.append((float(fraction), r, i))
        reader.close()
    scored.sort(key=lambda t: t[0])  # stable: ties in stored order
    keep = max(1, math.ceil(share * len(scored)))
    return [(r, i) for _, r, i in scored[:keep]]


def flip_rate(pm: PixelModel, images: list[Tensor], delta: Tensor, fit: str = "tile") -> float:
    """GD-UAP's validation measure: the share of pixels whose predicted class δ changes."""
    changed = total = 0
    with torch.no_grad():
        for x in images:
            clean = pm(x).argmax(1)
            attacked = pm(apply_universal(x, delta, fit)).argmax(1)
            changed += int((clean != attacked).sum())
            total += clean.numel()
    return changed / total


def generate_uap(config: UapConfig) -> tuple[Path, dict]:
    """``trainer uap``: load the surrogate, build the perturbation, save ``.npy`` + ``.json``."""
    from . import checkpoint as ckpt_io
    from .distributed import resolve_device
    from .evaluate import checkpoint_eval_scale, eval_head, model_from_checkpoint

    device = resolve_device(config.device)
    ckpt = ckpt_io.load(config.checkpoint)
    precision = resolve_precision("auto", device)
    model = precision.prepare_model(model_from_checkpoint(ckpt, device))
    head = eval_head(model, ckpt["stage"], config.head)
    pm = PixelModel(model, head, precision, checkpoint_eval_scale(ckpt, None))
    delta = random_perturbation(config.size, config.eps, config.seed, device)
    meta = {"mode": config.mode, "table6": TABLE6_NAMES.get(config.mode), "checkpoint": config.checkpoint,
            "head": head, "eps": config.eps, "size": config.size, "iters": config.iters, "seed": config.seed,
            "units": "pixel values on [0, 255], RGB, (H, W, 3)"}
    with frozen(model):
        if config.mode == "data":
            delta, extra = _uap_from_data(config, ckpt, pm, delta, device)
        else:
            delta, extra = _uap_gd(config, ckpt, pm, delta, device)
    meta |= extra
    meta["linf"] = float(delta.abs().max())
    return save_perturbation(config.out, delta, meta), meta


def _open_split(config: UapConfig, ckpt: dict, split: str):
    from blendgen.shards.directory import ShardDir

    from . import checkpoint as ckpt_io

    shards = ShardDir.open(Path(config.shards) / split)
    ckpt_io.check_compatible(ckpt, config.checkpoint, classes=shards.classes)
    return shards


def _uap_from_data(config: UapConfig, ckpt: dict, pm: PixelModel, delta: Tensor, device) -> tuple[Tensor, dict]:
    from .data import ShardStream, make_loader
    from .transforms import Compose, RandomCrop, pad_collate

    shards = _open_split(config, ckpt, config.split)
    # Random size x size windows (padded with the mean colour / ignore when smaller), so a batch
    # stacks and δ of the same size is added to each without tiling.
    stream = ShardStream(shards, Compose([RandomCrop(config.size)]), config.batch_size, shuffle=True,
                         drop_last=False, seed=config.seed, collate_fn=pad_collate)
    loader = make_loader(stream, config.workers, pin_memory=device.type == "cuda")
    batches = ((b["image"].to(device), b["label"].to(device)) for b in _epochs(stream, loader))
    delta = universal_from_data(pm, batches, delta, config.eps, config.alpha, config.iters,
                                shards.classes.ignore_index, config.fit)
    return delta, {"step_size": config.alpha, "shards": config.shards, "split": config.split,
                   "images": shards.num_samples, "batch_size": config.batch_size, "fit": config.fit}


def _uap_gd(config: UapConfig, ckpt: dict, pm: PixelModel, delta: Tensor, device) -> tuple[Tensor, dict]:
    """The GD-UAP modes: the prior's images, the optional validation images, then :func:`gd_uap`."""
    extra: dict = {"optimizer": "adam", "lr": config.lr, "fit": config.fit}
    pool = None
    if config.mode in ("partial-data", "all-data"):
        shards = _open_split(config, ckpt, config.split)
        items = least_background(shards, config.part) if config.mode == "partial-data" else every_image(shards)
        pool = ImagePool(shards, items, config.size, config.seed)
        extra |= {"shards": config.shards, "split": config.split, "images": len(pool),
                  "split_images": shards.num_samples, "batch_size": config.batch_size}
        if config.mode == "partial-data":
            extra["part"] = config.part
    elif config.mode == "range-prior":
        extra["batch_size"] = config.batch_size
    validate = None
    if config.val_images:
        val = _open_split(config, ckpt, config.val_split)
        held_out = ImagePool(val, every_image(val)[:config.val_images], config.size, config.seed + 1)
        images = [x.to(device) for x in held_out.in_order(8)]
        validate = lambda d: flip_rate(pm, images, d, config.fit)  # noqa: E731
        extra |= {"val_split": config.val_split, "val_images": len(held_out)}
    generator = torch.Generator().manual_seed(config.seed)
    images_of = prior_images(config.mode, config.batch_size, config.size, generator, pool)
    objective = gduap_objective(pm, activation_layers(pm.model), images_of, config.fit)
    delta, log = gd_uap(objective, delta, config.eps, config.iters, config.lr, validate)
    extra |= {"steps": log.iters, "stopped": log.stopped, "rescales": log.rescales, "validations": log.validations,
              "best_step": log.best_step, "saturation": log.saturation}
    return delta, extra


def _epochs(stream, loader) -> Iterator[dict]:
    """Batches of epoch 0, 1, 2, ... without end (the caller stops)."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from loader
        epoch += 1
