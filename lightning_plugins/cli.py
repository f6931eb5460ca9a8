"""The ``lightning-plugins`` command: a LightningCLI over every module and datamodule."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# Imported so that their classes resolve by short name (--model CLIP, --data SyntheticShapes).
import lightning_plugins.callbacks
import lightning_plugins.datamodules
import lightning_plugins.losses
import lightning_plugins.modules  # noqa: F401

__all__ = ["main"]


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the command line: ``lightning-plugins fit --config examples/configs/clip_shapes.yaml``.

    Any LightningModule and LightningDataModule subclass is accepted (``--model CLIP``,
    ``--data SyntheticShapes`` or a full class path), and any callback goes under
    ``trainer.callbacks``. Optimizer and scheduler are arguments of the module.

    Args:
        args: arguments instead of ``sys.argv``.
        run: run the subcommand (``False`` only parses and instantiates).

    Returns:
        The ``LightningCLI`` object, with ``model``, ``datamodule`` and ``trainer``.

    Example:
        >>> cli = main(["--model=CLIP", "--model.model_name=ViT-Micro-P8-32",
        ...             "--data=SyntheticShapes", "--trainer.logger=false"], run=False)
        >>> type(cli.model).__name__, type(cli.datamodule).__name__
        ('CLIP', 'SyntheticShapes')
    """
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def command() -> None:
    """The ``lightning-plugins`` console script: :func:`main` on ``sys.argv``, exit status 0.

    (A console script passes its function's return value to ``sys.exit``, which would turn
    the returned ``LightningCLI`` into exit status 1.)
    """
    main()


if __name__ == "__main__":
    command()
