"""The ``lightning-plugins`` command: a LightningCLI over every module and datamodule."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

# Imported so that their classes resolve by short name (--model CLIP, --data SyntheticShapes,
# --model.lr_scheduler WarmupCosineLR).
import lightning_plugins.callbacks
import lightning_plugins.datamodules
import lightning_plugins.losses
import lightning_plugins.modules
import lightning_plugins.schedulers  # noqa: F401
from lightning_plugins.callbacks.teacher_weights import export_teacher
from lightning_plugins.functional._checks import check_checkpoint_file

__all__ = ["SAVED_CONFIG_HEADER", "SaveConfigKeepingInputs", "export_teacher_main", "main"]

# the first line of every config this command saves: a file with it may be overwritten
SAVED_CONFIG_HEADER = "# Saved by lightning-plugins; the next run into this folder replaces it.\n"
# `ckpt_path` values that name no file (Lightning resolves them)
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


class SaveConfigKeepingInputs(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` that never overwrites a file a user wrote.

    The config goes where Lightning puts it (``config.yaml`` in the logger's folder, or in
    ``default_root_dir`` without a logger). It replaces a file there only if this command
    saved that file itself (its first line is :data:`SAVED_CONFIG_HEADER`) and it is none
    of the ``--config`` files of this run. Otherwise (say ``--trainer.logger=false`` run in
    the folder that holds the user's ``config.yaml``) it is saved under the first free name
    ``config-1.yaml``, ``config-2.yaml``, ..., with a warning naming it.
    """

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # this broadcasts the directory
        if trainer.is_global_zero:
            fs = get_filesystem(log_dir)
            fs.makedirs(log_dir, exist_ok=True)
            path = self._free_path(fs, log_dir)
            wanted = os.path.join(log_dir, self.config_filename)
            if path != wanted:
                why = "a --config file" if self._is_input(wanted) else "not written by this command"
                rank_zero_warn(
                    f"{wanted} is {why}; the config of this run is saved as {path} instead."
                )
            text = self.parser.dump(self.config, skip_none=False)
            with fs.open(path, "w") as file:
                file.write(SAVED_CONFIG_HEADER + text)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # broadcast so that all ranks are in sync on future calls to .setup()
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def _inputs(self) -> list[str]:
        paths = self.config.get("config") or []
        return [os.path.realpath(getattr(p, "absolute", None) or str(p)) for p in paths]

    def _is_input(self, path: str) -> bool:
        return "://" not in path and os.path.realpath(path) in self._inputs()

    def _may_write(self, fs: Any, path: str) -> bool:
        if self._is_input(path):
            return False
        if not fs.isfile(path):
            return True
        with fs.open(path, "r") as file:
            return file.readline() == SAVED_CONFIG_HEADER

    def _free_path(self, fs: Any, log_dir: str) -> str:
        stem, suffix = os.path.splitext(self.config_filename)
        path = os.path.join(log_dir, self.config_filename)
        number = 0
        while not self._may_write(fs, path):
            number += 1
            path = os.path.join(log_dir, f"{stem}-{number}{suffix}")
        return path


class _CLI(LightningCLI):
    """LightningCLI that checks ``ckpt_path`` as soon as the arguments are parsed.

    (Lightning reads the checkpoint's hyperparameters right after parsing, where a bad file
    fails inside ``torch.load`` without naming the argument.)
    """

    @override
    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            _check_ckpt_path(self.config[subcommand].get("ckpt_path"))


