"""cabs_select against a short, plain greedy and FM, plus the properties the issue asks for."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
import torch

from lightning_plugins.functional import cabs_select
from lightning_plugins.functional.concept_lists import concept_csr


def reference_dm(rows, batch_size, targets, cap, order):
    """The plain greedy of cabs_select's docstring, in exact arithmetic.

    Re-score every candidate after every pick (gain: the exact mean of the occurrence
    terms, compared at a resolution of 2**-32; ties to the earlier sample in ``order``);
    when the cap rules out every remaining sample, raise it by its first value.
    """
    vocabulary = (
        len(targets) if targets is not None else 1 + max((max(r) for r in rows if r), default=0)
    )
    freq = [sum(c in set(r) for r in rows) for c in range(vocabulary)]
    if targets is None:
        present = sum(f > 0 for f in freq)
        targets = [(1.0 if f > 0 else 0.0) / max(present, 1) for f in freq]
    # the targets in float64, as cabs_target_counts computes them; the rest exactly
    wanted = [t * batch_size if cap is None else min(t * batch_size, float(cap)) for t in targets]
    wanted = [Fraction(t) for t in wanted]
    rank = {sample: position for position, sample in enumerate(order)}
    counts = [0] * vocabulary

    def gain(sample):
        row = rows[sample]
        if not row:
            return -(2**32)
        if cap is not None and any(counts[c] + m > cap for c, m in Counter(row).items()):
            return None
        total = Fraction(0)
        for c in row:
            n, t = counts[c], wanted[c]
            total += (t - n) / t + Fraction(1, freq[c]) if n < t else Fraction(-1, 2)
        return round(total / len(row) * 2**32)

    picked, available, step = [], set(range(len(rows))), cap
    while len(picked) < batch_size:
        scored = [(g, s) for s in available if (g := gain(s)) is not None]
        if not scored:
            cap += step
            continue
        _, best = max(scored, key=lambda gs: (gs[0], -rank[gs[1]]))
        picked.append(best)
        available.remove(best)
        for c in rows[best]:
            counts[c] += 1
    return picked


def random_rows(rng, num_samples, vocabulary, max_objects=4):
    return [
        [rng.randrange(vocabulary) for _ in range(rng.randint(0, max_objects))]
        for _ in range(num_samples)
    ]


def tie_order(seed, num_samples):
    """The tie-break permutation cabs_select draws from a generator seeded with ``seed``."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("case", range(60))
def test_dm_matches_plain_greedy(case):
    rng = random.Random(case)
    num_samples, vocabulary = rng.randint(2, 40), rng.randint(1, 12)
    rows = random_rows(rng, num_samples, vocabulary)
    batch_size = rng.randint(1, num_samples)
    cap = rng.choice([1, 2, 3, 10, None])
    targets = None
    if case % 3 == 0:
        weights = [rng.choice([0.0, rng.random()]) for _ in range(vocabulary)]
        weights[0] += 0.1
        targets = [w / sum(weights) for w in weights]
    got = cabs_select(
        rows,
        batch_size,
        "dm",
        targets=None if targets is None else torch.tensor(targets, dtype=torch.float64),
        cap=cap,
        generator=torch.Generator().manual_seed(case),
        num_concepts=vocabulary,
    )
    expected = reference_dm(rows, batch_size, targets, cap, tie_order(case, num_samples))
    assert got.tolist() == expected


def test_dm_matches_plain_greedy_at_scale():
    rng = random.Random(7)
    rows = [
        [min(int(rng.paretovariate(1.0)) - 1, 299) for _ in range(rng.randint(0, 8))]
        for _ in range(400)
    ]
    got = cabs_select(rows, 80, "dm", cap=3, generator=torch.Generator().manual_seed(1))
    assert got.tolist() == reference_dm(rows, 80, None, 3, tie_order(1, 400))


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_dm_matches_plain_greedy_with_many_copies(cap):
    # samples with up to 7 copies of a concept: counts take holders past the cap a few
    # copies at a time, and the cap may have to rise several steps at once
    rng = random.Random(cap)
    rows = [
        [rng.randrange(6)] * rng.randint(1, 7)
        + [rng.randrange(60) for _ in range(rng.randint(0, 3))]
        for _ in range(300)
    ]
    got = cabs_select(rows, 90, "dm", cap=cap, generator=torch.Generator().manual_seed(cap))
    assert got.tolist() == reference_dm(rows, 90, None, cap, tie_order(cap, 300))


