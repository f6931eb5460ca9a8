import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.functional.cabs_select import cabs_select
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream

MAX_OBJECTS = 4


def make_samples(n: int, num_concepts: int = 6, padded: bool = False, seed: int = 0) -> list[dict]:
    """Samples with 0..MAX_OBJECTS random concepts; padded: a [-1]-padded tensor per sample."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        k = int(torch.randint(0, MAX_OBJECTS + 1, (1,), generator=gen))
        concepts = torch.randint(0, num_concepts, (k,), generator=gen).tolist()
        if padded:
            concepts = torch.tensor(concepts + [-1] * (MAX_OBJECTS - k))
        samples.append({"index": i, "concepts": concepts})
    return samples


def as_list(concepts) -> list[int]:
    if isinstance(concepts, torch.Tensor):
        return [c for c in concepts.tolist() if c != -1]
    return list(concepts)


def reference(stream: ConceptAwareStream, samples: list[dict], worker: int = 0) -> list[list[int]]:
    """CABS batches of consecutive super-batches of ``samples``, written out directly."""
    size = round(stream.batch_size / (1 - stream.filter_ratio))
    batches = []
    for j in range(len(samples) // size):
        chunk = samples[j * size : (j + 1) * size]
        picks = cabs_select(
            [as_list(s["concepts"]) for s in chunk],
            stream.batch_size,
            stream.variant,
            targets=stream.targets,
            cap=stream.cap,
            generator=stream.generator(j, worker=worker),
            num_concepts=stream.num_concepts,
        )
        batches.append([chunk[p]["index"] for p in picks.tolist()])
    return batches


def indices(stream) -> list[int]:
    return [sample["index"] for sample in stream]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


class ShardedSource(IterableDataset):
    """Splits its samples round-robin over DataLoader workers, as webdataset shards do."""

    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            yield from self.samples
        else:
            yield from self.samples[info.id :: info.num_workers]


class StatefulSource(IterableDataset):
    """Resumes at a saved position and counts the samples it reads."""

    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples
        self.position = 0
        self.reads = 0
        self._start = 0

    def __iter__(self):
        start, self._start = self._start, 0
        self.position = start
        for sample in self.samples[start:]:
            self.position += 1
            self.reads += 1
            yield sample

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self._start = self.position = state["position"]


@pytest.mark.parametrize("variant", ["dm", "fm"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(("batch_size", "filter_ratio", "super_batch"), [(3, 0.7, 10), (4, 0.0, 4)])
def test_matches_cabs_select_on_consecutive_super_batches(
    variant, padded, batch_size, filter_ratio, super_batch
):
    samples = make_samples(53, padded=padded)
    stream = ConceptAwareStream(
        samples, batch_size, filter_ratio, variant=variant, cap=2, seed=4, num_concepts=6
    )
    assert stream.super_batch_size == super_batch
    expected = reference(stream, samples)
    assert len(expected) == 53 // super_batch
    assert indices(stream) == flat(expected)
    assert indices(stream) == flat(expected)  # a second pass repeats the epoch


def test_incomplete_last_super_batch_is_dropped():
    samples = make_samples(23)
    stream = ConceptAwareStream(samples, batch_size=2, filter_ratio=0.75, variant="fm")
    assert stream.super_batch_size == 8
    seen = indices(stream)
    assert len(seen) == 4 and max(seen) < 16
    assert stream.state_dict()["super_batches"] == 2
    assert indices(ConceptAwareStream(samples[:7], batch_size=2, filter_ratio=0.75)) == []
    batches = list(DataLoader(stream, batch_size=2, collate_fn=lambda b: [s["index"] for s in b]))
    assert [len(b) for b in batches] == [2, 2]


def test_fm_keeps_the_samples_with_most_objects():
    samples = make_samples(40, seed=3)
    stream = ConceptAwareStream(samples, batch_size=3, filter_ratio=0.7, variant="fm")
    seen = indices(stream)
    assert len(seen) == 12
    objects = [len(s["concepts"]) for s in samples]
    for j in range(4):
        kept = seen[3 * j : 3 * j + 3]
        dropped = set(range(10 * j, 10 * j + 10)) - set(kept)
        assert min(objects[i] for i in kept) >= max(objects[i] for i in dropped)
        assert [objects[i] for i in kept] == sorted((objects[i] for i in kept), reverse=True)


def test_samples_without_concepts_are_picked_last():
    samples = [{"index": i, "concepts": [] if i % 2 else [i]} for i in range(20)]
    stream = ConceptAwareStream(samples, batch_size=5, filter_ratio=0.5, variant="dm")
    assert all(i % 2 == 0 for i in indices(stream))
    empty = [{"index": i, "concepts": []} for i in range(20)]
    assert len(indices(ConceptAwareStream(empty, batch_size=5, filter_ratio=0.5))) == 10


def test_dm_ties_are_deterministic_by_seed_and_epoch():
    samples = [{"index": i, "concepts": [i % 2]} for i in range(100)]  # every gain ties

    def run(seed: int, epoch: int = 0) -> list[int]:
        stream = ConceptAwareStream(samples, batch_size=2, filter_ratio=0.8, seed=seed)
        stream.set_epoch(epoch)
        return indices(stream)

    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0, epoch=1) != run(0) and run(0, epoch=1) == run(0, epoch=1)
    stream = ConceptAwareStream(samples, batch_size=2)
    draws = {
        tuple(torch.randperm(10, generator=stream.generator(j, worker, rank)).tolist())
        for j, worker, rank in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    }
    assert len(draws) == 4  # super-batches, workers and ranks draw differently


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "`batch_size` must be"),
        ({"batch_size": 2.0}, TypeError, "`batch_size` must be an integer"),
        ({"filter_ratio": 1.0}, ValueError, "`filter_ratio` must be"),
        ({"filter_ratio": -0.1}, ValueError, "`filter_ratio` must be"),
        ({"filter_ratio": float("nan")}, ValueError, "`filter_ratio` must be"),
        ({"filter_ratio": "0.5"}, TypeError, "`filter_ratio` must be a number"),
        ({"variant": "iid"}, ValueError, "`variant` must be one of"),
        ({"cap": 0}, ValueError, "`cap` must be"),
        ({"cap": 1.5}, TypeError, "`cap` must be an integer"),
        ({"seed": "0"}, TypeError, "`seed` must be an integer"),
        ({"num_concepts": 0}, ValueError, "`num_concepts` must be"),
        ({"targets": torch.tensor([0.5, 0.6])}, ValueError, "targets"),
        ({"targets": torch.tensor([-0.5, 1.5])}, ValueError, "targets"),
        (
            {"targets": torch.tensor([0.5, 0.5]), "num_concepts": 3},
            ValueError,
            "`targets` must hold one entry per concept \\(3\\)",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"batch_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        ConceptAwareStream(make_samples(4), **args)


def test_bad_source_and_samples_raise():
    with pytest.raises(TypeError, match="source"):
        ConceptAwareStream(3, batch_size=2)
    with pytest.raises(KeyError, match="labels"):
        indices(ConceptAwareStream(make_samples(4), 2, 0.5, concepts_key="labels"))
    with pytest.raises(TypeError, match="dict"):
        list(ConceptAwareStream([[1], [2]], 1, 0.5))
    floats = [{"index": i, "concepts": torch.tensor([0.5])} for i in range(4)]
    with pytest.raises(ValueError, match="integer"):
        list(ConceptAwareStream(floats, 2, 0.5))
    with pytest.raises(ValueError, match="concepts"):  # id outside the vocabulary
        list(ConceptAwareStream(make_samples(4), 2, 0.5, num_concepts=1))


def test_set_targets_steers_the_selection():
    samples = make_samples(60, seed=1)
    stream = ConceptAwareStream(samples, batch_size=3, filter_ratio=0.7, cap=None, seed=2)
    uniform = indices(stream)
    assert uniform == flat(reference(stream, samples))
    stream.set_targets([1.0, 0, 0, 0, 0, 0])
    steered = indices(stream)
    assert steered == flat(reference(stream, samples)) and steered != uniform
    with pytest.raises(ValueError, match="targets"):
        stream.set_targets([0.5, 0.2])
    stream.set_targets(None)
    assert indices(stream) == uniform


@pytest.mark.parametrize("taken", [0, 1, 3, 4, 7, 11, 12])
def test_resume_continues_the_stream(taken):
    samples = make_samples(42)
    targets = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.1, 0.1])

    def stream() -> ConceptAwareStream:
        s = ConceptAwareStream(samples, batch_size=3, filter_ratio=0.7, seed=5, targets=targets)
        s.set_epoch(2)
        return s

    full = indices(stream())
    assert len(full) == 12
    interrupted = stream()
    it = iter(interrupted)
    head = [next(it)["index"] for _ in range(taken)]
    state = interrupted.state_dict()
    assert set(state) == {"epoch", "super_batches", "yielded", "targets", "source", "config"}
    assert (state["super_batches"], state["yielded"]) == divmod(taken, 3)
    resumed = ConceptAwareStream(samples, batch_size=3, filter_ratio=0.7, seed=5)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["super_batches"] == state["super_batches"]
    assert torch.equal(resumed.targets, targets.double())
    assert head + indices(resumed) == full
    assert indices(resumed) == full  # the skip applies once


@pytest.mark.parametrize("taken", [0, 1, 3, 5, 9, 12])
def test_resume_restores_a_stateful_source(taken):
    samples = make_samples(45)

    def stream() -> ConceptAwareStream:
        return ConceptAwareStream(StatefulSource(samples), batch_size=3, filter_ratio=0.7, seed=1)

    full = indices(stream())
    assert len(full) == 12
    interrupted = stream()
    assert indices(interrupted) == full  # leaves the source's state at its end
    it = iter(interrupted)
    head = [next(it)["index"] for _ in range(taken)]
    resumed = stream()
    resumed.load_state_dict(interrupted.state_dict())
    assert head + indices(resumed) == full
    # the source restarts at the current super-batch instead of re-reading the epoch
    assert resumed.source.reads == 45 - 10 * (taken // 3)


def test_set_epoch_discards_a_loaded_position():
    samples = make_samples(40)
    stream = ConceptAwareStream(samples, batch_size=2, filter_ratio=0.8)
    stream.load_state_dict({"epoch": 0, "super_batches": 3, "yielded": 1})
    stream.set_epoch(1)
    assert indices(stream) == flat(reference(stream, samples))


def padded_loader(stream: ConceptAwareStream, num_workers: int) -> StatefulDataLoader:
    return StatefulDataLoader(stream, batch_size=stream.batch_size, num_workers=num_workers)


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("stateful_source", [False, True])
def test_stateful_dataloader_resumes_mid_epoch(num_workers, stateful_source):
    samples = make_samples(45, padded=True)

    def loader() -> StatefulDataLoader:
        source = StatefulSource(samples) if stateful_source else samples
        stream = ConceptAwareStream(source, batch_size=3, filter_ratio=0.7, seed=1)
        stream.set_epoch(1)
        return padded_loader(stream, num_workers)

    full = [b["index"].tolist() for b in loader()]
    assert full == reference(loader().dataset, samples)
    interrupted = loader()
    it = iter(interrupted)
    head = [next(it)["index"].tolist() for _ in range(2)]
    state = interrupted.state_dict()
    del it, interrupted
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [b["index"].tolist() for b in resumed]
    assert head + tail == full
    if stateful_source and num_workers == 0:  # restored, not re-read: 20 samples consumed
        assert resumed.dataset.source.reads == 40 - 20 + 5  # the rest, tail included
    assert [b["index"].tolist() for b in resumed] == full  # the next epoch starts afresh


def test_workers_keep_batches_whole():
    samples = make_samples(80, padded=True, seed=2)
    stream = ConceptAwareStream(ShardedSource(samples), batch_size=2, filter_ratio=0.8, seed=3)
    batches = [b["index"].tolist() for b in DataLoader(stream, batch_size=2, num_workers=2)]
    per_worker = [reference(stream, samples[w::2], worker=w) for w in range(2)]
    assert len(per_worker[0]) == len(per_worker[1]) == 4
    # the DataLoader alternates workers, each batch one whole CABS batch of one worker
    assert batches == [b for pair in zip(*per_worker, strict=True) for b in pair]
