"""SteerableSampler: the protocol callbacks steer, and how they find it in a train dataloader."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["SteerableSampler", "find_one_sampler", "find_steerable_sampler"]


@runtime_checkable
class SteerableSampler(Protocol):
    """A sampler that callbacks steer in place (see :class:`CurriculumSampler`).

    Changes are pending until the next epoch's iteration begins. A user's own sampler
    with these members works with the callbacks too.
    """

    @property
    def num_samples(self) -> int:
        """Dataset size: the length of the per-sample tensors the setters take."""
        ...

    def __len__(self) -> int:
        """Steps per epoch (the length of ``set_pacing``'s ``fractions``)."""
        ...

    def set_subset(self, subset: Any) -> None:
        """Allow only these samples (bool mask or indices; ``None``: all)."""
        ...

    def set_weights(self, weights: Any) -> None:
        """Draw with these per-sample weights (``None``: uniform)."""
        ...

    def set_pacing(self, ranking: Any, fractions: Any) -> None:
        """Narrow each step's pool to the easiest ``fractions[step]`` in ``ranking`` order."""
        ...


def find_steerable_sampler(dataloader: Any) -> SteerableSampler:
    """The one :class:`SteerableSampler` in ``dataloader`` (e.g. ``trainer.train_dataloader``).

    Looks, recursively, at a DataLoader's ``batch_sampler`` then its ``sampler``, at the
    entries of lists, tuples and dicts, and at the ``.iterables`` of Lightning's
    ``CombinedLoader``. Public attributes only: it never reads trainer internals.

    Raises:
        ValueError: when there is none (the message names what was found and how to add
            one) or more than one (the message names where each is).

    Example:
        >>> from torch.utils.data import DataLoader
        >>> from lightning_plugins.sampling import CurriculumSampler
        >>> sampler = CurriculumSampler(8, batch_size=2)
        >>> loader = DataLoader(range(8), batch_sampler=sampler)
        >>> find_steerable_sampler({"digits": loader}) is sampler
        True
        >>> find_steerable_sampler(DataLoader(range(8), shuffle=True))
        Traceback (most recent call last):
        ...
        ValueError: No steerable sampler in the train dataloader: found DataLoader(batch_sampler=BatchSampler, sampler=RandomSampler). ...
    """  # noqa: E501
    return find_one_sampler(
        dataloader,
        lambda obj: isinstance(obj, SteerableSampler),
        "steerable sampler",
        "Build the training DataLoader with `batch_sampler=CurriculumSampler(len(dataset), "
        "batch_size, seed=...)` from `lightning_plugins.sampling` (or another sampler "
        "with `set_subset`, `set_weights`, `set_pacing` and `num_samples`).",
    )


def find_one_sampler(
    dataloader: Any, is_match: Callable[[Any], bool], what: str, advice: str
) -> Any:
    """The one sampler under ``dataloader`` for which ``is_match`` holds (the shared search).

    The search of :func:`find_steerable_sampler` (and ``find_mixture_sampler``): a
    DataLoader's ``batch_sampler`` then its ``sampler``, the entries of lists, tuples and
    dicts, and the ``.iterables`` of Lightning's ``CombinedLoader``, recursively.

    Args:
        dataloader: what to search (e.g. ``trainer.train_dataloader``).
        is_match: whether an object is the sampler looked for.
        what: its name in the messages (``"steerable sampler"``).
        advice: how to add one, appended to the message when there is none.

    Raises:
        ValueError: when there is none (naming what was found, then ``advice``) or more
            than one (naming where each is).

    Example:
        >>> from torch.utils.data import DataLoader
        >>> from lightning_plugins.sampling import ShuffleSampler
        >>> sampler = ShuffleSampler(4)
        >>> loader = DataLoader(range(4), sampler=sampler)
        >>> is_shuffle = lambda obj: isinstance(obj, ShuffleSampler)
        >>> find_one_sampler([loader], is_shuffle, "shuffle sampler", "") is sampler
        True
    """
    found: list[tuple[str, Any]] = []
    description = _search(dataloader, "dataloader", found, set(), is_match)
    if not found:
        raise ValueError(f"No {what} in the train dataloader: found {description}. {advice}")
    if len(found) > 1:
        where = ", ".join(f"{type(s).__name__} at {path}" for path, s in found)
        raise ValueError(
            f"Found {len(found)} {what}s in the train dataloader ({where}); a callback steers "
            "exactly one: give the other loaders a plain sampler."
        )
    return found[0][1]


def _search(
    obj: Any,
    path: str,
    found: list[tuple[str, Any]],
    seen: set[int],
    is_match: Callable[[Any], bool],
) -> str:
    """Append the matching samplers under ``obj`` to ``found``; describe what was there."""
    if id(obj) in seen:
        return "(seen)"
    seen.add(id(obj))
    if is_match(obj):
        found.append((path, obj))
        return type(obj).__name__
    if hasattr(obj, "iterables"):
        return f"{type(obj).__name__}({_search(obj.iterables, path, found, seen, is_match)})"
    if hasattr(obj, "batch_sampler") and hasattr(obj, "sampler"):  # a DataLoader
        parts = []
        for attribute in ("batch_sampler", "sampler"):
            inner = getattr(obj, attribute)
            if inner is None:
                continue
            if is_match(inner):
                if id(inner) not in seen:
                    seen.add(id(inner))
                    found.append((f"{path}.{attribute}", inner))
            else:
                seen.add(id(inner))
            parts.append(f"{attribute}={type(inner).__name__}")
        return f"{type(obj).__name__}({', '.join(parts)})"
    if isinstance(obj, Mapping):
        inner = [
            f"{k!r}: {_search(v, f'{path}[{k!r}]', found, seen, is_match)}" for k, v in obj.items()
        ]
        return "{" + ", ".join(inner) + "}"
    if isinstance(obj, list | tuple):
        inner = [_search(v, f"{path}[{i}]", found, seen, is_match) for i, v in enumerate(obj)]
        return "[" + ", ".join(inner) + "]"
    return "None" if obj is None else type(obj).__name__
