"""ConceptAwareBatchSampler: exact sizes, disjoint ranks, global targets, resume, Lightning DDP."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.functional import cabs_select
from lightning_plugins.functional.concept_lists import concept_rows
from lightning_plugins.sampling import ConceptAwareBatchSampler, ConceptAwareStream
from tests.helpers import run_ddp


def long_tail_concepts(num_samples: int = 200, vocabulary: int = 30, seed: int = 0):
    rng = random.Random(seed)
    weights = [1.0 / (c + 1) for c in range(vocabulary)]
    return [
        rng.choices(range(vocabulary), weights, k=rng.randint(0, 4)) for _ in range(num_samples)
    ]


class IndexDataset(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize("variant", ["dm", "fm"])
def test_every_batch_exact_and_from_its_own_super_batch(variant):
    concepts = long_tail_concepts()
    sampler = ConceptAwareBatchSampler(concepts, batch_size=8, filter_ratio=0.75, variant=variant)
    batches = list(sampler)
    assert sampler.super_batch_size == 32 and len(sampler) == len(batches) == 200 // 32
    for step, batch in enumerate(batches):
        assert len(batch) == 8 == len(set(batch))
        assert set(batch) <= set(sampler.candidates(step).tolist())
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))


def test_batches_equal_cabs_select_on_the_candidates():
    concepts = long_tail_concepts()
    sampler = ConceptAwareBatchSampler(concepts, batch_size=8, filter_ratio=0.75, variant="fm")
    for step, batch in enumerate(sampler):
        candidates = sampler.candidates(step)
        chosen = cabs_select([concepts[i] for i in candidates.tolist()], 8, "fm")
        assert batch == candidates[chosen].tolist()


def test_dm_caps_per_batch():
    concepts = long_tail_concepts(400)
    sampler = ConceptAwareBatchSampler(concepts, batch_size=10, filter_ratio=0.8, cap=2)
    for batch in sampler:
        counts = Counter(c for i in batch for c in concepts[i])
        assert max(counts.values()) <= 2


def test_cabs_flattens_the_concept_histogram():
    concepts = long_tail_concepts(2000, vocabulary=40)
    iid = Counter(c for row in concepts[:400] for c in row)
    sampler = ConceptAwareBatchSampler(concepts, batch_size=20, filter_ratio=0.8, cap=3)
    cabs = Counter(c for batch in sampler for i in batch for c in concepts[i])
    assert max(cabs.values()) / sum(cabs.values()) < max(iid.values()) / sum(iid.values())
    assert len(cabs) >= len(iid)


def test_deterministic_by_seed_and_epoch():
    concepts = long_tail_concepts()
    first = list(ConceptAwareBatchSampler(concepts, 8, 0.75, seed=1))
    assert list(ConceptAwareBatchSampler(concepts, 8, 0.75, seed=1)) == first
    assert list(ConceptAwareBatchSampler(concepts, 8, 0.75, seed=2)) != first
    sampler = ConceptAwareBatchSampler(concepts, 8, 0.75, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_ranks_disjoint_same_length_and_shared_targets():
    concepts = long_tail_concepts(300)
    ranks = [ConceptAwareBatchSampler(concepts, 6, 0.75, num_replicas=3, rank=r) for r in range(3)]
    assert len({len(s) for s in ranks}) == 1 and len(ranks[0]) == 300 // (3 * 24)
    per_rank = [list(s) for s in ranks]
    for step in range(len(ranks[0])):
        indices = [i for batches in per_rank for i in batches[step]]
        assert len(indices) == 18 == len(set(indices))
        candidates = ranks[0].candidates(step)
        targets = [s.step_targets(s.candidates(step)) for s in ranks]
        assert all(torch.equal(t, targets[0]) for t in targets)
        present = {c for i in candidates.tolist() for c in concepts[i]}
        assert set(torch.nonzero(targets[0]).flatten().tolist()) == present


def test_user_targets_and_steering():
    concepts = [[i % 4] for i in range(320)]
    targets = [0.5, 0.5, 0.0, 0.0]
    # 80 candidates per step: each concept is there often enough to meet any target
    sampler = ConceptAwareBatchSampler(concepts, 8, 0.9, targets=targets, cap=None)
    for batch in sampler:
        assert Counter(concepts[i][0] for i in batch) == Counter({0: 4, 1: 4})
    sampler.set_targets([0.0, 0.0, 0.25, 0.75])
    for batch in sampler:
        assert Counter(concepts[i][0] for i in batch) == Counter({2: 2, 3: 6})


@pytest.mark.parametrize("stop", [0, 1, 3, 6])
def test_resume_mid_epoch(stop):
    concepts = long_tail_concepts()
    sampler = ConceptAwareBatchSampler(concepts, 4, 0.5, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(stop)]
    state = sampler.state_dict()
    resumed = ConceptAwareBatchSampler(concepts, 4, 0.5, seed=3)
    resumed.load_state_dict(state)
    assert seen + list(resumed) == full
    assert len(list(resumed)) == len(full)  # the next pass is a whole epoch again


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_through_stateful_dataloader(num_workers):
    concepts = long_tail_concepts()

    def loader():
        sampler = ConceptAwareBatchSampler(concepts, 4, 0.5, seed=5)
        return StatefulDataLoader(IndexDataset(200), batch_sampler=sampler, num_workers=num_workers)

    full = [b.tolist() for b in loader()]
    first = loader()
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(5)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    assert seen + [b.tolist() for b in second] == full


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filter_ratio": 1.0}, "`filter_ratio` must be a finite number in \\[0, 1\\), got 1.0"),
        ({"filter_ratio": -0.1}, "`filter_ratio` must be a finite number in \\[0, 1\\)"),
        ({"batch_size": 0}, "`batch_size` must be a.*, got 0"),
        ({"batch_size": 60}, "needs super-batches of 300 candidates, more than the 200"),
        ({"variant": "greedy"}, "`variant` must be one of"),
        ({"cap": 0}, "`cap` must be a.*, got 0"),
        ({"targets": [0.5, 0.6]}, "must sum to 1"),
        ({"targets": [1.0, 0.5, -0.5]}, "finite and non-negative"),
        ({"targets": [0.5, 0.5], "num_concepts": 20}, "one entry per concept \\(20\\), got 2"),
        ({"num_concepts": 5}, "ids must be in \\[0, 5\\)"),
        ({"num_replicas": 2, "rank": 2}, "`rank` must be in \\[0, num_replicas\\)"),
        ({"num_replicas": 20}, "20 ranks x 20 candidates"),
    ],
)
def test_bad_input(kwargs, message):
    arguments = {"batch_size": 4, "filter_ratio": 0.8, **kwargs}
    with pytest.raises(ValueError, match=message):
        ConceptAwareBatchSampler(long_tail_concepts(), **arguments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 4.0},
        {"batch_size": True},
        {"filter_ratio": "0.8"},
        {"cap": 2.5},
        {"seed": 0.5},
        {"num_concepts": 20.0},
        {"num_replicas": 2.0},
        {"rank": "0"},
    ],
)
def test_wrong_types(kwargs):
    arguments = {"batch_size": 4, "filter_ratio": 0.8, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"`{name}` must be"):
        ConceptAwareBatchSampler(long_tail_concepts(), **arguments)


def test_one_seeding_scheme_with_the_stream():
    concepts = long_tail_concepts()
    sampler = ConceptAwareBatchSampler(concepts, batch_size=4, filter_ratio=0.8, seed=3)
    sampler.set_epoch(2)
    stream = ConceptAwareStream([], batch_size=4, filter_ratio=0.8, seed=3)
    stream.set_epoch(2)
    batches = list(sampler)
    for step in range(3):
        local = sampler.candidates(step)
        expected = cabs_select(
            concept_rows(sampler.ids, sampler.offsets, local),
            4,
            targets=sampler.step_targets(local),
            generator=stream.generator(step),
            num_concepts=sampler.num_concepts,
        )
        assert batches[step] == local[expected].tolist()


def test_no_concepts_allowed_and_picked_last():
    concepts = [[] if i % 2 else [i % 7] for i in range(100)]
    sampler = ConceptAwareBatchSampler(concepts, 5, 0.5, cap=None)
    for step, batch in enumerate(sampler):
        annotated = sum(bool(concepts[i]) for i in sampler.candidates(step).tolist())
        assert sum(bool(concepts[i]) for i in batch) == min(5, annotated)


def _ddp_batches(rank: int, world_size: int) -> dict:
    concepts = long_tail_concepts(300)
    sampler = ConceptAwareBatchSampler(concepts, 6, 0.75)  # world from torch.distributed
    batches = list(sampler)
    targets = sampler.step_targets(sampler.candidates(0))
    gathered = [torch.zeros_like(targets) for _ in range(world_size)]
    dist.all_gather(gathered, targets)
    explicit = list(ConceptAwareBatchSampler(concepts, 6, 0.75, num_replicas=2, rank=rank))
    return {"batches": batches, "targets": gathered, "explicit": explicit}


@pytest.mark.ddp
def test_two_process_ddp():
    results = run_ddp(_ddp_batches)
    assert results[0]["batches"] != results[1]["batches"]
    for result in results:
        assert result["batches"] == result["explicit"]
        assert torch.equal(result["targets"][0], result["targets"][1])
    for a, b in zip(results[0]["batches"], results[1]["batches"], strict=True):
        assert len(a) == len(b) == 6 and not set(a) & set(b)
