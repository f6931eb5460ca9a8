"""Concept-Aware Batch Sampling (CABS): choose a batch from a super-batch by its concepts."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from itertools import compress
from operator import itemgetter
from typing import NamedTuple

import numpy as np
import torch

from lightning_plugins.functional._checks import (
    check_choice,
    check_float,
    check_int,
    check_length,
)
from lightning_plugins.functional.concept_lists import ConceptLists, concept_csr, concept_lengths
from lightning_plugins.functional.random_streams import keyed_generator

__all__ = [
    "CABS_VARIANTS",
    "cabs_generator",
    "cabs_select",
    "cabs_target_counts",
    "check_cabs_arguments",
    "check_cabs_targets",
]

CABS_VARIANTS = ("dm", "fm")
OVER_TARGET_GAIN = -0.5
"""Gain of a concept occurrence once the batch holds the concept's target count."""
NO_CONCEPT_GAIN = -1.0
"""Gain of a sample without concepts: below any annotated sample, so it is picked last."""
_WINDOW = 256  # candidates in one round of the greedy
_STALE_LIMIT = 16  # re-scorings in a row after which a round ends
_TARGET_SUM_TOLERANCE = 1e-4


def check_cabs_targets(targets: torch.Tensor, name: str = "targets") -> torch.Tensor:
    """``targets`` as a float64 CPU distribution over concepts, or a ``ValueError``.

    Example:
        >>> check_cabs_targets(torch.tensor([0.25, 0.75])).dtype
        torch.float64
    """
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.numel() == 0:
        raise ValueError(
            f"`{name}` must be a 1-D distribution over the concept vocabulary, got shape "
            f"{tuple(targets.shape)}."
        )
    targets = targets.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(targets).all()) or bool((targets < 0).any()):
        bad = targets[~torch.isfinite(targets) | (targets < 0)][0].item()
        raise ValueError(f"`{name}` must be finite and non-negative, got an entry {bad}.")
    total = float(targets.sum())
    if abs(total - 1.0) > _TARGET_SUM_TOLERANCE:
        raise ValueError(f"`{name}` must sum to 1 (a distribution over concepts), got {total:.6g}.")
    return targets


def cabs_target_counts(
    targets: torch.Tensor, batch_size: int, cap: int | None = None
) -> torch.Tensor:
    """Wanted occurrences of each concept in a batch: ``targets * batch_size``, capped.

    ``targets`` is a distribution over the vocabulary; the default DM target is uniform
    over the concepts present in the (global) super-batch. A target below one behaves
    like one: a batch holds a concept zero times or at least once.

    Example:
        >>> cabs_target_counts(torch.tensor([0.5, 0.25, 0.25, 0.0]), 40, cap=15).tolist()
        [15.0, 10.0, 10.0, 0.0]
    """
    counts = targets.to(torch.float64) * batch_size
    return counts if cap is None else counts.clamp(max=float(cap))


