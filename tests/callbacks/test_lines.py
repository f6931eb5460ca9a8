"""LiNeS callback: the scaled weights against the formula on copies taken in the test, task
ends of a stream, exact resume, EMATeacher alongside, merging, bad input."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import nn

from lightning_plugins.callbacks import EMATeacher, LiNeS
from lightning_plugins.datamodules import ClassIncremental, Digits
from tests.helpers import free_port, join_lightning, run_ddp

DEPTH = 3


class Blocky(pl.LightningModule):
    """A stem, three blocks in an nn.ModuleList, and a head, on 8x8 grey digits."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        self.lr = lr
        self.stem = nn.Linear(64, 16)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(DEPTH)]
        )
        self.head = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def scale_of(name: str, alpha: float, beta: float) -> float:
    """The LiNeS scale of a parameter of Blocky, written out by hand."""
    if name.startswith("blocks."):
        block = int(name.split(".")[1]) + 1  # 1-based
        return alpha + beta * (block - 1) / (DEPTH - 1)
    return alpha


def expected_weights(before: dict, start: dict, alpha: float, beta: float) -> dict:
    return {k: start[k] + scale_of(k, alpha, beta) * (before[k] - start[k]) for k in before}


def copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


class Record(Callback):
    """Copies the weights at fit start, at fit end and at task ends (where it is listed)."""

    def __init__(self) -> None:
        self.start: dict | None = None
        self.end: dict | None = None
        self.tasks: list[dict] = []

    def on_fit_start(self, trainer, pl_module):
        self.start = copy(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end = copy(pl_module)

    def on_task_end(self, trainer, pl_module, task):
        self.tasks.append(copy(pl_module))


def make_trainer(root, callbacks, **kwargs) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "default_root_dir": root,
        **kwargs,
    }
    return pl.Trainer(callbacks=list(callbacks), **settings)


def digits() -> Digits:
    return Digits(batch_size=16, image_size=8, channels=1)


def assert_weights(module: nn.Module, expected: dict) -> None:
    got = copy(module)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("with_ema", [False, True], ids=["alone", "with-EMATeacher"])
def test_fit_end_scales_against_the_formula(tmp_path, with_ema):
    pl.seed_everything(0, verbose=False)
    module = Blocky()
    record, after = Record(), Record()
    callbacks = [record, LiNeS(alpha=0.2, beta=0.6), after]
    if with_ema:  # the average is not scaled; the live weights are
        callbacks.insert(0, EMATeacher(decay=0.9))
    fit = make_trainer(tmp_path, callbacks, max_steps=4, limit_train_batches=4)
    fit.fit(module, digits())
    assert not torch.equal(record.end["blocks.0.0.weight"], record.start["blocks.0.0.weight"])
    assert_weights(module, expected_weights(record.end, record.start, 0.2, 0.6))
    assert_weights(module, after.end)  # LiNeS ran in on_train_end, between the two
    lines = callbacks[-2]
    assert lines.applied == 1
    assert lines.last_scales == {"blocks": [0.2, 0.5, 0.8]}
    if with_ema:
        ema = callbacks[0]
        assert ema.num_updates == 4
        average = dict(ema.named_averages())
        assert not torch.allclose(average["stem.weight"], module.stem.weight)


def test_reference_from_a_file_and_a_lightning_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    other = Blocky()  # theta_0 from another initialisation
    path = tmp_path / "theta0.pt"
    torch.save({"state_dict": other.state_dict(), "epoch": 0}, path)
    module, record = Blocky(), Record()
    fit = make_trainer(tmp_path, [record, LiNeS(0.5, 0.5, reference=path)], max_steps=2)
    fit.fit(module, digits())
    assert_weights(module, expected_weights(record.end, copy(other), 0.5, 0.5))


def test_task_end_scales_each_task_of_a_stream(tmp_path):
    pl.seed_everything(0, verbose=False)
    module = Blocky()
    before, after = Record(), Record()
    lines = LiNeS(alpha=0.0, beta=1.0, at="task_end")
    fit = make_trainer(tmp_path, [before, lines, after], max_epochs=-1)
    fit.fit(module, ClassIncremental(digits(), increments=[4, 3, 3], steps_per_task=2))
    assert lines.applied == 3 and len(before.tasks) == len(after.tasks) == 3
    start = before.start
    for task in range(3):
        expected = expected_weights(before.tasks[task], start, 0.0, 1.0)
        for name, value in expected.items():
            torch.testing.assert_close(after.tasks[task][name], value, rtol=1e-6, atol=1e-7)
        # alpha = 0: the stem and head keep the weights where the task started
        assert torch.equal(after.tasks[task]["stem.weight"], start["stem.weight"])
        start = after.tasks[task]  # the next task's update is measured from here
    assert torch.equal(after.tasks[-1]["blocks.2.0.weight"], before.tasks[-1]["blocks.2.0.weight"])


