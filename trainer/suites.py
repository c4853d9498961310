"""The papers' evaluation suites: complex scenes, out-of-context objects, adversarial and blur.

    trainer eval --checkpoint runs/demo/stage2.pt --shards out/ --suite all
    trainer eval --checkpoint runs/demo/stage2.pt --shards out/ --suite context --thresholds 20,10,5,2,1
    trainer report runs/sourcesep-cc runs/deeplabv3 --out reports/   # the same tables side by side

=============  =======================================  =========================================
suite          measure                                  source
=============  =======================================  =========================================
overall        mIoU, pixel / mean class accuracy        IJCV Tables 1-3, BMVC Table 1
complex        mIoU on val subsets: 1-Occ, All-Occ;     IJCV Table 4, BMVC Table 2 (Sect. 4.3.3)
               1-4 object instances; 2-4 classes
context        IoU of the 5 classes co-occurring most   IJCV Table 5 and Fig. 5 (Sect. 4.3.4)
               with person, with person vs alone;
               mIoU on images whose class pairs are
               rare in training (< t)
adversarial    mIoU under FGSM, PGD, universal          IJCV Table 6, BMVC Table 4 (Sect. 4.4)
               perturbations (trainer.attacks)
blur           mIoU against Gaussian σ, whole image     contextual-fusion paper, Fig. 5
               and object pixels only (trainer.blur)
=============  =======================================  =========================================

One clean pass evaluates the whole split and every complex / context subset at once (per-image
confusion matrices summed into each subset, :func:`trainer.evaluate.evaluate_pass`); each
attack and each (blur mode, σ) is one more pass. Subset membership is a pure function of the
val samples' metadata (:class:`trainer.subsets.ImageInfo`: object classes, instance count, VOC
``occluded`` flags) and of the training co-occurrence matrix, tested on hand-made samples
(:mod:`trainer.subsets` holds them).

Choices (ours, documented in docs/evaluation.md): a subset's mIoU comes from its summed
confusion matrix, like the split's (VOC protocol); "n-Obj" counts annotated instances and
"n-Cls" object classes exactly (the papers' counts, 695/318/167/99 and 375/121/23 of 1,449
images, leave the rest for more objects); images without ``occluded`` flags or instance counts
(non-VOC sources) belong to no occlusion / instance subset, and their number is reported.
"Exclusive" (Table 5) means the class is the image's only object class. The rare-pair subsets
hold images with at least two object classes: a single-class image has no pair to be rare, and
counting it in every subset would pull each point toward the single-object mIoU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from blendgen.datasets.classes import ClassSet
from blendgen.shards.directory import ShardDir

from . import checkpoint as ckpt_io
from .attacks import FIT_MODES, PixelModel, apply_universal, fgsm, frozen, load_perturbation, pgd
from .blur import MODES as BLUR_MODES, SIGMAS, blur
from .distributed import Dist, cleanup, init_distributed
from .evaluate import (EvalConfig, PassResult, Subsets, by_head, checkpoint_eval_scale, eval_head, eval_loader,
                       evaluate_heads, evaluate_pass, make_report, model_from_checkpoint, prediction_heads, report_dir, write_report)
from .metrics import ConfusionMatrix
from .precision import resolve_precision
from .subsets import (
    ImageInfo, complex_subsets, context_subsets, person_id, rarity_subsets, read_image_infos, table5_partners,
    training_cooccurrence, unknown_annotations,
)
from .tables import Table

SUITES = ("overall", "complex", "context", "adversarial", "blur")
ATTACKS = ("fgsm", "pgd")
THRESHOLDS = (50, 40, 30, 20, 10)  # IJCV Fig. 5
COMPLEX_GROUPS = {  # IJCV Table 4 column groups
    "Occlusion": ("1-Occ", "All-Occ"),
    "Number of Objects": ("1-Obj", "2-Obj", "3-Obj", "4-Obj"),
    "Number of Unique Objects": ("2-Cls", "3-Cls", "4-Cls"),
}
RESULTS_JSON, RESULTS_MD = "suites.json", "suites.md"
# suites.json carries {"suite_format": SUITE_FORMAT}: trainer report finds its files by this key and
# refuses a layout it does not know (a change of layout increments it).
SUITE_FORMAT = 1


def expand_suites(names: Sequence[str]) -> tuple[str, ...]:
    """["all"] or any of SUITES -> the suites in canonical order, each once."""
    unknown = set(names) - {*SUITES, "all"}
    if unknown or not names:
        raise ValueError(f"suite: expected some of {SUITES} or 'all', got {list(names)}")
    chosen = set(SUITES) if "all" in names else set(names)
    return tuple(s for s in SUITES if s in chosen)


@dataclass(frozen=True)
class SuiteConfig:
    """What the suites measure; defaults are the papers' settings."""

    suites: tuple[str, ...] = ("overall",)
    person: str = "person"  # Table 5's anchor class
    # Table 5's classes: None = the paper's five on VOC's class set, else the top_k classes
    # co-occurring most with ``person`` in training; ("derived",) = the latter on VOC too
    partners: tuple[str, ...] | None = None
    top_k: int = 5  # Table 5: five classes
    thresholds: tuple[int, ...] = THRESHOLDS
    attacks: tuple[str, ...] = ATTACKS
    eps: float = 8.0  # white-box L∞ radius in pixel levels (8/255 in [0, 1] units)
    pgd_steps: int = 10
    pgd_step_size: float | None = None  # default 2.5 ε / steps (Madry et al.)
    uap: tuple[str, ...] = ()  # universal perturbation files (.npy, pixel units)
    uap_fit: str = "tile"
    sigmas: tuple[float, ...] = SIGMAS
    seed: int = 0  # PGD's random starts

    def __post_init__(self) -> None:
        object.__setattr__(self, "suites", expand_suites(self.suites))
        if not self.person:
            raise ValueError("person: expected a class name")
        if self.top_k < 1:
            raise ValueError(f"top_k: expected >= 1, got {self.top_k}")
        if not self.thresholds or any(t < 1 for t in self.thresholds):
            raise ValueError(f"thresholds: expected co-occurrence counts >= 1, got {list(self.thresholds)}")
        if set(self.attacks) - set(ATTACKS):
            raise ValueError(f"attacks: expected some of {ATTACKS}, got {list(self.attacks)}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps: expected > 0 pixel levels, got {self.eps}")
        if self.pgd_steps < 1:
            raise ValueError(f"pgd_steps: expected >= 1, got {self.pgd_steps}")
        if self.pgd_step_size is not None and not self.pgd_step_size > 0:
            raise ValueError(f"pgd_step_size: expected > 0, got {self.pgd_step_size}")
        if self.uap_fit not in FIT_MODES:
            raise ValueError(f"uap_fit: expected one of {FIT_MODES}, got {self.uap_fit!r}")
        if not self.sigmas or any(not s > 0 for s in self.sigmas):
            raise ValueError(f"sigmas: expected positive values, got {list(self.sigmas)}")
        for path in self.uap:
            if not Path(path).is_file():
                raise ValueError(f"uap: {path}: no such file")


