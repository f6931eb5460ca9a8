"""Every ```python block of README.md runs as written, like a doctest.

Each block runs in a fresh namespace, in its own temporary working directory, so files it
writes (``ckpt.pt``, ``lightning_logs/``) never touch the repository. A block that needs
inputs a reader would bring (feature tensors, a concept annotation list) gets a small
prelude below, keyed by a line of the block; the prelude only defines those names, the
block itself runs unchanged. A block can be skipped with the marker

    <!-- readme-test: skip (the reason) -->

on the line right before its fence; the reason is required and shown in the pytest
report. Keep skips rare: a block that trains should train for a step or two instead.

A block that runs longer than ``BLOCK_TIMEOUT_S`` seconds fails (a hang guard, not a speed
assertion): the README's blocks must stay cheap enough for the test suite.

Every ```yaml block must be valid YAML; one that is a full config (top-level ``model`` and
``data``) is parsed by the ``lightning-plugins`` command with ``--print_config``, which
checks every class path and argument without building anything.
"""

from __future__ import annotations

import re
import signal
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK_TIMEOUT_S = 120
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")

# Names a block uses without defining them, as a reader would have them at hand. Keyed by
# one line of the block (stripped); every prelude must match a block (checked below).
PRELUDES: dict[str, str] = {
    # Two img2dataset shards of 3 samples each, and a transform of one's own.
    'write_shard_index("laion/{00000..00001}.tar", "laion/index.json")  # as the command does': """
        import io, json, os, tarfile
        from PIL import Image
        from torchvision.transforms.functional import to_tensor as my_transform

        os.makedirs("laion", exist_ok=True)
        for shard in range(2):
            with tarfile.open(f"laion/{shard:05d}.tar", "w") as tar:
                for i in range(3):
                    png = io.BytesIO()
                    Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(png, format="PNG")
                    members = {"png": png.getvalue(), "txt": b"a red square",
                               "json": json.dumps({"concepts": ["square"]}).encode()}
                    for extension, payload in members.items():
                        info = tarfile.TarInfo(f"{shard}{i:04d}.{extension}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    """,
    # A datamodule of one's own: any map-style dataset.
    "sampler = CurriculumSampler(len(dataset), batch_size=64, seed=0)": """
        import torch

        dataset = [{"x": torch.randn(4), "index": torch.tensor(i)} for i in range(256)]
    """,
    # ImageTextEvaluation: the class names, an encoder of prompts and one batch's features.
    "evaluation = ImageTextEvaluation()": """
        import torch
        from torch.nn.functional import normalize
        from lightning_plugins.metrics import ImageTextEvaluation, ZeroShotClasses

        class_names = ["circle", "star", "square"]
        encode_prompts = lambda prompts: normalize(torch.randn(len(prompts), 8), dim=-1)
        image_features = normalize(torch.randn(6, 8), dim=-1)
        text_features = normalize(torch.randn(6, 8), dim=-1)
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        index = torch.arange(6)
    """,
    # Losses in plain PyTorch: normalised features and exponentiated scale / bias.
    "from lightning_plugins.losses import ClipLoss, SigLipLoss": """
        import torch
        from torch.nn.functional import normalize

        image_features = normalize(torch.randn(8, 16), dim=-1)
        text_features = normalize(torch.randn(8, 16), dim=-1)
        logit_scale = torch.tensor(10.0)
        logit_bias = torch.tensor(-10.0)
    """,
    # The teacher's weights: a checkpoint of a short run with an EMATeacher, and its module.
    "print(teacher_names(ckpt_path))  # ['teacher']": """
        import lightning.pytorch as pl
        from lightning.pytorch.demos.boring_classes import BoringModel
        from lightning_plugins.callbacks import EMATeacher

        model = BoringModel()
        trainer = pl.Trainer(
            max_steps=3, callbacks=[EMATeacher(decay=0.9)], logger=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        )
        trainer.fit(model)
        ckpt_path = "run.ckpt"
        trainer.save_checkpoint(ckpt_path)
    """,
    # CABS: a super-batch's concept lists, the training set's annotations and a dataset.
    "from lightning_plugins.functional import cabs_select": """
        import torch

        generator = torch.Generator().manual_seed(0)
        concepts = [
            torch.randint(0, 50, (int(n),), generator=generator).tolist()
            for n in torch.randint(1, 5, (5120,), generator=generator)
        ]
        dataset_concepts = concepts[:1280]
        dataset = [{"index": i} for i in range(len(dataset_concepts))]
    """,
}


