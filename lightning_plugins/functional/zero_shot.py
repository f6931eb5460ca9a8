"""Zero-shot classifier weights: class-name prompts embedded and averaged over templates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lightning_plugins.functional._checks import check_int, check_template_fields

__all__ = ["average_templates", "check_templates", "zero_shot_classifier"]


def average_templates(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """Class embeddings ``[C, D]`` from normalised prompt embeddings ``[C, T, D]``.

    The mean over the ``T`` templates of each class, normalised (open_clip's
    ``build_zero_shot_classifier``). Differentiable: modules that train through the class
    prompts (``LoRAContinual``) call it with gradient; :func:`zero_shot_classifier` without.

    Example:
        >>> average_templates(torch.tensor([[[1.0, 0.0], [0.6, 0.8]]]))
        tensor([[0.8944, 0.4472]])
    """
    return F.normalize(prompt_embeddings.mean(dim=1), dim=-1)


def check_templates(templates: Sequence[str], name: str = "templates") -> None:
    """Raise ``ValueError`` unless ``templates`` is non-empty and each has exactly one ``{}``."""
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of templates, got {templates!r}.")
    for template in templates:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"`{name}` entry {template!r} has no '{{}}' for the class name.")
    check_template_fields(templates, name)


@torch.no_grad()
def zero_shot_classifier(
    encode_prompts: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Normalised class embeddings ``[C, D]``: prompt embeddings averaged over templates.

    Each class name is put into every template (``template.format(name)``); the prompts
    are embedded ``chunk_size`` at a time, averaged per class and normalised, as open_clip's
    ``build_zero_shot_classifier`` does (which returns the transpose, ``[D, C]``). Image
    features ``[B, D]`` times its transpose are the zero-shot logits.

    Args:
        encode_prompts: maps a list of prompt strings to their normalised embeddings
            ``[N, D]`` (tokenize, then encode text).
        class_names: the classes.
        templates: prompt templates, each with one ``{}`` for the class name.
        chunk_size: prompts embedded at once.

    Raises:
        ValueError: for no classes, no templates, a template without ``{}`` or a
            ``chunk_size`` below 1.
        TypeError: for a string as ``class_names`` or a ``chunk_size`` that is no integer.

    Example:
        >>> vocabulary = {"a cat": [1.0, 0.0], "one cat": [0.6, 0.8], "a dog": [0.0, 1.0],
        ...               "one dog": [0.0, 1.0]}
        >>> encode = lambda prompts: torch.tensor([vocabulary[p] for p in prompts])
        >>> zero_shot_classifier(encode, ["cat", "dog"], ["a {}", "one {}"])
        tensor([[0.8944, 0.4472],
                [0.0000, 1.0000]])
    """
    if isinstance(class_names, str):
        raise TypeError(f"`class_names` must be a list of class names, got {class_names!r}.")
    if len(class_names) == 0:
        raise ValueError("`class_names` is empty; zero-shot classification needs classes.")
    check_templates(templates)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = torch.cat(
        [encode_prompts(prompts[i : i + chunk_size]) for i in range(0, len(prompts), chunk_size)]
    )
    return average_templates(embeddings.view(len(class_names), len(templates), -1))