# -- the runner ----------------------------------------------------------------------------------
@dataclass
class SuiteContext:
    """What every suite of one evaluation shares."""

    predict: PixelModel
    loader: Iterable[dict]
    classes: ClassSet
    dist: Dist
    progress: bool
    clean: PassResult | None = None
    timings: dict = field(default_factory=dict)

    def run(self, name: str, perturb=None, subsets: Subsets | None = None, against_clean: bool = False) -> PassResult:
        result = evaluate_pass(self.predict, self.loader, self.classes.num_classes, self.classes.ignore_index,
                               self.dist, perturb=perturb, subsets=subsets, progress=self.progress, desc=name,
                               against_clean=against_clean)
        self.timings[name] = round(result.seconds, 2)
        return result


def summarise(cm: ConfusionMatrix, images: int) -> dict:
    """{"images", "miou"} of one subset (miou None when it holds no labelled pixel)."""
    miou = cm.compute()["miou"]
    return {"images": images, "miou": None if math.isnan(miou) else miou}


def class_iou(cm: ConfusionMatrix, c: int) -> float | None:
    return cm.compute()["iou"][c]


def plan_subsets(infos: list[ImageInfo], suites: Sequence[str], config: SuiteConfig, root: Path,
                 shards: ShardDir) -> tuple[dict[str, list[str]], dict]:
    """Every subset the clean pass must count, and the context facts the tables name."""
    subsets: dict[str, list[str]] = {}
    facts: dict = {}
    if "complex" in suites:
        subsets |= complex_subsets(infos)
    if "context" in suites:
        classes = shards.classes
        C = training_cooccurrence(root, shards)
        pid = person_id(classes, config.person)
        partners = table5_partners(C, classes, pid, config.partners, config.top_k)
        subsets |= context_subsets(infos, pid, partners, classes.names)
        subsets |= rarity_subsets(infos, C, classes.object_ids, config.thresholds)
        facts = {"person": pid, "partners": partners,
                 "partner_counts": [int(C[list(classes.object_ids).index(pid), list(classes.object_ids).index(c)])
                                    for c in partners]}
    return subsets, facts


