"""MixtureSampler against a plain-Python reference of its selection rule; modes; resume; DDP."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.functional.random_streams import keyed_generator
from lightning_plugins.sampling import (
    CurriculumSampler,
    MixtureSampler,
    find_mixture_sampler,
    find_steerable_sampler,
)
from tests.helpers import run_ddp

SIZES = [7, 3, 12, 5]
WEIGHTS = [0.4, 0.1, 0.0, 0.5]  # source 2 excluded


# ------------------------------------------------------------------------------ reference
def reference_steps(sizes, batch_size, num_replicas, steps, seed, epoch, weights, mode):
    """The selection rule, transcribed with lists: per step, one batch per rank."""
    k, global_size = len(sizes), batch_size * num_replicas
    offsets = [sum(sizes[:s]) for s in range(k)]
    if weights is None:
        weights = list(sizes)
    weights = torch.tensor(weights, dtype=torch.float64)
    weights = weights / weights.sum()
    passes, orders, cursors = [-1] * k, [None] * k, [0] * k

    def new_pass(source, taken):
        passes[source] += 1
        generator = keyed_generator("mixture-pass", seed, epoch, source, passes[source])
        order = torch.randperm(sizes[source], generator=generator).tolist()
        orders[source] = [i for i in order if i not in taken] + [i for i in order if i in taken]
        cursors[source] = 0

    out = []
    for step in range(steps):
        generator = keyed_generator("mixture-step", seed, epoch, step)
        pi = torch.randperm(k, generator=generator).tolist()
        if mode == "stratified":
            counts = [global_size // k + (pi.index(s) < global_size % k) for s in range(k)]
        else:
            draws = torch.multinomial(weights, global_size, True, generator=generator).tolist()
            counts = [draws.count(s) for s in range(k)]
        listing = []
        for source in pi:
            taken = []
            for _ in range(counts[source]):
                if orders[source] is None or cursors[source] == sizes[source]:
                    new_pass(source, taken)
                taken.append(orders[source][cursors[source]])
                cursors[source] += 1
            listing += [offsets[source] + i for i in taken]
        keys = torch.rand(num_replicas, batch_size, generator=generator)
        batches = []
        for rank in range(num_replicas):
            dealt = listing[rank::num_replicas]
            order = sorted(range(batch_size), key=lambda j: (keys[rank, j].item(), j))
            batches.append([dealt[j] for j in order])
        out.append(batches)
    return out


def source_of(index, sizes=SIZES):
    start = 0
    for source, size in enumerate(sizes):
        if index < start + size:
            return source
        start += size
    raise IndexError(index)


def build(mode="dynamic", sizes=SIZES, batch_size=5, **kwargs):
    weights = kwargs.pop("weights", WEIGHTS)
    weights = None if mode == "stratified" else weights
    return MixtureSampler(sizes, batch_size, weights=weights, mode=mode, **kwargs)


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("mode", ["dynamic", "static", "stratified"])
@pytest.mark.parametrize("num_replicas", [1, 2])
@pytest.mark.parametrize("num_steps", [None, 9])
def test_matches_the_reference(mode, num_replicas, num_steps):
    batch_size, seed, epoch = 5, 3, 2
    ranks = [
        build(mode, seed=seed, num_steps=num_steps, num_replicas=num_replicas, rank=r)
        for r in range(num_replicas)
    ]
    steps = len(ranks[0])
    assert steps == (num_steps or -(-sum(SIZES) // (batch_size * num_replicas)))
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [list(sampler) for sampler in ranks]
    weights = None if mode == "stratified" else WEIGHTS
    expected = reference_steps(SIZES, batch_size, num_replicas, steps, seed, epoch, weights, mode)
    assert all(len(batches) == steps for batches in per_rank)
    for step in range(steps):
        batches = [batches[step] for batches in per_rank]
        assert batches == expected[step]
        assert all(len(batch) == batch_size for batch in batches)
        if mode != "stratified":  # weight 0: never drawn
            assert all(source_of(i) != 2 for batch in batches for i in batch)


@pytest.mark.parametrize("mode", ["dynamic", "stratified"])
def test_no_repeat_within_a_step_and_each_pass_visits_every_sample_once(mode):
    sizes = [4, 9, 6]
    sampler = build(mode, sizes=sizes, batch_size=6, num_steps=40, weights=[1, 1, 1])
    drawn = {s: [] for s in range(3)}
    for batch in sampler:
        for source in range(3):
            mine = [i for i in batch if source_of(i, sizes) == source]
            if len(mine) <= sizes[source]:  # a repeat only when the count exceeds the size
                assert len(set(mine)) == len(mine)
            drawn[source] += mine
    for source, indices in drawn.items():  # passes: each sample p or p + 1 times
        counts = [
            indices.count(i) for i in set(range(sum(sizes[:source]), sum(sizes[: source + 1])))
        ]
        passes = len(indices) // sizes[source]
        assert set(counts) <= {passes, passes + 1}, counts


def test_small_source_repeats_only_when_its_count_exceeds_its_size():
    sampler = MixtureSampler([2, 30], batch_size=12, mode="stratified", num_steps=5)
    for batch in sampler:
        small = [i for i in batch if i < 2]
        assert sorted(small) == [0, 0, 0, 1, 1, 1]  # 6 from a source of 2: three passes


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
@pytest.mark.parametrize(("sizes", "batch_size"), [([5, 8, 3], 4), ([40, 2, 9, 11, 6], 7)])
def test_stratified_gives_each_source_its_share_in_every_global_and_rank_batch(
    sizes, batch_size, num_replicas
):
    k = len(sizes)
    ranks = [
        MixtureSampler(
            sizes,
            batch_size,
            mode="stratified",
            num_steps=30,
            seed=4,
            num_replicas=num_replicas,
            rank=r,
        )
        for r in range(num_replicas)
    ]
    per_rank = [list(sampler) for sampler in ranks]
    extra_sources = []
    for step in range(30):
        batches = [batches[step] for batches in per_rank]
        global_counts = [0] * k
        for batch in batches:
            counts = [0] * k
            for i in batch:
                counts[source_of(i, sizes)] += 1
            assert max(counts) - min(counts) <= 1, counts  # each rank's batch too
            global_counts = [a + b for a, b in zip(global_counts, counts, strict=True)]
        share = batch_size * num_replicas / k
        assert all(abs(c - share) < 1 for c in global_counts), global_counts
        extra_sources += [s for s in range(k) if global_counts[s] > share]
    if extra_sources:  # the extra samples rotate over the sources (a keyed order)
        assert len(set(extra_sources)) == k


def test_static_frequencies_approach_the_weights():
    weights = [0.6, 0.3, 0.1]
    sampler = MixtureSampler([50, 20, 10], 10, weights=weights, mode="static", num_steps=2000)
    counts = [0, 0, 0]
    for batch in sampler:
        for i in batch:
            counts[source_of(i, [50, 20, 10])] += 1
    frequencies = [c / 20000 for c in counts]
    assert all(abs(f - w) < 0.015 for f, w in zip(frequencies, weights, strict=True))


def test_default_weights_are_proportional_to_the_sizes():
    sampler = MixtureSampler([30, 10], 4)
    assert sampler.weights.tolist() == [0.75, 0.25]
    assert torch.equal(MixtureSampler([3, 1], 4, mode="stratified").weights, torch.full((2,), 0.5))


def test_source_of_and_sizes():
    sampler = build()
    assert [sampler.source_of(i) for i in range(sum(SIZES))] == [
        source_of(i) for i in range(sum(SIZES))
    ]
    assert sampler.num_sources == 4 and sampler.num_samples == 27
    assert sampler.source_sizes == SIZES and sampler.batch_size == 5


def test_set_weights_is_normalised_and_pending_until_the_next_iterations_first_draw():
    untouched = list(build())
    sampler = build()
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(2)]
    sampler.set_weights([0, 0, 2, 0])
    assert sampler.weights.tolist() == pytest.approx([0.4, 0.1, 0.0, 0.5])
    assert sampler.pending_weights.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert seen + list(iterator) == untouched  # the running epoch is unchanged
    lazy = iter(sampler)  # created before the change, like Lightning's first iterator
    sampler.set_weights([0, 3, 0, 0])
    first = next(lazy)  # the first draw takes the pending weights
    assert sampler.weights.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert all(source_of(i) == 1 for i in first + [i for batch in lazy for i in batch])
    assert torch.equal(sampler.pending_weights, sampler.weights)


# ------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stop", [0, 1, 3, 6])
@pytest.mark.parametrize("mode", ["dynamic", "static", "stratified"])
def test_resume_continues_the_stream(stop, mode):
    sampler = build(mode, seed=5)
    sampler.set_epoch(1)
    list(sampler)
    if mode == "dynamic":
        sampler.set_weights([1, 1, 1, 1])  # pending for epoch 2
    sampler.set_epoch(2)
    iterator = iter(sampler)
    for _ in range(stop):
        next(iterator)
    if mode == "dynamic":
        sampler.set_weights([0, 1, 5, 0])  # pending for epoch 3, set mid-epoch
    state = sampler.state_dict()
    rest = list(iterator)
    sampler.set_epoch(3)
    next_epoch = list(sampler)

    resumed = build(mode, seed=5)
    resumed.load_state_dict(state)
    assert list(resumed) == rest
    resumed.set_epoch(3)
    assert list(resumed) == next_epoch
    assert torch.equal(resumed.weights, sampler.weights)


def test_state_saved_before_the_epoch_began_applies_the_pending_weights():
    sampler = build()
    sampler.set_weights([0, 0, 0, 1])
    state = sampler.state_dict()
    assert state["started"] is False and state["pending"].tolist() == [0.0, 0.0, 0.0, 1.0]
    resumed = build()
    resumed.load_state_dict(state)
    batches = list(resumed)
    assert batches == list(sampler)
    assert all(source_of(i) == 3 for batch in batches for i in batch)


def test_state_holds_primitives_and_tensors_only():
    sampler = build(num_steps=4)
    sampler.set_weights([1, 1, 1, 1])
    state = sampler.state_dict()
    assert set(state) == {"epoch", "yielded", "started", "weights", "pending", "config"}
    assert state["config"] == {
        "kind": "MixtureSampler",
        "source_sizes": SIZES,
        "batch_size": 5,
        "num_replicas": 1,
        "seed": 0,
        "mode": "dynamic",
        "num_steps": 4,
    }
    assert isinstance(state["weights"], torch.Tensor) and isinstance(state["pending"], torch.Tensor)
    state["pending"].fill_(0.0)  # a clone: the sampler is unaffected
    state["weights"].fill_(0.0)
    assert sampler.pending_weights.sum() == 1 and sampler.weights.sum() == 1


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
        sampler = MixtureSampler(SIZES, 3, weights=WEIGHTS, seed=9, num_steps=10)
        return stateful_loader(dataset, batch_sampler=sampler, num_workers=num_workers), sampler

    first, sampler = loader(CountingDataset(sum(SIZES)))
    full = [b.tolist() for b in first]
    sampler.set_weights([0, 1, 1, 0])  # epoch 1: new weights
    sampler.set_epoch(1)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(4)]
    state = first.state_dict()
    rest = [b.tolist() for b in iterator]
    assert full != seen + rest and all(source_of(i) in (1, 2) for b in rest for i in b)

    dataset = CountingDataset(sum(SIZES))
    second, resumed = loader(dataset)  # unsteered: the state carries the weights
    second.load_state_dict(state)
    resumed.set_epoch(1)
    assert [b.tolist() for b in second] == rest
    if num_workers == 0:  # the replay of the 4 steps loaded nothing
        assert dataset.loaded == sum(len(batch) for batch in rest)


# -------------------------------------------------------------------------------- search
def test_find_mixture_sampler_uses_the_shared_search():
    sampler = build()
    loader = DataLoader(range(27), batch_sampler=sampler)
    assert find_mixture_sampler(loader) is sampler
    assert find_mixture_sampler([DataLoader(range(3)), {"mix": (loader,)}]) is sampler
    curriculum = DataLoader(range(8), batch_sampler=CurriculumSampler(8, 2))
    with pytest.raises(ValueError, match=r"No mixture sampler.*batch_sampler=CurriculumSampler"):
        find_mixture_sampler(curriculum)
    with pytest.raises(ValueError, match="No steerable sampler"):
        find_steerable_sampler(loader)  # a mixture is not the curriculum protocol
    other = DataLoader(range(27), batch_sampler=build())
    with pytest.raises(ValueError, match=r"Found 2 mixture samplers.*\[1\]\.batch_sampler"):
        find_mixture_sampler([loader, other])


def test_lightning_re_creates_it_with_a_distributed_sampler():
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler

    dataset = list(range(sum(SIZES)))
    with _replace_dunder_methods(BatchSampler):  # as Lightning does around train_dataloader
        loader = DataLoader(dataset, batch_sampler=build(seed=1, num_steps=6))
    distributed = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    sampler = _update_dataloader(loader, distributed).batch_sampler
    assert isinstance(sampler, MixtureSampler) and sampler.sampler is distributed
    assert sampler.world() == (2, 1) and torch.equal(sampler.weights, build().weights)
    expected = reference_steps(SIZES, 5, 2, 6, 1, 0, WEIGHTS, "dynamic")
    assert list(sampler) == [batches[1] for batches in expected]


# ----------------------------------------------------------------------------------- DDP
def _ddp_run(rank: int, world_size: int) -> dict:
    dataset = range(sum(SIZES))
    lightning_like = MixtureSampler(
        SIZES, 4, weights=WEIGHTS, seed=1, sampler=DistributedSampler(dataset)
    )
    from_dist = MixtureSampler(SIZES, 4, weights=WEIGHTS, seed=1)
    out = {"len": len(lightning_like), "world": lightning_like.world()}
    for name, sampler in (("sampler", lightning_like), ("dist", from_dist)):
        sampler.set_epoch(1)
        sampler.set_weights([1, 2, 3, 4])
        out[name] = list(sampler)
    weights = lightning_like.weights
    gathered = [torch.zeros_like(weights) for _ in range(world_size)]
    dist.all_gather(gathered, weights)
    out["weights"] = gathered
    return out


@pytest.mark.ddp
def test_two_process_ddp():
    results = run_ddp(_ddp_run)
    assert results[0]["len"] == results[1]["len"] == 4  # ceil(27 / 8)
    assert [r["world"] for r in results] == [(2, 0), (2, 1)]
    assert torch.equal(results[0]["weights"][0], results[0]["weights"][1])
    expected = reference_steps(SIZES, 4, 2, 4, 1, 1, [1, 2, 3, 4], "dynamic")
    for result in results:
        assert result["sampler"] == result["dist"]
    for step in range(4):
        a, b = results[0]["sampler"][step], results[1]["sampler"][step]
        assert [a, b] == expected[step]
        assert len(a) == len(b) == 4
