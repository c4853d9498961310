"""Command-line switchboard: ``blendgen`` (dataset generation) and ``trainer`` (training).

Each command parses its options, builds one config, calls one function. Heavy modules are
imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

_python_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Dataset warnings (blendgen.datasets.files.DatasetWarning) are for the person running the
    command: one line on stderr, without the source location Python adds."""
    if category.__name__ == "DatasetWarning":
        return f"Warning: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning


def _fail(exc: Exception) -> None:
    """Bad input ends the command with its one-line message, not a traceback."""
    raise click.ClickException(str(exc)) from None


class _Registered(click.Choice):
    """The names that the module owning them registers (dataset kinds, pairing strategies,
    evaluation suites), looked up only when a command parses or shows its options: a name added
    there is a choice here with no edit, and ``--help`` stays instant (trainer.suites imports torch)."""

    def __init__(self, names):
        self._names = names  # () -> the names, in the order --help lists them
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns its own; ours come from _names
        pass


def _dataset_kinds():
    from blendgen.datasets.registry import READERS

    return READERS


def _strategies():
    from blendgen.generation.plan import STRATEGIES

    return STRATEGIES


def _suites():
    from trainer.suites import SUITES

    return (*SUITES, "all")


def _parse_options(pairs: tuple[str, ...]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        options[key.replace("-", "_")] = value
    return options


# ============================================================================================
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="blendgen")
def blendgen():
    """Offline SegMix / feature-binding dataset generation.

    \b
    Pipeline:  synth (demo data) -> build-clusters -> mix / pack -> inspect, stats
    Example:
      blendgen synth --out data/demo-voc
      blendgen build-clusters --dataset voc --root data/demo-voc --split train --out out/
      blendgen mix --out out/ --delta 0.7:1.0 --workers 2
      blendgen pack --out out/ --split val
      blendgen inspect out/mixed --index 0 --out sample.png
    """


@blendgen.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/demo-voc"), show_default=True,
              help="Directory to create (must not exist or be empty).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, byte-identical dataset.")
@click.option("--train", "num_train", type=click.IntRange(1), default=400, show_default=True, help="Training images.")
@click.option("--val", "num_val", type=click.IntRange(1), default=120, show_default=True, help="Validation images.")
@click.option("--min-size", type=click.IntRange(32), default=96, show_default=True, help="Smallest image side.")
@click.option("--max-size", type=click.IntRange(32), default=192, show_default=True, help="Largest image side.")
@click.option("--object-scale", type=click.FloatRange(0.25, 3), default=1.0, show_default=True,
              help="Object size relative to the image (ours; docs/experiments.md: 1.0 covers 9% of the pixels, 1.7 about 23%).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Processes.")
@click.option("--task", type=click.Choice(["segmentation", "saliency"]), default="segmentation", show_default=True,
              help="saliency: the same scenes as DUTS-TR / ECSSD folders, the front-most object salient "
                   "(docs/saliency.md).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(out, seed, num_train, num_val, min_size, max_size, object_scale, workers, task, quiet):
    """Write the synthetic demo dataset in the PASCAL VOC 2012 layout.

    A miniature of VOC: the 20 VOC classes as textured shapes on varied backgrounds, 1-4
    objects per image with occlusions, VOC-like class co-occurrence, void borders, XML
    annotations with `occluded` flags, train/val lists.

    \b
    Example:
      blendgen synth --out data/demo-voc --seed 0
      blendgen synth --task saliency --out data/demo-sod --seed 1
    """
    from blendgen.synth.saliency import make_synthetic_saliency
    from blendgen.synth.sets import SynthConfig
    from blendgen.synth.voc import make_synthetic_voc

    try:
        config = SynthConfig(out=out, seed=seed, num_train=num_train, num_val=num_val,
                             min_size=min_size, max_size=max_size, object_scale=object_scale, workers=workers)
        make = make_synthetic_saliency if task == "saliency" else make_synthetic_voc
        summary = make(config, progress=not quiet)
    except (ValueError, FileExistsError) as exc:
        _fail(exc)
    if task == "saliency":
        click.echo(f"wrote {out}: " + ", ".join(f"{summary['layouts'][s]} {summary['images'][s]} images "
                                                f"({100 * summary['salient_fraction'][s]:.1f}% salient pixels)"
                                                for s in summary["images"]))
        return
    images, objects, occluded = (summary[k] for k in ("images", "objects", "occluded_objects"))
    click.echo(f"wrote {out}: " + ", ".join(
        f"{split} {images[split]} images / {objects[split]} objects ({occluded[split]} occluded)" for split in images))


@blendgen.command("build-clusters")
@click.option("--dataset", type=_Registered(_dataset_kinds), default="voc", show_default=True,
              help="Layout of the source dataset.")
@click.option("--root", type=click.Path(path_type=Path), required=True,
              help="Dataset root (the VOC2012 folder; the COCO folder; the images/masks folder).")
@click.option("--split", default="train", show_default=True,
              help="Image set to read (train, val, train_aug, ...; all: every image of a folder without splits).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Output directory (clusters.npz, dataset.json, CSVs, heat map).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes decoding label maps.")
@click.option("--no-check-images", is_flag=True,
              help="Skip opening image headers (missing image / size mismatch checks).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Reader option, e.g. classes_file=classes.txt, background=0, list=splits/{split}.txt, "
                   "label_map=cityscapes (voc, folder) or cache_dir=DIR (coco); docs/datasets.md.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_clusters(dataset, root, split, out, workers, no_check_images, options, quiet):
    """Class co-occurrence matrix (IJCV Algorithm 1) and one cluster per class.

    Reads every label map of the split once, in parallel, and writes to OUT:
    clusters.npz (per-image class sets and sizes, the matrix, class counts),
    dataset.json (class set, source, summary), cooccurrence.csv, class_counts.csv
    and cooccurrence.png (a heat map).

    \b
    Example:
      blendgen build-clusters --dataset voc --root data/demo-voc --split train --out out/ --workers 2
    """
    from blendgen.datasets.files import DatasetError
    from blendgen.generation.clusters import ClusterConfig, build_clusters as run

    try:
        config = ClusterConfig(dataset=dataset, root=root, split=split, out=out, workers=workers,
                               check_images=not no_check_images, reader_options=_parse_options(options))
        index = run(config, progress=not quiet)
    except (DatasetError, ValueError) as exc:
        _fail(exc)
    s = index.summary()
    click.echo(f"{s['images']} images, {s['object_classes']} object classes, "
               f"{s['images_without_objects']} images without objects, "
               f"{s['cooccurring_pairs']}/{s['possible_pairs']} class pairs co-occur")
    click.echo("empty clusters: " + (", ".join(s["empty_clusters"]) or "none"))
    top = sorted(s["cluster_sizes"].items(), key=lambda kv: -kv[1])
    click.echo("largest clusters: " + ", ".join(f"{k} {v}" for k, v in top[:5]))
    click.echo(_classes_per_image_line(s["classes_per_image"]))
    expected = s["expected_mix"]
    click.echo(f"mix (clustered) will write {expected['samples']} samples, about {_size(expected['bytes_estimate'])} "
               f"({expected['samples_per_source_image']:g} per source image); "
               f"blendgen mix --max-samples N writes a seeded subsample")
    click.echo(f"wrote {out}/clusters.npz, dataset.json, cooccurrence.csv, class_counts.csv, cooccurrence.png")


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes / 1e3:.0f} kB"


# SourceSep-CM's default γ (trainer.config): a pair with more object classes is blended at δ = 0.9.
_DEFAULT_GAMMA = 3


def _classes_per_image_line(histogram: list[int]) -> str:
    """Object classes per image, and what that means for SourceSep-CM's γ threshold."""
    counts = list(enumerate(histogram))
    images = sum(histogram) or 1
    median = next(c for c, _ in counts if sum(n for k, n in counts[: c + 1]) * 2 >= images) if sum(histogram) else 0
    over = sum(n for c, n in counts if c > _DEFAULT_GAMMA) / images
    line = f"object classes per image: median {median}, {over:.0%} of the images hold more than {_DEFAULT_GAMMA}"
    if over >= 0.5:
        line += (f" (SourceSep-CM's default --gamma {_DEFAULT_GAMMA} then blends almost every pair at delta 0.9; "
                 f"docs/datasets.md)")
    return line


def _delta_option(ctx, param, value):
    if value is None:
        return None
    from blendgen.generation.plan import parse_delta

    try:
        return parse_delta(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("delta: ")) from None


def _part_option(ctx, param, value):
    from blendgen.shards.runner import Part

    try:
        return Part.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("part: ")) from None


