"""Extension points of ContrastiveImageText: per_sample_loss is what trains, `weight` in a
batch gives the weighted mean (exact under DDP), and the README's example subclass runs."""

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP, SigLIP
from tests.helpers import run_ddp

MICRO = "ViT-Micro-P8-32"
CAPTIONS = [
    "a red circle",
    "two blue stars",
    "a green bar",
    "three white rings",
    "a cyan cross and a purple square",
    "an image with a yellow diamond",
]


def batch(size: int = 4) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(size, 3, 32, 32, generator=generator), "caption": CAPTIONS[:size]}


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def shapes() -> SyntheticShapes:
    return SyntheticShapes(batch_size=4, train_size=8, zero_shot_size=64, retrieval_size=8)


def quiet(module):
    """The module with ``log`` a no-op, to call ``training_step`` outside a Trainer."""
    module.log = lambda *args, **kwargs: None
    return module


def grads_of(module: CLIP, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- the README's example
class FocalCLIP(CLIP):
    """CLIP whose hard pairs weigh more, and whose positional embeddings get no decay."""

    def per_sample_loss(self, batch):
        loss = super().per_sample_loss(batch)
        return loss * (1 + loss.detach())  # each pair's loss times (1 + itself)

    def no_weight_decay(self, name, param):
        return super().no_weight_decay(name, param) or "positional_embedding" in name


def test_readme_example_subclass_trains_its_own_loss():
    torch.manual_seed(0)
    module = FocalCLIP(model_name=MICRO)
    t = trainer(max_steps=1)
    t.fit(module, shapes())
    assert t.global_step == 1 and torch.isfinite(t.callback_metrics["train/loss"])
    _, no_decay = module.parameter_groups()
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(module.model.positional_embedding) in no_decay_ids
    # the trained loss is the focal one: mean of l * (1 + l), above the plain mean
    quiet(module).eval()
    plain = CLIP.per_sample_loss(module, batch())
    step = module.training_step(batch(), 0)
    torch.testing.assert_close(step, (plain * (1 + plain)).mean())


# ------------------------------------------------------- per_sample_loss is what trains
class Spy(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_train_start(self, trainer, pl_module) -> None:
        original = pl_module.per_sample_loss

        def counted(batch):
            self.calls += 1
            return original(batch)

        pl_module.per_sample_loss = counted


class DoubledCLIP(CLIP):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def per_sample_loss(self, batch):
        self.calls += 1
        return 2 * super().per_sample_loss(batch)


def test_overridden_per_sample_loss_is_called_during_fit():
    module = DoubledCLIP(model_name=MICRO)
    spy = Spy()
    trainer(max_steps=2, callbacks=[spy]).fit(module, shapes())
    assert module.calls == 2 and spy.calls == 2  # one call per step, no second forward


@pytest.mark.parametrize("kind", ["plain", "distill"])
def test_override_changes_gradients(kind):
    distill = {"distill_weight": 0.5} if kind == "distill" else {}
    torch.manual_seed(0)
    base = quiet(CLIP(model_name=MICRO, **distill))
    torch.manual_seed(0)
    doubled = quiet(DoubledCLIP(model_name=MICRO, **distill))
    if distill:
        torch.manual_seed(1)
        base.teacher = doubled.teacher = CLIP(model_name=MICRO).eval()
    base_grads = grads_of(base, base.training_step(batch(), 0))
    doubled_grads = grads_of(doubled, doubled.training_step(batch(), 0))
    assert doubled.calls == 1
    for name, grad in base_grads.items():
        torch.testing.assert_close(doubled_grads[name], 2 * grad, msg=name)


def test_distillation_terms_logged_from_the_same_pass():
    torch.manual_seed(1)
    teacher = CLIP(model_name=MICRO).eval()
    torch.manual_seed(0)
    module = DoubledCLIP(model_name=MICRO, distill_weight=0.5)
    module.teacher = teacher
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    loss = module.training_step(batch(), 0)
    assert module.calls == 1
    contrastive, distill = logged["train/contrastive_loss"], logged["train/distill_loss"]
    torch.testing.assert_close(loss.detach(), 2 * (contrastive + 0.5 * distill))
    torch.testing.assert_close(logged["train/loss"], loss)


# ----------------------------------------------------------------- weights in the batch
@pytest.mark.parametrize("module_cls", [CLIP, SigLIP])
def test_weighted_mean_is_the_hand_sum(module_cls):
    torch.manual_seed(0)
    module = quiet(module_cls(model_name=MICRO))
    weight = torch.tensor([0.5, 2.0, 0.0, 1.0])
    losses = module.per_sample_loss(batch()).detach().tolist()
    expected = sum(w * x for w, x in zip(weight.tolist(), losses, strict=True)) / 3.5
    loss = module.training_step({**batch(), "weight": weight}, 0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    ones = module.training_step({**batch(), "weight": torch.ones(4)}, 0)
    torch.testing.assert_close(ones, module.training_step(batch(), 0))


def test_zero_weight_sample_still_counts_as_a_negative_only():
    """A weight scales a pair's own loss; the pair stays in the others' denominators."""
    torch.manual_seed(0)
    module = quiet(CLIP(model_name=MICRO))
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0])
    losses = module.per_sample_loss(batch())
    torch.testing.assert_close(
        module.training_step({**batch(), "weight": weight}, 0), losses[:3].mean()
    )


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        ([1.0, 1.0, 1.0, 1.0], TypeError, r"batch\['weight'\]` must be a floating-point tensor"),
        (torch.ones(4, dtype=torch.long), TypeError, "floating-point tensor"),
        (torch.ones(3), ValueError, r"must have shape \(4,\).*got \(3,\)"),
        (torch.zeros(4), ValueError, "not all zero"),
        (torch.tensor([1.0, -1.0, 1.0, 1.0]), ValueError, "non-negative.*minimum of -1.0"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), ValueError, "finite"),
    ],
)
def test_bad_weights_are_named(weight, error, match):
    module = quiet(CLIP(model_name=MICRO))
    with pytest.raises(error, match=match):
        module.training_step({**batch(), "weight": weight}, 0)


# ------------------------------------------------------ weighted training step under DDP
WEIGHT = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25])
SIZES = (2, 4)  # unequal local batches


def make_module(distill: bool) -> CLIP:
    if not distill:
        torch.manual_seed(0)
        return quiet(CLIP(model_name=MICRO))
    torch.manual_seed(1)
    teacher = CLIP(model_name=MICRO).eval()
    torch.manual_seed(0)
    module = quiet(CLIP(model_name=MICRO, distill_weight=0.5))
    module.teacher = teacher
    return module


def _ddp_weighted(rank: int, world_size: int) -> dict:
    results = {}
    for distill in (False, True):
        module = make_module(distill)
        full = {**batch(6), "weight": WEIGHT}
        start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
        local = {key: value[start:stop] for key, value in full.items()}
        loss = module.training_step(local, 0)
        grads = {}
        for name, grad in grads_of(module, loss).items():
            dist.all_reduce(grad)  # what DDP does: average gradients over ranks
            grads[name] = grad / world_size
        results[distill] = grads
    return results


@pytest.mark.ddp
def test_ddp_weighted_training_step_equals_one_process_on_the_global_batch():
    results = run_ddp(_ddp_weighted)
    for distill in (False, True):
        module = make_module(distill)
        loss = module.training_step({**batch(6), "weight": WEIGHT}, 0)
        expected = grads_of(module, loss)
        for result in results:
            for name, grad in expected.items():
                torch.testing.assert_close(
                    result[distill][name], grad, rtol=1e-4, atol=1e-6, msg=name
                )
