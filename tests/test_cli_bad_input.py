"""Bad input on the command line: files it must not overwrite, checkpoints it must refuse."""

import sys

import pytest
import torch

from lightning_plugins.cli import SAVED_CONFIG_HEADER, main

USER_CONFIG = """\
# my comments: lost if the command overwrites this file
model:
  class_path: CLIP
  init_args:
    model_name: ViT-Micro-P8-32
data:
  class_path: SyntheticShapes
  init_args:
    batch_size: 4
    train_size: 8
    zero_shot_size: 8
    retrieval_size: 8
"""

ONE_STEP = [
    "--trainer.max_steps=1",
    "--trainer.limit_val_batches=0",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments sit in sys.argv beside `args`."""
    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])


def test_config_given_as_input_is_not_overwritten(tmp_path, monkeypatch):
    # without a logger Lightning saves config.yaml into the working directory, the very
    # file given as --config (issue 11, point 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(USER_CONFIG)
    with pytest.warns(UserWarning, match="config-1.yaml"):
        main(["fit", "--config", "config.yaml", "--trainer.logger=false", *ONE_STEP])
    assert (tmp_path / "config.yaml").read_text() == USER_CONFIG
    saved = (tmp_path / "config-1.yaml").read_text()
    assert saved.startswith(SAVED_CONFIG_HEADER) and "ViT-Micro-P8-32" in saved
    # the saved config runs again; the next run replaces only what the command saved
    (tmp_path / "config-1.yaml").write_text(
        saved.replace("seed_everything: 0", "seed_everything: 1")
    )
    main(["fit", "--config", "config-1.yaml", "--trainer.logger=false", *ONE_STEP])
    assert (tmp_path / "config.yaml").read_text() == USER_CONFIG
    assert "seed_everything: 1" in (tmp_path / "config-1.yaml").read_text()  # an input
    assert "seed_everything: 1" in (tmp_path / "config-2.yaml").read_text()


def test_a_users_file_in_the_log_folder_is_not_overwritten(tmp_path):
    inputs, logs = tmp_path / "configs", tmp_path / "logs"
    inputs.mkdir()
    logs.mkdir()
    (inputs / "run.yaml").write_text(USER_CONFIG)
    (logs / "config.yaml").write_text("# a file of the user's\n")
    args = ["fit", f"--config={inputs / 'run.yaml'}", "--trainer.logger=false", *ONE_STEP]
    main([*args, f"--trainer.default_root_dir={logs}"])
    assert (logs / "config.yaml").read_text() == "# a file of the user's\n"
    assert (logs / "config-1.yaml").read_text().startswith(SAVED_CONFIG_HEADER)
    # a config the command saved itself is replaced, as Lightning's overwrite=True did
    (logs / "config.yaml").unlink()
    for _ in range(2):
        main([*args, f"--trainer.default_root_dir={logs}"])
    assert (logs / "config.yaml").read_text().startswith(SAVED_CONFIG_HEADER)
    assert not (logs / "config-2.yaml").exists()


def _bad_checkpoints(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, good)
    data = good.read_bytes()
    files = {
        "empty": (b"", "empty file"),
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "text": (b"not a checkpoint\n" * 4, "truncated or corrupt"),
    }
    paths = {}
    for name, (content, message) in files.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        paths[name] = (path, message)
    paths["missing"] = (tmp_path / "missing.ckpt", "not an existing file")
    return paths


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing"])
@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_bad_ckpt_path_is_named_before_the_run(tmp_path, kind, subcommand):
    path, message = _bad_checkpoints(tmp_path)[kind]
    (tmp_path / "run.yaml").write_text(USER_CONFIG)
    with pytest.raises(ValueError, match=rf"`ckpt_path`='.*{kind}\.ckpt'.*{message}"):
        main(
            [
                subcommand,
                f"--config={tmp_path / 'run.yaml'}",
                f"--ckpt_path={path}",
                "--trainer.logger=false",
                f"--trainer.default_root_dir={tmp_path}",
                *ONE_STEP,
            ]
        )
