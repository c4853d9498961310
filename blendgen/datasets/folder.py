"""A plain folder of images, id masks and a class-names file, with split folders or split lists
(kind ``folder``): Cityscapes, ADE20K, CamVid and most exports of labelling tools."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Reader, given_options
from .classes import check_root_class_names, classes_from_file, label_map_table, palette_file_path
from .files import DatasetError, read_id_list, require_file


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_LISTS = "splits"  # root/splits/{split}.txt: a flat folder's split lists by convention
ALL_SPLIT = "all"  # --split all: every image of a flat folder that has no split lists


class FolderReader(Reader):
    """Images, id masks and a class-names file: ``root/images/{split}/NAME.(jpg|png)``,
    ``root/masks/{split}/NAME.png`` (grayscale or palette PNG of uint8 ids) and
    ``root/classes.txt`` (line i names id i-1, i.e. the first line is id 0).

    Subfolders are searched too (Cityscapes keeps one per city); an image's id is its path
    below the image folder without the suffix (``aachen/aachen_000000_000019``).
    Every image needs a mask and every mask an image, checked when the reader opens.

    Which images form the split, in this order:

    1. ``images/{split}/`` exists: the images in it (or those of ``list=``, if given).
    2. ``images/`` holds the images itself (a flat folder): the ids of ``list=`` if given,
       else of ``root/splits/{split}.txt`` if it exists, else every image but only for
       ``split="all"``. Any other split is an error: reading all of them would turn test
       images into training data without a word.

    Options: ``images=``/``masks=`` subfolder names; ``image_suffix=``/``mask_suffix=`` the
    end of the file names to pair (default any of .jpg/.jpeg/.png, and .png; Cityscapes:
    ``_leftImg8bit.png`` and ``_gtFine_labelIds.png``); ``list=`` a file of ids, one per line
    (``{split}`` in it stands for the split, so recorded options open other splits too; a
    path without it must be named after the split, ``train.txt`` for ``--split train``);
    ``classes_file=``; ``background=`` (comma-separated ids or names that are not object
    classes; default id 0 if it is named "background", any case, else none);
    ``palette_file=`` (lines "r g b", line i = id i-1; default ``root/palette.txt`` if
    present, else the VOC palette); ``label_map=`` (see :func:`label_map_table`).
    """

    # Options default to None so that the description records only what was asked for.
    def __init__(self, root: str | Path, split: str = "train", images: str | None = None, masks: str | None = None,
                 classes_file: str | Path | None = None, background: str | None = None,
                 palette_file: str | Path | None = None, id_list: str | Path | None = None,
                 image_suffix: str | None = None, mask_suffix: str | None = None, label_map: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root is not a directory")
        self.split = split
        names_path = self.root / (classes_file or "classes.txt")
        self.classes = classes_from_file(names_path, background, palette_file_path(self.root, palette_file))
        check_root_class_names(self.root, self.classes, names_path, "folder")
        self.label_lut = label_map_table(label_map, self.root, self.classes)
        image_suffixes = (image_suffix,) if image_suffix else _IMAGE_SUFFIXES
        mask_suffixes = (mask_suffix,) if mask_suffix else (".png",)
        self.image_dir, self.mask_dir, self.list_path = self._split_source(images or "images", masks or "masks",
                                                                           id_list, image_suffixes)
        wanted = None if self.list_path is None else read_id_list(self.list_path)
        self._image_files, self._mask_files = _pair_files(self.image_dir, self.mask_dir, image_suffixes,
                                                          mask_suffixes, wanted, self.list_path)
        self._ids = sorted(self._image_files) if wanted is None else wanted
        self.description = {
            "kind": "folder",
            "root": str(self.root.resolve()),
            "split": split,
            "images": str(self.image_dir.resolve()),
            "masks": str(self.mask_dir.resolve()),
            "list": None if self.list_path is None else str(self.list_path.resolve()),
            "classes_file": str(names_path.resolve()),
            "background": [*self.classes.background],
            "options": given_options(images=images, masks=masks, classes_file=classes_file,
                                      background=background, palette_file=palette_file, list=id_list,
                                      image_suffix=image_suffix, mask_suffix=mask_suffix, label_map=label_map),
        }

    def ids(self) -> list[str]:
        return [*self._ids]

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._image_files.get(image_id, f"{image_id}.jpg")

    def label_path(self, image_id: str) -> Path:
        return self.mask_dir / self._mask_files.get(image_id, f"{image_id}.png")

    def _split_source(self, images: str, masks: str, id_list: str | Path | None,
                      image_suffixes: tuple[str, ...]) -> tuple[Path, Path, Path | None]:
        """(image folder, mask folder, id list or None) of the split; see the class docstring."""
        explicit_list = None if id_list is None else split_list_path(self.root, id_list, self.split)
        image_dir, mask_dir = self.root / images / self.split, self.root / masks / self.split
        flat, flat_masks = self.root / images, self.root / masks
        if image_dir.is_dir():
            list_path = explicit_list
        elif flat.is_dir() and _holds_files(flat, image_suffixes):
            image_dir, mask_dir = flat, flat_masks
            conventional = self.root / SPLIT_LISTS / f"{self.split}.txt"
            list_path = explicit_list or (conventional if conventional.is_file() else None)
            if list_path is None and self.split != ALL_SPLIT:
                raise DatasetError(
                    f"{flat}: the folders have no split named {self.split!r} (no {images}/{self.split}/, no "
                    f"{SPLIT_LISTS}/{self.split}.txt); pass --split {ALL_SPLIT} to read every image, or "
                    f"--option list=FILE with the split's ids")
        else:
            splits = sorted(p.name for p in flat.iterdir() if p.is_dir() and not p.name.startswith(".")) \
                if flat.is_dir() else []
            found = f"subfolders there: {', '.join(splits)}" if splits else f"and {flat} holds no images"
            raise DatasetError(f"{image_dir}: missing image folder ({found})")
        if not mask_dir.is_dir():
            raise DatasetError(f"{mask_dir}: missing mask folder")
        return image_dir, mask_dir, list_path


def split_list_path(root: Path, id_list: str | Path, split: str) -> Path:
    """The id list of ``split``: ``{split}`` in the option stands for the split name. A path
    without it must be the list of this very split (its name is the split's), since mix and
    pack reopen the dataset with the recorded option for other splits: a fixed
    ``train.txt`` would quietly give ``pack --split val`` the training images."""
    text = str(id_list)
    path = root / text.replace("{split}", split)
    if "{split}" not in text and path.stem != split:
        raise DatasetError(f"{path}: an id list named {path.stem!r} given for split {split!r}; write the option as "
                           f"list=DIR/{{split}}.txt so that each split finds its own list, or name the split after "
                           f"the list (--split {path.stem})")
    require_file(path, "id list")
    return path


def _holds_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether ``folder`` itself (not a subfolder) holds a visible file whose name ends with
    one of ``suffixes`` (any case): then it is a flat folder, not a folder of splits."""
    lowered = tuple(s.lower() for s in suffixes)
    return any(p.name.lower().endswith(lowered) and not p.name.startswith(".") and p.is_file()
               for p in folder.iterdir())


def _scan_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[str]]:
    """Visible files below ``folder`` (subfolders included) whose names end with one of
    ``suffixes`` (any case): id (relative path without the suffix, ``/``-separated) ->
    relative paths, sorted. More than one path for an id is the caller's error to report."""
    lowered = [s.lower() for s in suffixes]
    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            lower = name.lower()
            suffix = next((s for s in lowered if lower.endswith(s) and len(s) < len(name)), None)
            if name.startswith(".") or suffix is None:
                continue
            rel = (rel_dir / name).as_posix()
            found.setdefault(rel[: len(rel) - len(suffix)], []).append(rel)
    return found


