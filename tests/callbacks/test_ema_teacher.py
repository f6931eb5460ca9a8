"""EMATeacher: values against a per-tensor EMA of the recorded live weights, validation swaps,
delayed start, exact resume, checkpoints written during validation, DDP, FSDP, the teacher."""

from __future__ import annotations

import copy
import math
import os
import pickle
import types

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.callbacks import EMATeacher, TeacherView
from tests.helpers import free_port, join_lightning, run_ddp

AVERAGED = {
    "net.0.weight",
    "net.0.bias",
    "net.1.weight",
    "net.1.bias",
    "net.4.weight",
    "net.4.bias",
    "net.1.running_mean",
    "net.1.running_var",
    "net.1.num_batches_tracked",
}


class Tiny(pl.LightningModule):
    """A frozen input layer, a trained net with BatchNorm, a loss with a buffer."""

    def __init__(self, dropout: float = 0.0, batchnorm: bool = True, lr: float = 0.05) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        norm = nn.BatchNorm1d(8) if batchnorm else nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(4, 8), norm, nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 1)
        )
        self.loss = nn.MSELoss()
        self.loss.register_buffer("scale", torch.ones(()))  # not part of the model
        self.lr = lr
        self.teacher = None

    def forward(self, x):
        return self.net(self.frozen(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y) * self.loss.scale
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def fit(root, callbacks, max_steps, ckpt_path=None, val_check_interval=None, module=None, **kw):
    pl.seed_everything(0)
    module = module or Tiny()
    train = StatefulDataLoader(data(), batch_size=4)  # 10 batches an epoch, resumable
    val = DataLoader(data(8, seed=1), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=callbacks,
        limit_val_batches=None if val_check_interval else 0,
        val_check_interval=val_check_interval,
        num_sanity_val_steps=kw.pop("num_sanity_val_steps", 0),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kw,
    )
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module, trainer


def live_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def ema_state(callback):
    return {k: v.detach().clone() for k, v in callback.state_dict()["ema"].items()}


def assert_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


class Recorder(Callback):
    """Listed after the EMATeacher: sees the live weights and the average after each update."""

    def __init__(self, ema: EMATeacher | None = None) -> None:
        self.ema = ema
        self.live: dict[int, dict] = {}
        self.averages: dict[int, dict] = {}
        self.validated: dict[int, dict] = {}
        self.after_validation: dict[int, dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.live:  # a batch that took no optimizer step
            return
        self.live[trainer.global_step] = live_state(pl_module)
        if self.ema is not None:
            self.averages[trainer.global_step] = ema_state(self.ema)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.validated[trainer.global_step] = live_state(pl_module)

    def on_validation_end(self, trainer, pl_module):  # runs after the EMATeacher swapped back
        self.after_validation[trainer.global_step] = live_state(pl_module)


# ------------------------------------------------------------------- values
def reference_decay(config, s, total):
    decay, schedule = config["decay"], config.get("schedule", "constant")
    if schedule == "constant":
        return decay
    if schedule == "warmup":
        return min(decay, 1 - (1 + s / 1.0) ** (-2 / 3))
    s = min(s, total - 1)
    return 1 - (1 - decay) * (math.cos(math.pi * s / (total - 1)) + 1) / 2


@pytest.mark.parametrize(
    "config",
    [
        {"decay": 0.9},
        {"decay": 0.8, "update_every": 2, "start_step": 3},
        {"decay": 0.99, "schedule": "warmup"},
        {"decay": 0.9, "schedule": "cosine", "start_step": 2},
        {"decay": 0.9, "accumulate_grad_batches": 2},
    ],
    ids=["constant", "every_2_from_3", "warmup", "cosine", "accumulating"],
)
def test_average_matches_per_tensor_ema_of_recorded_weights(tmp_path, config):
    config = dict(config)
    accumulate = config.pop("accumulate_grad_batches", 1)
    ema = EMATeacher(**config)
    recorder = Recorder()
    max_steps = 9
    fit(tmp_path, [ema, recorder], max_steps, accumulate_grad_batches=accumulate)
    assert set(ema.keys) == AVERAGED  # not the frozen layer, not the loss's buffer
    start, every = config.get("start_step", 0), config.get("update_every", 1)
    expected, updates = None, 0
    for step in range(1, max_steps + 1):
        if step <= start or step % every:
            continue
        live = {
            k: v.double() if v.is_floating_point() else v for k, v in recorder.live[step].items()
        }
        if expected is None:  # the first update copies
            expected = {k: live[k] for k in AVERAGED}
        else:
            d = reference_decay(config, step - start - 1, max_steps - start)
            expected = {
                k: d * expected[k] + (1 - d) * live[k] if live[k].is_floating_point() else live[k]
                for k in AVERAGED
            }
        updates += 1
    state = ema.state_dict()
    assert state["num_updates"] == updates and updates > 0
    for key, value in expected.items():
        got = state["ema"][key]
        torch.testing.assert_close(got.to(value.dtype), value, rtol=1e-5, atol=1e-6, msg=key)
    # the average really lags behind the live weights
    assert not torch.equal(state["ema"]["net.0.weight"], recorder.live[max_steps]["net.0.weight"])


# --------------------------------------------------------------- validation
@pytest.mark.parametrize("validate_with", ["ema", "model"])
def test_validation_swaps_average_in_and_back_exactly(tmp_path, validate_with):
    ema = EMATeacher(decay=0.7, validate_with=validate_with)
    recorder = Recorder(ema)
    fit(tmp_path, [ema, recorder], max_steps=7, val_check_interval=3, num_sanity_val_steps=1)
    assert set(recorder.validated) == {0, 3, 6}  # sanity check, then after steps 3 and 6
    # the sanity check runs before any update: the live weights
    assert_equal(recorder.validated[0], recorder.after_validation[0])
    for step in (3, 6):
        validated = {k: recorder.validated[step][k] for k in AVERAGED}
        if validate_with == "ema":
            assert_equal(validated, recorder.averages[step])
        else:
            assert_equal(validated, {k: recorder.live[step][k] for k in AVERAGED})
        # afterwards the live weights and the average are back, bitwise
        assert_equal(recorder.after_validation[step], recorder.live[step])
    # the average went on from where it was: identical to a run without validation
    plain = EMATeacher(decay=0.7)
    fit(tmp_path / "plain", [plain], max_steps=7)
    assert_equal(ema_state(ema), ema_state(plain))


def test_delayed_start_never_validates_an_average_that_was_not_updated(tmp_path):
    ema = EMATeacher(decay=0.9, start_step=4)
    recorder = Recorder(ema)
    fit(tmp_path, [ema, recorder], max_steps=6, val_check_interval=2, num_sanity_val_steps=1)
    assert set(recorder.validated) == {0, 2, 4, 6}
    for step in (0, 2, 4):  # no update yet (the first one is after step 5): live weights
        assert_equal(recorder.validated[step], recorder.after_validation[step])
    assert ema.num_updates == 2
    validated = {k: recorder.validated[6][k] for k in AVERAGED}
    assert_equal(validated, recorder.averages[6])
    assert not torch.equal(validated["net.0.weight"], recorder.live[6]["net.0.weight"])


class FromSecondEpoch(EMATeacher):
    """A policy on the epoch, as in the issue: update from the second epoch on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.asked: list[int] = []

    def should_update(self, trainer, step):
        self.asked.append(step)
        return trainer.current_epoch >= 1


def test_should_update_is_asked_once_per_optimizer_step(tmp_path):
    """4 batches an epoch, 2 accumulated: 2 optimizer steps an epoch, 2 updates in epoch 1."""
    ema = FromSecondEpoch(decay=0.5)
    recorder = Recorder()
    pl.seed_everything(0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        accumulate_grad_batches=2,
        callbacks=[ema, recorder],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), DataLoader(data(16), batch_size=4))
    assert ema.asked == [1, 2, 3, 4]  # once per optimizer step, after it
    assert ema.num_updates == 2 and ema.last_update_step == 4
    # the average is the one of the weights after steps 3 and 4, not of a stale step 2
    expected = {
        k: 0.5 * recorder.live[3][k] + 0.5 * recorder.live[4][k]
        if recorder.live[4][k].is_floating_point()
        else recorder.live[4][k]
        for k in AVERAGED
    }
    assert_equal(ema_state(ema), expected)


def _evaluate(root, module, ckpt_path, callbacks, fn):
    trainer = pl.Trainer(
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    loader = DataLoader(data(8, seed=1), batch_size=4)
    if fn == "predict":
        return torch.cat(trainer.predict(module, loader, ckpt_path=ckpt_path))
    result = getattr(trainer, fn)(module, loader, ckpt_path=ckpt_path, verbose=False)
    return result[0]


class Predicting(Tiny):
    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_evaluating_a_checkpoint_in_a_new_trainer_uses_its_average(tmp_path, fn):
    """Lightning issue #20545: ``Trainer(callbacks=[EMATeacher()]).validate(model, ckpt_path)``."""
    ema = EMATeacher(decay=0.7)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module, _ = fit(tmp_path, [ema, checkpoints], max_steps=5, module=Predicting())
    path = tmp_path / "ckpt" / "last.ckpt"
    # references without a callback: the live weights, and a module holding the average
    live = _evaluate(tmp_path, Predicting(), path, [], fn)
    averaged = copy.deepcopy(module)
    averaged.load_state_dict(ema_state(ema), strict=False)
    expected = _evaluate(tmp_path, averaged, None, [], fn)
    got = _evaluate(tmp_path, Predicting(), path, [EMATeacher(decay=0.7)], fn)
    as_model = _evaluate(tmp_path, Predicting(), path, [EMATeacher(validate_with="model")], fn)
    if fn == "predict":
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(as_model, live, rtol=0, atol=0)
        assert not torch.equal(got, live)
    else:
        key = "val_loss"
        assert got[key] == expected[key] and as_model[key] == live[key]
        assert got[key] != live[key]
    if fn == "validate":  # "both": the live weights, then the checkpoint's average
        both = _evaluate(tmp_path, Predicting(), path, [EMATeacher(validate_with="both")], fn)
        assert both["val_loss"] == live["val_loss"]
        assert both["val_loss_teacher"] == expected["val_loss"]


class LazyStatistic(nn.Module):
    """A buffer registered empty and sized at the first forward (a user pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("mean", torch.empty(0))

    def forward(self, x):
        if self.mean.numel() == 0:
            self.mean = torch.zeros(x.shape[1])
        if self.training:
            self.mean = 0.9 * self.mean + 0.1 * x.detach().mean(0)
        return self.linear(x - self.mean)


class Lazy(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = LazyStatistic()


def test_a_lazily_sized_buffer_is_adopted(tmp_path):
    module = Lazy()
    module.frozen.linear.requires_grad_(True)
    ema = EMATeacher(decay=0.5)
    recorder = Recorder()
    fit(tmp_path, [ema, recorder], max_steps=3, module=module)
    state = ema_state(ema)
    assert state["frozen.mean"].shape == (4,)
    expected = recorder.live[1]["frozen.mean"]
    for step in (2, 3):
        expected = 0.5 * expected + 0.5 * recorder.live[step]["frozen.mean"]
    torch.testing.assert_close(state["frozen.mean"], expected, rtol=0, atol=0)


def test_a_tensor_that_changes_shape_is_named(tmp_path):
    module = Tiny()
    ema = EMATeacher()
    ema.on_fit_start(pl.Trainer(logger=False), module)
    ema.update(1)
    module.net[1].running_mean = torch.zeros(3)
    with pytest.raises(ValueError, match=r"'net.1.running_mean', whose shape changed"):
        ema.update(2)


def test_a_float32_average_of_bfloat16_weights_moves(tmp_path):
    """With decay 0.999 a bf16 average cannot take 0.1 % steps; a float32 one does."""
    results = {}
    for dtype in (None, "float32"):
        pl.seed_everything(0)
        module = Tiny(batchnorm=False)
        ema = EMATeacher(decay=0.999, dtype=dtype)
        recorder = Recorder()
        fit(
            tmp_path / str(dtype),
            [ema, recorder],
            max_steps=20,
            module=module,
            precision="bf16-true",
        )
        results[dtype] = (module, ema, recorder)
    module, ema, recorder = results["float32"]
    expected = {k: v.double() for k, v in recorder.live[1].items()}
    for step in range(2, 21):
        expected = {
            k: 0.999 * v + 0.001 * recorder.live[step][k].double() for k, v in expected.items()
        }
    for key in ("net.0.weight", "net.4.weight"):
        average, first = ema_state(ema)[key], recorder.live[1][key]
        assert average.dtype == torch.float32
        torch.testing.assert_close(average.double(), expected[key], rtol=1e-6, atol=1e-6)
        assert (average != first.float()).float().mean() > 0.8  # most entries moved
        low, low_first = ema_state(results[None][1])[key], results[None][2].live[1][key]
        assert low.dtype == torch.bfloat16
        assert (low == low_first).float().mean() > 0.5  # the bf16 average mostly stays put
    # the teacher runs in the module's dtype; export keeps the float32 average
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    assert module.teacher(x).dtype == torch.bfloat16
    ema.export(tmp_path / "ema.pt")
    exported = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert_equal({k: exported[k] for k in ema.keys}, ema_state(ema))


class Autocasting(Tiny):
    """Logs whether its validation step ran under CPU autocast."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("autocast", float(torch.is_autocast_enabled("cpu")))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_validate_with_both_is_the_ema_run_and_the_model_run_in_one(tmp_path, precision):
    """``"both"`` logs exactly what ``"ema"`` logs, suffixed, beside what ``"model"`` logs,
    with the strategy's precision context for both passes (autocast under bf16-mixed)."""
    metrics = {}
    for validate_with in ("both", "ema", "model"):
        pl.seed_everything(0)  # the same initial weights for the three runs
        ema = EMATeacher(decay=0.5, validate_with=validate_with)
        _, trainer = fit(
            tmp_path / validate_with,
            [ema],
            max_steps=4,
            val_check_interval=4,
            module=Autocasting(),
            precision=precision,
        )
        metrics[validate_with] = dict(trainer.callback_metrics)
    both = metrics["both"]
    assert {"val_loss", "val_loss_teacher", "autocast", "autocast_teacher"} <= set(both)
    assert not any(key.endswith("_teacher_teacher") for key in both)
    torch.testing.assert_close(both["val_loss_teacher"], metrics["ema"]["val_loss"], rtol=0, atol=0)
    torch.testing.assert_close(both["val_loss"], metrics["model"]["val_loss"], rtol=0, atol=0)
    autocast = float(precision == "bf16-mixed")
    assert both["autocast"] == both["autocast_teacher"] == autocast
    assert both["val_loss"] != both["val_loss_teacher"]  # the average lags


def test_validate_with_both_reads_persistent_worker_loaders_alike(tmp_path):
    """The averaged weights' pass over a persistent-worker loader sees the same batches."""
    results = {}
    for validate_with in ("both", "ema"):
        pl.seed_everything(0)
        ema = EMATeacher(decay=0.5, validate_with=validate_with)
        val = DataLoader(data(12, seed=1), batch_size=4, num_workers=1, persistent_workers=True)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=4,
            val_check_interval=2,
            callbacks=[ema],
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(Tiny(), StatefulDataLoader(data(), batch_size=4), val)
        results[validate_with] = dict(trainer.callback_metrics)
    both, ema_only = results["both"], results["ema"]
    torch.testing.assert_close(both["val_loss_teacher"], ema_only["val_loss"], rtol=0, atol=0)
    assert both["val_loss"] != both["val_loss_teacher"]


# ------------------------------------------------------------------ resume
def two_teachers():
    return [
        EMATeacher(decay=0.9, name="teacher"),
        EMATeacher(decay=0.99, schedule="warmup", update_every=2, name="slow", device="cpu"),
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    callbacks = two_teachers()
    checkpoints = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1)
    module, _ = fit(root, [*callbacks, checkpoints], max_steps=8)
    return module, callbacks, root


def test_two_instances_coexist_in_trainer_and_checkpoint(uninterrupted):
    _, (fast, slow), root = uninterrupted
    assert fast.num_updates == 8 and slow.num_updates == 4
    assert not torch.equal(ema_state(fast)["net.0.weight"], ema_state(slow)["net.0.weight"])
    checkpoint = torch.load(root / "epoch=0-step=6.ckpt", weights_only=True)
    states = checkpoint["callbacks"]
    assert states[fast.state_key]["num_updates"] == 6
    assert states[slow.state_key]["num_updates"] == 3
    assert set(states[slow.state_key]["ema"]) == AVERAGED


def test_kill_and_resume_mid_epoch_continues_exactly(uninterrupted, tmp_path):
    full, full_callbacks, root = uninterrupted
    callbacks = two_teachers()
    resumed, _ = fit(tmp_path, callbacks, max_steps=8, ckpt_path=root / "epoch=0-step=3.ckpt")
    assert_equal(live_state(resumed), live_state(full))
    for mine, theirs in zip(callbacks, full_callbacks, strict=True):
        assert mine.num_updates == theirs.num_updates
        assert_equal(ema_state(mine), ema_state(theirs))


def test_a_callback_fitted_before_resumes_a_new_module_from_a_checkpoint(uninterrupted, tmp_path):
    """The checkpoint's average goes to the new module's average, not to the old one's."""
    full, full_callbacks, root = uninterrupted
    callbacks = two_teachers()
    fit(tmp_path / "before", callbacks, max_steps=2)  # fitted on another module first
    resumed, _ = fit(tmp_path, callbacks, max_steps=8, ckpt_path=root / "epoch=0-step=3.ckpt")
    assert_equal(live_state(resumed), live_state(full))
    for mine, theirs in zip(callbacks, full_callbacks, strict=True):
        assert mine.num_updates == theirs.num_updates
        assert_equal(ema_state(mine), ema_state(theirs))


class SaveDuringValidation(Callback):
    def __init__(self, path) -> None:
        self.path = path

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        if trainer.global_step == 4 and batch_idx == 0:
            trainer.save_checkpoint(self.path)


def test_checkpoint_written_during_validation_resumes_live_weights(tmp_path):
    path = tmp_path / "during_validation.ckpt"
    ema = EMATeacher(decay=0.8)
    recorder = Recorder(ema)
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val_loss", save_top_k=1)
    full, _ = fit(
        tmp_path,
        [ema, recorder, SaveDuringValidation(path), best],
        max_steps=8,
        val_check_interval=4,
    )
    checkpoint = torch.load(path, weights_only=True)
    assert_equal(checkpoint["state_dict"], recorder.live[4])  # live weights, not the average
    assert_equal(checkpoint["callbacks"][ema.state_key]["ema"], recorder.averages[4])
    best_checkpoint = torch.load(best.best_model_path, weights_only=True)
    assert_equal(best_checkpoint["state_dict"], recorder.live[best_checkpoint["global_step"]])
    # resuming from it continues the uninterrupted run
    resumed_ema = EMATeacher(decay=0.8)
    resumed, _ = fit(tmp_path / "resumed", [resumed_ema], max_steps=8, ckpt_path=path)
    assert_equal(live_state(resumed), live_state(full))
    assert_equal(ema_state(resumed_ema), ema_state(ema))


# ----------------------------------------------------------------- teacher
def test_teacher_is_an_eval_mode_no_grad_network_with_averaged_weights(tmp_path):
    module = Tiny(dropout=0.5)
    assert module.teacher is None
    ema = EMATeacher(decay=0.6)
    fit(tmp_path, [ema], max_steps=3, module=module)
    teacher = module.teacher
    assert isinstance(teacher, TeacherView) and teacher.training is False
    module.train()
    x = torch.randn(6, 4)
    out = teacher(x)
    assert not out.requires_grad
    assert torch.equal(out, teacher(x))  # eval mode: no dropout
    assert module.training and module.net[3].training  # the live module's modes are kept
    # the same as a copy of the module holding the averaged weights, in eval mode
    reference = copy.deepcopy(module).eval()
    reference.load_state_dict(ema.state_dict()["ema"], strict=False)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    torch.testing.assert_close(teacher.net(reference.frozen(x)), out, rtol=0, atol=0)
    assert torch.equal(teacher.net[0].weight, ema.state_dict()["ema"]["net.0.weight"])
    assert not torch.equal(out, module.eval()(x))  # the live weights differ
    # export writes the average as a plain state dict of the module
    ema.export(tmp_path / "ema.pt")
    exported = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert exported.keys() == module.state_dict().keys()
    assert_equal(exported, live_state(reference))


def test_teacher_runs_the_live_weights_before_the_first_update(tmp_path):
    module = Tiny(dropout=0.5)
    ema = EMATeacher(decay=0.6, start_step=100)
    fit(tmp_path, [ema], max_steps=2, module=module)
    assert ema.num_updates == 0
    x = torch.randn(6, 4)
    out = module.teacher(x)
    assert module.training  # left as it was
    torch.testing.assert_close(out, module.eval()(x), rtol=0, atol=0)


def test_clip_teacher(tmp_path):
    from lightning_plugins.datamodules import SyntheticShapes
    from lightning_plugins.modules import CLIP

    pl.seed_everything(0)
    module = CLIP(model_name="ViT-Micro-P8-32")
    assert module.teacher is None
    dm = SyntheticShapes(batch_size=4, train_size=16, zero_shot_size=64, retrieval_size=8)
    ema = EMATeacher(decay=0.5)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        callbacks=[ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    assert all(key.startswith("model.") for key in ema.keys)
    image = torch.randn(2, 3, 32, 32)
    text = module.tokenizer(["a red circle", "two blue stars"])
    image_features, text_features = module.teacher(image, text)
    assert not image_features.requires_grad and torch.isfinite(text_features).all()
    torch.testing.assert_close(module.teacher.encode_image(image), image_features)
    reference = copy.deepcopy(module).eval()
    reference.load_state_dict(ema.state_dict()["ema"], strict=False)
    with torch.no_grad():  # the same attention kernels as the teacher's
        expected = reference.encode_image(image)
    torch.testing.assert_close(image_features, expected, rtol=0, atol=0)
    torch.testing.assert_close(module.teacher.logit_scale, reference.logit_scale, rtol=0, atol=0)
    # a copy of the fitted module is a plain module: no teacher, no callback, no Trainer
    copied = copy.deepcopy(module)
    assert copied.teacher is None and isinstance(module.teacher, TeacherView)
    assert pickle.loads(pickle.dumps(module.teacher)) is None


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 1.0}, r"`decay` must be a finite number in \[0, 1\), got 1.0"),
        ({"decay": -0.1}, "`decay`"),
        ({"update_every": 0}, "`update_every` .*got 0"),
        ({"start_step": -1}, "`start_step`"),
        ({"schedule": "linear"}, r"`schedule` must be one of \['constant', 'cosine', 'warmup'\]"),
        ({"schedule": "warmup", "schedule_kwargs": {"gamma_": 1}}, "does not take"),
        ({"schedule": "cosine", "schedule_kwargs": {"start_value": 0.5}}, "from `decay`"),
        ({"validate_with": "teacher"}, r"`validate_with` must be one of \('ema', 'model'"),
        ({"device": "gpu0"}, "`device`"),
        ({"name": "my teacher"}, "`name`"),
        ({"dtype": "float8"}, r"`dtype` must be one of \('float32'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMATeacher(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": "0.9"}, "`decay` must be a number, got '0.9'"),
        ({"update_every": 2.0}, "`update_every` must be an integer"),
        ({"start_step": True}, "`start_step` must be an integer"),
        ({"schedule": 3}, "`schedule` must be one of"),
        ({"include_buffers": "yes"}, "`include_buffers` .*got 'yes'"),
        ({"device": 0.5}, "`device` must be None"),
        ({"name": 3}, "`name` must be a string"),
        ({"dtype": 16}, "`dtype` must be None"),
    ],
)
def test_arguments_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        EMATeacher(**kwargs)