def complex_result(clean: PassResult, sizes: dict[str, int], infos: list[ImageInfo]) -> dict:
    return {"subsets": {name: summarise(clean.subsets[name], sizes[name])
                        for group in COMPLEX_GROUPS.values() for name in group},
            "all": summarise(clean.total, len(infos)), "unknown": unknown_annotations(infos)}


def context_result(clean: PassResult, sizes: dict[str, int], facts: dict, config: SuiteConfig,
                   classes: ClassSet) -> dict:
    names, pid = classes.names, facts["person"]
    pairs = []
    for c, count in zip(facts["partners"], facts["partner_counts"]):
        both, alone = f"{names[c]} & {names[pid]}", f"{names[c]} alone"
        pairs.append({"class": names[c], "train_cooccurrence": count,
                      "with_person": {"images": sizes[both], "iou": class_iou(clean.subsets[both], c),
                                      "miou": summarise(clean.subsets[both], sizes[both])["miou"]},
                      "exclusive": {"images": sizes[alone], "iou": class_iou(clean.subsets[alone], c)}})
    rarity = [{"threshold": "any", **summarise(clean.subsets["any"], sizes["any"])}]
    rarity += [{"threshold": t, **summarise(clean.subsets[f"<{t}"], sizes[f"<{t}"])} for t in config.thresholds]
    return {"person": names[pid], "pairs": pairs, "rarity": rarity}


def fooling(result: PassResult) -> dict:
    """{"miou": against the ground truth, "miou_vs_clean": the attacked prediction against the
    clean one, "fooling_rate": 1 - miou_vs_clean (GD-UAP's generalised fooling rate for mIoU)}."""
    agreement = summarise(result.agreement, result.images)["miou"]
    return {"miou": summarise(result.total, result.images)["miou"], "miou_vs_clean": agreement,
            "fooling_rate": None if agreement is None else 1 - agreement}


def adversarial_result(ctx: SuiteContext, config: SuiteConfig, generator: torch.Generator) -> dict:
    """Table 6's row for this model: clean, white-box FGSM / PGD, each universal perturbation;
    each attack's mIoU and fooling rate."""
    pm, ignore = ctx.predict, ctx.classes.ignore_index
    alpha = 2.5 * config.eps / config.pgd_steps if config.pgd_step_size is None else config.pgd_step_size
    rows = [{"name": "clean", "miou": summarise(ctx.clean.total, ctx.clean.images)["miou"]}]
    if "fgsm" in config.attacks:
        r = ctx.run("FGSM", lambda x, y: fgsm(pm, x, y, config.eps, ignore), against_clean=True)
        rows.append({"name": "FGSM", "eps": config.eps, **fooling(r)})
    if "pgd" in config.attacks:
        name = f"PGD-{config.pgd_steps}"
        r = ctx.run(name, lambda x, y: pgd(pm, x, y, config.eps, config.pgd_steps, alpha, ignore, generator=generator),
                    against_clean=True)
        rows.append({"name": name, "eps": config.eps, "steps": config.pgd_steps, "step_size": alpha, **fooling(r)})
    for path in config.uap:
        delta = load_perturbation(path).to(ctx.dist.device)
        name = f"UAP {Path(path).stem}"
        r = ctx.run(name, lambda x, y, d=delta: apply_universal(x, d, config.uap_fit), against_clean=True)
        rows.append({"name": name, "file": str(path), "linf": float(delta.abs().max()), "size": list(delta.shape[1:]),
                     "fit": config.uap_fit, **_uap_origin(path), **fooling(r)})
    return {"eps": config.eps, "pgd_steps": config.pgd_steps, "pgd_step_size": alpha, "results": rows}


