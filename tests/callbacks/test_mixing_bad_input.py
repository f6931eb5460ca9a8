"""Bad input to SkillIt and GradientAlignmentMixing: errors name the argument and the value."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_plugins.callbacks import GradientAlignmentMixing, SkillIt
from tests.callbacks.mixing import UserMixture, fit_mixture
from tests.callbacks.steering import PointsData
from tests.callbacks.test_steering_bad_input import NoProtocols

GRAPH = torch.eye(3).tolist()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"graph": [[1.0, 0.0]]},
            ValueError,
            r"`graph` must be a square \[k, k\] matrix, got shape \[1, 2\]",
        ),
        (
            {"graph": [[1.0, -0.5], [0.0, 1.0]]},
            ValueError,
            r"finite and non-negative, got -0.5 at \[0, 1\]",
        ),
        ({"graph": [[1.0, float("nan")], [0.0, 1.0]]}, ValueError, "finite and non-negative"),
        ({"graph": "missing.npy"}, ValueError, "'missing.npy' does not exist"),
        ({"graph": {"a": 1}}, TypeError, "`graph` must be a"),
        ({"eta": float("inf")}, ValueError, "`eta`"),
        ({"window": 0}, ValueError, "`window`"),
        ({"update_every": 0}, ValueError, "`update_every`"),
        ({"update_every": 2.5}, TypeError, "`update_every`"),
        ({"target": "a"}, ValueError, "`target` must be a non-empty list"),
        ({"prior": [0.5, -0.5]}, ValueError, "`prior`"),
        ({"eval_batches": 0}, ValueError, "`eval_batches`"),
    ],
)
def test_skill_it_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SkillIt(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eta": float("nan")}, ValueError, "`eta`"),
        ({"ema": 1.5}, ValueError, r"`ema` must be .*\[0, 1\]"),
        ({"update_every": 0}, ValueError, "`update_every`"),
        ({"eval_batches": 0}, ValueError, "`eval_batches`"),
        ({"plot": 1}, TypeError, "`plot`"),
    ],
)
def test_gradient_alignment_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradientAlignmentMixing(**kwargs)


def test_a_graph_of_the_wrong_size_is_named_at_fit(tmp_path):
    with pytest.raises(ValueError, match=r"`graph` must be \[3, 3\] for the 3 sources"):
        fit_mixture(tmp_path, [SkillIt(graph=[[1.0, 0.0], [0.0, 1.0]])], max_steps=1)


def test_an_unknown_target_lists_the_sources(tmp_path):
    with pytest.raises(ValueError, match=r"`target` names \['z'\].*\['a', 'b', 'c'\]"):
        fit_mixture(tmp_path, [SkillIt(graph=GRAPH, target=["z"])], max_steps=1)


@pytest.mark.parametrize(
    "callback", [lambda: SkillIt(graph=GRAPH), lambda: GradientAlignmentMixing()]
)
def test_a_module_without_per_sample_loss_is_named(tmp_path, callback):
    with pytest.raises(TypeError, match="needs a LightningModule with `per_sample_loss"):
        fit_mixture(tmp_path, [callback()], max_steps=1, module=NoProtocols())


def test_a_sampler_not_in_dynamic_mode_is_named(tmp_path):
    class Static(UserMixture):
        def __init__(self, num_workers=0):
            super().__init__(num_workers, mode="static")

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[SkillIt(graph=GRAPH)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    from tests.callbacks.steering import UserClassifier

    with pytest.raises(ValueError, match="the sampler's `mode` is 'static': use mode='dynamic'"):
        trainer.fit(UserClassifier(), Static())


def test_a_datamodule_without_the_mixture_protocol_is_named(tmp_path):
    from tests.callbacks.steering import UserClassifier

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[SkillIt()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="No mixture sampler in the train dataloader"):
        trainer.fit(UserClassifier(), PointsData())


def test_gradient_alignment_without_a_target_is_named(tmp_path):
    class NoTarget(UserMixture):
        def target_dataloader(self):
            return None

    from tests.callbacks.steering import UserClassifier

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[GradientAlignmentMixing()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match=r"needs target examples.*target_dataloader\(\) is None"):
        trainer.fit(UserClassifier(), NoTarget())
