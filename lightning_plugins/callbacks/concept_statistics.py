"""Log how the concepts of each training batch are spread, and what a run delivered in all."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_plugins.callbacks.concept_plot import plot_concept_frequencies
from lightning_plugins.distributed import is_distributed
from lightning_plugins.functional._checks import check_bool, check_int
from lightning_plugins.functional.concept_statistics import (
    concept_counts,
    concept_histogram_statistics,
)

__all__ = ["ConceptStatistics"]

HISTOGRAM_FILE = "concept_histogram.json"
PLOT_FILE = "concept_frequency.png"


class ConceptStatistics(Callback):
    """Log concept coverage, entropy and imbalance of every training batch.

    For Concept-Aware Batch Sampling (CABS) and any other sampler that shapes which
    concepts a batch holds. Each training batch must carry ``batch[key]``: a ``[B, M]``
    int64 tensor of concept ids per sample, one entry per annotated object, padded with
    ``-1``. After every ``log_every_n_steps``-th training batch the callback logs, under
    ``prefix``, the statistics of :func:`~lightning_plugins.functional.concept_histogram_statistics`
    for that batch: ``coverage``, ``distinct``, ``entropy``, ``objects``,
    ``objects_per_sample``, ``no_concept_share`` and ``max_count``.

    Under DDP the statistics are those of the global batch: every rank's histogram and
    sample counts are all-reduced (one small collective per batch), so the logged values
    are identical on all ranks and are logged with ``sync_dist=False``.

    The callback also accumulates the global concept histogram of all delivered training
    batches. It is part of :meth:`state_dict` (tensors and integers only), so a resumed
    run continues it. When fitting ends, rank zero writes to ``trainer.log_dir`` (or
    ``trainer.default_root_dir`` without one) ``concept_histogram.json`` and, with
    ``plot=True``, ``concept_frequency.png``: the share of each concept among delivered
    occurrences on a log axis. When the datamodule has a ``concept_frequencies``
    attribute (``[num_concepts]`` training-set counts, what IID batches would show),
    concepts are sorted by it and it is drawn as the IID expectation. When it has
    ``concept_names`` (one name per concept id), the JSON file lists them in ``names``,
    beside ``counts``, and the plot labels its concepts with them (up to 64 concepts).

    Args:
        num_concepts: size of the concept vocabulary; ``None`` reads
            ``trainer.datamodule.num_concepts`` at setup.
        key: the batch key of the padded concept ids.
        log_every_n_steps: log the statistics of every n-th training batch (all batches
            are counted in the accumulated histogram).
        plot: also write ``concept_frequency.png`` when fitting ends.
        prefix: prepended to every logged name.

    Raises:
        TypeError: for a ``num_concepts`` or ``log_every_n_steps`` that is not an
            integer, a ``key`` or ``prefix`` that is not a string, or a ``plot`` that is
            not a bool.
        ValueError: for ``num_concepts < 1`` or ``log_every_n_steps < 1``, or an empty
            ``key``.

    Example:
        >>> callback = ConceptStatistics(num_concepts=4, log_every_n_steps=10)
        >>> callback.state_dict()  # doctest: +NORMALIZE_WHITESPACE
        {'num_concepts': 4, 'histogram': tensor([0, 0, 0, 0]), 'num_batches': 0,
         'num_samples': 0, 'num_empty_samples': 0}
    """

    def __init__(
        self,
        num_concepts: int | None = None,
        key: str = "concepts",
        log_every_n_steps: int = 1,
        plot: bool = True,
        prefix: str = "concepts/",
    ) -> None:
        super().__init__()
        num_concepts = check_int(num_concepts, "num_concepts", low=1, optional=True)
        log_every_n_steps = check_int(log_every_n_steps, "log_every_n_steps", low=1)
        for name, value in (("key", key), ("prefix", prefix)):
            if not isinstance(value, str):
                raise TypeError(f"`{name}` must be a string, got {value!r}.")
        if not key:
            raise ValueError("`key` must be a non-empty batch key, got ''.")
        self.num_concepts = num_concepts
        self.key = key
        self.log_every_n_steps = log_every_n_steps
        self.plot = check_bool(plot, "plot")
        self.prefix = prefix
        self.num_batches = 0
        # histogram counts, then the number of samples and of samples without concepts;
        # kept on the device of the batches, so accumulating needs no host sync
        self._totals: torch.Tensor | None = None
        if num_concepts is not None:
            self._totals = torch.zeros(num_concepts + 2, dtype=torch.long)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key, prefix=self.prefix)

    @property
    def histogram(self) -> torch.Tensor | None:
        """Accumulated ``[num_concepts]`` occurrence counts of all delivered training batches."""
        return None if self._totals is None else self._totals[:-2]

    def should_log(self, trainer: pl.Trainer) -> bool:
        """Whether to log the statistics of the batch that just ended.

        Called after :attr:`num_batches` counted that batch; the answer must be the same on
        every rank. Override for another policy.
        """
        return self.num_batches % self.log_every_n_steps == 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.num_concepts is None:
            datamodule = getattr(trainer, "datamodule", None)
            num_concepts = getattr(datamodule, "num_concepts", None)
            if num_concepts is None:
                raise ValueError(
                    "ConceptStatistics needs the size of the concept vocabulary: pass "
                    "`num_concepts`, or fit with a datamodule that has a `num_concepts` "
                    f"attribute (got datamodule {type(datamodule).__name__})."
                )
            self.num_concepts = check_int(num_concepts, "datamodule.num_concepts", low=1)
        if self._totals is None:
            self._totals = torch.zeros(self.num_concepts + 2, dtype=torch.long)
        elif self._totals.numel() != self.num_concepts + 2:
            raise ValueError(
                f"ConceptStatistics holds a histogram of {self._totals.numel() - 2} concepts "
                f"(from a loaded state), but `num_concepts` is {self.num_concepts}."
            )

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._totals is None or self.num_concepts is None:
            raise RuntimeError("ConceptStatistics was not set up; it runs inside `trainer.fit`.")
        num_concepts = self.num_concepts
        step = concept_counts(self._concepts(batch), num_concepts)
        if is_distributed():
            dist.all_reduce(step, op=dist.ReduceOp.SUM)
        if self._totals.device != step.device:
            self._totals = self._totals.to(step.device)
        self._totals += step
        self.num_batches += 1
        if not self.should_log(trainer):
            return
        statistics = concept_histogram_statistics(
            step[:num_concepts], step[num_concepts], step[num_concepts + 1]
        )
        # the weight of the epoch mean: the global batch size, the same on every rank
        batch_size = int(step[num_concepts])
        for name, value in statistics.items():
            pl_module.log(
                self.prefix + name,
                value.to(torch.get_default_dtype()),
                on_step=True,
                on_epoch=True,
                sync_dist=False,
                batch_size=batch_size,
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `trainer.log_dir` broadcasts from rank zero: every rank must ask
        log_dir = trainer.log_dir or trainer.default_root_dir
        if not trainer.is_global_zero or self._totals is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        written = self.save(
            log_dir, reference=self._reference(datamodule), names=self._names(datamodule)
        )
        rank_zero_info(
            f"ConceptStatistics: wrote {', '.join(path.name for path in written)} to {log_dir}"
        )

    def save(
        self,
        directory: str | os.PathLike[str],
        reference: torch.Tensor | None = None,
        names: list[str] | None = None,
    ) -> list[Path]:
        """Write ``concept_histogram.json`` (and with ``plot=True`` the plot) to ``directory``.

        Args:
            directory: the folder to write to; created if missing.
            reference: ``[num_concepts]`` training-set counts to sort the plot by and draw
                as the IID expectation, or ``None``.
            names: the name of each concept id, written as ``names`` beside ``counts``
                and used as the plot's concept labels, or ``None``.

        Returns:
            The paths written.
        """
        state = self.state_dict()
        if "histogram" not in state:
            raise RuntimeError("ConceptStatistics has no histogram yet: it was never set up.")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        counts = state["histogram"]
        path = directory / HISTOGRAM_FILE
        payload = {k: v for k, v in state.items() if k != "histogram"}
        if names is not None and len(names) != counts.numel():
            raise ValueError(
                f"`names` must name each of the {counts.numel()} concepts, got {len(names)}."
            )
        payload.update(num_objects=int(counts.sum()), counts=counts.tolist())
        if names is not None:
            payload["names"] = [str(name) for name in names]
        path.write_text(json.dumps(payload, indent=1) + "\n")
        written = [path]
        if self.plot:
            if int(counts.sum()) == 0:
                rank_zero_warn("ConceptStatistics: no concept was delivered; skipping the plot.")
            else:
                written.append(
                    plot_concept_frequencies(
                        {"delivered": counts},
                        directory / PLOT_FILE,
                        reference=reference,
                        names=names,
                        title="Concepts delivered in training"
                        + (" vs. IID expectation" if reference is not None else ""),
                    )
                )
        return written

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._totals is None or self.num_concepts is None:
            return {"num_batches": self.num_batches}
        totals = self._totals.detach().cpu()
        return {
            "num_concepts": self.num_concepts,
            "histogram": totals[:-2].clone(),
            "num_batches": self.num_batches,
            "num_samples": int(totals[-2]),
            "num_empty_samples": int(totals[-1]),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_batches = int(state_dict.get("num_batches", 0))
        if "histogram" not in state_dict:
            return
        histogram = torch.as_tensor(state_dict["histogram"]).to("cpu", torch.long)
        if self.num_concepts is not None and histogram.numel() != self.num_concepts:
            raise ValueError(
                f"The loaded ConceptStatistics state has a histogram of {histogram.numel()} "
                f"concepts, but `num_concepts` is {self.num_concepts}."
            )
        self.num_concepts = histogram.numel()
        counts = torch.tensor(
            [state_dict["num_samples"], state_dict["num_empty_samples"]], dtype=torch.long
        )
        self._totals = torch.cat([histogram, counts])

    def _concepts(self, batch: Any) -> torch.Tensor:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"ConceptStatistics expects dict batches with a {self.key!r} entry, got a "
                f"{type(batch).__name__}."
            )
        if self.key not in batch:
            raise KeyError(
                f"ConceptStatistics(key={self.key!r}): the training batch has no {self.key!r} "
                f"entry; its keys are {sorted(map(str, batch))}. Use a datamodule that yields "
                "concept annotations, or set `key`."
            )
        concepts = batch[self.key]
        if not isinstance(concepts, torch.Tensor):
            raise TypeError(
                f"`batch[{self.key!r}]` must be a [B, M] int64 tensor padded with -1, got a "
                f"{type(concepts).__name__}."
            )
        return concepts

    def _names(self, datamodule: Any) -> list[str] | None:
        names = getattr(datamodule, "concept_names", None)
        if names is None:
            return None
        if (
            isinstance(names, str)
            or not hasattr(names, "__len__")
            or len(names) != self.num_concepts
        ):
            rank_zero_warn(
                "ConceptStatistics: ignoring `datamodule.concept_names`, which is not a list of "
                f"num_concepts={self.num_concepts} names."
            )
            return None
        return [str(name) for name in names]

    def _reference(self, datamodule: Any) -> torch.Tensor | None:
        frequencies = getattr(datamodule, "concept_frequencies", None)
        if frequencies is None:
            return None
        reference: torch.Tensor | None
        if isinstance(frequencies, torch.Tensor):
            reference = frequencies.detach().to("cpu", torch.float64)
        else:
            try:
                reference = torch.from_numpy(np.asarray(frequencies, dtype=np.float64))
            except (TypeError, ValueError):
                reference = None
        if reference is None or reference.shape != (self.num_concepts,):
            rank_zero_warn(
                "ConceptStatistics: ignoring `datamodule.concept_frequencies`, which is not a "
                f"[num_concepts={self.num_concepts}] array of counts."
            )
            return None
        return reference