def _stream_run(root, ckpt_path=None, save=False):
    pl.seed_everything(0, verbose=False)
    module = Blocky()
    callbacks: list[Callback] = [LiNeS(alpha=0.3, beta=0.5, at="task_end")]
    if save:
        callbacks.append(
            ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
        )
    fit = make_trainer(root, callbacks, max_epochs=-1, enable_checkpointing=save)
    stream = ClassIncremental(digits(), increments=[4, 3, 3], steps_per_task=2, seed=1)
    fit.fit(module, stream, ckpt_path=ckpt_path)
    return copy(module), callbacks[0]


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_mid_task_gives_the_same_weights(tmp_path):
    weights, lines = _stream_run(tmp_path / "full", save=True)
    assert lines.applied == 3
    checkpoint = tmp_path / "full" / "step=3.ckpt"  # in the middle of task 1
    state = torch.load(checkpoint, weights_only=True)["callbacks"]["LiNeS"]
    assert state["applied"] == 1 and set(state["reference"]) == set(weights)
    resumed, resumed_lines = _stream_run(tmp_path / "resumed", ckpt_path=checkpoint)
    assert resumed_lines.applied == 3
    for name, value in weights.items():
        assert torch.equal(resumed[name], value), name
    # other settings refuse the checkpoint's reference
    fit = make_trainer(tmp_path, [LiNeS(alpha=0.4, beta=0.5, at="task_end")], max_epochs=-1)
    stream = ClassIncremental(digits(), increments=[4, 3, 3], steps_per_task=2, seed=1)
    with pytest.raises(ValueError, match="saved with alpha=0.3, .* has alpha=0.4"):
        fit.fit(Blocky(), stream, ckpt_path=checkpoint)


def test_merging_alpha_from_task_models(tmp_path):
    pl.seed_everything(0, verbose=False)
    base = Blocky(lr=0.0)  # one step that changes nothing: LiNeS scales the merged model
    theta_0 = copy(base)
    tasks = []
    for seed in (1, 2):  # two "fine-tuned" models: theta_0 plus noise
        gen = torch.Generator().manual_seed(seed)
        tasks.append({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in theta_0.items()})
        torch.save(tasks[-1], tmp_path / f"task{seed}.pt")
    merged = {k: theta_0[k] + 0.5 * sum(t[k] - theta_0[k] for t in tasks) for k in theta_0}
    base.load_state_dict(merged)
    reference = tmp_path / "theta0.pt"
    torch.save(theta_0, reference)
    lines = LiNeS(
        beta=0.5, reference=reference, merging=[tmp_path / "task1.pt", tmp_path / "task2.pt"]
    )
    fit = make_trainer(tmp_path, [lines], max_steps=1)
    fit.fit(base, digits())
    summed = sum(sum(t[k] - theta_0[k] for t in tasks).abs().sum() for k in theta_0)
    norm = sum((merged[k] - theta_0[k]).abs().sum() for k in theta_0)
    alpha = float(summed / norm) / 2  # = 1 for a 0.5-weighted sum of 2 tasks
    assert alpha == pytest.approx(1.0, rel=1e-5)
    assert lines.last_scales == {
        "blocks": [round(alpha, 6), round(alpha + 0.25, 6), round(alpha + 0.5, 6)]
    }
    assert_weights(base, expected_weights(merged, theta_0, alpha, 0.5))


def test_bad_input(tmp_path):
    with pytest.raises(
        ValueError, match=r"`at` must be one of \('fit_end', 'task_end'\), got 'end'"
    ):
        LiNeS(0.5, 0.5, at="end")
    with pytest.raises(ValueError, match=r"`alpha`=0.5 and `beta`=-0.6 give the last block"):
        LiNeS(0.5, -0.6)
    with pytest.raises(ValueError, match=r"`alpha`=-0.1 gives the first block"):
        LiNeS(-0.1, 1.0)
    with pytest.raises(ValueError, match="`alpha` must be a number"):
        LiNeS(beta=0.5)
    with pytest.raises(TypeError, match="`beta` must be a number"):
        LiNeS(0.5, "0.5")
    with pytest.raises(ValueError, match="`reference`='missing.pt' is not an existing file"):
        LiNeS(0.5, 0.5, reference="missing.pt")
    with pytest.raises(TypeError, match="`blocks` must be None, a dict"):
        LiNeS(0.5, 0.5, blocks=3)
    ok = tmp_path / "ok.pt"
    torch.save({}, ok)
    with pytest.raises(ValueError, match="`alpha`=0.5 cannot be given with `merging`"):
        LiNeS(0.5, 0.5, merging=[ok])
    with pytest.raises(ValueError, match="`beta` must be >= 0 with `merging`"):
        LiNeS(beta=-0.1, merging=[ok])
    with pytest.raises(TypeError, match="`merging` must be None or a list"):
        LiNeS(beta=0.5, merging=ok)
    with pytest.raises(ValueError, match=r"`merging\[0\]`='missing.pt' is not an existing"):
        LiNeS(beta=0.5, merging=["missing.pt"])


