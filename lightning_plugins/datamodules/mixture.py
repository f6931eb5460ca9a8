"""MixtureDataModule: training batches mixed from named sources by steerable weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.checked_resume import CheckedResume
from lightning_plugins.datamodules.mixture_sources import (
    MixtureDataset,
    SkillDataModule,
    SourceTagged,
    _check_dataset,
    resolve_sources,
)
from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.functional._checks import _type_name, check_choice, check_int
from lightning_plugins.functional.mixing import check_mixture_weights
from lightning_plugins.sampling import MixtureSampler
from lightning_plugins.sampling.mixture_sampler import MODES

__all__ = ["MixtureDataModule"]


class MixtureDataModule(CheckedResume):
    """Training batches mixed from named sources, by weights that mixing callbacks steer.

    **Sources.** ``sources`` is a mapping ``name -> dataset or datamodule`` (a datamodule
    contributes ``train_dataloader().dataset`` after ``setup("fit")``), or one datamodule
    with ``skill_datasets(split) -> {name: dataset}`` (like
    :class:`~lightning_plugins.datamodules.LegoSkills`): one source per skill. Datasets are
    map-style, non-empty, and return dicts. They are resolved at construction. In a
    LightningCLI YAML, give one skill datamodule with its full class path (``sources:
    {class_path: lightning_plugins.datamodules.LegoSkills, init_args: {...}}``; the type
    hint :class:`~lightning_plugins.datamodules.mixture_sources.SkillDataModule` tells it
    from a mapping), a mapping as ``sources: {name: {class_path: Digits, ...}, ...}``.

    **Training.** A ``StatefulDataLoader`` over the concatenation of the sources with a
    :class:`~lightning_plugins.sampling.MixtureSampler` as batch sampler
    (``mode``, ``seed``, ``num_steps=steps_per_epoch``; DDP-ready, resumable mid-epoch;
    found by :func:`~lightning_plugins.sampling.find_mixture_sampler`). Weights set on the
    sampler apply from the next epoch, so ``steps_per_epoch`` is how often they can change.
    Training batches hold each source's keys plus

    - ``source`` (int64): the source id, the position of its name in ``source_names``;
    - ``index`` (int64): the global index in the concatenation (what the sampler yields:
      ``offset[source] + local position``);
    - ``source_index`` (int64): the source's own ``index`` (its local position if its
      samples have none).

    **Held-out data.** ``val_sources`` (default: ``skill_datasets("val")`` of a skill
    datamodule, else each datamodule source's first validation loader's dataset, else
    none) gives held-out samples per source; :meth:`val_dataloader` and
    :meth:`test_dataloader` return one loader per source that has them (there is no
    separate test split), in source order, each in index order, batches carrying
    ``source``. ``target`` is DGA's target set: a dataset, or the name of a source (its
    held-out set).

    **What mixing callbacks read** (the protocol; a user's datamodule providing it works
    with the mixing callbacks):

    - ``source_names: list[str]``, ``num_sources: int``;
    - ``skill_names: list[str] | None``: the names of the sources with held-out data, in
      the order of :meth:`val_dataloader` (``None`` without held-out data), so modules such
      as :class:`~lightning_plugins.modules.CausalLM` log ``val/<metric>/<name>``;
    - ``initial_weights``: float64 ``[num_sources]`` normalised weights the sampler starts
      from;
    - :meth:`eval_dataloaders` ``-> {name: DataLoader}``: the held-out loader of each source
      that has one; :meth:`target_dataloader` ``-> DataLoader | None``.

    Args:
        sources: ``{name: Dataset | LightningDataModule}``, or a datamodule with
            ``skill_datasets``.
        weights: initial mixture weights, ``{name: weight}`` (every source named) or one per
            source in order; normalised to sum to 1 (only ratios matter; 0 excludes a
            source). ``None``: proportional to the source sizes (every sample equally
            likely). Ignored by ``mode="stratified"`` (equal shares).
        mode: ``"dynamic"`` (steered by callbacks), ``"static"`` or ``"stratified"``.
        batch_size: training samples per batch and process.
        steps_per_epoch: batches per epoch (``None``: one pass over the total size).
        val_sources: ``{name: Dataset}`` held-out samples per source (names among
            ``sources``), replacing the default.
        target: a dataset, or the name of a source with held-out data.
        eval_batch_size: batch size of the held-out and target loaders (``None``:
            ``batch_size``).
        seed: seed of the sampler.
        num_workers: dataloader worker processes.

    **Resuming.** :meth:`state_dict` holds :meth:`config` (source names and sizes and the
    sampler's settings); resuming a fit with others raises a ``ValueError`` naming each.

    Raises:
        TypeError: for sources that are neither a mapping nor a skill datamodule, a source
            that is neither a dataset nor a datamodule, or an argument of the wrong type.
        ValueError: for no source, an empty one, weights naming an unknown source or
            missing one, bad weights (negative, NaN, all 0, wrong length), an unknown
            ``mode``, ``steps_per_epoch`` < 1, or a ``target`` name that does not exist.

    Example:
        >>> letters = [{"x": torch.tensor(i)} for i in range(6)]
        >>> digits = [{"x": torch.tensor(10 + i)} for i in range(2)]
        >>> dm = MixtureDataModule({"letters": letters, "digits": digits},
        ...                        weights={"letters": 1, "digits": 3}, batch_size=4)
        >>> dm.source_names, dm.initial_weights.tolist(), dm.skill_names
        (['letters', 'digits'], [0.25, 0.75], None)
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["source"].tolist(), batch["index"].tolist()
        (['index', 'source', 'source_index', 'x'], [1, 0, 1, 1], [7, 5, 6, 7])
        >>> batch["source_index"].tolist(), batch["x"].tolist()  # digits 1 and 0, letter 5
        ([1, 5, 0, 1], [11, 5, 10, 11])
    """

    def __init__(
        self,
        sources: SkillDataModule | Mapping[str, Dataset | pl.LightningDataModule],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        mode: str = "dynamic",
        batch_size: int = 64,
        steps_per_epoch: int | None = None,
        val_sources: Mapping[str, Dataset] | None = None,
        target: Dataset | str | None = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.mode = check_choice(mode, "mode", MODES)
        self.batch_size = check_int(batch_size, "batch_size", low=1)
        self.steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", low=1, optional=True)
        self.eval_batch_size = check_int(eval_batch_size, "eval_batch_size", low=1, optional=True)
        self.seed = check_int(seed, "seed")
        self.num_workers = check_int(num_workers, "num_workers", low=0)
        resolved = resolve_sources(sources)
        self.source_names: list[str] = resolved.names
        self.num_sources = len(self.source_names)
        self.train_set = MixtureDataset(resolved.train, self.source_names)
        self.source_sizes: list[int] = list(self.train_set.sizes)
        self.initial_weights = self._initial_weights(weights)
        held_out = resolved.held_out if val_sources is None else self._val_sources(val_sources)
        self.held_out: dict[str, SourceTagged] = {
            name: SourceTagged(held_out[name], name, source)
            for source, name in enumerate(self.source_names)
            if name in held_out
        }
        self.skill_names: list[str] | None = list(self.held_out) or None
        self.target_set = self._target(target)

    # ---------------------------------------------------------------- argument checks
    def _initial_weights(self, weights: Any) -> torch.Tensor:
        if self.mode == "stratified":
            return torch.full((self.num_sources,), 1.0 / self.num_sources, dtype=torch.float64)
        if weights is None:
            weights = self.source_sizes
        elif isinstance(weights, Mapping):
            unknown = [name for name in weights if name not in self.source_names]
            missing = [name for name in self.source_names if name not in weights]
            if unknown or missing:
                problem = f"names unknown sources {unknown}" if unknown else f"misses {missing}"
                raise ValueError(
                    f"`weights` {dict(weights)!r} {problem}; it must give one weight to each "
                    f"source of {self.source_names} (or be a list in that order)."
                )
            weights = [weights[name] for name in self.source_names]
        return check_mixture_weights(weights, "weights", self.num_sources)

    def _val_sources(self, val_sources: Any) -> dict[str, Any]:
        if not isinstance(val_sources, Mapping):
            raise TypeError(
                f"`val_sources` must be a mapping {{source name: dataset}}, got "
                f"{_type_name(val_sources)}."
            )
        for name, dataset in val_sources.items():
            if name not in self.source_names:
                raise ValueError(
                    f"`val_sources` names an unknown source {name!r}; the sources are "
                    f"{self.source_names}."
                )
            _check_dataset(dataset, f"`val_sources[{name!r}]`")
        return dict(val_sources)

    def _target(self, target: Any) -> Any:
        if target is None:
            return None
        if isinstance(target, str):
            if target not in self.source_names:
                raise ValueError(
                    f"`target` {target!r} is no source; the sources are {self.source_names}."
                )
            if target not in self.held_out:
                raise ValueError(
                    f"`target` {target!r} names a source without held-out data; the sources "
                    f"with held-out data are {list(self.held_out)} (give `val_sources`, or a "
                    "dataset as `target`)."
                )
            return self.held_out[target]
        _check_dataset(target, "`target`")
        return target

    # -------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> StatefulDataLoader:
        """Mixed training batches from a :class:`~lightning_plugins.sampling.MixtureSampler`."""
        sampler = MixtureSampler(
            self.source_sizes,
            self.batch_size,
            weights=self.initial_weights,
            mode=self.mode,
            seed=self.seed,
            num_steps=self.steps_per_epoch,
        )
        return stateful_loader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _loader(self, dataset: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size or self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def eval_dataloaders(self) -> dict[str, DataLoader]:
        """The held-out loader of each source that has held-out data, in source order."""
        return {name: self._loader(dataset) for name, dataset in self.held_out.items()}

    def target_dataloader(self) -> DataLoader | None:
        """The loader of the target set (``None`` without ``target``), in index order."""
        return None if self.target_set is None else self._loader(self.target_set)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per source with held-out data, in the order of ``skill_names``."""
        return list(self.eval_dataloaders().values())

    def test_dataloader(self) -> list[DataLoader]:
        """The held-out loaders of :meth:`val_dataloader` (there is no separate test split)."""
        return self.val_dataloader()

    def config(self) -> dict[str, Any]:
        """The settings the training stream (and a saved loader position) depends on."""
        return {
            "kind": type(self).__name__,
            "source_names": list(self.source_names),
            "source_sizes": list(self.source_sizes),
            "batch_size": self.batch_size,
            "mode": self.mode,
            "steps_per_epoch": self.steps_per_epoch,
            "seed": self.seed,
            "num_workers": self.num_workers,
        }