def _shard_write_options(f):
    """Options shared by mix and pack: how the shard directory is written."""
    for option in reversed([
        click.option("--shard-size", type=click.IntRange(1), default=1000, show_default=True,
                     help="Samples per shard file (the unit of parallelism and of resume)."),
        click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Processes."),
        click.option("--part", default="1/1", show_default=True, callback=_part_option, metavar="I/N",
                     help="Write only part I of N (shards s with s mod N = I-1), e.g. one SLURM array task each."),
        click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
                     help="Image JPEG quality (labels are lossless PNG); see docs/storage.md."),
        click.option("--chroma", type=click.Choice(["420", "444"]), default="420", show_default=True,
                     help="JPEG chroma subsampling."),
        click.option("--merge", is_flag=True,
                     help="Only merge the parts' manifest fragments found in the directory into manifest.json."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]):
        f = option(f)
    return f


def _report_run(result, what: str) -> None:
    done = f"{result.written} shards written, {result.kept} kept from an earlier run"
    if result.manifest is None:
        waiting = ", ".join(str(i) for i in result.waiting_for)
        click.echo(f"part {result.part} done: {result.samples} {what} in {result.shards} shards ({done}); "
                   f"waiting for parts {waiting} of {result.part.count}: the last part to finish writes "
                   f"{result.directory}/manifest.json (or copy the fragments together and run with --merge)")
        return
    m = result.manifest
    click.echo(f"wrote {result.directory}: {m['num_samples']} {what} in {len(m['shards'])} shards, "
               f"{sum(s['bytes'] for s in m['shards']) / 1e9:.3f} GB ({done} by this part), manifest.json")


@blendgen.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="The build-clusters output directory; shards go to OUT/mixed.")
@click.option("--strategy", type=_Registered(_strategies), default="clustered", show_default=True,
              help="Pairing: clustered = C_fb (the method); random = R_fb, within = Ca_fb, "
                   "random-fixed = WR_fb, half = M_fb (BMVC Table 5a ablations).")
@click.option("--delta", default=None, callback=_delta_option, metavar="LO:HI|V",
              help="Weight of the dominant image: uniform in [LO, HI] or fixed V, within [0.5, 1]. "
                   "Default 0.7:1.0 (0.6 for random-fixed).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Same seed, byte-identical shards.")
@click.option("--pairs", type=click.IntRange(1), default=None,
              help="Pairs per image for random / random-fixed / half (default 10 / 10 / 1).")
@click.option("--dest", type=click.Path(path_type=Path), default=None,
              help="Write the shards here instead of OUT/mixed (e.g. one directory per ablation).")
@click.option("--max-samples", type=click.IntRange(1), default=None,
              help="Write a seeded random subsample of this many planned samples (same seed, same subsample; "
                   "build-clusters prints the full plan's size).")
@click.option("--task", type=click.Choice(["segmentation", "saliency"]), default="segmentation", show_default=True,
              help="saliency: blend saliency masks, paired by the pseudo-label clusters (docs/saliency.md).")
