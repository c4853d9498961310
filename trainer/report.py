"""``trainer report``: finished runs side by side, in the layout of the papers' tables.

    trainer report runs/cc runs/cm runs/deeplabv3 runs/mixup runs/cutmix --out reports/demo
    trainer report runs/* --out docs/results --page docs/results.md --notes notes.md

Reads each run's ``config.json`` and ``report.json`` and writes, under ``--out``:

* ``report.md`` (or ``--page``): every table, the bar chart, the runs and the exact commands
  that reproduce them;
* one CSV per table (``overall.csv``, ``denoising.csv``, ...), mIoU in percent;
* ``miou.png``: mIoU by run, coloured by method (matplotlib, Agg).

Tables, each with rows only for runs that exist:

| key | table | built when |
| --- | --- | --- |
| ``overall`` | mIoU by method (IJCV Table 1) | always |
| ``denoising`` | w/ and w/o the denoising stage (IJCV Table 8) | SourceSep runs differ in DN |
| ``ssh`` | w/ and w/o the source separation head (IJCV Table 9) | SourceSep runs differ in SSH |
| ``pairing`` | offline pairing strategy and δ (BMVC Table 5a) | SourceSep-CC runs differ in them |
| ``gamma`` | max unique categories γ (IJCV Table 11) | SourceSep-CM runs differ in γ, its rule or α |
| ``saliency`` | max F_β and MAE (IJCV Table 7) | runs on saliency shards (trainer.saliency) |
| ``per_class`` | IoU of every class | always |

The ablation tables repeat the DeepLabv3 baseline rows, as the papers do.

Runs are compared only on the same data and protocol: another val set (source, split, image ids),
another class set or another evaluation crop is refused with one line naming both runs. Runs of
different budget protocols (``trainer run --budget``) are never pooled as seeds of one setting:
runs that train the same stages but record different protocols are refused (:func:`seed_groups`).

**Plugging in more tables** (e.g. the evaluation suites): register a builder for a section of
the runs' reports; it is called when at least one run has that section, and its tables are
written like the built-in ones::

    @table_builder("suites")
    def suite_tables(runs: list[RunRecord]) -> list[Table]:
        ...

A section is a dotted key of ``report.json`` or of a JSON file one level down in the run
directory (``runs/NAME/*/*.json``, what ``trainer eval --out runs/NAME/...`` writes); see
:meth:`RunRecord.section`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_ALPHA, DEFAULT_GAMMA, PRESETS, TWO_BRANCH_METHODS, TrainConfig
from .curves import draw_runs
from .saliency import saliency_tables
from .suites import report_tables
from .tables import Table

# The papers' names and row order (IJCV Table 1: baseline, Mixup, CutMix, then ours).
METHOD_NAMES = {
    "deeplabv3": "DeepLabv3",
    "mixup": "DeepLabv3 + Mixup",
    "cutmix": "DeepLabv3 + CutMix",
    "sourcesep-cc": "DeepLabv3 + SourceSep-CC",
    "sourcesep-cm": "DeepLabv3 + SourceSep-CM",
    "mixup-cm": "DeepLabv3 + Mixup + Co-occurrence",
}
METHOD_ORDER = ("deeplabv3", "mixup", "cutmix", "sourcesep-cc", "sourcesep-cm", "mixup-cm")
# BMVC Table 5a's names of blendgen mix's strategies.
STRATEGY_NAMES = {"clustered": "C_fb", "random": "R_fb", "within": "Ca_fb", "random-fixed": "WR_fb", "half": "M_fb"}
PAPER_DELTA = "0.7:1"  # BMVC 3.1: δ ~ U[0.7, 1], the default of blendgen mix
# ``trainer report --head``: "auto" = each run's own prediction, the head its report.json was
# made with (S_t after the denoising stage, S_ss after stage 1 alone, the one head of a baseline;
# ours, as ``trainer eval --head auto``: stage 2 does not train the SSH, and once it has silenced
# the phantom branch S_ss reads logits its SSH never saw); "paper" = S_ss for the source
# separation network ("we are principally interested in the final dominant prediction, S_ss",
# IJCV 3.2.2), the one head of the baselines and of w/o SSH runs; "t" / "ss" = that head
# wherever the run recorded it.
REPORT_HEADS = ("auto", "paper", "t", "ss")
HEAD_NAMES = {"t": "S_t", "ss": "S_ss"}


@dataclass(frozen=True)
class ReportConfig:
    """``trainer report``: which runs, and where the tables go."""

    runs: tuple[str, ...]
    out: str
    page: str | None = None  # the Markdown page; None = OUT/report.md
    notes: str | None = None  # a Markdown file shown under the title (e.g. how the data was made)
    title: str = "Results"
    head: str = "auto"  # the prediction each run is reported by; one of REPORT_HEADS

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs: give at least one run directory")
        if self.head not in REPORT_HEADS:
            raise ValueError(f"head: expected one of {REPORT_HEADS}, got {self.head!r}")

    @property
    def page_path(self) -> Path:
        return Path(self.page) if self.page else Path(self.out) / "report.md"

    def command(self) -> str:
        """The ``trainer report`` command line that makes this report."""
        args = ["trainer", "report", *self.runs, "--out", self.out]
        for option, value in (("--page", self.page), ("--notes", self.notes)):
            if value is not None:
                args += [option, value]
        if self.title != "Results":
            args += ["--title", self.title]
        if self.head != "auto":
            args += ["--head", self.head]
        return shlex.join(args)


# -- the runs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """One finished run: its directory, resolved config and evaluation report."""

    path: Path
    config: TrainConfig
    report: dict
    evals: dict[str, dict] = field(default_factory=dict)  # "SUBDIR/NAME.json" -> that evaluation's JSON

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def two_branch(self) -> bool:
        return self.method in TWO_BRANCH_METHODS

    @property
    def denoised(self) -> bool:
        """Whether the evaluated network went through the denoising stage."""
        return self.two_branch and self.report.get("stage") == 2

    @property
    def miou(self) -> float:
        return 100 * self.report["miou"]

    @property
    def head(self) -> str:
        """The head whose numbers ``report`` holds ("t" or "ss")."""
        return self.report.get("head", "t")

    def with_head(self, choice: str) -> RunRecord:
        """This run reported by another head (``REPORT_HEADS``): its mIoU, accuracies and per-class
        IoU from report.json's ``by_head``. A run without that head (a baseline, a w/o SSH run,
        a run from before by_head) keeps the head it was evaluated with, and says so."""
        if choice == "auto":
            return self
        want = ("ss" if self.two_branch and self.config.ssh else "t") if choice == "paper" else choice
        heads = self.report.get("by_head") or {}
        if want == self.head or want not in heads:
            return self
        return dataclasses.replace(self, report={**self.report, **heads[want], "head": want})

    def section(self, key: str):
        """A dotted key ("suites.complex") of report.json, else of the first evaluation JSON in a
        sub-directory of the run (``trainer eval --out runs/NAME/...``) that has it; None when none has it."""
        for report in (self.report, *self.evals.values()):
            value = report
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                return value
        return None

    def variant(self) -> str:
        """What sets this run apart from its method's defaults, e.g. "w/o DN, R_fb, δ 0.6"."""
        c, tags = self.config, []
        if self.two_branch and not self.denoised:
            tags.append("w/o DN")
        if self.two_branch and not c.ssh:
            tags.append("w/o SSH")
        if c.ssh_detach:
            tags.append("SSH detached")
        if c.method == "sourcesep-cc":
            if c.mixed_strategy not in (None, "clustered"):
                tags.append(STRATEGY_NAMES.get(c.mixed_strategy, c.mixed_strategy))
            if c.mixed_delta not in (None, PAPER_DELTA):
                tags.append(f"δ {c.mixed_delta}")
        if c.alpha is not None and c.alpha != DEFAULT_ALPHA:
            tags.append(f"α = {c.alpha:g}")
        if c.method == "sourcesep-cm" and (c.gamma != DEFAULT_GAMMA or c.gamma_rule != "thres"):
            tags.append(gamma_label(c.gamma, c.gamma_rule))
        if c.delta_min is not None:
            tags.append(f"δ ≥ {c.delta_min:g}")
        if c.budget != "steps":
            tags.append(f"{c.budget} budget")
        return ", ".join(tags)

    def label(self) -> str:
        variant = self.variant()
        return METHOD_NAMES[self.method] + (f" ({variant})" if variant else "")