def _uap_origin(path: str) -> dict:
    """How ``trainer uap`` made a perturbation file (its .json beside it): the mode and Table 6's
    name for it; {} for a file from elsewhere."""
    meta = Path(path).with_suffix(".json")
    try:
        made = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return {k: made[k] for k in ("mode", "table6") if made.get(k)}


def blur_result(ctx: SuiteContext, config: SuiteConfig) -> dict:
    """mIoU against σ for blurring the whole image and the object pixels only (σ = 0: clean)."""
    classes = ctx.classes
    clean = summarise(ctx.clean.total, ctx.clean.images)["miou"]
    result = {"sigmas": [0.0, *map(float, config.sigmas)]}
    for mode in BLUR_MODES:
        curve = [clean]
        for s in config.sigmas:
            r = ctx.run(f"blur {mode} σ={s:g}", lambda x, y, s=s, m=mode: blur(x, y, s, m, classes.background,
                                                                               classes.ignore_index))
            curve.append(summarise(r.total, r.images)["miou"])
        result[mode] = curve
    return result


def run_suites(ctx: SuiteContext, config: SuiteConfig, infos: list[ImageInfo], subsets: dict[str, list[str]],
               facts: dict) -> dict:
    """The clean pass (counting every subset), then each suite's own passes; {suite: result}."""
    membership = Subsets.from_lists(subsets, [i.key for i in infos]) if subsets else None
    ctx.clean = ctx.run("clean", subsets=membership)
    sizes = {name: len(keys) for name, keys in subsets.items()}
    results: dict = {}
    if "overall" in config.suites:
        results["overall"] = {k: v for k, v in make_report(ctx.clean.total, ctx.classes).items() if k != "pixels"}
    if "complex" in config.suites:
        results["complex"] = complex_result(ctx.clean, sizes, infos)
    if "context" in config.suites:
        results["context"] = context_result(ctx.clean, sizes, facts, config, ctx.classes)
    if "adversarial" in config.suites:
        # PGD's random starts: seeded, one stream per rank (ranks see different images).
        generator = torch.Generator(ctx.dist.device).manual_seed(config.seed + ctx.dist.rank)
        results["adversarial"] = adversarial_result(ctx, config, generator)
    if "blur" in config.suites:
        results["blur"] = blur_result(ctx, config)
    return results


def suite_context(eval_config: EvalConfig, ckpt: dict, shards: ShardDir, d: Dist) -> SuiteContext:
    """The checkpoint's network as a PixelModel (eval mode; bf16 and channels_last where the
    device computes bf16 natively, trainer.precision) and
    the split's loader."""
    precision = resolve_precision("auto", d.device)
    model = precision.prepare_model(model_from_checkpoint(ckpt, d.device).eval())
    head = eval_head(model, ckpt["stage"], eval_config.head)
    loader = eval_loader(shards, eval_config.eval_crop, eval_config.batch_size, eval_config.workers, d)
    scale = checkpoint_eval_scale(ckpt, eval_config.eval_scale)
    return SuiteContext(PixelModel(model, head, precision, scale), loader, shards.classes, d, eval_config.progress)


def evaluate_suites(eval_config: EvalConfig, config: SuiteConfig) -> dict:
    """``trainer eval --suite ...``: check everything, run the passes, write suites.json,
    suites.md and the plots (and report.json / .md with "overall", as plain ``trainer eval``)."""
    d = init_distributed(eval_config.device)
    try:
        ckpt = ckpt_io.load(eval_config.checkpoint)
        root = Path(eval_config.shards)
        shards = ShardDir.open(root / eval_config.split)
        ckpt_io.check_compatible(ckpt, eval_config.checkpoint, classes=shards.classes)
        infos = read_image_infos(shards)
        subsets, facts = plan_subsets(infos, config.suites, config, root, shards)  # errors before any pass
        ctx = suite_context(eval_config, ckpt, shards, d)
        start = time.perf_counter()
        with frozen(ctx.predict.model):
            results = run_suites(ctx, config, infos, subsets, facts)
            heads = overall_by_head(ctx, shards.classes) if "overall" in results else None
        if heads:
            results["overall"]["by_head"] = heads
        context = {"checkpoint": str(eval_config.checkpoint), "split": eval_config.split, "stage": ckpt["stage"],
                   "head": ctx.predict.head, "samples": len(infos), "eval_crop": eval_config.eval_crop}
        report = {"suite_format": SUITE_FORMAT, **context, "batch_size": eval_config.batch_size,
                  "device": str(d.device), "config": _plain(config), "suites": results,
                  "time_s": round(time.perf_counter() - start, 2), "pass_time_s": ctx.timings}
        if d.is_main:
            out = report_dir(eval_config)
            write_suites(out, report, label=run_label(eval_config.checkpoint))
            if "overall" in results:
                write_report(out, {**make_report(ctx.clean.total, shards.classes, **context),
                                   **({"by_head": heads} if heads else {})})
            report["report_dir"] = str(out)
        return report
    finally:
        cleanup()