class Frozen(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return None


def test_module_without_trainable_parameters(tmp_path):
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(tmp_path, [EMATeacher()], max_steps=1, module=Frozen())


def test_name_clash_with_an_existing_attribute(tmp_path):
    module = Tiny()
    module.teacher = "something else"
    with pytest.raises(ValueError, match="another `name`"):
        fit(tmp_path, [EMATeacher()], max_steps=1, module=module)


# ------------------------------------------------------------- DDP, FSDP2
def _distributed(rank, world_size, port, root):
    return {
        "ddp": _ddp_fit(rank, world_size, port, os.path.join(root, "ddp")),
        "fsdp2": _fsdp2_steps(rank, world_size, os.path.join(root, "fsdp2")),
        "model_parallel": _model_parallel_fit(os.path.join(root, "model_parallel")),
    }


def _ddp_fit(rank, world_size, port, root):
    join_lightning(rank, world_size, port)
    torch.manual_seed(0)
    ema = EMATeacher(decay=0.8, validate_with="ema")
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        max_steps=4,
        val_check_interval=2,
        num_sanity_val_steps=0,
        callbacks=[ema, recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    module = Tiny()  # with BatchNorm: its statistics differ between the ranks
    trainer.fit(module, DataLoader(data(), batch_size=4), DataLoader(data(8, 1), batch_size=4))
    ema.export(os.path.join(root, "ema.pt"))
    return {
        "ema": ema_state(ema),
        "live": live_state(module),
        "updates": ema.num_updates,
        "recorded": recorder.live,
    }


def fsdp2_batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)) for _ in range(3)]