@_shard_write_options
def mix(out, strategy, delta, seed, pairs, dest, max_samples, task, shard_size, workers, part, jpeg_quality, chroma,
        merge, quiet):
    """Blend image pairs into HDF5 shards (OUT/mixed) from the build-clusters output.

    With the clustered strategy every image of cluster k is blended with one random image of
    each other cluster: N-1 samples per image and cluster. A rerun resumes (complete shards
    are kept); --part I/N splits the work over machines, --workers over processes, and any
    split gives the same files.

    \b
    Example:
      blendgen mix --out out/ --delta 0.7:1.0 --workers 2
      blendgen mix --out out/ --part 1/2   # and --part 2/2 elsewhere
      blendgen mix --out out/ --max-samples 20000   # a seeded subsample of a large plan
      blendgen mix --out out-sod/ --task saliency   # SourceSep-CC on a saliency set
    """
    from blendgen.generation.mix import merge as merge_run, mix as run
    from blendgen.generation.sources import MixConfig
    from blendgen.shards.runner import WriteOptions

    if task == "saliency":
        from blendgen.generation.saliency import saliency_mix as run

    try:
        config = MixConfig(out=out, strategy=strategy, delta=delta, seed=seed, pairs=pairs, dest=dest,
                           max_samples=max_samples,
                           write=WriteOptions(shard_size=shard_size, workers=workers, part=part,
                                              image_quality=jpeg_quality, image_chroma=chroma))
        if merge:
            manifest = merge_run(config)
            click.echo(f"wrote {config.directory}/manifest.json: {manifest['num_samples']} samples "
                       f"in {len(manifest['shards'])} shards")
            return
        result, plan = run(config, progress=not quiet)
    except (ValueError, OSError) as exc:
        _fail(exc)
    skipped = ", ".join(f"{k} {v}" for k, v in plan.skipped.items() if v) or "none"
    planned = f", a seeded subsample of {plan.planned}" if plan.max_samples is not None else ""
    click.echo(f"plan: {len(plan)} samples{planned} ({plan.strategy}, delta {plan.delta}, seed {plan.seed}); "
               f"skipped pairs: {skipped}")
    _report_run(result, "samples")


@blendgen.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="The build-clusters output directory; shards go to OUT/SPLIT.")
@click.option("--split", default="train", show_default=True, help="Split of the same dataset to pack (train, val, ...).")
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Write the shards here instead of OUT/SPLIT.")
@click.option("--task", type=click.Choice(["segmentation", "saliency"]), default="segmentation", show_default=True,
              help="saliency: masks as labels, pseudo-label class sets for pairing (docs/saliency.md).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="--task saliency: another saliency dataset as this split (ECSSD as val). Default: the clustered one.")
@_shard_write_options
def pack(out, split, dest, task, root, shard_size, workers, part, jpeg_quality, chroma, merge, quiet):
    """Write a split's standard (unblended) images as HDF5 shards (OUT/train, OUT/val).

    Samples keep the class set, instance count and per-object occluded flags (evaluation
    subsets); no phantom, delta = 1. Resume, --part and --workers work as for mix.

    \b
    Example:
      blendgen pack --out out/ --split val
      blendgen pack --out out-sod/ --split val --task saliency --root data/ECSSD
    """
    from blendgen.generation.pack import merge as merge_run, pack as run
    from blendgen.generation.sources import PackConfig
    from blendgen.shards.runner import WriteOptions

    if root is not None and task != "saliency":
        raise click.BadParameter("only with --task saliency (a segmentation split comes from the clustered dataset)",
                                 param_hint="--root")
    try:
        write = WriteOptions(shard_size=shard_size, workers=workers, part=part, image_quality=jpeg_quality,
                             image_chroma=chroma)
        if task == "saliency":
            from blendgen.generation.saliency import SaliencyPackConfig, saliency_pack as run

            config = SaliencyPackConfig(out=out, split=split, root=root, dest=dest, write=write)
        else:
            config = PackConfig(out=out, split=split, dest=dest, write=write)
        if merge:
            manifest = merge_run(config)
            click.echo(f"wrote {config.directory}/manifest.json: {manifest['num_samples']} images "
                       f"in {len(manifest['shards'])} shards")
            return
        result = run(config, progress=not quiet)
    except (ValueError, OSError) as exc:
        _fail(exc)
    _report_run(result, "images")


@blendgen.command("pseudo-label")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="Any segmentation checkpoint (the paper: DeepLabv3 trained on VOC).")
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Folder of .jpg / .png images.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for ID.png (palette PNGs of class ids) and classes.json.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--head", type=click.Choice(["auto", "t", "ss"]), default="auto", show_default=True,
              help="Output to predict from; auto = S_t after stage 2, S_ss after stage 1.")
