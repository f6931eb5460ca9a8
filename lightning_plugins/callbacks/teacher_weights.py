"""The EMA teacher's weights out of a Lightning checkpoint, without a Trainer or the module.

A checkpoint written with :class:`~lightning_plugins.callbacks.EMATeacher` attached holds
the live weights under ``"state_dict"`` and the averaged tensors in the callback's state,
``checkpoint["callbacks"]["EMATeacher{'name': 'teacher'}"]["ema"]``.
:func:`load_teacher_weights` puts the two together into the module's full state dict with
the averaged tensors in place, the same dict that :meth:`EMATeacher.export` writes at the
end of a run; :func:`export_teacher` writes it to a file. The command line has it as
``lightning-plugins export-teacher CKPT OUT [--name teacher]``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_plugins.callbacks.averaged_tensors import _clean_name
from lightning_plugins.callbacks.ema_teacher import _is_ema_state, _name_in_state_key
from lightning_plugins.functional._checks import load_checkpoint

__all__ = ["export_teacher", "load_teacher_weights", "teacher_names"]


def _load_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    checkpoint = load_checkpoint(ckpt_path, "ckpt_path")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(
            f"`ckpt_path`={os.fspath(ckpt_path)!r} is no Lightning checkpoint: it holds no "
            "'state_dict' (a file written by EMATeacher.export is already the teacher's "
            "weights; load it with torch.load)."
        )
    return checkpoint


def _teacher_states(checkpoint: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{name: (state key, state)}`` of every EMATeacher state in a loaded checkpoint."""
    states = checkpoint.get("callbacks") or {}
    return {
        _name_in_state_key(key): (key, state)
        for key, state in states.items()
        if isinstance(key, str) and _is_ema_state(state)
    }


def teacher_names(ckpt_path: str | os.PathLike) -> list[str]:
    """The ``name`` of every EMATeacher whose average the checkpoint holds, sorted.

    Raises:
        TypeError: for a ``ckpt_path`` that is no path.
        ValueError: for a ``ckpt_path`` that is no readable Lightning checkpoint.
    """
    return sorted(_teacher_states(_load_checkpoint(ckpt_path)))


def load_teacher_weights(
    ckpt_path: str | os.PathLike, name: str = "teacher"
) -> dict[str, torch.Tensor]:
    """The module's state dict with the EMA teacher ``name``'s averaged tensors in place.

    Reads a Lightning checkpoint written with
    :class:`~lightning_plugins.callbacks.EMATeacher` attached (on the CPU, with
    ``torch.load(weights_only=True)``): its ``"state_dict"`` (the live weights: frozen
    parameters and buffers the teacher shares with the module included), with every
    tensor the teacher averages replaced by the average, in the average's dtype. The
    result loads into the module with ``module.load_state_dict(weights)`` and equals
    bitwise what :meth:`EMATeacher.export` writes at the same step. A teacher that was
    never updated (``start_step`` not reached) gives the live weights, with a warning, as
    ``export`` does.

    Args:
        ckpt_path: the checkpoint file (``.ckpt``), full (not sharded).
        name: the ``name`` of the EMATeacher (its module attribute, default ``"teacher"``).

    Returns:
        A dict from state-dict key to CPU tensor.

    Raises:
        TypeError: for a ``ckpt_path`` that is no path or a ``name`` that is no string.
        ValueError: for a ``ckpt_path`` that does not exist or is no readable Lightning
            checkpoint (empty, truncated, corrupt), and for a checkpoint that holds no
            teacher ``name`` (the message lists the names it holds).

    Example:
        >>> import lightning.pytorch as pl, tempfile
        >>> from lightning_plugins.callbacks import EMATeacher
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> ema = EMATeacher(decay=0.9)
        >>> trainer = pl.Trainer(max_steps=3, callbacks=[ema], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(BoringModel())
        >>> path = os.path.join(tempfile.mkdtemp(), "last.ckpt")
        >>> trainer.save_checkpoint(path)
        >>> weights = load_teacher_weights(path)
        >>> torch.equal(weights["layer.weight"], dict(ema.named_averages())["layer.weight"])
        True
        >>> BoringModel().load_state_dict(weights)
        <All keys matched successfully>
        >>> load_teacher_weights(path, name="slow")
        Traceback (most recent call last):
        ...
        ValueError: `ckpt_path`=... holds no EMATeacher named 'slow'; it holds ['teacher']; ...
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string, got {name!r} ({type(name).__name__}).")
    checkpoint = _load_checkpoint(ckpt_path)
    teachers = _teacher_states(checkpoint)
    if name not in teachers:
        held = (
            f"it holds {sorted(teachers)}; pass one of them as `name`"
            if teachers
            else "it holds no EMATeacher state at all (was EMATeacher attached to the run?)"
        )
        raise ValueError(
            f"`ckpt_path`={os.fspath(ckpt_path)!r} holds no EMATeacher named {name!r}; {held}."
        )
    key, state = teachers[name]
    weights = dict(checkpoint["state_dict"])
    if not state["num_updates"]:
        rank_zero_warn(
            f"EMATeacher `{name}` in {os.fspath(ckpt_path)!r} was never updated: its weights "
            "are the live weights."
        )
        return weights
    cleaned: dict[str, list[str]] = {}
    for weight_key in weights:
        cleaned.setdefault(_clean_name(weight_key), []).append(weight_key)
    missing = [ema_key for ema_key in state["ema"] if ema_key not in cleaned]
    if missing:
        raise ValueError(
            f"`ckpt_path`={os.fspath(ckpt_path)!r}: the average of {key} holds {missing}, which "
            "the checkpoint's 'state_dict' lacks (the module's state dict and the average were "
            "saved by different modules)."
        )
    for ema_key, value in state["ema"].items():
        for weight_key in cleaned[ema_key]:
            weights[weight_key] = value
    return weights


def export_teacher(
    ckpt_path: str | os.PathLike, out_path: str | os.PathLike, name: str = "teacher"
) -> dict[str, torch.Tensor]:
    """Write :func:`load_teacher_weights` ``(ckpt_path, name)`` to ``out_path`` with ``torch.save``.

    The file is what :meth:`EMATeacher.export` writes: load it with
    ``module.load_state_dict(torch.load(out_path, weights_only=True))``. Its folder is
    created if missing.

    Returns:
        The weights written.

    Raises:
        TypeError: for a path that is no path or a ``name`` that is no string.
        ValueError: as :func:`load_teacher_weights`, and for an ``out_path`` that is an
            existing folder or the checkpoint itself.
    """
    if not isinstance(out_path, str | os.PathLike):
        raise TypeError(
            f"`out_path` must be a file path, got {out_path!r} ({type(out_path).__name__})."
        )
    if os.path.isdir(out_path):
        raise ValueError(f"`out_path`={os.fspath(out_path)!r} is a folder; give a file path.")
    if (
        isinstance(ckpt_path, str | os.PathLike)
        and os.path.exists(out_path)
        and os.path.exists(ckpt_path)
        and os.path.samefile(out_path, ckpt_path)
    ):
        raise ValueError(
            f"`out_path`={os.fspath(out_path)!r} is the checkpoint `ckpt_path` itself; "
            "writing the teacher there would destroy the checkpoint."
        )
    weights = load_teacher_weights(ckpt_path, name)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save(weights, out_path)
    return weights
