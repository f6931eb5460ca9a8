import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.sampling import ShuffleSampler


def reference(size: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_order_is_a_function_of_seed_and_epoch(epoch):
    sampler = ShuffleSampler(11, seed=3)
    sampler.set_epoch(epoch)
    assert list(sampler) == reference(11, 3, epoch)
    assert list(sampler) == reference(11, 3, epoch)  # re-iterating repeats the epoch
    assert len(sampler) == 11


@pytest.mark.parametrize("taken", [0, 1, 6, 11])
def test_resume_skips_what_was_handed_out(taken):
    sampler = ShuffleSampler(11, seed=3)
    sampler.set_epoch(2)
    it = iter(sampler)
    seen = [next(it) for _ in range(taken)]
    resumed = ShuffleSampler(11, seed=3)
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.epoch == 2
    assert seen + list(resumed) == reference(11, 3, 2)
    assert list(resumed) == reference(11, 3, 2)  # the skip applies once


def test_new_epoch_after_load_starts_from_the_beginning():
    resumed = ShuffleSampler(8)
    resumed.load_state_dict({"epoch": 0, "yielded": 5})
    resumed.set_epoch(1)
    assert list(resumed) == reference(8, 0, 1)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_stateful_dataloader_resumes_across_epochs(num_workers):
    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(
            list(range(10)), batch_size=3, sampler=ShuffleSampler(10, seed=1),
            num_workers=num_workers,
        )  # fmt: skip

    full = loader()
    expected = []
    for epoch in range(2):
        full.sampler.set_epoch(epoch)
        expected.append([b.tolist() for b in full])
    interrupted = loader()
    interrupted.sampler.set_epoch(1)
    it = iter(interrupted)
    head = [next(it).tolist() for _ in range(2)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    assert head + [b.tolist() for b in resumed] == expected[1]


def test_negative_size_rejected():
    with pytest.raises(ValueError, match="`size` must be a non-negative integer, got -1"):
        ShuffleSampler(-1)
