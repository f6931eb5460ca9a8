"""CheckedResume: a datamodule whose checkpoint state refuses a resume with other settings."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_plugins.functional._checks import check_resume_state

__all__ = ["CheckedResume"]

_ADVICE = (
    "The checkpoint's position in the epoch only fits the same training stream: resume "
    "with the same settings and data, or start a new fit from the checkpoint's weights "
    "(e.g. `Module.load_from_checkpoint`) to change them."
)


class CheckedResume(pl.LightningDataModule):
    """A datamodule whose ``state_dict`` is its :meth:`config`, checked when a fit resumes.

    Lightning saves a datamodule's ``state_dict`` in checkpoints and loads it before the
    first batch of a resumed fit; a subclass only says in :meth:`config` what its training
    stream depends on. A mismatch raises there, naming each differing setting, before the
    loader's saved position would meet a stream it does not fit (where the sampler's own
    error would surface behind Lightning's teardown message).
    """

    def config(self) -> dict[str, Any]:
        """The settings (primitives) the training stream and a saved position depend on."""
        raise TypeError(f"{type(self).__name__} must define `config()`.")

    def state_dict(self) -> dict[str, Any]:
        """:meth:`config`, saved by Lightning in checkpoints to check a resume."""
        return {"config": self.config()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check that a checkpoint was saved with this datamodule's settings and data size.

        Only a fit resumes the training stream: under ``validate`` / ``test`` / ``predict``
        nothing is compared.

        Raises:
            ValueError: naming every setting of :meth:`config` that differs, with the
                saved and the current value.
        """
        trainer = self.trainer
        if trainer is not None and trainer.state.fn != "fit":
            return
        check_resume_state(state_dict, type(self).__name__, self.config(), (), advice=_ADVICE)
