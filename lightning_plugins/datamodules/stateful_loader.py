"""``stateful_loader``: torchdata's ``StatefulDataLoader`` without its deprecation warning."""

from __future__ import annotations

import warnings
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["stateful_loader"]


class _SizedLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over an iterable dataset whose batches per epoch are known."""

    def __init__(self, dataset: Any, length: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.length = length

    def __len__(self) -> int:
        return self.length


def stateful_loader(dataset: Any, length: int | None = None, **kwargs: Any) -> StatefulDataLoader:
    """A ``StatefulDataLoader(dataset, **kwargs)``, built without a dependency's warning.

    torchdata's constructor calls ``torch.set_vital``, which torch deprecates with a
    ``UserWarning`` ("'set_vital' is deprecated") that a user can do nothing about. This
    ignores that one warning, raised from torchdata, while the loader is built; every
    other warning passes as usual.

    ``length`` gives an iterable dataset's loader its exact number of batches per epoch.
    Lightning then knows the epoch's length and does not fetch a batch ahead, which it
    does for loaders without one: the loader's state in a mid-epoch checkpoint would
    count that batch as handed out, and a resumed run would skip it. (Lightning warns
    that an ``IterableDataset`` with a length "could be inaccurate"; this one is exact.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"'set_vital' is deprecated",
            category=UserWarning,
            module=r"torchdata\.stateful_dataloader",
        )
        if length is not None:
            return _SizedLoader(dataset, length, **kwargs)
        return StatefulDataLoader(dataset, **kwargs)