@pytest.mark.parametrize("case", range(20))
def test_fm_is_most_objects_first_stable(case):
    rng = random.Random(case)
    rows = random_rows(rng, rng.randint(1, 30), 6)
    batch_size = rng.randint(1, len(rows))
    expected = sorted(range(len(rows)), key=lambda i: -len(rows[i]))[:batch_size]
    assert cabs_select(rows, batch_size, "fm").tolist() == expected


@pytest.mark.parametrize("variant", ["dm", "fm"])
def test_input_forms_agree(variant):
    rng = random.Random(3)
    rows = random_rows(rng, 25, 9)
    padded = torch.full((25, 4), -1)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    results = [
        cabs_select(form, 10, variant, generator=torch.Generator().manual_seed(0), num_concepts=9)
        for form in (rows, padded, concept_csr(rows))
    ]
    assert results[0].tolist() == results[1].tolist() == results[2].tolist()


@pytest.mark.parametrize("seed", range(10))
def test_caps_respected_and_size_exact(seed):
    rng = random.Random(seed)
    rows = random_rows(rng, 200, 30, max_objects=3)
    cap = rng.randint(1, 4)
    chosen = cabs_select(rows, 20, "dm", cap=cap, generator=torch.Generator().manual_seed(seed))
    assert chosen.numel() == 20 == len(set(chosen.tolist()))
    counts = Counter(c for i in chosen.tolist() for c in rows[i])
    assert max(counts.values()) <= cap


def test_cap_rises_only_when_it_rules_out_every_sample():
    rows = [[0, 0]] * 6  # every sample holds concept 0 twice
    chosen = cabs_select(rows, 3, "dm", cap=2, generator=torch.Generator().manual_seed(0))
    assert chosen.numel() == 3 == len(set(chosen.tolist()))  # always a full batch
    rows = [[0]] * 20 + [[1]] * 20
    for seed in range(5):
        chosen = cabs_select(rows, 11, "dm", cap=2, generator=torch.Generator().manual_seed(seed))
        counts = Counter(rows[i][0] for i in chosen.tolist())
        # caps 2, 4, then 6: the greedy goes on under a raised cap, not in random order
        assert min(counts.values()) >= 5 and max(counts.values()) <= 6


def test_exact_ties_follow_the_permutation():
    # x holds concepts held by 2, 3 and 6 samples, y one held by 3: with targets below one
    # both gain exactly 4/3 = ((1 + 1/2) + (1 + 1/3) + (1 + 1/6)) / 3; every filler
    # [concept, 11] gains less
    x, y = [0, 1, 2], [3]
    fillers = [[c, 11] for c, n in ((0, 1), (1, 2), (2, 5), (3, 2)) for _ in range(n)]
    rows = [x, y, *fillers]
    firsts = set()
    for seed in range(12):
        chosen = cabs_select(rows, 1, "dm", generator=torch.Generator().manual_seed(seed))
        order = tie_order(seed, len(rows))
        assert chosen.tolist() == [min(0, 1, key=order.index)]
        firsts.add(chosen.item())
    assert firsts == {0, 1}


def test_targets_honoured_when_feasible():
    rows = [[c] for c in range(4) for _ in range(10)]
    targets = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    for seed in range(5):
        chosen = cabs_select(
            rows, 8, "dm", targets=targets, cap=None, generator=torch.Generator().manual_seed(seed)
        )
        counts = Counter(rows[i][0] for i in chosen.tolist())
        assert [counts[c] for c in range(4)] == [4, 2, 2, 0]