def _check_ckpt_path(ckpt_path: Any) -> None:
    """Raise ``ValueError`` naming ``ckpt_path`` unless it is a readable checkpoint file.

    Lightning's keywords (``"last"``, ``"best"``, ...), remote paths and folders (sharded
    checkpoints) are left to Lightning.
    """
    if ckpt_path is None or ckpt_path in _CKPT_KEYWORDS:
        return
    ckpt_path = str(ckpt_path)
    if "://" in ckpt_path or ckpt_path.startswith("registry:") or os.path.isdir(ckpt_path):
        return
    check_checkpoint_file(ckpt_path, "ckpt_path")


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the command line: ``lightning-plugins fit --config examples/configs/clip_shapes.yaml``.

    Any LightningModule and LightningDataModule subclass is accepted (``--model CLIP``,
    ``--data SyntheticShapes`` or a full class path), and any callback goes under
    ``trainer.callbacks``. Optimizer and scheduler are arguments of the module.

    The config of a run is saved as Lightning does (``config.yaml`` in the log folder), but
    never over a file the user wrote: see :class:`SaveConfigKeepingInputs`. A
    ``--ckpt_path`` file is checked before the run starts (an empty, truncated or
    non-checkpoint file raises ``ValueError`` naming it).

    Args:
        args: arguments instead of ``sys.argv``.
        run: run the subcommand (``False`` only parses and instantiates).

    Returns:
        The ``LightningCLI`` object, with ``model``, ``datamodule`` and ``trainer``.

    Raises:
        ValueError: for a ``ckpt_path`` that is no readable checkpoint file, and for any
            bad argument of a module, datamodule or callback (raised by its class).

    Example:
        >>> cli = main(["--model=CLIP", "--model.model_name=ViT-Micro-P8-32",
        ...             "--data=SyntheticShapes", "--trainer.logger=false"], run=False)
        >>> type(cli.model).__name__, type(cli.datamodule).__name__
        ('CLIP', 'SyntheticShapes')
    """
    # Lightning's CombinedLoader triggers a torch deprecation warning at every fit and
    # validate; no code of ours runs there, so the command (the application) filters that
    # one message from that one module.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    return _CLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=SaveConfigKeepingInputs,
        parser_kwargs={"epilog": _EXPORT_TEACHER_HELP},
        args=args,
        run=run,
    )


EXPORT_TEACHER = "export-teacher"
_EXPORT_TEACHER_HELP = (
    f"Also: lightning-plugins {EXPORT_TEACHER} CKPT OUT [--name teacher] writes the averaged "
    "weights of an EMATeacher in checkpoint CKPT as a plain state dict of the module to OUT "
    f"(lightning-plugins {EXPORT_TEACHER} --help)."
)


def export_teacher_main(args: list[str] | None = None) -> None:
    """``lightning-plugins export-teacher CKPT OUT [--name teacher]``.

    Writes :func:`~lightning_plugins.callbacks.export_teacher` ``(CKPT, OUT, name)``: the
    module's state dict with the averaged tensors of the EMATeacher ``name`` in place,
    loadable with ``module.load_state_dict(torch.load(OUT, weights_only=True))``. A bad
    argument (no such file, no checkpoint, no teacher of that name: the message lists the
    names the checkpoint holds) exits with status 2 and a message naming it.

    Args:
        args: the arguments after ``export-teacher`` instead of ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog=f"lightning-plugins {EXPORT_TEACHER}",
        description="Write the averaged weights of an EMATeacher in a Lightning checkpoint as "
        "a plain state dict of the module (torch.save), loadable with "
        "module.load_state_dict(torch.load(OUT, weights_only=True)).",
    )
    parser.add_argument("ckpt_path", metavar="CKPT", help="the Lightning checkpoint (.ckpt)")
    parser.add_argument("out_path", metavar="OUT", help="the file to write")
    parser.add_argument(
        "--name", default="teacher", help="the EMATeacher's `name` (default: teacher)"
    )
    parsed = parser.parse_args(args)
    try:
        weights = export_teacher(parsed.ckpt_path, parsed.out_path, parsed.name)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    print(
        f"Wrote the weights of EMATeacher {parsed.name!r} ({len(weights)} tensors) to "
        f"{parsed.out_path}."
    )


def command() -> None:
    """The ``lightning-plugins`` console script: :func:`main` on ``sys.argv``, exit status 0.

    ``lightning-plugins export-teacher ...`` runs :func:`export_teacher_main` instead.
    (A console script passes its function's return value to ``sys.exit``, which would turn
    the returned ``LightningCLI`` into exit status 1.)
    """
    if sys.argv[1:2] == [EXPORT_TEACHER]:
        export_teacher_main(sys.argv[2:])
        return
    main()


if __name__ == "__main__":
    command()