def overall_by_head(ctx: SuiteContext, classes: ClassSet) -> dict | None:
    """Both heads' overall numbers (one more clean pass) for a two-branch network; None for a
    single-head one. The other suites predict with ``ctx.predict.head`` only (``--head``)."""
    model = ctx.predict.model
    if len(prediction_heads(model)) < 2:
        return None
    cms = evaluate_heads(model, ctx.loader, classes.num_classes, classes.ignore_index, ctx.dist,
                         prediction_heads(model), ctx.predict.precision, ctx.progress, ctx.predict.scale)
    return by_head(cms, classes)


def _plain(config: SuiteConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def run_label(checkpoint: str | Path) -> str:
    """A run's name in tables: its directory (runs/NAME/stage2.pt -> NAME)."""
    return Path(checkpoint).resolve().parent.name


# -- tables and plots, for one run (trainer eval) or several side by side (trainer report) -------
# Each builder takes [(row label, that run's suite section)] and returns trainer.report Tables:
# float cells are percentages, None is "n/a". Columns follow the first run; the others' values
# are matched by name (subset, attack, threshold, σ), so a run evaluated with other settings
# shows "n/a" where it has no value rather than a misplaced one.
Runs = list[tuple[str, dict]]


def _pct(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v


def overall_tables(runs: Runs) -> list:
    rows = [[name, _pct(r["miou"]), _pct(r["pixel_acc"]), _pct(r["mean_acc"])] for name, r in runs]
    return [Table("suite_overall", "Overall", ["run", "mIoU", "pixel acc", "mean class acc"], rows)]


def complex_tables(runs: Runs) -> list:
    """IJCV Table 4: the image count of each subset, then one mIoU row per run."""
    names = [n for group in COMPLEX_GROUPS.values() for n in group]
    first = runs[0][1]
    rows = [["# of images", *(first["subsets"][n]["images"] for n in names), first["all"]["images"]]]
    rows += [[run, *(_pct(r["subsets"].get(n, {}).get("miou")) for n in names), _pct(r["all"]["miou"])]
             for run, r in runs]
    unknown = first["unknown"]
    note = "Occlusion: 1-Occ at least one object flagged occluded, All-Occ every object; n-Obj: exactly n " \
           "annotated instances; n-Cls: exactly n object classes (Table 4's 'Number of Unique Objects')."
    if unknown["occlusion"] or unknown["instances"]:
        note += (f" {unknown['occlusion']} images have no occlusion flags and {unknown['instances']} no instance "
                 "count (no VOC XML): they are in no such subset.")
    return [Table("suite_complex", "Complex scenes (IJCV Table 4): mIoU on val subsets", ["", *names, "all"], rows,
                  note)]


def context_tables(runs: Runs) -> list:
    """IJCV Table 5 (IoU of each class with person / alone) and Fig. 5's numbers."""
    first = runs[0][1]
    person, pairs = first["person"], first["pairs"]
    classes = [p["class"] for p in pairs]

    def by_class(r: dict, part: str) -> dict:
        return {p["class"]: p[part]["iou"] for p in r["pairs"]}

    rows = [["# of images", *(p["with_person"]["images"] for p in pairs), *(p["exclusive"]["images"] for p in pairs)]]
    rows += [[run, *(_pct(by_class(r, "with_person").get(c)) for c in classes),
              *(_pct(by_class(r, "exclusive").get(c)) for c in classes)] for run, r in runs]
    counts = ", ".join(f"{p['class']} {p['train_cooccurrence']}" for p in pairs)
    table5 = Table("suite_context_person", f"Out of context (IJCV Table 5): IoU with {person} and alone",
                   ["", *(f"{c} & {person}" for c in classes), *(f"{c} alone" for c in classes)], rows,
                   f"The classes co-occurring most with {person} in training (images together: {counts}); "
                   f"'& {person}': images with both; 'alone': the class is the image's only object class.")
    thresholds = [p["threshold"] for p in first["rarity"]]
    rows = [["# of images", *(p["images"] for p in first["rarity"])]]
    rows += [[run, *(_pct({p["threshold"]: p["miou"] for p in r["rarity"]}.get(t)) for t in thresholds)]
             for run, r in runs]
    fig5 = Table("suite_context_rarity", "Out of context (IJCV Fig. 5): mIoU on images with rare class pairs",
                 ["t", *(str(t) if t == "any" else f"< {t}" for t in thresholds)], rows,
                 "Images whose object-class pairs all co-occurred fewer than t times in training; "
                 "'any': every image with two or more object classes.")
    return [table5, fig5]


def adversarial_tables(runs: Runs) -> list:
    """IJCV Table 6: mIoU clean and under each attack; then each attack's fooling rate."""
    def label(row: dict) -> str:
        if "linf" in row:
            setting = f"{row['table6']}, " if row.get("table6") else ""
            return f"{row['name']} ({setting}L∞ {row['linf']:.3g})"
        return f"{row['name']} ε={row['eps']:g}" if "eps" in row else row["name"]

    def values(r: dict, key: str) -> dict:
        return {x["name"]: x.get(key) for x in r["results"]}

    first = runs[0][1]["results"]
    rows = [[run, *(_pct(values(r, "miou").get(c["name"])) for c in first)] for run, r in runs]
    fits = {row["fit"] for _, r in runs for row in r["results"] if "fit" in row}
    note = ("White-box FGSM / PGD on each model itself (L∞ ε in pixel levels of [0, 255]); UAP: one universal "
            f"perturbation for every image, {' / '.join(sorted(fits)) or 'tile'}d to the image size; R-No / R-Part / "
            "R-All: GD-UAP without data, with part of the training set, with all of it (trainer uap).")
    attacked = [c for c in first if c["name"] != "clean"]
    fooled = [[run, *(_pct(values(r, "fooling_rate").get(c["name"])) for c in attacked)] for run, r in runs]
    tables = [Table("suite_adversarial", "Adversarial robustness (IJCV Table 6): mIoU", ["run", *map(label, first)],
                    rows, note)]
    if attacked:
        tables.append(Table("suite_fooling", "Fooling rate under each attack (GD-UAP's measure)",
                            ["run", *map(label, attacked)], fooled,
                            "Fooling rate = 100 - mIoU of the attacked prediction against the clean prediction "
                            "(labelled pixels); n/a for runs evaluated before it was measured."))
    return tables


def blur_tables(runs: Runs) -> list:
    """mIoU against σ, the whole image blurred and the object pixels only."""
    sigmas = runs[0][1]["sigmas"]
    rows = [[run, "whole image" if mode == "image" else "objects only",
             *(_pct(dict(zip(r["sigmas"], r[mode])).get(s)) for s in sigmas)]
            for run, r in runs for mode in BLUR_MODES]
    return [Table("suite_blur", "Blur robustness (contextual-fusion paper, Fig. 5): mIoU against Gaussian σ",
                  ["run", "blurred", *(f"σ={s:g}" for s in sigmas)], rows,
                  "Objects only: pixels labelled neither background nor ignore are blurred; "
                  "σ = 0 is the clean image.")]


TABLES = {"overall": overall_tables, "complex": complex_tables, "context": context_tables,
          "adversarial": adversarial_tables, "blur": blur_tables}


def suite_tables(runs: Runs, suites: Sequence[str] = SUITES) -> list:
    """Every suite some run has, one table (or two) each, a row per run that has it."""
    tables = []
    for suite, build in TABLES.items():
        having = [(name, r[suite]) for name, r in runs if suite in r and suite in suites]
        if having:
            tables += build(having)
    return tables


def suite_markdown(runs: Runs) -> str:
    lines = []
    for table in suite_tables(runs):
        lines += [f"## {table.title}", "", table.markdown(), ""]
        if table.note:
            lines += [table.note, ""]
    return "\n".join(lines)


def suites_of(record) -> dict | None:
    """The suites of a run's ``trainer eval --suite`` outputs (runs/NAME/*/suites.json), merged:
    suites evaluated separately (say adversarial later, with new perturbation files) join; where
    two outputs hold the same suite, the first in directory-name order wins. None without any."""
    merged: dict = {}
    for data in (record.report, *record.evals.values()):
        if not (isinstance(data, dict) and "suite_format" in data):
            continue
        if data["suite_format"] != SUITE_FORMAT:
            raise ValueError(f"{record.path}: suites.json format {data['suite_format']}, this trainer reads "
                             f"{SUITE_FORMAT}; re-run trainer eval --suite")
        for suite, result in data["suites"].items():
            merged.setdefault(suite, result)
    return merged or None


def suite_heads(record) -> set[str]:
    """The heads a run's suites were evaluated with (suites.json "head")."""
    return {data["head"] for data in (record.report, *record.evals.values())
            if isinstance(data, dict) and "suite_format" in data and "head" in data}


def _suite_label(label: str, record) -> str:
    """A run's row label, naming the head its suites predicted with where that is not the head
    the report shows for the run (e.g. suites run on S_t, report on the paper's S_ss)."""
    heads = suite_heads(record) - {getattr(record, "head", None)}
    names = {"t": "S_t", "ss": "S_ss"}
    return label + (f" (suites: {', '.join(names.get(h, h) for h in sorted(heads))})" if heads else "")


def report_tables(records: list) -> list:
    """``trainer report``'s plug-in (trainer.report.table_builder("suite_format")): the suites of
    each run's ``trainer eval --suite`` output, runs side by side."""
    labels = [r.label() for r in records]
    found = [(_suite_label(label if labels.count(label) == 1 else f"{label} [{r.name}]", r), suites_of(r))
             for label, r in zip(labels, records)]
    runs = [(label, suites) for label, suites in found if suites is not None]
    return suite_tables(runs, [s for s in SUITES if s != "overall"])  # the report has its own overall table


def plot_suites(runs: Runs, out: Path) -> list[Path]:
    """context-rarity.png (Fig. 5: mIoU against t) and blur.png (mIoU against σ, both modes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rarity = {n: r["context"]["rarity"] for n, r in runs if "context" in r}
    if rarity:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in rarity.items():
            labels = ["any" if p["threshold"] == "any" else f"<{p['threshold']}" for p in points]
            ax.plot(labels, [np.nan if p["miou"] is None else 100 * p["miou"] for p in points], marker="o", label=name)
        ax.set(xlabel="training co-occurrence of every class pair in the image", ylabel="mIoU (%)",
               title="Out-of-context subsets (IJCV Fig. 5)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "context-rarity.png"))
    blurs = {n: r["blur"] for n, r in runs if "blur" in r}
    if blurs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, (name, b) in enumerate(blurs.items()):
            for mode, style, marker in zip(BLUR_MODES, ("-", "--"), ("o", "s")):
                ax.plot(b["sigmas"], [np.nan if v is None else 100 * v for v in b[mode]], style, marker=marker,
                        fillstyle="full" if mode == "image" else "none", color=f"C{k}",
                        label=f"{name}, {'whole image' if mode == 'image' else 'objects only'}")
        ax.set(xlabel="Gaussian σ (pixels)", ylabel="mIoU (%)", title="Blur robustness")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "blur.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_suites(out: Path, report: dict, label: str) -> None:
    """suites.json (everything), suites.md (the tables) and the plots, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_JSON).write_text(json.dumps(report, indent=2) + "\n")
    head = [f"# Evaluation suites: {label}", "",
            f"- checkpoint: {report['checkpoint']} (stage {report['stage']}, head {report['head']})",
            f"- split: {report['split']}, {report['samples']} images, "
            f"eval crop {report['eval_crop'] or 'full images'}, "
            f"batch {report['batch_size']}, {report['device']}, {report['time_s']} s", ""]
    (out / RESULTS_MD).write_text("\n".join(head) + "\n" + suite_markdown([(label, report["suites"])]))
    plot_suites([(label, report["suites"])], out)