def _blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(line, language, code, skip reason)`` of every fenced block of ``text``."""
    blocks = []
    lines = text.splitlines()
    inside: tuple[int, str, str | None] | None = None
    body: list[str] = []
    previous = ""
    for number, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if inside is None and fence and fence["lang"]:
            marker = SKIP_MARKER.search(previous)
            inside = (number, fence["lang"], marker["reason"].strip() if marker else None)
            body = []
        elif inside is not None and line.strip() == "```":
            blocks.append((inside[0], inside[1], "\n".join(body) + "\n", inside[2]))
            inside = None
        elif inside is not None:
            body.append(line)
        if line.strip():
            previous = line
    assert inside is None, f"README.md: the block opened at line {inside[0]} is never closed"
    return blocks


BLOCKS = _blocks(README.read_text())
PYTHON_BLOCKS = [block for block in BLOCKS if block[1] == "python"]
YAML_BLOCKS = [block for block in BLOCKS if block[1] == "yaml"]


def _prelude(code: str) -> str:
    lines = {line.strip() for line in code.splitlines()}
    found = [prelude for key, prelude in PRELUDES.items() if key in lines]
    assert len(found) <= 1, "two preludes match one README block; make their keys distinct"
    return textwrap.dedent(found[0]) if found else ""


@contextmanager
def _time_limit(seconds: int, what: str) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_readme_has_python_blocks() -> None:
    assert len(PYTHON_BLOCKS) >= 5


def test_every_prelude_matches_a_block() -> None:
    codes = [{line.strip() for line in code.splitlines()} for _, _, code, _ in PYTHON_BLOCKS]
    unused = [key for key in PRELUDES if not any(key in lines for lines in codes)]
    assert not unused, f"preludes for blocks no longer in README.md: {unused}"


@pytest.mark.parametrize(
    ("line", "code", "skip"),
    [(line, code, skip) for line, _, code, skip in PYTHON_BLOCKS],
    ids=[f"line{line}" for line, *_ in PYTHON_BLOCKS],
)
def test_readme_python_block(
    line: int, code: str, skip: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if skip is not None:
        pytest.skip(f"README.md line {line}: {skip}")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"readme_line_{line}"}
    prelude = _prelude(code)
    if prelude:
        exec(compile(prelude, f"<prelude of README.md line {line}>", "exec"), namespace)
    with _time_limit(BLOCK_TIMEOUT_S, f"The README.md block at line {line}"):
        exec(compile(code, f"<README.md block at line {line}>", "exec"), namespace)


@pytest.mark.parametrize(
    ("line", "code"),
    [(line, code) for line, _, code, _ in YAML_BLOCKS],
    ids=[f"line{line}" for line, *_ in YAML_BLOCKS],
)
def test_readme_yaml_block(
    line: int,
    code: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = yaml.safe_load(code)
    assert isinstance(config, dict), f"README.md line {line}: not a YAML mapping"
    if not {"model", "data"} <= set(config):
        return  # a fragment of a config: valid YAML is all that can be checked alone
    from lightning_plugins.cli import main

    (tmp_path / "config.yaml").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-plugins"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "config.yaml", "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert "class_path" in capsys.readouterr().out


def test_skip_marker_needs_a_reason() -> None:
    text = "<!-- readme-test: skip (downloads weights) -->\n```python\nx = 1\n```\n"
    assert _blocks(text) == [(2, "python", "x = 1\n", "downloads weights")]
    assert _blocks("```python\nx = 1\n```\n")[0][3] is None