def _pair_files(image_dir: Path, mask_dir: Path, image_suffixes: tuple[str, ...], mask_suffixes: tuple[str, ...],
                wanted: list[str] | None = None,
                list_path: Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Relative file names by id for images and masks: all of them checked to pair up one to
    one, or, with ``wanted`` (the ids of ``list_path``), those ids checked to have both."""
    images = _unique(_scan_files(image_dir, image_suffixes), image_dir, "image")
    masks = _unique(_scan_files(mask_dir, mask_suffixes), mask_dir, "mask")
    ends = "/".join(image_suffixes)
    if wanted is not None:
        no_image = [i for i in wanted if i not in images]
        if no_image:
            raise DatasetError(f"{list_path}: id {no_image[0]!r} has no image {ends} in {image_dir}"
                               f"{_and_more(no_image, 'listed ids without images')}")
        images = {i: images[i] for i in wanted}
    if not images:
        raise DatasetError(f"{image_dir}: no images ({ends})")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DatasetError(f"{image_dir / images[no_mask[0]]}: no mask {mask_dir / (no_mask[0] + mask_suffixes[0])}"
                           f"{_and_more(no_mask, 'images without masks')}")
    if wanted is not None:
        return images, {i: masks[i] for i in wanted}
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DatasetError(f"{mask_dir / masks[no_image[0]]}: mask without an image in {image_dir}"
                           f"{_and_more(no_image, 'masks without images')}")
    return images, masks


def _unique(found: dict[str, list[str]], folder: Path, what: str) -> dict[str, str]:
    for file_id, paths in found.items():
        if len(paths) > 1:
            raise DatasetError(f"{folder / paths[1]}: second {what} named {file_id!r} (also {paths[0]})")
    return {file_id: paths[0] for file_id, paths in found.items()}


def _and_more(items: list, what: str) -> str:
    return f" (and {len(items) - 1} more {what})" if len(items) > 1 else ""


KINDS = {"folder": FolderReader}
