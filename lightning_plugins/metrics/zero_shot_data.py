"""What zero-shot evaluation reads: the ``ZeroShotData`` protocol and ``ZeroShotClasses``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from lightning_plugins.functional.zero_shot import check_templates

__all__ = ["DEFAULT_TEMPLATES", "ZeroShotClasses", "ZeroShotData", "read_zero_shot_data"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
"""Prompt templates used when a source gives ``templates=None``."""


@runtime_checkable
class ZeroShotData(Protocol):
    """The attributes a datamodule provides for zero-shot evaluation.

    Our modules read them through :func:`read_zero_shot_data` when no classes are given to
    the module itself. A user's datamodule that has these three attributes works with
    them; one without ``class_names`` (or with ``class_names = None``) gets no zero-shot
    evaluation. Validation batches with a ``label`` (class ids into ``class_names``) are
    then scored.

    Attributes:
        class_names: the name of each class, put into the templates.
        templates: prompt templates with one ``{}``; ``None`` for
            :data:`DEFAULT_TEMPLATES`.
        class_groups: named subsets of class ids whose accuracy is reported apart (say
            ``{"rare": [...]}``), or ``None``.
    """

    class_names: Sequence[str] | None
    templates: Sequence[str] | None
    class_groups: Mapping[str, Sequence[int]] | None


@dataclass(frozen=True)
class ZeroShotClasses:
    """Classes, prompt templates and class groups of a zero-shot evaluation.

    A :class:`ZeroShotData` in its own right: a module given one evaluates these classes
    instead of its datamodule's. Its fields are plain lists and dicts, so it is written in
    LightningCLI YAML as a nested block.

    Args:
        class_names: the name of each class.
        templates: prompt templates with one ``{}``; ``None`` for
            :data:`DEFAULT_TEMPLATES`.
        class_groups: named subsets of class ids reported apart, or ``None``.

    Raises:
        ValueError: for no class names, a template without ``{}``, or a group with class
            ids outside ``[0, len(class_names))``.

    Example:
        >>> ZeroShotClasses(["cat", "dog"]).prompt_templates
        ('a photo of a {}.',)
        >>> ZeroShotClasses([])
        Traceback (most recent call last):
        ...
        ValueError: `class_names` is empty; zero-shot evaluation needs classes.
    """

    class_names: list[str]
    templates: list[str] | None = None
    class_groups: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise TypeError(
                f"`class_names` must be a list of strings, got {self.class_names!r} "
                f"({type(self.class_names).__name__})."
            )
        if len(self.class_names) == 0:
            raise ValueError("`class_names` is empty; zero-shot evaluation needs classes.")
        if self.templates is not None:
            check_templates(self.templates)
        for name, ids in (self.class_groups or {}).items():
            outside = [i for i in ids if not 0 <= i < len(self.class_names)]
            if outside:
                raise ValueError(
                    f"`class_groups[{name!r}]` holds class ids {outside[:5]} outside "
                    f"[0, {len(self.class_names)})."
                )

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        """``templates``, or :data:`DEFAULT_TEMPLATES` when those are ``None``."""
        return tuple(self.templates) if self.templates is not None else DEFAULT_TEMPLATES


def read_zero_shot_data(source: Any) -> ZeroShotClasses | None:
    """The zero-shot classes of a :class:`ZeroShotData` (say a datamodule), or ``None``.

    ``None`` when ``source`` is ``None``, has no ``class_names`` attribute or has
    ``class_names = None``: it offers no zero-shot evaluation.

    Raises:
        TypeError: when ``source`` has ``class_names`` but not both ``templates`` and
            ``class_groups`` (set them to ``None`` for the defaults).
        ValueError: for an empty ``class_names``, a template without ``{}`` or a group
            with class ids outside the classes, naming ``source``'s type.

    Example:
        >>> class Data:
        ...     class_names, templates, class_groups = ["cat", "dog"], None, {"pets": [0, 1]}
        >>> read_zero_shot_data(Data()).class_groups
        {'pets': [0, 1]}
        >>> read_zero_shot_data(object()) is None
        True
    """
    if source is None or getattr(source, "class_names", None) is None:
        return None
    if isinstance(source, ZeroShotClasses):
        return source
    where = type(source).__name__
    if not isinstance(source, ZeroShotData):
        missing = [n for n in ("templates", "class_groups") if not hasattr(source, n)]
        raise TypeError(
            f"{where} has `class_names` but no {' or '.join(f'`{n}`' for n in missing)}: a "
            "datamodule for zero-shot evaluation provides `class_names`, `templates` and "
            "`class_groups` (None for the defaults; see ZeroShotData)."
        )
    groups = source.class_groups
    try:
        return ZeroShotClasses(
            class_names=list(source.class_names),
            templates=None if source.templates is None else list(source.templates),
            class_groups=None if groups is None else {k: list(v) for k, v in groups.items()},
        )
    except ValueError as err:
        raise ValueError(f"{where}'s zero-shot data: {err}") from err