def cabs_select(
    concepts: ConceptLists,
    batch_size: int,
    variant: str = "dm",
    targets: torch.Tensor | None = None,
    cap: int | None = 10,
    generator: torch.Generator | None = None,
    num_concepts: int | None = None,
) -> torch.Tensor:
    """Indices of the ``batch_size`` samples CABS keeps from a super-batch.

    **FM** (frequency maximisation) keeps the samples with the most annotated objects,
    stable in super-batch order for equal counts. It reads only how many objects each
    sample has, so (given per-sample lists) it does not look at, or check, the ids.

    **DM** (diversity maximisation) fills the batch greedily. Concept ``c`` has a target
    count ``t_c = min(targets[c] * batch_size, cap)``; with ``targets=None`` the target is
    uniform over the concepts present. With ``n_c`` the batch's current count and
    ``f_c`` the number of super-batch samples holding ``c``, one occurrence of ``c``
    gains ``(t_c - n_c) / t_c + 1 / f_c`` while ``n_c < t_c`` and ``-0.5`` after. A
    sample's gain is the mean over its occurrences (duplicates count); a sample without
    concepts gains ``-1`` (picked last); a sample that would take any concept past the
    cap is excluded. The best sample is picked, counts update, repeat. Gains are compared
    at a resolution of ``2**-32`` (the mean is formed from terms exact to ``2**-47``,
    then rounded), so gains equal in exact arithmetic compare equal, and equal gains are
    ordered by a random permutation drawn from ``generator`` (never by concept id).

    **When the cap rules out every remaining sample** (long-tailed data), the cap rises
    to the smallest value at which a remaining sample fits and the greedy goes on, so the
    batch always holds exactly ``batch_size`` samples and the largest count of one
    concept stays as low as the greedy can keep it (the targets stay as they were).

    Gains only fall as the batch fills, so a lazy priority queue re-scores just the
    candidates that reach its top: the picks equal the plain greedy's.

    Args:
        concepts: concept ids of each super-batch sample (see :data:`ConceptLists`).
        batch_size: samples to keep, ``1 <= batch_size <= len(super-batch)``.
        variant: ``"dm"`` or ``"fm"``.
        targets: ``[num_concepts]`` target distribution (non-negative, sums to 1), or
            ``None`` for uniform over the present concepts (DM only).
        cap: most occurrences of one concept in the batch while the greedy can keep to
            it (DM only), ``None`` for no cap.
        generator: random source for tie-breaking (DM only).
        num_concepts: vocabulary size, to check ids; defaults to ``len(targets)``.

    Returns:
        ``[batch_size]`` int64 positions in the super-batch, in pick order.

    Raises:
        TypeError: for a ``batch_size``, ``cap`` or ``num_concepts`` that is not an integer.
        ValueError: for an unknown variant, a batch size outside ``[1, len(super-batch)]``,
            a cap below 1, ids outside the vocabulary, or targets that are not a
            distribution.

    Example:
        >>> concepts = [[0, 0, 0], [0, 1], [2], [0], [], [1, 2, 3]]
        >>> cabs_select(concepts, 3, "fm").tolist()
        [0, 5, 1]
        >>> gen = torch.Generator().manual_seed(0)
        >>> sorted(cabs_select(concepts, 3, "dm", cap=1, generator=gen).tolist())
        [3, 4, 5]
    """
    variant = check_choice(variant, "variant", CABS_VARIANTS)
    cap = check_int(cap, "cap", low=1, optional=True)
    num_concepts = check_int(num_concepts, "num_concepts", low=1, optional=True)
    if targets is not None:
        targets = check_cabs_targets(targets)
        if num_concepts is not None:
            check_length(targets, "targets", num_concepts, "concept")
        num_concepts = targets.numel()
    if variant == "fm":
        lengths = concept_lengths(concepts, num_concepts)
        check_int(batch_size, "batch_size", low=1, high=lengths.numel())
        return torch.sort(lengths, descending=True, stable=True).indices[:batch_size]
    ids, offsets = concept_csr(concepts, num_concepts)
    batch_size = check_int(batch_size, "batch_size", low=1, high=offsets.numel() - 1)
    order = torch.randperm(offsets.numel() - 1, generator=generator)
    state = _GreedyState(ids.numpy(), offsets.numpy(), order.numpy(), targets, batch_size, cap)
    return torch.tensor(_greedy_dm(state, batch_size), dtype=torch.long)


def cabs_generator(
    seed: int, epoch: int, super_batch: int, worker: int = 0, rank: int = 0
) -> torch.Generator:
    """The tie-breaking random source of one super-batch, for every CABS sampler.

    :func:`~lightning_plugins.functional.random_streams.keyed_generator` of
    ``(seed, epoch, super_batch, worker, rank)``: nearby keys give unrelated streams and
    no two keys share a seed by arithmetic accident.

    Example:
        >>> a, b = cabs_generator(0, 1, 2), cabs_generator(0, 1, 2)
        >>> torch.equal(torch.randperm(5, generator=a), torch.randperm(5, generator=b))
        True
    """
    return keyed_generator(seed, epoch, super_batch, worker, rank)


# ---------------------------------------------------------------------------- greedy DM

_TERM_BITS = 47  # occurrence gains are held as integers in units of 2**-47: exact sums
_HALF_UNIT = 2 ** (_TERM_BITS - 33)  # a gain's key: its mean in units of 2**-32, rounded
_NO_CONCEPT_KEY = int(NO_CONCEPT_GAIN * 2**32)
_PICKED = -(2**62)  # the key of a sample in the batch, below every gain
_MAX_OBJECTS = 2**14  # objects per sample that keep a sum of terms (each < 2**48) in int64


