"""Every dataset kind by name, and the one entry point that opens a reader.

A family of datasets is one module of this package holding its reader and ``KINDS``, the map
from the kinds it reads to their openers (a class or a function ``(root, split, **options)``);
it joins by being imported here. Its openers' keyword parameters are the options
``--option KEY=VALUE`` accepts, and anything else is refused. docs/datasets.md has one command
per dataset family.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from . import coco, folder, saliency, voc
from .base import Reader
from .files import DatasetError

READERS = {**voc.KINDS, **coco.KINDS, **folder.KINDS, **saliency.KINDS}

# Option names users type that are not Python parameter names: ``list=`` (as VOC's ImageSets
# lists) is the folder reader's ``id_list`` parameter, which does not shadow the builtin.
_OPTION_PARAMETERS = {"list": "id_list"}
_OPTION_NAMES = {param: option for option, param in _OPTION_PARAMETERS.items()}


def reader_options(kind: str) -> list[str]:
    """The keyword options ``open_reader`` accepts for ``kind``, as users write them."""
    params = inspect.signature(READERS[kind]).parameters
    return [_OPTION_NAMES.get(name, name) for name in params if name not in ("root", "split")]


def open_reader(kind: str, root: str | Path, split: str = "train", **options) -> Reader:
    """The one entry point: ``kind`` is one of :data:`READERS`; ``options`` are the keyword
    arguments of that reader (an option another kind takes is refused, not ignored)."""
    if kind not in READERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose from {', '.join(sorted(READERS))}")
    unknown = sorted(set(options) - set(reader_options(kind)))
    if unknown:
        accepted = ", ".join(reader_options(kind)) or "none"
        raise DatasetError(f"dataset kind {kind!r} takes no option {', '.join(unknown)} (options: {accepted})")
    return READERS[kind](root, split, **{_OPTION_PARAMETERS.get(k, k): v for k, v in options.items()})


def reopen_source(source: dict, split: str | None = None) -> Reader:
    """The reader ``build-clusters`` used, from its recorded description (optionally for
    another split of the same dataset)."""
    try:
        kind, root = source["kind"], source["root"]
    except KeyError as exc:
        raise DatasetError(f"dataset.json: source description lacks {exc}") from None
    return open_reader(kind, root, split or source.get("split", "train"), **source.get("options", {}))
