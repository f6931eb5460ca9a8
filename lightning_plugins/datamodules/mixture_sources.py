"""The sources of a mixture: resolved from datasets or datamodules, concatenated and tagged."""

from __future__ import annotations

import bisect
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import Dataset, IterableDataset

from lightning_plugins.functional._checks import _type_name

__all__ = [
    "MixtureDataset",
    "ResolvedSources",
    "SkillDataModule",
    "SourceTagged",
    "resolve_sources",
]


class SkillDataModule(pl.LightningDataModule, metaclass=ABCMeta):
    """A datamodule with ``skill_datasets(split) -> {name: Dataset}``: one source per skill.

    Any ``LightningDataModule`` class with a ``skill_datasets`` method counts as a subclass
    (``issubclass(LegoSkills, SkillDataModule)``), without inheriting from this. It is the
    type hint that lets LightningCLI tell one such datamodule (given with its full class
    path, ``lightning_plugins.datamodules.LegoSkills``) from a mapping of sources.

    Example:
        >>> from lightning_plugins.datamodules import Digits, LegoSkills
        >>> issubclass(LegoSkills, SkillDataModule), issubclass(Digits, SkillDataModule)
        (True, False)
    """

    @abstractmethod
    def skill_datasets(self, split: str) -> Mapping[str, Dataset]:
        """One dataset per skill of ``split`` (``"train"``, ``"val"``), keyed by name."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        if cls is SkillDataModule and issubclass(other, pl.LightningDataModule):
            return callable(getattr(other, "skill_datasets", None)) or NotImplemented
        return NotImplemented


def _tagged(sample: Any, name: str, source: int, position: int) -> dict[str, Any]:
    """A copy of ``sample`` (a dict) with ``source`` (int64) added."""
    if not isinstance(sample, Mapping):
        raise TypeError(
            f"Source {name!r} (source {source}) returned a {_type_name(sample)} at index "
            f"{position}; a mixture needs samples that are dicts, to add `source` and "
            "`index` to them (batches are dicts: wrap the dataset to return e.g. "
            '{"image": ..., "label": ...}).'
        )
    for key in ("source", "source_index"):
        if key in sample:
            raise ValueError(
                f"Source {name!r} (source {source}) returned a sample with the key {key!r} at "
                f"index {position}; the mixture sets `source`, `index` and `source_index` "
                "itself: rename that key in the source's samples."
            )
    tagged = dict(sample)
    tagged["source"] = torch.tensor(source, dtype=torch.long)
    return tagged


class SourceTagged(Dataset):
    """The samples of one source's dataset with ``source`` (int64, the source id) added.

    Every other key is kept as the dataset returns it (held-out and target sets).

    Example:
        >>> ds = SourceTagged([{"x": 1}, {"x": 2}], name="b", source=1)
        >>> len(ds), ds[1]["x"], int(ds[1]["source"])
        (2, 2, 1)
    """

    def __init__(self, dataset: Any, name: str, source: int) -> None:
        self.dataset, self.name, self.source = dataset, name, source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _tagged(self.dataset[index], self.name, self.source, index)


class MixtureDataset(Dataset):
    """The concatenation of the sources' datasets: global index ``offset[s] + i``.

    Sample ``g`` (in source ``s`` at local position ``i``) is source ``s``'s sample ``i``
    with ``source`` = ``s`` and ``index`` = ``g`` (both int64), the source's own
    ``index`` (if any; else ``i``) kept as ``source_index``. Samples must be dicts.

    Example:
        >>> ds = MixtureDataset([[{"x": 0}, {"x": 1}], [{"x": 2, "index": 7}]], ["a", "b"])
        >>> {k: int(v) for k, v in ds[2].items()}
        {'x': 2, 'source_index': 7, 'source': 1, 'index': 2}
    """

    def __init__(self, datasets: Sequence[Any], names: Sequence[str]) -> None:
        self.datasets, self.names = list(datasets), list(names)
        self.sizes = [len(dataset) for dataset in self.datasets]
        self.ends = [sum(self.sizes[: s + 1]) for s in range(len(self.sizes))]

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        source = bisect.bisect_right(self.ends, index)
        local = index - (self.ends[source] - self.sizes[source])
        sample = self.datasets[source][local]
        name = self.names[source]
        own = sample.get("index", local) if isinstance(sample, Mapping) else None
        tagged = _tagged(sample, name, source, local)
        tagged.pop("index", None)
        tagged["source_index"] = torch.as_tensor(own, dtype=torch.long)
        tagged["source"] = tagged.pop("source")  # keys in a fixed order
        tagged["index"] = torch.tensor(index, dtype=torch.long)
        return tagged


class ResolvedSources:
    """Names, training datasets and default held-out datasets of a mixture's sources."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.train: list[Any] = []
        self.held_out: dict[str, Any] = {}