def gamma_label(gamma: float, rule: str) -> str:
    """Table 11's names: "max = 3" (no blend above γ) or "max = 3 + γ-thres" (δ = 0.9 above γ)."""
    value = "∞" if gamma == math.inf else f"{gamma:g}"
    return f"max = {value}" + (" + γ-thres" if rule == "thres" else "")


def load_run(path: str | Path) -> RunRecord:
    """A finished run directory; one-line errors for anything else."""
    path = Path(path)
    for name in ("config.json", "report.json"):
        if not (path / name).is_file():
            raise ValueError(f"{path}: no {name}; not a finished run (trainer run writes report.json at its end)")
    try:
        config = TrainConfig.from_dict(json.loads((path / "config.json").read_text()))
        report = json.loads((path / "report.json").read_text())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable run ({exc})") from None
    evals = {str(p.relative_to(path)): json.loads(p.read_text()) for p in sorted(path.glob("*/*.json"))}
    return RunRecord(path, config, report, evals)


def dataset_of(run: RunRecord) -> dict:
    """What identifies a run's evaluation data: the val set it recorded, else its shard root."""
    return run.report.get("dataset") or {"shards": os.path.abspath(run.config.shards)}


def check_comparable(runs: list[RunRecord]) -> None:
    """Refuse runs on different data, classes or evaluation protocol (one line each)."""
    first = runs[0]
    for run in runs[1:]:
        if dataset_of(run) != dataset_of(first):
            raise ValueError(f"{run.path} was evaluated on other data than {first.path} "
                             f"({_describe_data(dataset_of(run))} vs {_describe_data(dataset_of(first))}); "
                             f"report runs of one dataset together")
        if list(run.report["per_class_iou"]) != list(first.report["per_class_iou"]):
            raise ValueError(f"{run.path} has classes {list(run.report['per_class_iou'])}, "
                             f"{first.path} has {list(first.report['per_class_iou'])}")
        if run.report.get("eval_crop") != first.report.get("eval_crop"):
            raise ValueError(f"{run.path} was evaluated with eval_crop {run.report.get('eval_crop')}, "
                             f"{first.path} with {first.report.get('eval_crop')}")


