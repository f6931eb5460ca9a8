"""``ClipLoss`` / ``SigLipLoss`` as drop-ins for open_clip's: its constructor and call arguments.

The constructor arguments are taken from open_clip's own signature, so a new argument of
open_clip's that we do not accept fails here.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from lightning_plugins.losses import ClipLoss, SigLipLoss
from tests.contrastive_inputs import paired_features
from tests.helpers import run_ddp

open_clip_loss = pytest.importorskip("open_clip.loss")

PAIRS = {"ClipLoss": (ClipLoss, open_clip_loss.ClipLoss)}
PAIRS["SigLipLoss"] = (SigLipLoss, open_clip_loss.SigLipLoss)


def open_clip_arguments(cls: type) -> dict:
    """Every constructor argument of open_clip's ``cls``, at its default (as create_loss)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert parameters, cls
    assert all(p.default is not inspect.Parameter.empty for p in parameters)
    return {p.name: p.default for p in parameters}


def test_open_clip_arguments_are_known() -> None:
    """The argument sets this file tests are the ones the issue names."""
    assert open_clip_arguments(open_clip_loss.ClipLoss) == {
        "local_loss": False,
        "gather_with_grad": False,
        "cache_labels": False,
        "rank": 0,
        "world_size": 1,
        "use_horovod": False,
    }
    assert open_clip_arguments(open_clip_loss.SigLipLoss) == {
        "cache_labels": False,
        "rank": 0,
        "world_size": 1,
        "dist_impl": None,
    }


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("output_dict", [False, True])
def test_same_arguments_same_result(name: str, output_dict: bool) -> None:
    ours_cls, theirs_cls = PAIRS[name]
    kwargs = open_clip_arguments(theirs_cls)
    ours, theirs = ours_cls(**kwargs), theirs_cls(**kwargs)
    # positionally too, in open_clip's order
    assert isinstance(ours_cls(*kwargs.values()), ours_cls)
    image, text = paired_features(8, seed=3)
    scale, bias = torch.tensor(10.0, dtype=image.dtype), torch.tensor(-5.0, dtype=image.dtype)
    expected = theirs(image, text, scale, bias, output_dict=output_dict)
    got = ours(image, text, scale, bias, output_dict=output_dict)
    positional = ours(image, text, scale, bias, output_dict)
    # open_clip's training loop: loss(**model_out, output_dict=True)
    model_out = {
        "image_features": image,
        "text_features": text,
        "logit_scale": scale,
        "logit_bias": bias,
    }
    assert torch.equal(
        ours(**model_out, output_dict=True)["contrastive_loss"], ours(image, text, scale, bias)
    )
    if output_dict:
        assert isinstance(got, dict) and isinstance(expected, dict)
        assert got.keys() == expected.keys() == {"contrastive_loss"}
        got, expected, positional = (d["contrastive_loss"] for d in (got, expected, positional))
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape == ()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(positional, got)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_output_dict_carries_the_gradient(name: str) -> None:
    ours_cls, theirs_cls = PAIRS[name]
    image, text = paired_features(6, seed=4)
    image.requires_grad_(True)
    scale, bias = torch.tensor(10.0, dtype=image.dtype), torch.tensor(-5.0, dtype=image.dtype)
    ours_cls(**open_clip_arguments(theirs_cls))(image, text, scale, bias, output_dict=True)[
        "contrastive_loss"
    ].backward()
    mine = image.grad.clone()
    image.grad = None
    theirs_cls()(image, text, scale, bias, output_dict=True)["contrastive_loss"].backward()
    torch.testing.assert_close(mine, image.grad)


def test_output_dict_with_per_sample_losses() -> None:
    image, text = paired_features(5, seed=5)
    out = ClipLoss()(image, text, 10.0, output_dict=True, reduction="none")
    assert out["contrastive_loss"].shape == (5,)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_output_dict_must_be_bool(name: str) -> None:
    image, text = paired_features(4, seed=6)
    with pytest.raises(TypeError, match="`output_dict` must be a bool .*got 'none'"):
        PAIRS[name][0]()(image, text, 10.0, -5.0, "none")


def test_use_horovod_is_refused() -> None:
    with pytest.raises(ValueError, match="`use_horovod`=True is not supported"):
        ClipLoss(use_horovod=True)


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cache_labels": "yes"}, TypeError, "`cache_labels` must be a bool"),
        ({"rank": 0.5}, TypeError, "`rank` must be an integer or None, got 0.5"),
        ({"rank": -1}, ValueError, "`rank` must be a non-negative integer, got -1"),
        ({"world_size": 0}, ValueError, "`world_size` must be a positive integer, got 0"),
        ({"rank": 2, "world_size": 2}, ValueError, "`rank` must be below `world_size`=2, got 2"),
    ],
)
def test_bad_open_clip_arguments(name: str, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PAIRS[name][0](**kwargs)


def test_siglip_accepts_open_clip_dist_impl_names() -> None:
    for given, runs in [
        (None, "ring"),
        ("bidir", "ring"),
        ("shift", "ring"),
        ("reduce", "gather"),
        ("gather", "gather"),
        ("ring", "ring"),
    ]:
        assert SigLipLoss(dist_impl=given).dist_impl == runs
    with pytest.raises(ValueError, match=r"`dist_impl` must be one of \('ring', 'gather'\)"):
        SigLipLoss(dist_impl="allreduce")


def test_rank_and_world_size_ignored_without_process_group() -> None:
    """Not initialized: the given values cannot be compared, the loss runs one process."""
    image, text = paired_features(4, seed=7)
    expected = ClipLoss()(image, text, 10.0)
    got = ClipLoss(rank=1, world_size=2)(image, text, 10.0)
    assert torch.equal(got, expected)


def _process_group_worker(rank: int, world_size: int, built_before: list) -> list[str]:
    image, text = paired_features(4, seed=rank)
    # the process group's own values pass, at construction and at the call
    for cls in (ClipLoss, SigLipLoss):
        cls(rank=rank, world_size=world_size)(image, text, 10.0, -5.0)
    for cls in (ClipLoss, SigLipLoss):
        with pytest.raises(ValueError, match="`world_size`=1 contradicts torch.distributed"):
            cls(rank=0, world_size=1)
        with pytest.raises(ValueError, match=f"`rank`={1 - rank} contradicts torch.distributed"):
            cls(rank=1 - rank)
    # built before the process group started (as in a LightningModule): checked at the call
    messages = []
    for loss in built_before:
        with pytest.raises(ValueError, match="contradicts torch.distributed") as error:
            loss(image, text, 10.0, -5.0)
        messages.append(str(error.value))
    return messages


@pytest.mark.ddp
def test_rank_and_world_size_must_match_process_group() -> None:
    built_before = [ClipLoss(rank=0, world_size=1), SigLipLoss(world_size=1)]
    messages = run_ddp(_process_group_worker, built_before, world_size=2)
    assert messages[0][0].startswith("`world_size`=1 contradicts torch.distributed, whose ")
    assert "ClipLoss reads the rank and world size from torch.distributed" in messages[0][0]
    assert "SigLipLoss reads" in messages[1][1]