def _check_dataset(dataset: Any, what: str) -> int:
    """The size of map-style ``dataset`` (``what`` names it in errors)."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"{what} must be a map-style dataset (with `__len__` and `__getitem__`), got "
            f"{_type_name(dataset)}."
        )
    try:
        size = len(dataset)
    except TypeError as err:
        raise TypeError(
            f"{what} must have a length (`__len__`), got {_type_name(dataset)}."
        ) from err
    if size == 0:
        raise ValueError(f"{what} is empty: every source needs at least one sample.")
    return size


def _first_loader_dataset(loaders: Any) -> Any:
    if isinstance(loaders, Sequence) and not isinstance(loaders, str):
        loaders = loaders[0] if len(loaders) else None
    return getattr(loaders, "dataset", None)


def resolve_sources(sources: Any) -> ResolvedSources:
    """The sources of ``sources`` (see :class:`~lightning_plugins.datamodules.MixtureDataModule`).

    A mapping ``name -> dataset | datamodule`` gives one source per entry (a datamodule's
    ``train_dataloader().dataset`` after ``setup("fit")``, and its first validation
    loader's dataset as the held-out set); a datamodule with ``skill_datasets(split)``
    gives one source per skill (held-out: ``skill_datasets("val")``).

    Raises:
        TypeError: for anything else, or a source that is neither a map-style dataset nor
            a datamodule.
        ValueError: for no source or an empty one (named).

    Example:
        >>> resolved = resolve_sources({"a": [{"x": 0}], "b": [{"x": 1}, {"x": 2}]})
        >>> resolved.names, [len(d) for d in resolved.train], resolved.held_out
        (['a', 'b'], [1, 2], {})
    """
    resolved = ResolvedSources()
    if isinstance(sources, pl.LightningDataModule):
        if not callable(getattr(sources, "skill_datasets", None)):
            raise TypeError(
                f"`sources` must be a mapping {{name: dataset or datamodule}} or a datamodule "
                f"with `skill_datasets(split)` (one source per skill, like LegoSkills), got "
                f"{type(sources).__name__}, which has no `skill_datasets`; pass "
                f"{{'name': datamodule}} to use its training set as one source."
            )
        train = dict(sources.skill_datasets("train"))
        try:
            resolved.held_out = dict(sources.skill_datasets("val"))
        except (KeyError, ValueError):
            resolved.held_out = {}
        resolved.names = [str(name) for name in train]
        resolved.train = list(train.values())
    elif isinstance(sources, Mapping):
        for name, source in sources.items():
            if not isinstance(name, str):
                raise TypeError(f"`sources` names must be strings, got {name!r}.")
            resolved.names.append(name)
            if isinstance(source, pl.LightningDataModule):
                source.setup("fit")
                resolved.train.append(source.train_dataloader().dataset)
                if is_overridden("val_dataloader", source, pl.LightningDataModule):
                    source.setup("validate")
                    held_out = _first_loader_dataset(source.val_dataloader())
                    if held_out is not None:
                        resolved.held_out[name] = held_out
            elif isinstance(source, Dataset) or (
                hasattr(source, "__getitem__") and hasattr(source, "__len__")
            ):
                resolved.train.append(source)
            else:
                raise TypeError(
                    f"`sources[{name!r}]` must be a map-style Dataset or a "
                    f"LightningDataModule, got {source!r} ({_type_name(source)})."
                )
    else:
        raise TypeError(
            f"`sources` must be a mapping {{name: dataset or datamodule}} or a datamodule "
            f"with `skill_datasets(split)`, got {_type_name(sources)}."
        )
    if not resolved.names:
        raise ValueError(f"`sources` must hold at least one source, got {sources!r}.")
    for name, dataset in zip(resolved.names, resolved.train, strict=True):
        _check_dataset(dataset, f"Source {name!r} (`sources[{name!r}]`)")
    return resolved
