"""CurriculumSampler against a plain-Python reference of its selection rule; resume; DDP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.functional.random_streams import keyed_generator
from lightning_plugins.sampling import CurriculumSampler, ShuffleSampler
from tests.helpers import run_ddp

N = 37


# ------------------------------------------------------------------------------ reference
def reference_steps(num_samples, global_size, steps, seed, epoch, steering):
    """The selection rule, transcribed with lists and sorted(): one global list per step."""
    subset, weights = steering.get("subset"), steering.get("weights")
    ranking, fractions = steering.get("ranking"), steering.get("fractions")
    allowed = [
        (subset is None or i in subset) and (weights is None or weights[i] > 0)
        for i in range(num_samples)
    ]

    def keys(pass_index):
        generator = keyed_generator("curriculum-pass", seed, epoch, pass_index)
        if weights is None:
            if pass_index == 0:
                generator = torch.Generator().manual_seed(seed + epoch)
            order = torch.randperm(num_samples, generator=generator).tolist()
            return {index: position for position, index in enumerate(order)}
        exponential = torch.empty(num_samples, dtype=torch.float64).exponential_(
            generator=generator
        )
        return {
            i: exponential[i].item() / weights[i] if weights[i] > 0 else math.inf
            for i in range(num_samples)
        }

    pass_index, key, drawn, out = 0, keys(0), set(), []
    for step in range(steps):
        pool = [i for i in range(num_samples) if allowed[i]]
        if ranking is not None:
            size = max(1, math.ceil(fractions[step] * len(pool)))
            pool = [i for i in ranking if allowed[i]][:size]
        chosen = []
        while len(chosen) < global_size:
            left = [i for i in pool if i not in drawn]
            fresh = [i for i in left if i not in chosen]
            if not left:
                pass_index, key, drawn = pass_index + 1, keys(pass_index + 1), set()
                continue
            candidates = fresh or left  # repeat within a step only when the pool is small
            for i in sorted(candidates, key=lambda i: (key[i], i))[: global_size - len(chosen)]:
                drawn.add(i)
                chosen.append(i)
        out.append(chosen)
    return out


def steering_case(name, steps, num_samples=N):
    generator = torch.Generator().manual_seed(7)
    subset = sorted(torch.randperm(num_samples, generator=generator)[:23].tolist())
    weights = torch.rand(num_samples, generator=generator, dtype=torch.float64) * 3
    weights[::5] = 0.0
    ranking = torch.randperm(num_samples, generator=generator)
    fractions = torch.linspace(0.1, 1.0, steps, dtype=torch.float64)
    cases = {
        "none": {},
        "subset": {"subset": subset},
        "weights": {"weights": weights.tolist()},
        "pacing": {"ranking": ranking.tolist(), "fractions": fractions.tolist()},
        "all": {
            "subset": subset,
            "weights": weights.tolist(),
            "ranking": ranking.tolist(),
            "fractions": fractions.tolist(),
        },
    }
    return cases[name]


def steer(sampler, case):
    if "subset" in case:
        sampler.set_subset(torch.tensor(case["subset"]))
    if "weights" in case:
        sampler.set_weights(torch.tensor(case["weights"], dtype=torch.float64))
    if "ranking" in case:
        sampler.set_pacing(
            torch.tensor(case["ranking"]), torch.tensor(case["fractions"], dtype=torch.float64)
        )


@pytest.mark.parametrize("case", ["none", "subset", "weights", "pacing", "all"])
@pytest.mark.parametrize("num_replicas", [1, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_matches_the_reference(case, num_replicas, drop_last):
    batch_size, seed, epoch = 4, 3, 2
    ranks = [
        CurriculumSampler(N, batch_size, seed, drop_last, num_replicas=num_replicas, rank=r)
        for r in range(num_replicas)
    ]
    steps = len(ranks[0])
    assert steps == (N // 8 if drop_last else 5) if num_replicas == 2 else True
    settings = steering_case(case, steps)
    for sampler in ranks:
        steer(sampler, settings)
        sampler.set_epoch(epoch)
    per_rank = [list(sampler) for sampler in ranks]
    expected = reference_steps(N, batch_size * num_replicas, steps, seed, epoch, settings)
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) == steps
    for step, global_list in enumerate(expected):
        batches = [batches[step] for batches in per_rank]
        assert all(len(batch) == batch_size for batch in batches)
        assert [i for batch in batches for i in batch] == global_list
        if int(ranks[0].pool(step).sum()) >= 8:  # ranks overlap only when the pool is small
            assert len(set(global_list)) == len(global_list)


def test_small_pool_repeats_only_within_the_pool():
    sampler = CurriculumSampler(20, 8, seed=1)
    sampler.set_subset([2, 5, 11])
    expected = reference_steps(20, 8, len(sampler), 1, 0, {"subset": [2, 5, 11]})
    batches = list(sampler)
    assert batches == expected
    assert all(set(batch) == {2, 5, 11} for batch in batches)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("epoch", [0, 3])
def test_unsteered_is_the_shuffle_order_in_batches(drop_last, epoch):
    size, batch_size, seed = 23, 5, 4
    shuffle = ShuffleSampler(size, seed)
    shuffle.set_epoch(epoch)
    order = list(shuffle)
    sampler = CurriculumSampler(size, batch_size, seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    whole = [order[i : i + batch_size] for i in range(0, 20, batch_size)]
    assert batches[:4] == whole
    if drop_last:
        assert len(batches) == 4
    else:  # the last batch takes the 3 left and wraps into the next pass for 2 more
        assert len(batches) == 5 and batches[4][:3] == order[20:]
        assert len(set(batches[4])) == 5


def test_pending_steering_waits_for_the_next_iteration():
    sampler = CurriculumSampler(N, 4, seed=0)
    untouched = list(CurriculumSampler(N, 4, seed=0))
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(3)]
    sampler.set_subset(torch.arange(10))
    sampler.set_weights(torch.ones(N))
    sampler.set_pacing(torch.arange(N), torch.ones(len(sampler), dtype=torch.float64))
    assert sampler.steering.subset is None and sampler.pending.subset is not None
    assert seen + list(iterator) == untouched  # the running epoch is unchanged
    steered = list(sampler)  # the next iteration applies it
    assert all(i < 10 for batch in steered for i in batch)
    assert sampler.steering.subset is not None and sampler.pending is sampler.steering
    sampler.set_subset(None)
    assert int(sampler.steering.allowed(N).nonzero().max()) == 9  # still this epoch's
    assert any(i >= 10 for batch in sampler for i in batch)


@pytest.mark.parametrize("stop", [0, 1, 3, 5])
@pytest.mark.parametrize("case", ["subset", "weights", "all"])
def test_resume_continues_the_stream(stop, case):
    def build():
        return CurriculumSampler(N, 3, seed=5)

    sampler = build()
    steer(sampler, steering_case(case, len(sampler)))
    sampler.set_epoch(1)
    list(sampler)  # epoch 1 steered
    sampler.set_subset(torch.arange(0, N, 2))  # pending for epoch 2
    sampler.set_epoch(2)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(stop)]
    sampler.set_weights(torch.arange(N) % 3)  # pending for epoch 3, set mid-epoch
    state = sampler.state_dict()
    rest = list(iterator)
    sampler.set_epoch(3)
    next_epoch = list(sampler)

    resumed = build()
    resumed.load_state_dict(state)
    assert seen + list(resumed) == seen + rest
    resumed.set_epoch(3)
    assert list(resumed) == next_epoch
    assert torch.equal(resumed.steering.weights, sampler.steering.weights)


def test_state_saved_before_the_epoch_began_applies_the_pending_steering():
    sampler = CurriculumSampler(N, 4, seed=2)
    sampler.set_subset(torch.arange(12))
    state = sampler.state_dict()
    assert state["started"] is False and state["pending"]["subset"] is not None
    resumed = CurriculumSampler(N, 4, seed=2)
    resumed.load_state_dict(state)
    assert list(resumed) == list(sampler)
    assert all(i < 12 for batch in resumed for i in batch)


def test_state_holds_primitives_and_tensors_only():
    sampler = CurriculumSampler(N, 4)
    steer(sampler, steering_case("all", len(sampler)))
    state = sampler.state_dict()
    assert set(state) == {"epoch", "yielded", "started", "steering", "pending", "config"}
    assert state["config"] == {
        "kind": "CurriculumSampler",
        "num_samples": N,
        "batch_size": 4,
        "num_replicas": 1,
        "seed": 0,
        "drop_last": False,
        "num_steps": None,
    }
    tensors = [v for v in state["pending"].values()]
    assert all(isinstance(v, torch.Tensor) for v in tensors)
    state["pending"]["weights"].fill_(0.0)  # a clone: the sampler is unaffected
    assert sampler.pending.weights.sum() > 0


class CountingDataset(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size
        self.loaded = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        self.loaded += 1
        return index


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_through_stateful_dataloader(num_workers):
    def loader(dataset):
        sampler = CurriculumSampler(len(dataset), 4, seed=9)
        return stateful_loader(dataset, batch_sampler=sampler, num_workers=num_workers), sampler

    settings = steering_case("all", 10)
    first, sampler = loader(CountingDataset(N))
    steer(sampler, settings)
    full = [b.tolist() for b in first]
    sampler.set_subset(torch.arange(20))  # epoch 1: a new subset
    sampler.set_epoch(1)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(4)]
    state = first.state_dict()
    rest = [b.tolist() for b in iterator]
    assert full != seen + rest and all(i < 20 for batch in rest for i in batch)

    dataset = CountingDataset(N)
    second, resumed = loader(dataset)  # unsteered: the state carries the steering
    second.load_state_dict(state)
    resumed.set_epoch(1)
    assert [b.tolist() for b in second] == rest
    if num_workers == 0:  # the replay of the 4 steps loaded nothing
        assert dataset.loaded == sum(len(batch) for batch in rest)


def _ddp_run(rank: int, world_size: int) -> dict:
    indices = range(N)
    case = steering_case("all", 5)
    lightning_like = CurriculumSampler(N, 4, seed=1, sampler=DistributedSampler(indices))
    from_dist = CurriculumSampler(N, 4, seed=1)
    out = {"len": len(lightning_like)}
    for name, sampler in (("sampler", lightning_like), ("dist", from_dist)):
        steer(sampler, case)
        sampler.set_epoch(1)
        out[name] = list(sampler)
    fractions = lightning_like.steering.fractions
    gathered = [torch.zeros_like(fractions) for _ in range(world_size)]
    dist.all_gather(gathered, fractions)
    out["fractions"] = gathered
    out["world"] = lightning_like.world()
    out["pool"] = [int(lightning_like.pool(step).sum()) for step in range(5)]
    return out


@pytest.mark.ddp
def test_two_process_ddp():
    results = run_ddp(_ddp_run)
    assert results[0]["len"] == results[1]["len"] == 5
    assert [r["world"] for r in results] == [(2, 0), (2, 1)]
    assert torch.equal(results[0]["fractions"][0], results[0]["fractions"][1])
    expected = reference_steps(N, 8, 5, 1, 1, steering_case("all", 5))
    assert results[0]["pool"] == results[1]["pool"] and results[0]["pool"][-1] >= 8
    for result in results:
        assert result["sampler"] == result["dist"]
    for step in range(5):
        a, b = results[0]["sampler"][step], results[1]["sampler"][step]
        assert len(a) == len(b) == 4 and a + b == expected[step]
        if results[0]["pool"][step] >= 8:  # a pool smaller than a step must repeat
            assert not set(a) & set(b)


# ------------------------------------------------------------------------------ num_steps
@pytest.mark.parametrize(("num_steps", "num_replicas"), [(2, 1), (7, 1), (5, 2)])
def test_num_steps_gives_exactly_that_many_steps_of_the_same_rule(num_steps, num_replicas):
    """Fewer steps: a prefix of the passes; more: passes continue (the reference's wrapping)."""
    size, batch_size, seed, epoch = 11, 3, 5, 1
    ranks = [
        CurriculumSampler(
            size, batch_size, seed, num_replicas=num_replicas, rank=r, num_steps=num_steps
        )
        for r in range(num_replicas)
    ]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [list(sampler) for sampler in ranks]
    expected = reference_steps(size, batch_size * num_replicas, num_steps, seed, epoch, {})
    assert all(len(sampler) == num_steps for sampler in ranks)
    assert [[i for batches in per_rank for i in batches[s]] for s in range(num_steps)] == expected
    assert ranks[0].config()["num_steps"] == num_steps
    resumed = CurriculumSampler(
        size, batch_size, seed, num_replicas=num_replicas, rank=0, num_steps=num_steps + 1
    )
    with pytest.raises(ValueError, match="num_steps"):
        resumed.load_state_dict(ranks[0].state_dict())
    with pytest.raises(ValueError, match="num_steps"):
        CurriculumSampler(size, batch_size, num_steps=0)