@click.option("--max-pixels", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Refuse images with more pixels than this, read from the header before decoding.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pseudo_label(checkpoint, images, out, device, head, max_pixels, quiet):
    """Pseudo semantic labels of a folder of images (IJCV Sect. 4.5), for build-clusters --dataset saliency.

    Each image becomes OUT/ID.png, written under a temporary name and renamed; a rerun skips
    the files already there (resume). OUT/classes.json records the checkpoint's class set.

    \b
    Example:
      blendgen pseudo-label --checkpoint runs/demo/stage2.pt --images data/demo-sod/DUTS-TR/DUTS-TR-Image --out pseudo/demo-sod
      blendgen build-clusters --dataset saliency --root data/demo-sod/DUTS-TR --option pseudo_labels=pseudo/demo-sod --out out-sod/
    """
    from trainer.checkpoint import CheckpointError
    from trainer.predict import PseudoLabelConfig, write_pseudo_labels

    try:
        done = write_pseudo_labels(PseudoLabelConfig(checkpoint=str(checkpoint), images=str(images), out=str(out),
                                                     device=device, head=head, max_pixels=max_pixels),
                                   progress=not quiet)
    except (ValueError, OSError, CheckpointError) as exc:
        _fail(exc)
    click.echo(f"{done['images']} images: {done['written']} labelled, {done['skipped']} already there -> {done['out']}")


@blendgen.command("inspect")
@click.argument("path", metavar="SHARD", type=click.Path(path_type=Path))
@click.option("--shard", "shard_name", metavar="NAME", help="Shard file inside a directory (default: the first).")
@click.option("--limit", type=click.IntRange(0), default=20, show_default=True, help="Rows of the sample table.")
@click.option("--index", type=click.IntRange(0), default=None,
              help="One sample of the shard: its full record (and the picture with --out).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Render sample --index (default 0) to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_(path, shard_name, limit, index, out, as_json):
    """Schema, attributes and per-sample metadata of a shard; a picture of one sample.

    SHARD is a shard file or a shard directory (then the manifest is summarised and its
    first shard, or --shard NAME, is inspected; --index counts within that shard). Images
    are decoded only for --out.

    \b
    Example:
      blendgen inspect out/mixed --limit 5
      blendgen inspect out/mixed/shard-00000.h5 --index 3 --out sample.png
    """
    from blendgen.shards.inspect import InspectConfig, format_inspect, inspect as run
    from blendgen.shards.schema import ShardError

    try:
        config = InspectConfig(path=path, shard=shard_name, limit=limit, index=index, out=out)
        report = run(config)
    except (ShardError, ValueError, OSError) as exc:
        _fail(exc)
    click.echo(json.dumps(report, indent=1) if as_json else format_inspect(report))


@blendgen.command("stats")
@click.argument("path", metavar="SHARDS", type=click.Path(path_type=Path))
@click.option("--bins", type=click.IntRange(1), default=10, show_default=True, help="δ histogram bins over [0.5, 1].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="PNG: pair-count heat map and δ histogram.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def stats_(path, bins, out, as_json, quiet):
    """Class-pair distribution and δ histogram of a shard directory.

    Counts samples per (dominant cluster k, phantom cluster j) from the `pair` dataset
    (class sets where no pair is recorded): with the clustered strategy all N(N-1) ordered
    pairs k != j are present. Decodes no image, but checks every sample's checksum first
    (a damaged shard is an error, not a silently wrong count).

    \b
    Example:
      blendgen stats out/mixed --out out/mixed-stats.png
    """
    from blendgen.shards.schema import ShardError
    from blendgen.shards.stats import StatsConfig, format_stats, stats as run

    try:
        config = StatsConfig(path=path, bins=bins, out=out)
        result = run(config, progress=not quiet)
    except (ShardError, ValueError, OSError) as exc:
        _fail(exc)
    click.echo(json.dumps(result, indent=1) if as_json else format_stats(result))
    if out is not None and not as_json:
        click.echo(f"wrote {out}")


@blendgen.command("verify")
@click.argument("paths", metavar="DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes checking shards in parallel.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify_(paths, workers, quiet):
    """Check shard directories byte for byte against what was written.

    For each DIR (a shard directory, or a folder of them such as `out/`): the manifest's
    shape; every listed shard a plain file of DIR; its size, SHA-256, format, schema, header
    (kind, split, classes, codec, sample count) as the manifest says; no links to other files;
    every sample's checksum; sample keys unique; no file the manifest does not account for
    (unlisted shards, temporaries, part manifests it was not merged from). Prints OK per
    directory, or a table of what is wrong, and exits 1 if anything is; a directory a writer is
    still filling is said to be busy, unchecked (exit 2 if nothing else is wrong).

    \b
    Example:
      blendgen verify out/ --workers 4
    """
    from blendgen.shards.verify import format_results, verify

    results = verify(list(paths), workers=workers, progress=not quiet)
    click.echo(format_results(results))
    if any(r.problems for r in results):
        sys.exit(1)
    if any(r.busy for r in results):  # not a failure, but nothing to trust yet either
        sys.exit(2)


# ============================================================================================
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def trainer():
    """Source-separation training on blendgen shards (stage 1, denoising stage 2, evaluation).

    \b
    Pipeline:  run (stage 1, stage 2, eval) -> eval --suite ... -> report; predict, uap
    Example:
      trainer run --shards out/ --preset demo --name demo
      trainer eval --checkpoint runs/demo/stage2.pt --shards out/ --suite all
      trainer report runs/demo runs/deeplabv3 --out reports/
    """


def _range_option(ctx, param, value):
    """--scale MIN:MAX (or one number for both) -> (min, max)."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in str(value).split(":")]
    except ValueError:
        raise click.BadParameter(f"expected MIN:MAX, got {value!r}") from None
    if len(parts) not in (1, 2) or not 0 < parts[0] <= parts[-1]:
        raise click.BadParameter(f"expected MIN:MAX with 0 < MIN <= MAX, got {value!r}")
    return (parts[0], parts[-1])


def _gamma_option(ctx, param, value):
    """--gamma N or inf (no maximum)."""
    if value is None:
        return None
    try:
        gamma = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number or inf, got {value!r}") from None
    if gamma < 0:
        raise click.BadParameter(f"expected >= 0, got {value}")
    return gamma


def _train_errors():
    from trainer.train import TrainingDiverged

    return ValueError, TrainingDiverged  # ShardError and CheckpointError are ValueErrors


@trainer.command("run")
@click.option("--shards", type=click.Path(path_type=Path), required=True,
              help="blendgen output root holding mixed/ (stage 1), train/ (stage 2) and val/ (evaluation).")
@click.option("--preset", type=click.Choice(["demo", "photos-cpu", "bmvc-r101", "ijcv-r101", "ijcv-r50"]), default=None,
              help="Defaults for a setting; explicit options win. demo: the CPU recipe of docs/experiments.md "
                   "(resnet18, AdamW then SGD in stage 2 with ε = 1, the SSH detached, crop 128, median-freq class weights, "
                   "1200 + 300 steps; "
                   "about 9 minutes on 2 CPU cores). photos-cpu: real photos of ~480x360 at half size, crop 176, "
                   "1350 + 450 steps, 13-18 minutes with bf16 (docs/photos.md). bmvc-r101: "
                   "ImageNet ResNet-101, crop 321, 30 + 30 epochs, full-image eval; ijcv-r101 / ijcv-r50: crop 513, "
                   "513 centre-crop eval, 50 + 50 epochs (docs/methods.md).")
@click.option("--backbone", type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large"]),
              default=None, help="DeepLabv3 encoder.  [default: resnet50]")
@click.option("--output-stride", type=click.Choice(["8", "16"]), callback=lambda c, p, v: None if v is None else int(v),
              default=None, help="Encoder output stride (resnets: 8 or 16; mobilenet_v3_large: 16).  [default: 16]")
@click.option("--backbone-weights", type=click.Choice(["imagenet"]), default=None,
              help="Start the encoder from torchvision's ImageNet weights (downloaded on first use into "
                   "$TORCH_HOME). Default: random init.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local state dict (or trainer checkpoint) loaded into the model before stage 1.")
@click.option("--no-ssh", is_flag=True, help="No source separation head (the 'w/o SSH' ablation).")
@click.option("--ssh-detach/--ssh-end-to-end", default=None,
              help="(ours) The SSH reads S_t and S_p through a stop-gradient, so its loss trains F_ss alone and not "
                   "the branches or the encoder; the papers train all end to end (docs/experiments.md section 9).  "
                   "[default: end to end]")
@click.option("--method", type=click.Choice(["sourcesep-cc", "sourcesep-cm", "deeplabv3", "mixup", "cutmix",
                                            "mixup-cm"]),
              default=None, help="sourcesep-cc: offline blends (SHARDS/mixed); sourcesep-cm: co-occurrence blending "
                                 "in each batch of SHARDS/train; deeplabv3, mixup, cutmix: single-head baselines, one "
                                 "stage of iters1 + iters2 steps; mixup-cm: Mixup paired by co-occurrence (IJCV "
                                 "Table 10).  [default: sourcesep-cc]")
@click.option("--mixed", type=click.Path(path_type=Path), default=None,
              help="Stage-1 shard directory of sourcesep-cc (e.g. one `blendgen mix --strategy random --dest` "
                   "wrote).  [default: SHARDS/mixed]")
@click.option("--no-denoise", is_flag=True, help="Stop after stage 1 and predict with S_ss (the 'w/o DN' ablation).")
@click.option("--alpha", type=click.FloatRange(0), default=None,
              help="Beta(α, α) of the mixing weight: sourcesep-cm's δ, mixup's and cutmix's λ. 0: δ = λ = 1, no "
                   "mixing, except that sourcesep-cm still blends pairs over γ at δ = 0.9 as Algorithm 2 prints "
                   "(add --gamma inf for none).  [default: 1]")
@click.option("--gamma", callback=_gamma_option, default=None, metavar="N|inf",
              help="sourcesep-cm: max unique categories of a blended pair (IJCV Table 11).  [default: 3]")
@click.option("--gamma-rule", type=click.Choice(["thres", "skip"]), default=None,
              help="sourcesep-cm above γ: thres = blend with δ = 0.9 (γ-thres), skip = do not blend.  "
                   "[default: thres]")
@click.option("--delta-min", type=click.FloatRange(0.5, 1), default=None,
              help="sourcesep-cm, ours: floor of the dominant's δ; the folded [0.5, 1] is mapped linearly onto "
                   "[DELTA_MIN, 1] (docs/methods.md). Default: none, the papers' δ.")
@click.option("--crop", type=click.IntRange(16), default=None, help="Random training crop.  [default: 321]")
@click.option("--scale", callback=_range_option, default=None, metavar="MIN:MAX",
              help="Random rescaling of each training image before the crop, ours (the papers say only "
                   "'random cropping'); 1:1 turns it off.  [default: 0.5:2]")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Batch per process.  [default: 8]")
@click.option("--accum", type=click.IntRange(1), default=None,
              help="Gradient accumulation: batches per optimizer step.  [default: 1]")
@click.option("--iters1", type=click.IntRange(0), default=None, help="Stage-1 optimizer steps (0 skips the stage).")
@click.option("--iters2", type=click.IntRange(0), default=None, help="Stage-2 optimizer steps (0 skips the stage).")
@click.option("--epochs1", type=click.IntRange(0), default=None, help="Stage-1 epochs, instead of --iters1.  [default: 30]")
@click.option("--epochs2", type=click.IntRange(0), default=None, help="Stage-2 epochs, instead of --iters2.  [default: 30]")
@click.option("--budget", type=click.Choice(["steps", "epochs"]), default=None,
              help="steps: every method the same optimizer steps (a baseline iters1 + iters2 in one stage); "
                   "epochs: the papers' budget, --epochs1/--epochs2 passes over each method's own data (a "
                   "baseline epochs1 alone); takes no --iters and replaces a preset's steps.  [default: steps]")
@click.option("--lr1", type=float, default=None, help="Stage-1 initial learning rate (poly 0.9).  [default: 2.5e-4]")
@click.option("--lr2", type=float, default=None, help="Stage-2 initial learning rate (poly 0.9).  [default: 2.5e-5]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None,
              help="sgd: the papers' (momentum 0.9, weight decay 5e-4); adamw: beta1 = momentum.  [default: sgd]")
@click.option("--weight-decay", type=click.FloatRange(0), default=None, help="Weight decay.  [default: 5e-4]")
@click.option("--optimizer2", type=click.Choice(["sgd", "adamw"]), default=None,
              help="Stage 2's optimizer, ours (docs/experiments.md). Default: --optimizer's.")
@click.option("--weight-decay2", type=click.FloatRange(0), default=None,
              help="Stage 2's weight decay. Default: --weight-decay's.")
@click.option("--warmup", type=click.IntRange(0), default=None,
              help="Optimizer steps of linear learning-rate warm-up at the start of each stage.  [default: 0]")
@click.option("--ppa-eps", type=click.FloatRange(0, min_open=True), default=None,
              help="Stage 2: ε of the phantom term log(ε + Σ ReLU(S_p)): 1e-6 the papers', 1 bounds its gradient "
                   "(--preset demo; docs/experiments.md §8).  [default: 1e-6]")
@click.option("--class-weights", type=click.Choice(["none", "median-freq"]), default=None,
              help="Weigh every CE term's pixels by class, ours: median-freq = median frequency balancing from "
                   "SHARDS/train's labels (small classes; docs/photos.md; --preset demo and photos-cpu), none = plain CE "
                   "(the papers').  [default: none]")
@click.option("--ppa-weight", type=click.FloatRange(0), default=None,
              help="Stage 2: weight of the phantom term, ours (1 = the paper's Eq. 5; 0 = CE alone).  [default: 1]")
@click.option("--grad-clip", type=click.FloatRange(0, min_open=True), default=None,
              help="Clip the global gradient norm of each optimizer step to this. Default: no clipping.")
@click.option("--eval-every", type=click.IntRange(0), default=None,
              help="Evaluate on SHARDS/val every N optimizer steps (0 = never before the end) and draw "
                   "curves.png. Default: at each stage's end.")
@click.option("--workers", type=click.IntRange(0), default=None, help="Loader processes per rank.  [default: 2]")
@click.option("--on-corrupt", type=click.Choice(["stop", "skip"]), default=None,
              help="A sample whose checksum fails: stop with its name, or skip it (counted in report.json "
                   "corrupt_skipped and printed at the end).  [default: stop]")
@click.option("--seed", type=int, default=None, help="Seeds weights, data order and augmentation.  [default: 0]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto = CUDA when present, else CPU (--amp says how either computes).  [default: auto]")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default=None,
              help="Autocast: auto = bf16 (with channels_last) where the device computes it natively (CUDA; "
                   "CPUs with AVX512-BF16 or AMX: 1.6x faster steps, docs/performance.md), else none (fp32); "
                   "fp16 adds a grad scaler.  [default: auto]")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads of the training process. Default: torch's (all cores).")
@click.option("--sync-bn/--no-sync-bn", default=None,
              help="Under torchrun on CUDA, BatchNorm statistics over the global batch (SyncBatchNorm); no "
                   "effect in one process or on CPU ranks.  [default: on]")
@click.option("--compile", is_flag=True, default=None,
              help="torch.compile the model for training and validation (docs/trainer.md: its compile time "
                   "and step time measured). Default: eager.")
@click.option("--eval-crop", type=click.IntRange(16), default=None,
              help="Evaluate on centre crops of this size (IJCV: 513). Default: full images (BMVC).")
@click.option("--eval-scale", type=click.FloatRange(0, 4, min_open=True), default=None,
              help="Run the network at this fraction of each evaluated image's size and score its upsampled "
                   "prediction on the stored labels (ours; pair with --scale S:S).  [default: 1]")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None,
              help="Optimizer steps between last.pt saves.  [default: 100]")
@click.option("--log-every", type=click.IntRange(1), default=None,
              help="Optimizer steps between metrics.jsonl lines.  [default: 10]")
@click.option("--name", default=None, help="Run directory name under --out. Default: a timestamp.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where run directories go.  [default: runs]")
@click.option("--resume", is_flag=True, help="Continue runs/NAME from its last.pt (same options as the first run).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_(shards, preset, no_ssh, no_denoise, resume, quiet, **options):
    """Stage 1 on SHARDS/mixed, stage 2 on SHARDS/train, evaluation on SHARDS/val.

    That is SourceSep-CC; --method picks another of the papers' methods (docs/methods.md).
    Writes runs/NAME/: config.json, metrics.jsonl (also as TensorBoard event files: tensorboard
    --logdir runs/), stage1.pt, stage2.pt, last.pt, best.pt (the best val mIoU), report.json,
    report.md. Under torchrun every process trains on its share (DDP; only rank 0 writes).

    \b
    Example:
      trainer run --shards out/ --preset demo --name demo
      trainer run --shards out/ --preset demo --method sourcesep-cm --name demo-cm
      torchrun --standalone --nproc_per_node 2 -m trainer run --shards out/ --preset demo
    """
    from trainer.config import PRESETS, TWO_BRANCH_METHODS, TrainConfig
    from trainer.train import run

    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if v is not None}
    settings = dict(PRESETS.get(preset, {}))
    method = given.get("method", settings.get("method", TrainConfig.method))
    if no_ssh or method not in TWO_BRANCH_METHODS:  # a preset's SSH choice, where there is no SSH
        settings.pop("ssh_detach", None)
    for stage in ("1", "2"):  # an explicit length of either kind replaces the preset's
        if f"iters{stage}" in given or f"epochs{stage}" in given:
            settings.pop(f"iters{stage}", None)
            settings.pop(f"epochs{stage}", None)
        if given.get("budget") == "epochs":  # the papers' budget counts no steps: a preset's (demo) go
            settings.pop(f"iters{stage}", None)
    settings.update(given)
    try:
        config = TrainConfig(shards=str(shards), ssh=not no_ssh, denoise=not no_denoise, resume=resume,
                             progress=not quiet, **settings)
        report = run(config)
    except _train_errors() as exc:
        _fail(exc)
    if "report_dir" in report:
        from trainer.evaluate import per_class_text

        click.echo(f"IoU per class on val (head {report['head']}):\n{per_class_text(report)}")
        click.echo(f"val mIoU {100 * report['miou']:.2f}  pixel acc {100 * report['pixel_acc']:.2f}  "
                   f"budget {report.get('budget', 'steps')}  "
                   f"-> {report['report_dir']}/report.md")
        _echo_skipped(report)
        if "saliency" in report:
            s = report["saliency"]
            click.echo(f"val max F_beta {s['max_fbeta']:.3f}  mean F_beta {s['mean_fbeta']:.3f}  MAE {s['mae']:.3f}  "
                       f"-> {report['report_dir']}/saliency.png")


@trainer.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="stage1.pt, stage2.pt, best.pt or last.pt.")
@click.option("--shards", type=click.Path(path_type=Path), required=True, help="blendgen output root.")
@click.option("--split", default="val", show_default=True, help="Shard directory under --shards to evaluate.")
@click.option("--eval-crop", type=click.IntRange(16), default=None,
              help="Centre crops of this size (IJCV: 513). Default: full images.")
@click.option("--eval-scale", type=click.FloatRange(0, 4, min_open=True), default=None,
              help="Run the network at this fraction of each image's size, scored on the stored labels. "
                   "Default: the run's own (trainer run --eval-scale, e.g. 0.5 in --preset photos-cpu).")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True,
              help="Images per batch (>1 pads full images, an approximation).")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="Loader processes.")
@click.option("--on-corrupt", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="A sample whose checksum fails: stop with its name, or leave it out of the metric and count it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--head", type=click.Choice(["auto", "t", "ss"]), default="auto", show_default=True,
              help="Output to predict from; auto = S_t after stage 2, S_ss after stage 1.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report directory. Default: eval-<checkpoint>-<split>/ beside the checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--suite", "suites", multiple=True, default=("overall",), show_default=True,
              type=_Registered(_suites),
              help="Evaluation suite(s) of the papers, repeatable (docs/evaluation.md); anything beyond "
                   "overall writes suites.json, suites.md and plots.")
@click.option("--person", default="person", show_default=True, help="context: Table 5's anchor class.")
@click.option("--partners", default=None, metavar="NAMES|derived",
              callback=lambda c, p, v: None if v is None else tuple(n.strip() for n in v.split(",") if n.strip()),
              help="context: Table 5's classes, comma-separated. Default: the paper's horse, motorbike, bicycle, "
                   "bottle, car on VOC's classes, else (and with 'derived') the --top-k classes co-occurring most "
                   "with --person in training.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True,
              help="context: classes co-occurring most with --person.")
@click.option("--thresholds", callback=lambda c, p, v: _number_list(v, int, "--thresholds"), default="50,40,30,20,10",
              show_default=True, help="context: training co-occurrence thresholds t (Fig. 5); small data needs smaller.")
@click.option("--attacks", type=click.Choice(["fgsm", "pgd", "none"]), multiple=True, default=("fgsm", "pgd"),
              show_default=True, help="adversarial: white-box attacks, repeatable.")
@click.option("--eps", type=click.FloatRange(0, min_open=True), default=8.0, show_default=True,
              help="adversarial: FGSM / PGD L∞ radius in pixel levels of [0, 255].")
@click.option("--pgd-steps", type=click.IntRange(1), default=10, show_default=True, help="adversarial: PGD iterations.")
@click.option("--pgd-step-size", type=click.FloatRange(0, min_open=True), default=None,
              help="adversarial: PGD step in pixel levels.  [default: 2.5 eps / steps]")
@click.option("--uap", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="adversarial: universal perturbation .npy (H x W x 3, pixel units), repeatable.")
@click.option("--uap-fit", type=click.Choice(["tile", "resize"]), default="tile", show_default=True,
              help="adversarial: how a perturbation meets an image of another size.")
@click.option("--sigmas", callback=lambda c, p, v: _number_list(v, float, "--sigmas"), default="1,2,4,8,12",
              show_default=True, help="blur: Gaussian σ values in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="adversarial: PGD random starts.")
@click.option("--task", type=click.Choice(["auto", "segmentation", "saliency"]), default="auto", show_default=True,
              help="saliency: max F_beta, mean F_beta, MAE and their curves (IJCV Table 7); auto = saliency on "
                   "shards written with --task saliency.")
def eval_(checkpoint, shards, split, eval_crop, eval_scale, batch_size, workers, on_corrupt, device, head, out, quiet, suites,
          task, **suite_options):
    """mIoU, per-class IoU and pixel accuracy of a checkpoint on one split (report.json, report.md);
    with --suite, the papers' complex-scene, out-of-context, adversarial and blur suites.

    \b
    Example:
      trainer eval --checkpoint runs/demo/stage2.pt --shards out/
      trainer eval --checkpoint runs/demo/stage2.pt --shards out/ --suite all --thresholds 20,10,5,2,1 --pgd-steps 5
    """
    from trainer.evaluate import EvalConfig, evaluate_checkpoint

    try:
        config = EvalConfig(checkpoint=str(checkpoint), shards=str(shards), split=split, eval_crop=eval_crop,
                            eval_scale=eval_scale, batch_size=batch_size, workers=workers, device=device, head=head,
                            out=None if out is None else str(out), on_corrupt=on_corrupt, progress=not quiet)
        if set(suites) != {"overall"}:
            return _eval_suites(config, suites, suite_options)
        from trainer.saliency import evaluate_checkpoint_saliency, wants_saliency

        if wants_saliency(task, config):
            return _echo_saliency(evaluate_checkpoint_saliency(config), split)
        report = evaluate_checkpoint(config)
    except ValueError as exc:
        _fail(exc)
    if "report_dir" in report:
        from trainer.evaluate import per_class_text

        click.echo(f"IoU per class on {split} (head {report['head']}):\n{per_class_text(report)}")
        click.echo(f"{split} mIoU {100 * report['miou']:.2f}  pixel acc {100 * report['pixel_acc']:.2f}  "
                   f"-> {report['report_dir']}/report.md")
        _echo_skipped(report)


def _echo_skipped(report: dict) -> None:
    skipped = report.get("corrupt_skipped")
    if skipped:
        click.echo(f"skipped {skipped['count']} corrupt sample(s) (--on-corrupt skip); first: {skipped['first'][0]}",
                   err=True)


def _echo_saliency(report: dict, split: str) -> None:
    if "report_dir" in report:
        s = report["saliency"]
        click.echo(f"{split} max F_beta {s['max_fbeta']:.3f}  mean F_beta {s['mean_fbeta']:.3f}  MAE {s['mae']:.3f}  "
                   f"mIoU {100 * report['miou']:.2f}  -> {report['report_dir']}/saliency.json, saliency.png")


def _number_list(value: str, kind, name: str) -> tuple:
    """"50,40,30" -> (50, 40, 30), or a usage error naming the option."""
    try:
        return tuple(kind(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}", param_hint=name) from None


def _eval_suites(config, suites, options) -> None:
    """``trainer eval --suite ...`` beyond overall: trainer.suites does the work."""
    from trainer.suites import SuiteConfig, evaluate_suites

    attacks = tuple(a for a in options.pop("attacks") if a != "none")
    report = evaluate_suites(config, SuiteConfig(suites=tuple(suites), attacks=attacks, **options))
    if "report_dir" in report:
        click.echo(f"suites {', '.join(report['suites'])} in {report['time_s']} s -> {report['report_dir']}/suites.md")


@trainer.command("uap")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="The surrogate model.")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="blendgen output root (the data modes use the images of SHARDS/train).")
@click.option("--mode", type=click.Choice(["data", "no-data", "range-prior", "partial-data", "all-data", "data-free"]),
              default="data", show_default=True,
              help="data: sign-gradient ascent of the CE over training images (ours); GD-UAP (Adam on the "
                   "encoder's activation norms, saturation rescaling): no-data = IJCV Table 6 R-No, partial-data "
                   "= R-Part, all-data = R-All, range-prior = GD-UAP's Gaussian pseudo-images; data-free = no-data.")
@click.option("--eps", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="L∞ bound in pixel levels of [0, 255] (UAP / GD-UAP: 10).")
@click.option("--size", type=click.IntRange(16), default=513, show_default=True,
              help="Side of the square perturbation (tiled over larger images).")
@click.option("--iters", type=click.IntRange(1), default=None,
              help="Optimisation steps.  [default: 200 in mode data, 2000 (at most) in the GD-UAP modes]")
@click.option("--step-size", type=click.FloatRange(0, min_open=True), default=None,
              help="Signed step in pixel levels.  [default: eps / 10]")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="GD-UAP modes: Adam's learning rate in pixel levels.")
@click.option("--part", type=click.FloatRange(0, 1, min_open=True), default=0.268, show_default=True,
              help="partial-data: share of the training images used, those with the least background.")
@click.option("--val-images", type=click.IntRange(0), default=0, show_default=True,
              help="GD-UAP modes: held-out images whose flip rate picks the best δ and stops the run (0: none).")
@click.option("--val-split", default="train", show_default=True, help="Split of --shards for --val-images.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Images per step (data modes, range prior).")
@click.option("--seed", type=int, default=0, show_default=True, help="Start point and image order.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="Loader processes (mode data).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The .npy to write (H x W x 3 float32, pixel units, RGB); OUT.json beside it says how it was made.")
def uap_(checkpoint, shards, mode, eps, size, iters, step_size, lr, part, val_images, val_split, batch_size, seed,
         device, workers, out):
    """Make a universal adversarial perturbation on a surrogate model, for `trainer eval --uap`.

    \b
    Example:
      trainer uap --checkpoint runs/deeplabv3/stage1.pt --mode no-data --eps 10 --out uap-free.npy
      trainer eval --checkpoint runs/sourcesep-cm/stage2.pt --shards out/ --suite adversarial --uap uap-free.npy
    """
    from trainer.attacks import UapConfig, generate_uap

    try:
        config = UapConfig(checkpoint=str(checkpoint), shards=None if shards is None else str(shards), mode=mode,
                           eps=eps, size=size, iters=iters, step_size=step_size, lr=lr, part=part,
                           val_images=val_images, val_split=val_split, batch_size=batch_size, seed=seed,
                           device=device, workers=workers, out=str(out))
        path, meta = generate_uap(config)
    except ValueError as exc:
        _fail(exc)
    rescales = f", {len(meta['rescales'])} rescales" if "rescales" in meta else ""
    click.echo(f"wrote {path} ({meta['mode']}, L∞ {meta['linf']:.3g}, {size}x{size}{rescales}) and "
               f"{path.with_suffix('.json')}")


@trainer.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for the CSV tables, miou.png and (without --page) report.md.")
@click.option("--page", type=click.Path(path_type=Path), default=None,
              help="Write the Markdown page here instead of OUT/report.md (links are made relative to it).")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Markdown shown under the title, e.g. how the data was made.")
@click.option("--title", default="Results", show_default=True, help="The page's title.")
@click.option("--head", type=click.Choice(["auto", "paper", "t", "ss"]), default="auto", show_default=True,
              help="Prediction to report: auto = each run's own (report.json's head: S_t after the denoising "
                   "stage, S_ss after stage 1 alone); paper = S_ss of the source separation network (IJCV 3.2.2) "
                   "throughout; t / ss = that head where the run recorded it (report.json by_head). Baselines: "
                   "their one head.")
def report_(runs, out, page, notes, title, head):
    """Finished runs side by side: the papers' tables (IJCV Tables 1, 8, 9, 11; BMVC Table 5a)
    as Markdown and CSV, and a bar chart of mIoU. Runs of different datasets, class sets or
    evaluation crops are refused.

    \b
    Example:
      trainer report runs/cc runs/cm runs/deeplabv3 runs/mixup runs/cutmix --out reports/demo
    """
    from trainer.report import ReportConfig, make_report

    try:
        config = ReportConfig(runs=tuple(str(r) for r in runs), out=str(out), page=None if page is None else str(page),
                              notes=None if notes is None else str(notes), title=title, head=head)
        result = make_report(config)
    except (ValueError, OSError) as exc:
        _fail(exc)
    click.echo(f"{result['runs']} runs (head: {head}), tables {', '.join(result['tables'])} -> {result['page']}, "
               f"{result['chart']}")


@trainer.command("predict")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="stage2.pt (or any checkpoint).")
@click.argument("images", metavar="FILES_OR_FOLDERS...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the PNGs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--head", type=click.Choice(["auto", "t", "ss"]), default="auto", show_default=True,
              help="Output to predict from; auto = S_t after stage 2, S_ss after stage 1.")
@click.option("--overwrite", is_flag=True, help="Predict again images whose PNG is already in OUT (default: skip them).")
@click.option("--overlay", is_flag=True, help="Also write OUT/<name>.overlay.jpg: the class colours over the photo.")
@click.option("--opacity", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Opacity of the colours in --overlay.")
@click.option("--max-pixels", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Refuse images with more pixels than this, read from the header before decoding.")
@click.option("--tile", type=click.IntRange(0), default=1024, show_default=True,
              help="Images larger than this either way are predicted in TILE x TILE windows (0 = whole).")
@click.option("--stride", type=click.IntRange(1), default=768, show_default=True,
              help="Step between windows; overlapping windows' logits are averaged.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_(checkpoint, images, out, device, head, overwrite, overlay, opacity, max_pixels, tile, stride, quiet):
    """Colour-coded prediction PNGs (palette = the checkpoint's classes; pixel values = class ids).

    Each FILE becomes OUT/<stem>.png; each FOLDER is walked recursively (image files, dot files
    skipped) and OUT mirrors its sub-folders. Two inputs that would write one PNG are refused
    before any work. A rerun skips what OUT already holds. A file that fails is one line, the
    others go on, and the exit status is 1 (docs/predict.md).

    \b
    Example:
      trainer predict --checkpoint runs/demo/stage2.pt data/demo-voc/JPEGImages/2026_000001.jpg --out preds/
      trainer predict --checkpoint runs/demo/stage2.pt photos/ --out preds/ --overlay
    """
    from trainer.predict import PredictConfig, predict_images

    try:
        done = predict_images(PredictConfig(checkpoint=str(checkpoint), images=tuple(images), out=str(out),
                                            device=device, head=head, overwrite=overwrite, overlay=overlay,
                                            opacity=opacity, max_pixels=max_pixels, tile=tile, stride=stride),
                              progress=not quiet)
    except ValueError as exc:
        _fail(exc)
    skipped = f"; {done['skipped']} already there (--overwrite to redo)" if done["skipped"] else ""
    click.echo(f"wrote {done['written']} prediction(s) to {out}{skipped}")
    if done["failed"]:
        click.echo(f"{len(done['failed'])} of {done['images']} image(s) failed (listed above)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(blendgen())