class _Occurrences(NamedTuple):
    """The super-batch's concept occurrences by sample (CSR) and by concept (inverted)."""

    flat: np.ndarray  # dense concept id of each occurrence, samples in order
    lengths: np.ndarray  # [num_samples] occurrences of each sample
    holder: np.ndarray  # sample of each occurrence, grouped by concept, most copies first
    multiplicity: np.ndarray  # copies of its concept in its sample, for each of `holder`
    concept_start: np.ndarray  # [K + 1] CSR offsets into `holder`
    present: np.ndarray  # [K] vocabulary id of each dense id
    frequencies: np.ndarray  # [K] samples holding each concept


class _TermTable(NamedTuple):
    """Gain of one occurrence of each concept at each count, written by :func:`_term_table`.

    Concept ``c`` at count ``n`` reads ``values[min(start[c] + n, stop[c])]``; ``stop[c]``
    holds the over-target gain, every entry before it is positive.
    """

    values: np.ndarray  # int64, in units of 2**-47
    start: np.ndarray
    stop: np.ndarray


def _term_table(target_counts: np.ndarray, frequencies: np.ndarray) -> _TermTable:
    """The occurrence gains of every concept at every count: the one gain formula.

    ``(t_c - n) / t_c + 1 / f_c`` for the counts ``n < t_c``, then ``OVER_TARGET_GAIN``.
    """
    under = np.ceil(target_counts).astype(np.int64)  # counts n = 0 .. under - 1 are below t_c
    start = np.zeros(under.size, dtype=np.int64)
    np.cumsum(under[:-1] + 1, out=start[1:])
    stop = start + under
    concept = np.repeat(np.arange(under.size), under + 1)
    count = np.arange(concept.size) - start[concept]
    target = target_counts[concept]
    fresh = (target - count) / np.where(count < target, target, 1.0) + 1.0 / frequencies[concept]
    gains = np.where(count < target, fresh, OVER_TARGET_GAIN)
    return _TermTable(np.round(gains * 2.0**_TERM_BITS).astype(np.int64), start, stop)


def _occurrences(ids: np.ndarray, starts: np.ndarray) -> _Occurrences:
    """Group the occurrences by concept; renumber the concepts present ``0 .. K-1``."""
    lengths = np.diff(starts)
    rows = np.repeat(np.arange(lengths.size), lengths)
    by_concept = _stable_concept_order(ids)
    concept_of = ids[by_concept]
    holder = rows[by_concept]
    new_concept = np.ones(ids.size, dtype=bool)
    new_concept[1:] = concept_of[1:] != concept_of[:-1]
    dense = np.cumsum(new_concept) - 1
    flat = np.empty_like(ids)
    flat[by_concept] = dense
    new_pair = new_concept.copy()
    new_pair[1:] |= holder[1:] != holder[:-1]
    pair = np.cumsum(new_pair) - 1
    multiplicity = np.bincount(pair)[pair] if ids.size else pair
    concept_start = np.append(np.flatnonzero(new_concept), ids.size)
    frequencies = np.bincount(dense[new_pair], minlength=concept_start.size - 1)
    most_copies_first = np.argsort(dense * (_MAX_OBJECTS + 1) - multiplicity, kind="stable")
    return _Occurrences(
        flat,
        lengths,
        holder[most_copies_first],
        multiplicity[most_copies_first],
        concept_start,
        concept_of[new_concept],
        frequencies,
    )


def _stable_concept_order(ids: np.ndarray) -> np.ndarray:
    """A stable argsort of non-negative ids below 2**32: two 16-bit radix passes."""
    order = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
    high = ids >> 16
    if high.any():
        order = order[np.argsort(high[order].astype(np.uint16), kind="stable")]
    return order


