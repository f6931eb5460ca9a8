"""DecodingStream: decode the images of a stream of undecoded samples, keeping the epoch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import IterableDataset

from lightning_plugins.datamodules.sample_decoding import Transform, decode_sample
from lightning_plugins.functional._checks import check_int

__all__ = ["DecodingStream"]


def _where(sample: dict[str, Any]) -> str:
    """The sample in error messages: its key and shard, else its index.

    The key and shard are webdataset's ``__key__`` / ``__url__``, when the source gives them.
    """
    where = f"sample {sample.get('__key__', sample.get('index'))!r}"
    return f"{where} of shard {sample['__url__']!r}" if "__url__" in sample else where


class DecodingStream(IterableDataset):
    """Decode and transform the images of a stream of undecoded samples.

    Turns each dict of ``source`` (with ``image_bytes``, ``caption``, ``index`` and
    optionally ``concepts``) into a training sample: ``image`` (the transformed image),
    ``caption``, ``index`` (int64) and, with ``max_objects``, ``concepts``
    (``[max_objects]`` int64 ids padded with -1). Placed after a selection step, it
    decodes only the samples that step keeps. An image that cannot be decoded raises a
    ``ValueError`` naming the sample's key and shard (``__key__`` / ``__url__``).

    It also keeps the epoch of the whole chain: each iteration after the first moves to
    the next epoch and passes it to every stage below (following ``.source``) that has
    ``set_epoch``. Lightning does not call ``set_epoch`` on iterable datasets, so the
    DataLoader should keep its workers (``persistent_workers=True``) for the count to
    carry across epochs. ``state_dict`` holds the epoch and the state of ``source``.

    Args:
        source: iterable of undecoded sample dicts.
        transform: maps a PIL image to a tensor.
        max_objects: width of the padded ``concepts`` tensor, or ``None`` to drop
            ``concepts``.

    Raises:
        TypeError: for a ``source`` that is not iterable, a ``transform`` that is not
            callable or a ``max_objects`` that is not an integer; when iterating, for a
            concept id that is not an integer.
        ValueError: for a ``max_objects`` below 1; when iterating, for an image that
            cannot be decoded.
    """

    def __init__(
        self, source: Iterable[dict[str, Any]], transform: Transform, max_objects: int | None
    ) -> None:
        if not isinstance(source, Iterable):
            raise TypeError(
                f"`source` must be an iterable of sample dicts, got {type(source).__name__}."
            )
        if not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}.")
        self.source = source
        self.transform = transform
        self.max_objects = check_int(max_objects, "max_objects", low=1, optional=True)
        self.epoch = 0
        self._started = False

    def set_epoch(self, epoch: int) -> None:
        """Set ``epoch`` here and on every stage below that has ``set_epoch``."""
        self.epoch = int(epoch)
        stage = self.source
        while stage is not None:
            if callable(getattr(stage, "set_epoch", None)):
                stage.set_epoch(self.epoch)
            stage = getattr(stage, "source", None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.set_epoch(self.epoch + 1 if self._started else self.epoch)
        self._started = True
        for sample in self.source:
            yield decode_sample(
                sample["image_bytes"],
                sample["caption"],
                int(sample["index"]),
                self.transform,
                None if self.max_objects is None else sample["concepts"],
                self.max_objects or 0,
                where=_where(sample),
            )

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the state of ``source`` (if it has one)."""
        source = self.source.state_dict() if hasattr(self.source, "state_dict") else None
        return {"epoch": self.epoch, "source": source}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved epoch where ``source``'s saved state stands."""
        self.epoch = int(state_dict["epoch"])
        self._started = False
        if state_dict.get("source") is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(state_dict["source"])