def test_default_targets_flatten_a_long_tail():
    rng = random.Random(0)
    rows = [[0 if rng.random() < 0.7 else rng.randrange(1, 20)] for _ in range(500)]
    chosen = cabs_select(rows, 40, "dm", cap=10, generator=torch.Generator().manual_seed(0))
    counts = Counter(rows[i][0] for i in chosen.tolist())
    assert counts[0] <= 10 and len(counts) == 20  # the head is capped, every concept is in


def test_samples_without_concepts_are_picked_last():
    rows = [[], [1], [], [2], [1, 2]]
    for variant in ("dm", "fm"):
        chosen = cabs_select(rows, 3, variant, cap=None, generator=torch.Generator().manual_seed(0))
        assert set(chosen.tolist()) == {1, 3, 4}
    assert sorted(cabs_select([[], [], []], 2, "dm").tolist()) in ([0, 1], [0, 2], [1, 2])


def test_ties_follow_the_generator_not_concept_ids():
    rows = [[c] for c in range(50)]  # all gains equal
    first = [
        cabs_select(rows, 5, "dm", generator=torch.Generator().manual_seed(s)).tolist()
        for s in range(4)
    ]
    again = cabs_select(rows, 5, "dm", generator=torch.Generator().manual_seed(0)).tolist()
    assert again == first[0]
    assert len({tuple(sorted(p)) for p in first}) > 1
    assert first[0] == tie_order(0, 50)[:5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 11}, "`batch_size` must be an integer in \\[1, 10\\], got 11"),
        ({"batch_size": 0}, "`batch_size` must be an integer in \\[1, 10\\]"),
        ({"variant": "xx"}, "`variant` must be one of"),
        ({"cap": 0}, "`cap` must be a.*, got 0"),
        ({"num_concepts": 0}, "`num_concepts` must be a.*, got 0"),
        ({"targets": torch.tensor([0.5, 0.5]), "num_concepts": 5}, "one entry per concept \\(5\\)"),
        ({"targets": torch.tensor([0.5, 0.4, 0.0, 0.0, 0.0])}, "must sum to 1"),
        ({"targets": torch.tensor([1.5, -0.5, 0.0, 0.0, 0.0])}, "finite and non-negative"),
        ({"targets": torch.tensor([0.5, 0.5])}, "holds concept id 4; ids must be in \\[0, 2\\)"),
        ({"num_concepts": 3}, "holds concept id 4; ids must be in \\[0, 3\\)"),
    ],
)
def test_bad_input(kwargs, message):
    rows = [[i % 5] for i in range(10)]
    arguments = {"batch_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        cabs_select(rows, **arguments)


@pytest.mark.parametrize("variant", ["dm", "fm"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 1.5},
        {"batch_size": True},
        {"cap": 2.5},
        {"cap": True},
        {"num_concepts": "5"},
    ],
)
def test_wrong_types(variant, kwargs):
    rows = [[i % 5] for i in range(10)]
    arguments = {"batch_size": 3, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"`{name}` must be an integer"):
        cabs_select(rows, variant=variant, **arguments)


def test_fm_reads_only_lengths_and_dm_bounds_objects_per_sample():
    rows = [[0] * 16_385, [1], [2, 2]]
    assert cabs_select([[7, -3], [1]], 1, "fm").tolist() == [0]  # ids not read
    assert cabs_select(rows, 2, "fm").tolist() == [0, 2]
    with pytest.raises(ValueError, match="at most 16384 per sample"):
        cabs_select(rows, 2, "dm")


def test_float_ids_are_refused():
    with pytest.raises(TypeError, match="`concepts` must hold integer concept ids"):
        cabs_select([[0.5], [1]], 1)


def test_bad_concept_tensors():
    with pytest.raises(ValueError, match="-1 is the only padding value"):
        cabs_select(torch.tensor([[0, -2], [1, -1]]), 1)
    with pytest.raises(ValueError, match="2-D integer"):
        cabs_select(torch.tensor([[0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="offsets must start at 0"):
        cabs_select((torch.tensor([0, 1]), torch.tensor([0, 1, 3])), 1)
