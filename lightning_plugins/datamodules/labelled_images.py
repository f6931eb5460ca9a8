"""Labelled images for zero-shot evaluation: a manifest with labels, or an ImageFolder tree."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_plugins.datamodules.manifest import manifest_rows
from lightning_plugins.datamodules.sample_decoding import _DECODE_ERRORS, Transform, decode_image
from lightning_plugins.models import resolve_path

__all__ = ["IMAGE_SUFFIXES", "LabelledImages", "read_labelled_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Files of a class folder that are read as images (as torchvision's ImageFolder)."""


class LabelledImages(Dataset):
    """Map-style labelled images; each image is decoded only when its sample is read.

    Each sample is a dict with ``image`` (the transformed image), ``label`` (int64 class
    id) and ``index`` (int64). An image that cannot be decoded raises a ``ValueError``
    naming the file.
    """

    def __init__(self, images: Sequence[str], labels: Sequence[int], transform: Transform):
        if len(images) != len(labels):
            raise ValueError(f"Got {len(images)} images but {len(labels)} labels.")
        self.images = list(images)
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            decoded = decode_image(self.images[index])
        except _DECODE_ERRORS as err:
            raise ValueError(
                f"Cannot decode the image of zero-shot sample {index} ({self.images[index]!r}): "
                f"{type(err).__name__}: {err}. Fix or remove the sample (no sample is skipped "
                "silently)."
            ) from err
        return {
            "image": self.transform(decoded),
            "label": self.labels[index],
            "index": torch.tensor(index, dtype=torch.long),
        }


def read_labelled_images(
    source: str, class_names: list[str] | None, argument: str = "zero_shot_val"
) -> tuple[list[str], list[int], list[str]]:
    """Image paths, class ids and class names of a labelled manifest or an image folder.

    ``source`` is a JSONL / CSV manifest with ``image`` (relative to the manifest's folder,
    or absolute) and ``label``, or a folder ``source/<class name>/<image>`` as torchvision's
    ``ImageFolder``. A manifest label is a class id (a JSON integer, or a string of digits
    that is not a class name) or a class name. Without ``class_names`` the classes are the
    sorted names of the manifest's labels or of the sub-folders; with them, every label or
    sub-folder must name one of them.

    Raises:
        ValueError: naming ``argument`` and the file or folder, for a missing source, a
            manifest row without ``image`` / ``label``, an unknown class name, a class id
            outside the classes, ids without ``class_names``, or a folder without class
            sub-folders or with an empty one.
    """
    path = resolve_path(source)
    if os.path.isdir(path):
        return _read_folder(path, class_names, argument)
    if not path.lower().endswith((".jsonl", ".ndjson", ".csv")):
        raise ValueError(
            f"`{argument}`={source!r} must be a folder of class sub-folders (as torchvision's "
            "ImageFolder) or a JSONL (.jsonl, .ndjson) or CSV (.csv) manifest with `image` and "
            "`label` fields."
        )
    if not os.path.isfile(path):
        raise ValueError(f"`{argument}`={source!r}: manifest file {path!r} does not exist.")
    return _read_manifest(path, class_names, argument)


def _read_folder(
    root: str, class_names: list[str] | None, argument: str
) -> tuple[list[str], list[int], list[str]]:
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not folders:
        raise ValueError(
            f"`{argument}`={root!r} holds no class sub-folders; an image folder is laid out as "
            "<root>/<class name>/<image> (as torchvision's ImageFolder)."
        )
    names = folders if class_names is None else class_names
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(
            f"`{argument}`={root!r} has sub-folders {unknown[:5]} that are not in `class_names` "
            f"({len(names)} names, such as {names[:5]})."
        )
    ids = {name: i for i, name in enumerate(names)}
    images: list[str] = []
    labels: list[int] = []
    for folder in folders:
        files = sorted(
            os.path.join(root, folder, f)
            for f in os.listdir(os.path.join(root, folder))
            if f.lower().endswith(IMAGE_SUFFIXES)
        )
        if not files:
            raise ValueError(
                f"`{argument}`: the class folder {os.path.join(root, folder)!r} holds no image "
                f"(files ending in {', '.join(IMAGE_SUFFIXES)}); remove it or add images."
            )
        images.extend(files)
        labels.extend([ids[folder]] * len(files))
    return images, labels, list(names)


def _read_manifest(
    path: str, class_names: list[str] | None, argument: str
) -> tuple[list[str], list[int], list[str]]:
    rows = manifest_rows(path, argument, ("image", "label"))
    for where, row in rows:
        image, label = row.get("image"), row.get("label")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where} (`{argument}`) needs a string 'image'; the row is {row!r}.")
        if isinstance(label, bool) or not isinstance(label, (int, str)) or label == "":
            raise ValueError(
                f"{where} (`{argument}`) needs a 'label' (a class name or an integer id); the "
                f"row is {row!r}."
            )
    if class_names is None:
        if any(not isinstance(row["label"], str) or row["label"].isdigit() for _, row in rows):
            raise ValueError(
                f"`{argument}`={path!r} labels samples by class id; give `class_names` (the name "
                "of each id) to evaluate zero-shot on it."
            )
        class_names = sorted({row["label"] for _, row in rows})
    ids = {name: i for i, name in enumerate(class_names)}
    folder = os.path.dirname(os.path.abspath(path))
    images: list[str] = []
    labels: list[int] = []
    for where, row in rows:
        label = row["label"]
        if isinstance(label, str) and label in ids:
            label = ids[label]
        elif isinstance(label, str) and not label.isdigit():
            raise ValueError(
                f"{where} (`{argument}`) has the label {label!r}, which is not a class name "
                f"(`class_names`: {len(class_names)} names, such as {class_names[:5]})."
            )
        label = int(label)
        if not 0 <= label < len(class_names):
            raise ValueError(
                f"{where} (`{argument}`) has the class id {label}, outside [0, "
                f"{len(class_names)}) (`class_names` has {len(class_names)} names)."
            )
        images.append(os.path.join(folder, row["image"]))
        labels.append(label)
    return images, labels, list(class_names)
