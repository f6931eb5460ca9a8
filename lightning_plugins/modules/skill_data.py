"""What a module reads to name its validation dataloaders by skill: the ``SkillData`` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["SkillData", "read_skill_names"]


@runtime_checkable
class SkillData(Protocol):
    """A datamodule whose validation dataloaders are one per skill (or source), named.

    ``skill_names[i]`` names validation dataloader ``i``; modules such as
    :class:`~lightning_plugins.modules.CausalLM` log each dataloader's metrics under its
    name (``val/answer_accuracy/skill_2``) instead of Lightning's ``dataloader_idx_2``.
    :class:`~lightning_plugins.datamodules.LegoSkills` provides it; a user's datamodule
    that has ``skill_names`` works the same; one without it (or with ``None``) gets
    ``dataloader_<i>`` names.

    Attributes:
        skill_names: one distinct name per validation dataloader, in order.
    """

    skill_names: Sequence[str] | None


def read_skill_names(source: Any, num_dataloaders: int) -> list[str]:
    """The name of each of ``num_dataloaders`` validation dataloaders of ``source``.

    ``source.skill_names`` when ``source`` is a :class:`SkillData` with names, else
    ``dataloader_0``, ``dataloader_1``, ...

    Raises:
        TypeError: for ``skill_names`` that are not a list of strings.
        ValueError: for repeated names, or another number of names than dataloaders.

    Example:
        >>> class Data:
        ...     skill_names = ["easy", "hard"]
        >>> read_skill_names(Data(), 2), read_skill_names(None, 2)
        (['easy', 'hard'], ['dataloader_0', 'dataloader_1'])
        >>> read_skill_names(Data(), 3)
        Traceback (most recent call last):
        ...
        ValueError: Data has 2 `skill_names` (['easy', 'hard']) but 3 validation dataloaders; `skill_names` name the validation dataloaders, one each, in order.
    """  # noqa: E501
    names = getattr(source, "skill_names", None) if source is not None else None
    if names is None:
        return [f"dataloader_{i}" for i in range(num_dataloaders)]
    where = type(source).__name__
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{where}.skill_names must be a list of strings, got {names!r}.")
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{where}.skill_names must be distinct, got {names!r}.")
    if len(names) != num_dataloaders:
        raise ValueError(
            f"{where} has {len(names)} `skill_names` ({names!r}) but {num_dataloaders} "
            "validation dataloaders; `skill_names` name the validation dataloaders, one "
            "each, in order."
        )
    return names
