"""``stateful_loader``: torchdata's ``StatefulDataLoader`` without its deprecation warning."""

from __future__ import annotations

import warnings
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["stateful_loader"]


def stateful_loader(dataset: Any, **kwargs: Any) -> StatefulDataLoader:
    """A ``StatefulDataLoader(dataset, **kwargs)``, built without a dependency's warning.

    torchdata's constructor calls ``torch.set_vital``, which torch deprecates with a
    ``UserWarning`` ("'set_vital' is deprecated") that a user can do nothing about. This
    ignores that one warning, raised from torchdata, while the loader is built; every
    other warning passes as usual.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"'set_vital' is deprecated",
            category=UserWarning,
            module=r"torchdata\.stateful_dataloader",
        )
        return StatefulDataLoader(dataset, **kwargs)
