import subprocess
import sys
from pathlib import Path

import pytest

from lightning_plugins.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments sit in sys.argv beside `args`."""
    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])


def test_examples_exist():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.name)
def test_example_config_fast_dev_run(config, tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 1
    metric = {
        "digits": "val/acc_top1",
        "slca": "val/acc_top1",
        "lora": "val/acc_top1",
        "lego": "val/answer_accuracy",
    }.get(config.name.split("_")[0], "val/zero_shot_top1")
    if config.name == "clip_shapes_dga.yaml":  # validates on held-out pairs: retrieval only
        metric = "val/i2t_R@1"
    assert metric in cli.trainer.callback_metrics


def test_short_class_names_resolve(tmp_path):
    cli = main(
        [
            "--model=CLIP",
            "--model.model_name=ViT-Micro-P8-32",
            "--data=SyntheticShapes",
            "--data.batch_size=4",
            "--data.train_size=8",
            "--data.zero_shot_size=64",
            "--data.retrieval_size=8",
            "--trainer.fast_dev_run=true",
            "--trainer.callbacks+=LearningRateMonitor",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    from lightning.pytorch.callbacks import LearningRateMonitor

    from lightning_plugins.datamodules import SyntheticShapes
    from lightning_plugins.modules import CLIP

    assert isinstance(cli.model, CLIP) and isinstance(cli.datamodule, SyntheticShapes)
    assert any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)


def test_optimizer_and_scheduler_from_arguments(tmp_path):
    cli = main(
        [
            "--model=SigLIP",
            "--model.model_name=ViT-Micro-P8-32",
            "--model.optimizer=SGD",
            "--model.optimizer.lr=0.05",
            "--model.lr_scheduler=StepLR",
            "--model.lr_scheduler.step_size=3",
            "--data=SyntheticShapes",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    config = cli.model.configure_optimizers()
    assert type(config["optimizer"]).__name__ == "SGD"
    assert config["optimizer"].defaults["lr"] == 0.05
    assert config["lr_scheduler"]["scheduler"].step_size == 3


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "examples/configs/clip_shapes.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: lightning_plugins.modules.CLIP" in out
    assert "model_name: ViT-Tiny-P8-32" in out
    assert "class_path: lightning_plugins.datamodules.SyntheticShapes" in out


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="`model_name`='ViT-Nope'"):
        main(
            ["--model=CLIP", "--model.model_name=ViT-Nope", "--data=SyntheticShapes"],
            run=False,
        )


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "lightning_plugins", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "fit" in out and "validate" in out


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).with_name("lightning-plugins"))],
        [sys.executable, "-m", "lightning_plugins"],
    ],
    ids=["console_script", "module"],
)
def test_command_exits_with_status_zero_after_fitting(command, tmp_path):
    config = ROOT / "examples/configs/clip_shapes.yaml"
    done = subprocess.run(
        [
            *command,
            "fit",
            f"--config={config}",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--data.init_args.num_workers=0",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_loss_chosen_from_arguments(tmp_path):
    cli = main(
        [
            "--model=CLIP",
            "--model.model_name=ViT-Micro-P8-32",
            "--model.loss=lightning_plugins.losses.SigLipLoss",
            "--model.loss.chunk_size=4",
            "--model.loss.dist_impl=gather",
            "--data=SyntheticShapes",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    from lightning_plugins.losses import SigLipLoss

    assert isinstance(cli.model.loss, SigLipLoss)
    assert cli.model.loss.chunk_size == 4 and cli.model.loss.dist_impl == "gather"


def test_towers_and_zero_shot_classes_from_arguments(tmp_path):
    cli = main(
        [
            "--model=SigLIP",
            "--model.towers.model_name=ViT-Micro-P8-32",
            "--model.towers.context_length=12",
            "--model.zero_shot.class_names=[red circle, blue star]",
            "--model.zero_shot.class_groups={stars: [1]}",
            "--data=SyntheticShapes",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    from lightning_plugins.metrics import ZeroShotClasses

    assert cli.model.tokenizer(["a red circle"]).shape == (1, 12)
    assert cli.model.hparams.towers["context_length"] == 12  # a plain dict in hparams
    assert cli.model.zero_shot_classes == ZeroShotClasses(
        ["red circle", "blue star"], class_groups={"stars": [1]}
    )


def test_example_config_checkpoint_validates(tmp_path, monkeypatch):
    """A short run of an example config leaves a last.ckpt that `validate --ckpt_path` takes."""
    monkeypatch.chdir(tmp_path)
    config = ROOT / "examples/configs/clip_shapes.yaml"
    small = [
        f"--config={config}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.limit_val_batches=1",
        "--data.init_args.batch_size=8",
        "--data.init_args.train_size=32",
        "--data.init_args.zero_shot_size=64",
        "--data.init_args.retrieval_size=8",
        "--data.init_args.num_workers=0",
        "--model.init_args.lr_scheduler.init_args.warmup_steps=1",
    ]
    fitted = main(["fit", *small, "--trainer.max_steps=2"])
    assert fitted.trainer.global_step == 2
    (last,) = tmp_path.rglob("*.ckpt")  # save_top_k: 0, so last.ckpt only
    assert last.name == "last.ckpt" and last.parent.name == "checkpoints"
    validated = main(["validate", *small, f"--ckpt_path={last}"])
    assert validated.trainer.ckpt_path == str(last)
    assert "val/zero_shot_top1" in validated.trainer.callback_metrics