class NoBlocks(Blocky):
    def __init__(self) -> None:
        super().__init__()
        del self.blocks
        self.blocks = nn.ModuleList()

    def forward(self, image):
        return self.head(self.stem(image.flatten(1)))


def test_bad_input_at_fit_start(tmp_path):
    fit = make_trainer(tmp_path, [LiNeS(0.5, 0.5)], max_steps=1)
    with pytest.raises(ValueError, match="Found no blocks in NoBlocks: looked for"):
        fit.fit(NoBlocks(), digits())
    # with a mapping it works
    lines = LiNeS(0.5, 0.5, blocks={"stem": 0, "head": 1})
    make_trainer(tmp_path, [lines], max_steps=1).fit(NoBlocks(), digits())
    assert lines.last_scales == {"mapping": [0.5, 1.0]}
    partial = tmp_path / "partial.pt"
    torch.save({"stem.weight": torch.zeros(16, 64)}, partial)
    fit = make_trainer(tmp_path, [LiNeS(0.5, 0.5, reference=partial)], max_steps=1)
    with pytest.raises(ValueError, match=r"`reference`=.* lacks 9 of the 10 scaled parameters"):
        fit.fit(Blocky(), digits())


class Metrics(Logger):
    """Keeps what is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_norms_of_tau_are_logged(tmp_path):
    pl.seed_everything(0, verbose=False)
    module, record, logger = Blocky(), Record(), Metrics()
    fit = make_trainer(tmp_path, [record, LiNeS(0.5, 0.5)], max_steps=2, logger=logger)
    fit.fit(module, digits())
    step, metrics = logger.logged[-1]
    assert step == 2 and set(metrics) == {
        "lines/tau_norm_before",
        "lines/tau_norm_after",
        "lines/alpha",
    }
    norm = lambda weights: sum(  # noqa: E731
        (weights[k] - record.start[k]).double().square().sum() for k in weights
    ).sqrt()
    assert metrics["lines/tau_norm_before"] == pytest.approx(float(norm(record.end)), rel=1e-6)
    assert metrics["lines/tau_norm_after"] == pytest.approx(float(norm(copy(module))), rel=1e-6)
    assert metrics["lines/alpha"] == 0.5


# ------------------------------------------------------------------------------- DDP
class Batches(Blocky):
    """Blocky, keeping the batches it trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):
        self.seen.append({k: batch[k].clone() for k in ("image", "label")})
        return super().training_step(batch, batch_idx)


def _ddp_fit(rank, world_size, port, root):
    join_lightning(rank, world_size, port)
    pl.seed_everything(0, verbose=False)
    module = Batches()
    fit = make_trainer(
        root,
        [LiNeS(0.2, 0.6)],
        devices=world_size,
        strategy="ddp",
        max_steps=3,
        limit_val_batches=0,
    )
    fit.fit(module, digits())
    return {"weights": copy(module), "seen": module.seen}


@pytest.mark.ddp
@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_ddp_equals_one_process_on_the_global_batch(tmp_path):
    a, b = run_ddp(_ddp_fit, free_port(), str(tmp_path))
    for name, value in a["weights"].items():
        assert torch.equal(value, b["weights"][name]), name
    glob = [
        {k: torch.cat([x[k], y[k]]) for k in x} for x, y in zip(a["seen"], b["seen"], strict=True)
    ]
    pl.seed_everything(0, verbose=False)
    single = Blocky()
    loader = torch.utils.data.DataLoader(glob, batch_size=None)
    fit = make_trainer(tmp_path, [LiNeS(0.2, 0.6)], max_steps=3, limit_val_batches=0)
    fit.fit(single, loader)
    for name, value in copy(single).items():
        torch.testing.assert_close(value, a["weights"][name], rtol=1e-5, atol=1e-6, msg=name)