def _describe_data(d: dict) -> str:
    source = d.get("source") or {}
    if source:
        return f"{source.get('kind')} {source.get('root')} {source.get('split')}, {d.get('samples')} images"
    return str(d.get("shards"))


def sorted_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Papers' method order; within a method, the default variant first, then by name."""
    return sorted(runs, key=lambda r: (METHOD_ORDER.index(r.method), r.variant() != "", r.variant(), r.name))


# -- tables ---------------------------------------------------------------------------------------
TableBuilder = Callable[[list[RunRecord]], list[Table]]
_BUILDERS: list[tuple[str, TableBuilder]] = []


def table_builder(section: str) -> Callable[[TableBuilder], TableBuilder]:
    """Register ``builder(runs) -> [Table]`` for a report section ("miou": every run has it)."""
    def register(builder: TableBuilder) -> TableBuilder:
        _BUILDERS.append((section, builder))
        return builder
    return register


def build_tables(runs: list[RunRecord]) -> list[Table]:
    """Every registered builder whose section some run has, in registration order."""
    tables: list[Table] = []
    for section, builder in _BUILDERS:
        if any(run.section(section) is not None for run in runs):
            tables += builder(runs)
    keys = [t.key for t in tables]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"report: more than one table named {duplicated}")
    return tables


def _varies(runs: list[RunRecord], attribute: Callable[[RunRecord], object]) -> bool:
    return len({attribute(r) for r in runs}) > 1


