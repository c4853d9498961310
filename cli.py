"""Command-line switchboard: ``blendgen`` (dataset generation) and ``trainer`` (training).

Each command parses its options, builds one config, calls one function. Heavy modules are
imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

DATASET_KINDS = ["voc", "voc-aug", "coco", "folder"]


def _fail(exc: Exception) -> None:
    """Bad input ends the command with its one-line message, not a traceback."""
    raise click.ClickException(str(exc)) from None


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
    """


@blendgen.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/demo-voc"), show_default=True,
              help="Directory to create (must not exist or be empty).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, byte-identical dataset.")
@click.option("--train", "num_train", type=click.IntRange(1), default=400, show_default=True, help="Training images.")
@click.option("--val", "num_val", type=click.IntRange(1), default=120, show_default=True, help="Validation images.")
@click.option("--min-size", type=click.IntRange(32), default=96, show_default=True, help="Smallest image side.")
@click.option("--max-size", type=click.IntRange(32), default=192, show_default=True, help="Largest image side.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(out, seed, num_train, num_val, min_size, max_size, workers, quiet):
    """Write the synthetic demo dataset in the PASCAL VOC 2012 layout.

    A miniature of VOC: the 20 VOC classes as textured shapes on varied backgrounds, 1-4
    objects per image with occlusions, VOC-like class co-occurrence, void borders, XML
    annotations with `occluded` flags, train/val lists.

    \b
    Example:
      blendgen synth --out data/demo-voc --seed 0
    """
    from blendgen.synth import SynthConfig, make_synthetic_voc

    try:
        config = SynthConfig(out=out, seed=seed, num_train=num_train, num_val=num_val,
                             min_size=min_size, max_size=max_size, workers=workers)
        summary = make_synthetic_voc(config, progress=not quiet)
    except (ValueError, FileExistsError) as exc:
        _fail(exc)
    click.echo(f"wrote {out}: " + json.dumps(summary, default=str)[:400])


@blendgen.command("build-clusters")
@click.option("--dataset", type=click.Choice(DATASET_KINDS), default="voc", show_default=True,
              help="Layout of the source dataset.")
@click.option("--root", type=click.Path(path_type=Path), required=True,
              help="Dataset root (the VOC2012 folder; the COCO folder; the images/masks folder).")
@click.option("--split", default="train", show_default=True, help="Image set to read (train, val, train_aug, ...).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Output directory (clusters.npz, dataset.json, CSVs, heat map).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes decoding label maps.")
@click.option("--no-check-images", is_flag=True,
              help="Skip opening image headers (missing image / size mismatch checks).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Reader option, e.g. classes_file=names.txt (folder) or cache_dir=DIR (coco).")
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
    from blendgen.clusters import ClusterConfig, build_clusters as run
    from blendgen.readers import DatasetError

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
    click.echo(f"wrote {out}/clusters.npz, dataset.json, cooccurrence.csv, class_counts.csv, cooccurrence.png")


# ============================================================================================
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def trainer():
    """Source-separation training on blendgen shards (stage 1, denoising stage 2, evaluation).

    \b
    Example:
      trainer run --shards out/ --backbone mobilenet_v3_large --crop 128
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(blendgen())