def _local(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class Sharded(Tiny):
    """``Tiny`` without BatchNorm, sharded with ``fully_shard`` in ``configure_model``."""

    def __init__(self) -> None:
        super().__init__(batchnorm=False)

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        if self.device_mesh is None:  # one process: the reference
            return
        mesh = self.device_mesh["tensor_parallel"]  # both ranks: same data, sharded weights
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)


def model_parallel_fit(root, strategy="auto", devices=1, **ema_kwargs):
    torch.manual_seed(0)
    ema = EMATeacher(decay=0.8, **ema_kwargs)
    precision = "bf16-true" if "dtype" in ema_kwargs else "32-true"
    trainer = pl.Trainer(
        precision=precision,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=4,
        val_check_interval=2,
        num_sanity_val_steps=0,
        callbacks=[ema],
        use_distributed_sampler=False,  # every rank reads all batches, as one process does
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    module = Sharded()
    trainer.fit(module, DataLoader(data(), batch_size=4), DataLoader(data(8, 1), batch_size=4))
    return ema, trainer


def _model_parallel_fit(root):
    """Lightning's ModelParallelStrategy (FSDP2) on 2 CPU processes with gloo."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    ema, _ = model_parallel_fit(root, ModelParallelStrategy(), devices=2)
    ema.export(os.path.join(root, "ema.pt"))
    shards = [_local(t) for t in ema._average.tensors]
    # bf16 weights with a float32 average of their shards
    bf16, _ = model_parallel_fit(root, ModelParallelStrategy(), devices=2, dtype="float32")
    bf16.export(os.path.join(root, "ema_bf16.pt"))
    return {
        "sharded": ema.sharded,
        "shards_local": sum(t.numel() for t in shards)
        < sum(t.numel() for t in ema._average.tensors),
        "state": ema.state_dict(),  # gathered on rank 0
        "updates": ema.num_updates,
        "state_bf16": bf16.state_dict(),
    }


def _fsdp2_steps(rank, world_size, root):
    """FSDP2 (``fully_shard``) on CPU with gloo. Lightning's FSDP strategies need CUDA, so the
    callback's hooks are driven by hand, with the same data on both ranks."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    module = Tiny(batchnorm=False)
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in module.net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)

    class Strategy:
        model = module

        def barrier(self, name=None):
            dist.barrier()

    trainer = types.SimpleNamespace(
        strategy=Strategy(),
        global_step=0,
        sanity_checking=False,
        is_global_zero=rank == 0,
        state=types.SimpleNamespace(fn=TrainerFn.FITTING),
    )
    ema = EMATeacher(decay=0.5)
    ema.on_fit_start(trainer, module)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for step, (x, y) in enumerate(fsdp2_batches(), 1):
        nn.functional.mse_loss(module(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        trainer.global_step = step
        ema.on_train_batch_end(trainer, module, None, None, step - 1)
    live = [_local(t).clone() for t in ema._average.live()]
    ema_shards = [_local(t).clone() for t in ema._average.tensors]
    state = ema.state_dict()  # the full average, on rank 0
    ema.on_validation_start(trainer, module)
    with torch.no_grad():
        validated = module(torch.ones(2, 4))
    ema.on_validation_end(trainer, module)
    swap_exact = all(
        torch.equal(a, _local(b)) for a, b in zip(live, ema._average.live(), strict=True)
    )
    ema.export(os.path.join(root, "ema.pt"))
    # resume: every rank reads the checkpoint that rank 0 wrote
    objects = [state]
    dist.broadcast_object_list(objects, src=0)
    resumed = EMATeacher(decay=0.5)
    resumed.on_fit_start(trainer, module)
    resumed.load_state_dict(objects[0])
    with pytest.raises(RuntimeError, match="sharded"):
        module.teacher(torch.ones(1, 4))
    return {
        "state": state,
        "validated": validated,
        "swap_exact": swap_exact,
        "shards_local": sum(_local(t).numel() for t in ema._average.tensors)
        < sum(t.numel() for t in ema._average.tensors),
        "resumed_exact": all(
            torch.equal(a, _local(b))
            for a, b in zip(ema_shards, resumed._average.tensors, strict=True)
        ),
        "live_kept": all(
            torch.equal(a, _local(b)) for a, b in zip(live, ema._average.live(), strict=True)
        ),
    }


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return run_ddp(_distributed, free_port(), str(root)), root


@pytest.mark.ddp
def test_ddp_every_rank_keeps_the_same_average(distributed):
    """Parameters: the same average on every rank. Buffers (BatchNorm statistics): each
    rank's average of its own module's buffers, untouched by validating the average,
    where DDP broadcasts rank 0's buffers at every forward."""
    results, root = distributed
    results = [r["ddp"] for r in results]
    assert [r["updates"] for r in results] == [4, 4]
    parameters = {k for k in AVERAGED if "running" not in k and "batches" not in k}
    buffers = AVERAGED - parameters
    for result in results:
        expected = {k: result["recorded"][1][k] for k in AVERAGED}
        for step in (2, 3, 4):
            live = result["recorded"][step]
            expected = {
                k: 0.8 * v + 0.2 * live[k] if v.is_floating_point() else live[k]
                for k, v in expected.items()
            }
        torch.testing.assert_close(result["ema"], expected, rtol=1e-6, atol=1e-7)
    first, second = (r["ema"] for r in results)
    assert_equal({k: first[k] for k in parameters}, {k: second[k] for k in parameters})
    assert not torch.equal(first["net.1.running_mean"], second["net.1.running_mean"])
    assert buffers <= first.keys()
    assert not torch.equal(first["net.0.weight"], results[0]["live"]["net.0.weight"])
    exported = torch.load(root / "ddp" / "ema.pt", weights_only=True)
    assert_equal({k: exported[k] for k in first}, first)


@pytest.mark.ddp
def test_fsdp2_on_cpu_averages_local_shards(distributed):
    results, root = distributed
    first, second = (r["fsdp2"] for r in results)
    for result in (first, second):
        assert result["swap_exact"] and result["resumed_exact"] and result["live_kept"]
        assert result["shards_local"]  # each rank holds only its shards of the average
    assert second["state"]["ema"] == {}  # the full average is gathered on rank 0 only
    # the same average as one process training on the same batches
    torch.manual_seed(0)
    module = Tiny(batchnorm=False)
    reference = EMATeacher(decay=0.5, name="reference")
    reference.on_fit_start(types.SimpleNamespace(strategy=None), module)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for step, (x, y) in enumerate(fsdp2_batches(), 1):
        nn.functional.mse_loss(module(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        reference.update(step)
    expected = ema_state(reference)
    torch.testing.assert_close(first["state"]["ema"], expected)
    exported = torch.load(root / "fsdp2" / "ema.pt", weights_only=True)
    torch.testing.assert_close({k: exported[k] for k in expected}, expected)
    with torch.no_grad(), reference.averaged_weights():
        validated = module(torch.ones(2, 4))
    for result in (first, second):  # validation ran on the averaged weights
        torch.testing.assert_close(result["validated"], validated)


@pytest.mark.ddp
def test_model_parallel_strategy_on_cpu_averages_shards_like_one_process(distributed, tmp_path):
    """Per-shard averaging under Lightning's ModelParallelStrategy, its gathered checkpoint
    state and export, against one process training on the same batches."""
    results, root = distributed
    first, second = (r["model_parallel"] for r in results)
    assert first["sharded"] and first["shards_local"] and second["shards_local"]
    assert first["updates"] == second["updates"] == 4
    assert second["state"]["ema"] == {}  # gathered on rank 0 only
    reference, _ = model_parallel_fit(tmp_path)
    expected = ema_state(reference)
    assert not reference.sharded
    assert set(expected) == {"net.0.weight", "net.0.bias", "net.4.weight", "net.4.bias"}
    torch.testing.assert_close(first["state"]["ema"], expected)
    exported = torch.load(root / "model_parallel" / "ema.pt", weights_only=True)
    torch.testing.assert_close({k: exported[k] for k in expected}, expected)
    # bf16-true weights, float32 average: the same as one process's
    reference, _ = model_parallel_fit(tmp_path / "bf16", dtype="float32")
    expected = ema_state(reference)
    assert all(value.dtype == torch.float32 for value in expected.values())
    torch.testing.assert_close(first["state_bf16"]["ema"], expected)
    exported = torch.load(root / "model_parallel" / "ema_bf16.pt", weights_only=True)
    assert_equal({k: exported[k] for k in expected}, first["state_bf16"]["ema"])


# -------------------------------------------------------------------- FSDP
@pytest.mark.gpu
def test_fsdp_averages_local_shards_and_resumes(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    def run(root, max_steps, ckpt_path=None):
        pl.seed_everything(0)
        ema = EMATeacher(decay=0.8)
        checkpoints = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1)
        trainer = pl.Trainer(
            accelerator="cuda",
            devices=torch.cuda.device_count(),
            strategy=FSDPStrategy(auto_wrap_policy={nn.Linear}),
            max_steps=max_steps,
            val_check_interval=3,
            num_sanity_val_steps=0,
            callbacks=[ema, checkpoints],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        module = Tiny(batchnorm=False)
        trainer.fit(
            module,
            StatefulDataLoader(data(), batch_size=4),
            DataLoader(data(8, 1), batch_size=4),
            ckpt_path=ckpt_path,
        )
        ema.export(os.path.join(root, "ema.pt"))
        return ema

    full = run(tmp_path / "full", 7)
    assert full.num_updates == 7
    local = sum(t.numel() for t in full._average.tensors)
    total = sum(p.numel() for p in Tiny(batchnorm=False).net.parameters())
    assert local <= total  # shards, never more than one full copy
    resumed = run(tmp_path / "resumed", 7, ckpt_path=tmp_path / "full" / "epoch=0-step=3.ckpt")
    assert resumed.num_updates == 7
    first = torch.load(tmp_path / "full" / "ema.pt", weights_only=True)
    second = torch.load(tmp_path / "resumed" / "ema.pt", weights_only=True)
    assert_equal(second, first)