def _keys(sums: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean gains in units of ``2**-32``, rounded half up in exact integer arithmetic."""
    return (sums + lengths * _HALF_UNIT) // (lengths * (2 * _HALF_UNIT))


class _GreedyState:
    """Counts, exact gain sums and exclusion bounds of one DM selection.

    ``keys`` holds each sample's gain in units of ``2**-32`` (``_PICKED`` once picked),
    computed from ``sums``, the exact integer sum of its occurrence gains. A sample is
    excluded while ``need > cap``: ``need`` is at most the cap the sample needs,
    ``max_c (count_c + copies of c in it)``, and above the cap exactly when that is. A
    count that takes holders past the cap sets their ``need`` to ``cap + 1``;
    :meth:`raise_cap` makes it exact again where the raised cap needs it. ``crowded``
    holds the concepts that may take a holder past the cap (``count_c + max copies >
    cap``) with their ladders (see :meth:`_ladder`). The per-pick loop runs on Python
    lists (``counts``, ``position`` into the term table), the per-round updates on arrays.
    """

    def __init__(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        order: np.ndarray,
        targets: torch.Tensor | None,
        batch_size: int,
        cap: int | None,
    ) -> None:
        lengths = np.diff(offsets)
        if lengths.size and lengths.max() > _MAX_OBJECTS:
            raise ValueError(
                f"`concepts` holds a sample with {lengths.max()} objects; DM handles at most "
                f"{_MAX_OBJECTS} per sample."
            )
        self.occurrences = occ = _occurrences(ids, offsets)
        num_present = occ.present.size
        if targets is None:  # uniform over the concepts present
            wanted = np.full(num_present, 1.0 / max(num_present, 1))
        else:
            wanted = targets.numpy()[occ.present]
        target_counts = cabs_target_counts(torch.from_numpy(wanted), batch_size, cap).numpy()
        self.table = _term_table(target_counts, occ.frequencies)
        self.table_list = self.table.values.tolist()
        self.position = self.table.start.tolist()  # each concept's entry at its count
        self.counts = [0] * num_present
        max_copies = occ.multiplicity[occ.concept_start[:-1]]  # most copies come first
        self.max_copies = max_copies.tolist()
        self.starts, self.flat = offsets.tolist(), occ.flat.tolist()  # rows for the pick loop
        self.rank = np.empty(order.size, dtype=np.int64)
        self.rank[order] = np.arange(order.size)
        self.cap = self.step = np.inf if cap is None else float(cap)
        self.need = (lengths > 0).astype(np.int64)
        repeated = occ.multiplicity > 1
        np.maximum.at(self.need, occ.holder[repeated], occ.multiplicity[repeated])
        self.crowded = {
            concept: self._ladder(concept)
            for concept in np.flatnonzero(max_copies > self.cap).tolist()
        }
        cumulative = np.zeros(ids.size + 1, dtype=np.int64)
        # int64 may wrap in the running sum; the differences (true sums) are exact
        np.cumsum(self.table.values[self.table.start[occ.flat]], out=cumulative[1:])
        self.sums = cumulative[offsets[1:]] - cumulative[offsets[:-1]]
        self.keys = np.where(lengths > 0, _keys(self.sums, np.maximum(lengths, 1)), _NO_CONCEPT_KEY)

    def window(self) -> tuple[list[tuple[int, int, int]], int]:
        """The eligible samples with a gain of at least a threshold, as a sorted queue.

        Every eligible sample outside the window has a smaller gain than the threshold.
        An empty queue: the cap rules out every remaining sample.
        """
        eligible = np.flatnonzero((self.keys > _PICKED) & (self.need <= self.cap))
        if eligible.size == 0:
            return [], _PICKED
        keys = self.keys[eligible]
        keep = keys.size - min(keys.size, _WINDOW)
        threshold = int(np.partition(keys, keep)[keep])
        inside = eligible[keys >= threshold]
        inside = inside[np.lexsort((self.rank[inside], -self.keys[inside]))]
        queue = zip(
            (-self.keys[inside]).tolist(), self.rank[inside].tolist(), inside.tolist(), strict=True
        )
        return list(queue), threshold  # sorted, hence a valid heap

    def eligible(self, queue: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """The entries of a queue that the cap does not exclude now, as a heap."""
        fits = self.need[list(map(itemgetter(2), queue))] <= self.cap
        queue = list(compress(queue, fits.tolist()))
        heapq.heapify(queue)
        return queue

    def raise_cap(self) -> None:
        """Raise the cap by its first value, as often as it takes for a remaining sample to fit.

        ``need`` is first made exact wherever it exceeds the cap one step up, so that the
        smallest ``need`` of the remaining samples tells how many steps it takes.
        """
        above = int(self.cap + self.step)
        begin, end, counts = [], [], []
        for concept, ladder in self.crowded.items():
            count = self.counts[concept]
            if count + len(ladder) - 1 > above:  # holders with above - count + 1 copies or more
                begin.append(ladder[-1])
                end.append(ladder[above - count])
                counts.append(count)
        if begin:
            occ = self.occurrences
            span = _ranges(np.array(begin), np.array(end))
            need = np.repeat(counts, np.subtract(end, begin)) + occ.multiplicity[span]
            np.maximum.at(self.need, occ.holder[span], need)
        lacking = float(self.need[self.keys > _PICKED].min()) - self.cap
        self.cap += self.step * math.ceil(lacking / self.step)
        self.crowded = {
            concept: ladder
            for concept, ladder in self.crowded.items()
            if self.counts[concept] + len(ladder) - 1 > self.cap
        }

    def gain(self, position: int) -> int | None:
        """The key of one sample at the current counts (as :func:`_keys`), ``None`` if excluded."""
        if self.need.item(position) > self.cap:
            return None
        begin, end = self.starts[position], self.starts[position + 1]
        if begin == end:
            return _NO_CONCEPT_KEY
        row = self.flat[begin:end]
        total = sum(map(self.table_list.__getitem__, map(self.position.__getitem__, row)))
        return (total + (end - begin) * _HALF_UNIT) // ((end - begin) * (2 * _HALF_UNIT))

    def count(self, position: int) -> list[int]:
        """Add one sample's concepts to the counts; return them (the arrays follow in ``take``)."""
        row = self.flat[self.starts[position] : self.starts[position + 1]]
        counts, entry, values, copies = self.counts, self.position, self.table_list, self.max_copies
        for concept in row:
            count = counts[concept] = counts[concept] + 1
            if values[entry[concept]] > 0:  # under target: move to the next count's gain
                entry[concept] += 1
            if count + copies[concept] > self.cap:  # holders may outgrow the cap
                self._exclude(concept, count)
        return row

    def _exclude(self, concept: int, count: int) -> None:
        """Exclude the holders of ``concept`` that its new ``count`` takes past the cap."""
        ladder = self.crowded.get(concept)
        if ladder is None:
            ladder = self.crowded[concept] = self._ladder(concept)
        copies = int(self.cap) + 1 - count  # holders with more copies are excluded already
        first, last = ladder[copies], ladder[copies - 1]
        if first < last:
            self.need[self.occurrences.holder[first:last]] = int(self.cap) + 1

    def _ladder(self, concept: int) -> list[int]:
        """``ladder[j]``: where the holders of ``concept`` with more than ``j`` copies end.

        For ``j = 0 .. max copies``: the holders with ``m`` copies lie in
        ``holder[ladder[m] : ladder[m - 1]]``, ``ladder[-1]`` is where they start.
        """
        occ = self.occurrences
        begin, end = occ.concept_start[concept], occ.concept_start[concept + 1]
        negative_copies = -occ.multiplicity[begin:end]  # ascending
        more = np.searchsorted(negative_copies, -np.arange(self.max_copies[concept] + 1))
        return (begin + more).tolist()

    def take(self, picked: list[int], concepts: list[int]) -> None:
        """Mark ``picked`` taken and re-score the samples holding ``concepts`` (theirs)."""
        if not picked:
            return
        self.keys[picked] = _PICKED
        if not concepts:
            return
        changed, increments = np.unique(np.asarray(concepts), return_counts=True)
        after = np.fromiter(map(self.counts.__getitem__, changed.tolist()), np.int64, changed.size)
        table = self.table
        start, stop = table.start[changed], table.stop[changed]
        delta = (
            table.values[np.minimum(start + after, stop)]
            - table.values[np.minimum(start + after - increments, stop)]
        )
        moved = delta != 0
        if not moved.any():
            return
        changed, delta = changed[moved], delta[moved]
        occ = self.occurrences
        begin, end = occ.concept_start[changed], occ.concept_start[changed + 1]
        holder = occ.holder[_ranges(begin, end)]
        np.add.at(self.sums, holder, np.repeat(delta, end - begin))
        holder = holder[self.keys[holder] > _PICKED]
        self.keys[holder] = _keys(self.sums[holder], self.occurrences.lengths[holder])


def _greedy_dm(state: _GreedyState, batch_size: int) -> list[int]:
    """Greedy DM: exact picks of the plain greedy, in rounds over a window of candidates.

    A round takes the window of eligible samples whose gain is at least a threshold (a
    few hundred of the best) and runs a lazy greedy on it: gains only fall as the batch
    fills, so the window's queue holds upper bounds, and a popped sample whose
    re-computed gain is unchanged is the best of the window. While that gain is at least
    the threshold it is also better than every sample outside the window, hence exactly
    the plain greedy's next pick (equal gains go to the lower rank in the tie-break
    order). When the window's best falls below the threshold, the gains of every sample
    holding a changed concept are updated in one vectorised step and the next round
    starts. When no sample is eligible, the cap rises.
    """
    picked: list[int] = []
    gain, count, pop = state.gain, state.count, heapq.heappop
    while len(picked) < batch_size:
        queue, threshold = state.window()
        if not queue:
            state.raise_cap()
            continue
        accepted: list[int] = []
        concepts: list[int] = []
        stale = 0  # re-scorings since the last pick
        while queue and len(picked) + len(accepted) < batch_size:
            negative_key, rank, position = queue[0]
            key = gain(position)
            if key is None:  # it would break the cap now, and so may more of the queue
                queue = state.eligible(queue)
            elif -key != negative_key:  # a stale bound: re-queue with the true gain
                heapq.heapreplace(queue, (-key, rank, position))
                stale += 1
                if stale > _STALE_LIMIT and accepted:
                    break  # cheaper to re-score everything at once
            elif key < threshold and accepted:
                break  # a sample outside the window may be better now
            else:
                pop(queue)
                accepted.append(position)
                concepts += count(position)
                stale = 0
        picked += accepted
        state.take(accepted, concepts)
    return picked


def _ranges(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(b, e)`` for each pair, vectorised."""
    lengths = end - begin
    shift = np.repeat(begin - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(int(lengths.sum())) + shift


def check_cabs_arguments(
    filter_ratio: float,
    variant: str,
    cap: int | None,
    targets: torch.Tensor | Sequence[float] | None = None,
    prefix: str = "",
) -> torch.Tensor | None:
    """Check the CABS settings a sampler or datamodule takes; return ``targets`` checked.

    Args:
        filter_ratio: share of each super-batch dropped, a number in ``[0, 1)``.
        variant: one of :data:`CABS_VARIANTS`.
        cap: most occurrences of one concept per batch, a positive integer or ``None``.
        targets: a distribution over the concept vocabulary (see
            :func:`check_cabs_targets`), or ``None``.
        prefix: prefix of the names ``variant``, ``cap`` and ``targets`` in the messages
            (``"cabs_"`` for a datamodule's ``cabs_variant``, ``cabs_cap``, ...).

    Returns:
        ``targets`` as a float64 CPU tensor, or ``None``.

    Raises:
        TypeError: for a ``filter_ratio`` that is not a number or a ``cap`` that is not an
            integer.
        ValueError: for an argument outside what is allowed, naming it and its value.

    Example:
        >>> check_cabs_arguments(0.8, "dm", 10, [0.25, 0.75]).tolist()
        [0.25, 0.75]
        >>> check_cabs_arguments(0.8, "xx", 10, prefix="cabs_")
        Traceback (most recent call last):
        ...
        ValueError: `cabs_variant` must be one of ('dm', 'fm'), got 'xx'.
    """
    check_float(filter_ratio, "filter_ratio", low=0.0, high=1.0, high_open=True)
    check_choice(variant, f"{prefix}variant", CABS_VARIANTS)
    check_int(cap, f"{prefix}cap", low=1, optional=True)
    if targets is None:
        return None
    return check_cabs_targets(torch.as_tensor(targets), f"{prefix}targets")