def _baselines(runs: list[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.method == "deeplabv3"]


@table_builder("miou")
def overall_table(runs: list[RunRecord]) -> list[Table]:
    rows = [[METHOD_NAMES[r.method], r.variant() or "-", r.config.backbone, HEAD_NAMES[r.head], r.miou,
             100 * r.report["pixel_acc"], _percent(r.report.get("mean_acc")), r.name] for r in runs]
    return [Table("overall", "Overall mIoU by method (IJCV Table 1)",
                  ["method", "variant", "backbone", "head", "mIoU", "pixel acc", "mean class acc", "run"], rows,
                  "head: the prediction reported (each run's own unless `--head` says otherwise: S_t after the "
                  "denoising stage, S_ss after stage 1; the single head of the baselines).")]


@table_builder("miou")
def denoising_table(runs: list[RunRecord]) -> list[Table]:
    ours = [r for r in runs if r.two_branch]
    if not _varies(ours, lambda r: r.denoised):
        return []
    rows = [[METHOD_NAMES[r.method], "-", r.miou, r.name] for r in _baselines(runs)]
    rows += [[METHOD_NAMES[r.method] + (" (w/ DN)" if r.denoised else " (w/o DN)"), _other_tags(r, "w/o DN"),
              r.miou, r.name] for r in sorted(ours, key=lambda r: (r.method, r.denoised))]
    return [Table("denoising", "With and without the denoising stage (IJCV Table 8)",
                  ["method", "other settings", "mIoU", "run"], rows,
                  "w/o DN: stage 1 only (`--no-denoise`); w/ DN: after stage 2. Each run by the head of the "
                  "overall table.")]


@table_builder("miou")
def ssh_table(runs: list[RunRecord]) -> list[Table]:
    ours = [r for r in runs if r.two_branch]
    if not _varies(ours, lambda r: r.config.ssh):
        return []
    rows = [[METHOD_NAMES[r.method], "-", r.miou, r.name] for r in _baselines(runs)]
    rows += [[METHOD_NAMES[r.method] + (" (w/ SSH)" if r.config.ssh else " (w/o SSH)"), _other_tags(r, "w/o SSH"),
              r.miou, r.name] for r in sorted(ours, key=lambda r: (r.method, r.config.ssh))]
    return [Table("ssh", "With and without the source separation head (IJCV Table 9)",
                  ["method", "other settings", "mIoU", "run"], rows,
                  "The paper reports this table without the denoising stage; 'other settings' says which runs had it.")]


@table_builder("miou")
def pairing_table(runs: list[RunRecord]) -> list[Table]:
    cc = [r for r in runs if r.method == "sourcesep-cc"]
    if not _varies(cc, lambda r: (r.config.mixed_strategy, r.config.mixed_delta)):
        return []
    rows = [[METHOD_NAMES[r.method], "-", "-", "-", r.miou, r.name] for r in _baselines(runs)]
    rows += [[METHOD_NAMES[r.method], STRATEGY_NAMES.get(r.config.mixed_strategy, r.config.mixed_strategy or "?"),
              r.config.mixed_delta or "?", "w/ DN" if r.denoised else "w/o DN", r.miou, r.name]
             for r in sorted(cc, key=lambda r: (str(r.config.mixed_strategy), str(r.config.mixed_delta), r.name))]
    return [Table("pairing", "Offline pairing strategies and δ (BMVC Table 5a)",
                  ["method", "pairing", "δ", "DN", "mIoU", "run"], rows,
                  "C_fb clustered, R_fb random, Ca_fb within a category, WR_fb random with fixed δ, M_fb half "
                  "blended (blendgen mix --strategy).")]


@table_builder("miou")
def gamma_table(runs: list[RunRecord]) -> list[Table]:
    cm = [r for r in runs if r.method == "sourcesep-cm"]
    if not _varies(cm, lambda r: (r.config.gamma, r.config.gamma_rule, r.config.alpha)):
        return []
    rows = [[METHOD_NAMES[r.method], "-", "-", "-", r.miou, r.name] for r in _baselines(runs)]
    rows += [[METHOD_NAMES[r.method] + f" ({gamma_label(r.config.gamma, r.config.gamma_rule)})", f"{r.config.alpha:g}",
              "w/ DN" if r.denoised else "w/o DN", "on" if r.config.ssh else "off", r.miou, r.name]
             for r in sorted(cm, key=lambda r: (r.config.gamma, r.config.gamma_rule, r.config.alpha, r.name))]
    return [Table("gamma", "Maximum unique categories γ of SourceSep-CM (IJCV Table 11)",
                  ["method", "α", "DN", "SSH", "mIoU", "run"], rows,
                  "max = γ: pairs with more than γ classes are not blended; + γ-thres: they are blended with "
                  "δ = 0.9 (the default). The paper reports this table without the denoising stage.")]


# -- several seeds of one setting ----------------------------------------------------------------
# Config fields that do not change what a run computes, besides the seed a group varies. How often
# a run logs, checkpoints and validates is among them: validation touches no weight, BatchNorm
# statistic or training RNG (trainer.train.validate), so runs that differ only there pool.
_NOT_SETTING = ("seed", "name", "out", "progress", "resume", "threads", "log_every", "checkpoint_every", "eval_every")
# The denoising stage's options: a single-head baseline has no stage 2 (it trains iters1 + iters2
# steps in one stage from lr1, TrainConfig.stage_budget), so they change nothing it computes.
_STAGE2_ONLY = ("lr2", "optimizer2", "weight_decay2", "ppa_eps", "ppa_weight")


def _setting(run: RunRecord) -> dict:
    """What a run trains and evaluates: its config without the fields that change nothing it computes."""
    unused = _NOT_SETTING + ("budget",) + (() if run.config.two_branch else _STAGE2_ONLY)
    setting = {k: v for k, v in run.config.to_dict().items() if k not in unused}
    setting["trained"] = [run.config.stage_budget(1), run.config.stage_budget(2)]
    return setting


def seed_groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """Runs that differ in nothing but their seed (and where they were written), in run order.

    A setting is keyed by what its stages train (``stage_budget``), not by the budget protocol's
    name, so runs that train the same but record different protocols (a SourceSep run's epochs
    are the same under both) would be one group: that is refused, as their rows would be labelled
    by one protocol. Runs from before the ``budget`` field load as "steps", today's default."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(json.dumps(_setting(run), sort_keys=True), []).append(run)
    for group in groups.values():
        other = next((r for r in group if r.config.budget != group[0].config.budget), None)
        if other is not None:
            raise ValueError(f"{other.path} (budget {other.config.budget}) and {group[0].path} (budget "
                             f"{group[0].config.budget}) are one setting under two budget protocols; "
                             f"report each protocol's runs separately")
    return list(groups.values())


@dataclass(frozen=True)
class Spread:
    """mIoU (or a class's IoU) of one setting over its seeds, in percent."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for one seed."""
        n = len(self.values)
        return 0.0 if n < 2 else math.sqrt(sum((v - self.mean) ** 2 for v in self.values) / (n - 1))

    def text(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


def _spread(group: list[RunRecord], value: Callable[[RunRecord], float | None]) -> Spread:
    return Spread(tuple(v for v in map(value, group) if v is not None and not math.isnan(v)))


def group_labels(groups: list[list[RunRecord]]) -> list[str]:
    """Each setting's row name: method, variant and backbone, and where settings would read alike
    (a variant names only the method's own choices), the options they differ in, e.g. "--ppa-eps 1"."""
    labels = [f"{g[0].label()}, {g[0].config.backbone}" for g in groups]
    for label in set(labels):
        alike = [i for i, other in enumerate(labels) if other == label]
        if len(alike) < 2:
            continue
        settings = [_setting(groups[i][0]) for i in alike]
        keys = sorted({k for s in settings for k in s if any(t.get(k) != s.get(k) for t in settings)})
        for i, setting in zip(alike, settings):
            labels[i] = label + "".join(f", {_option_name(k)} {_setting_value(setting.get(k))}" for k in keys)
    return labels


def _option_name(key: str) -> str:
    return key if key == "trained" else "--" + key.replace("_", "-")


def _setting_value(value) -> str:
    if isinstance(value, list):  # a tuple after its JSON round trip, e.g. --scale 0.5:0.5
        return ":".join(_setting_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@table_builder("miou")
def seed_tables(runs: list[RunRecord]) -> list[Table]:
    """Mean ± standard deviation over seeds, per setting and per class, and which differences
    between settings are larger than the seed-to-seed spread: built when a setting has several seeds."""
    groups = seed_groups(runs)
    if all(len(g) == 1 for g in groups):
        return []
    mious = [_spread(g, lambda r: r.miou) for g in groups]
    labels = group_labels(groups)
    rows = [[label, len(g), m.mean, m.std, min(m.values), max(m.values),
             ", ".join(str(r.config.seed) for r in g)] for label, g, m in zip(labels, groups, mious)]
    tables = [Table("seeds", "mIoU over seeds (mean ± standard deviation)",
                    ["setting", "seeds", "mean mIoU", "std", "min", "max", "seed values"], rows,
                    "std: the sample standard deviation over the seeds (n - 1).")]
    classes = list(runs[0].report["per_class_iou"])
    per_class = [[name, *(_spread(g, lambda r, n=name: _percent(r.report["per_class_iou"][n])).text()
                          for g in groups)] for name in classes]
    tables.append(Table("per_class_seeds", "IoU per class over seeds (mean ± std)",
                        ["class", *labels], per_class))
    pairs = [[labels[i], labels[j], mious[i].mean - mious[j].mean,
              mious[i].std + mious[j].std, _separation(mious[i], mious[j])]
             for i in range(len(groups)) for j in range(i + 1, len(groups))]
    tables.append(Table("differences", "Differences between settings against the seed-to-seed spread",
                        ["setting A", "setting B", "mean A - mean B", "std A + std B", "verdict"], pairs,
                        "A difference counts as larger than the spread only when every seed of one setting "
                        "scored above every seed of the other (the seed ranges do not overlap) and the "
                        "difference of the means exceeds the sum of the standard deviations; otherwise "
                        "the seeds do not tell the two settings apart."))
    return tables


def _separation(a: Spread, b: Spread) -> str:
    if len(a.values) < 2 or len(b.values) < 2:
        return "one seed: no spread to compare with"
    apart = min(a.values) > max(b.values) or min(b.values) > max(a.values)
    if apart and abs(a.mean - b.mean) > a.std + b.std:
        return "A higher" if a.mean > b.mean else "B higher"
    return "within the spread"


@table_builder("suite_format")
def suite_tables(runs: list[RunRecord]) -> list[Table]:
    """The evaluation suites of ``trainer eval --suite`` (IJCV Tables 4-6, Fig. 5, blur); trainer.suites."""
    return report_tables(runs)


@table_builder("saliency")
def saliency_table(runs: list[RunRecord]) -> list[Table]:
    """Salient object detection, max F_β and MAE (IJCV Table 7); trainer.saliency."""
    return saliency_tables(runs)


@table_builder("miou")
def per_class_table(runs: list[RunRecord]) -> list[Table]:
    classes = list(runs[0].report["per_class_iou"])
    rows = [[name, *(_percent(r.report["per_class_iou"][name]) for r in runs)] for name in classes]
    return [Table("per_class", "IoU per class", ["class", *(r.name for r in runs)], rows)]


def _other_tags(run: RunRecord, drop: str) -> str:
    tags = [t for t in run.variant().split(", ") if t and t != drop]
    if drop != "w/o DN" and run.two_branch and run.denoised:  # the variant already says "w/o DN"
        tags.append("w/ DN")
    return ", ".join(tags) or "-"


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


# -- commands that reproduce a run ----------------------------------------------------------------
# TrainConfig fields with no ``trainer run`` option, and those that are outputs of the run.
_NO_OPTION = ("eval_batch_size", "shuffle_buffer", "unit", "momentum", "poly_power")
_NOT_OPTIONS = ("mixed_strategy", "mixed_delta", "resume", "shards")
_FLAGS = {"ssh": "--no-ssh", "denoise": "--no-denoise", "progress": "--quiet"}  # True by default


def run_command(config: TrainConfig) -> str:
    """The ``trainer run`` command line of a config: ``--preset NAME`` when one matches, then
    every other field that differs from the method's defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    resolved = TrainConfig(shards=config.shards, method=config.method)
    defaults.update({k: getattr(resolved, k) for k in ("alpha", "gamma", "gamma_rule")})  # the method's own
    args = ["trainer", "run", "--shards", config.shards]
    preset_name = next((n for n, p in PRESETS.items() if all(getattr(config, k) == v for k, v in p.items())), None)
    preset = PRESETS.get(preset_name, {})
    uses_preset = preset_name is not None
    if uses_preset:
        args += ["--preset", preset_name]
    extra = []
    for name in defaults:
        value = getattr(config, name)
        if name in _NOT_OPTIONS or (uses_preset and name in preset):
            continue
        if name in _FLAGS:
            args += [] if value else [_FLAGS[name]]
        elif value is None or value == defaults[name]:
            continue
        elif name in _NO_OPTION:
            extra.append(f"{name}={value}")
        else:
            args += ["--" + name.replace("_", "-"), _option_value(value)]
    command = shlex.join(args)
    return command + (f"  # config fields without an option: {', '.join(extra)}" if extra else "")


def _option_value(value) -> str:
    if isinstance(value, tuple):  # --scale MIN:MAX
        return ":".join(f"{v:g}" for v in value)
    return repr(value) if isinstance(value, float) else str(value)


# -- the report -----------------------------------------------------------------------------------
def make_report(config: ReportConfig) -> dict:
    """Load, check, tabulate and write; returns {"tables": [keys], "page", "chart"}."""
    runs = sorted_runs([r.with_head(config.head) for r in _unique(load_run(p) for p in config.runs)])
    check_comparable(runs)
    tables = build_tables(runs)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for table in tables:
        table.write_csv(out / f"{table.key}.csv")
    chart = out / "miou.png"
    plot_miou(runs, chart)
    groups = seed_groups(runs)
    with_curves = [(label, r.path / "metrics.jsonl") for label, g in zip(group_labels(groups), groups) for r in g
                   if (r.path / "metrics.jsonl").is_file()]
    curves = out / "curves.png" if with_curves else None
    if curves is not None:
        draw_runs(with_curves, curves)
    page = config.page_path
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_page(config, runs, tables, chart, curves))
    return {"tables": [t.key for t in tables], "page": str(page), "chart": str(chart), "runs": len(runs),
            "curves": None if curves is None else str(curves)}


def _unique(runs) -> list[RunRecord]:
    seen: dict[Path, RunRecord] = {}
    for run in runs:
        seen.setdefault(run.path.resolve(), run)
    return list(seen.values())


def render_page(config: ReportConfig, runs: list[RunRecord], tables: list[Table], chart: Path,
                curves: Path | None = None) -> str:
    """The Markdown page: notes, tables (the chart under the first), runs, commands."""
    page_dir = config.page_path.parent
    lines = [f"# {config.title}", ""]
    if config.notes:
        lines += [Path(config.notes).read_text().rstrip(), ""]
    data = dataset_of(runs[0])
    lines += [f"Validation data: {_describe_data(data)}; mIoU in percent, over the whole split "
              f"({'full images' if runs[0].report.get('eval_crop') is None else 'centre crops'}).", "",
              f"Prediction head: {_head_line(config.head)}", ""]
    for i, table in enumerate(tables):
        lines += [f"## {table.title}", "", table.markdown(), ""]
        if table.note:
            lines += [table.note, ""]
        if i == 0:
            lines += [f"![mIoU by run]({os.path.relpath(chart, page_dir)})", ""]
            if curves is not None:
                lines += [f"![learning curves]({os.path.relpath(curves, page_dir)})", ""]
    lines += ["## Runs", "", "| run | method | steps (stage 1 + stage 2) | train + eval time | evaluated |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {r.label()} | {_steps(r.config)} | {_minutes(r.report.get('total_time_s'))} | "
              f"stage {r.report.get('stage')}, head {r.report.get('head')} |" for r in runs]
    lines += ["", "## Commands", "", "```sh"]
    lines += [run_command(r.config) for r in runs]
    lines += [config.command(), "```", ""]
    return "\n".join(lines)


def _head_line(choice: str) -> str:
    if choice == "auto":
        return ("each run's own prediction: S_t after the denoising stage, S_ss after stage 1 alone, the single "
                "head for the baselines (`--head paper` for S_ss throughout).")
    if choice == "paper":
        return ("S_ss for the source separation network (the paper's final dominant prediction; "
                "`--head t` for S_t), the single head for the baselines.")
    return f"{HEAD_NAMES[choice]} wherever a run recorded it (`--head {choice}`), else the run's only head."


def _steps(config: TrainConfig) -> str:
    (kind1, n1), (_, n2) = config.stage_budget(1), config.stage_budget(2)
    unit = "" if kind1 == "iters" else " epochs"
    return f"{n1}{unit} (one stage)" if not config.two_branch else f"{n1} + {n2}{unit}"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def plot_miou(runs: list[RunRecord], path: Path) -> None:
    """Bar chart of mIoU by run, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(METHOD_ORDER, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(0.9 * len(runs) + 4.5, 3.8))  # + room for the legend
    bars = ax.bar(range(len(runs)), [r.miou for r in runs], color=[colours[r.method] for r in runs])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(runs)), [r.name for r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("mIoU by run")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in METHOD_ORDER if any(r.method == m for r in runs)]
    ax.legend(handles, [METHOD_NAMES[m] for m in METHOD_ORDER if any(r.method == m for r in runs)], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

