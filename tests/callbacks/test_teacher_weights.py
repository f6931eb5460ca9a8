"""load_teacher_weights / export_teacher / ``lightning-plugins export-teacher``: the EMA
teacher's weights out of a checkpoint equal bitwise what EMATeacher.export writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lightning_plugins.callbacks import (
    EMATeacher,
    export_teacher,
    load_teacher_weights,
    teacher_names,
)
from lightning_plugins.cli import export_teacher_main, main
from tests.callbacks.test_ema_teacher import Tiny, assert_equal, fit, live_state


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with two teachers (one keeping a float64 average) and its checkpoint/exports."""
    root = tmp_path_factory.mktemp("teacher_weights")
    fast = EMATeacher(decay=0.5)
    slow = EMATeacher(decay=0.9, name="slow", dtype="float64", start_step=2)
    module, trainer = fit(str(root), [fast, slow], max_steps=6)
    ckpt = root / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    fast.export(root / "teacher.pt")
    slow.export(root / "slow.pt")
    with fast.averaged_weights():
        averaged = live_state(module)
    return {"root": root, "ckpt": ckpt, "module": module, "averaged": averaged}


def exported(run, name):
    return torch.load(run["root"] / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("name", ["teacher", "slow"])
def test_equals_export_bitwise(run, name) -> None:
    weights = load_teacher_weights(run["ckpt"], name=name)
    expected = exported(run, name)
    assert_equal(weights, expected)
    assert all(weights[k].dtype == v.dtype for k, v in expected.items())
    assert weights["net.0.weight"].dtype == (torch.float64 if name == "slow" else torch.float32)
    # the averaged tensors differ from the live ones: the test could fail
    assert not torch.equal(weights["net.0.weight"].float(), run["module"].net[0].weight.float())


def test_loads_into_the_module(run) -> None:
    fresh = Tiny()
    fresh.load_state_dict(load_teacher_weights(str(run["ckpt"])))
    assert_equal(live_state(fresh), run["averaged"])


def test_teacher_names(run) -> None:
    assert teacher_names(run["ckpt"]) == ["slow", "teacher"]


def test_export_teacher_writes_the_weights(run, tmp_path) -> None:
    out = tmp_path / "new" / "folder" / "teacher.pt"
    weights = export_teacher(run["ckpt"], out)
    assert_equal(torch.load(out, weights_only=True), exported(run, "teacher"))
    assert_equal(weights, exported(run, "teacher"))


def test_never_updated_teacher_gives_the_live_weights(tmp_path) -> None:
    ema = EMATeacher(decay=0.5, start_step=100)
    module, trainer = fit(str(tmp_path), [ema], max_steps=3)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    with pytest.warns(UserWarning, match="was never updated"):
        weights = load_teacher_weights(tmp_path / "last.ckpt")
    assert_equal(weights, live_state(module))


# ------------------------------------------------------------------ errors


def test_unknown_name_lists_the_names(run) -> None:
    with pytest.raises(ValueError, match=r"holds no EMATeacher named 'ema'; it holds \['slow', "):
        load_teacher_weights(run["ckpt"], name="ema")


def test_checkpoint_without_teacher(tmp_path) -> None:
    _, trainer = fit(str(tmp_path), [], max_steps=1)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="holds no EMATeacher state at all"):
        load_teacher_weights(tmp_path / "plain.ckpt")


def test_bad_files(run, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"`ckpt_path`='.*missing.ckpt' is not an existing file"):
        load_teacher_weights(tmp_path / "missing.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="`ckpt_path`=.* is an empty file"):
        load_teacher_weights(tmp_path / "empty.ckpt")
    data = run["ckpt"].read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="`ckpt_path`=.* is no readable checkpoint"):
        load_teacher_weights(tmp_path / "cut.ckpt")
    # an exported state dict is no Lightning checkpoint
    with pytest.raises(ValueError, match="is no Lightning checkpoint: it holds no 'state_dict'"):
        load_teacher_weights(run["root"] / "teacher.pt")
    with pytest.raises(TypeError, match="`ckpt_path` must be a path, got 3"):
        load_teacher_weights(3)
    with pytest.raises(TypeError, match="`name` must be a string, got 1"):
        load_teacher_weights(run["ckpt"], name=1)


def test_bad_out_path(run, tmp_path) -> None:
    with pytest.raises(ValueError, match="`out_path`=.* is a folder"):
        export_teacher(run["ckpt"], tmp_path)
    with pytest.raises(ValueError, match="is the checkpoint `ckpt_path` itself"):
        export_teacher(run["ckpt"], run["ckpt"])
    with pytest.raises(TypeError, match="`out_path` must be a file path"):
        export_teacher(run["ckpt"], None)


# ----------------------------------------------------------------------- CLI


def test_cli_function(run, tmp_path, capsys) -> None:
    out = tmp_path / "slow.pt"
    export_teacher_main([str(run["ckpt"]), str(out), "--name", "slow"])
    assert_equal(torch.load(out, weights_only=True), exported(run, "slow"))
    assert "Wrote the weights of EMATeacher 'slow'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        export_teacher_main([str(run["ckpt"]), str(out), "--name", "ema"])
    assert exit_info.value.code == 2
    assert "it holds ['slow', 'teacher']" in capsys.readouterr().err


def test_cli_help_mentions_export_teacher(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-plugins", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert "lightning-plugins export-teacher CKPT OUT" in capsys.readouterr().out


def test_console_command(run, tmp_path) -> None:
    """``python -m lightning_plugins export-teacher``, as the console script runs it."""
    out = tmp_path / "teacher.pt"
    command = [sys.executable, "-m", "lightning_plugins", "export-teacher"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*command, str(run["ckpt"]), str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert_equal(torch.load(out, weights_only=True), exported(run, "teacher"))
    missing = subprocess.run(
        [*command, str(tmp_path / "nope.ckpt"), str(out)], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "error: `ckpt_path`=" in missing.stderr and "is not an existing file" in missing.stderr
