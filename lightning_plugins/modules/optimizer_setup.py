"""Optimizer and scheduler from LightningCLI factories, with the scheduler's length filled in.

The modules of this package take ``optimizer: OptimizerCallable`` and
``lr_scheduler: LRSchedulerCallable | None`` (classes, ``functools.partial`` objects or
LightningCLI's callables). :func:`no_weight_decay` is the rule for which parameters get no
weight decay, :func:`decay_groups` splits parameters by it, and :func:`scheduled_optimizer`
builds the scheduler and its Lightning config; a scheduler factory that takes
``total_steps`` and was left without it (such as
:class:`~lightning_plugins.schedulers.WarmupCosineLR`) gets the trainer's length.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

__all__ = [
    "decay_groups",
    "named_parameter_groups",
    "no_weight_decay",
    "scale_backbone_lr",
    "scheduled_optimizer",
]


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Whether a parameter is exempt from weight decay (open_clip's rule).

    0- and 1-D tensors (norm weights, biases, logit scale and bias, class embeddings) and
    names with ``bn``, ``ln``, ``bias`` or ``logit_scale``.

    Example:
        >>> no_weight_decay("head.bias", nn.Parameter(torch.zeros(3)))
        True
        >>> no_weight_decay("head.weight", nn.Parameter(torch.zeros(3, 2)))
        False
    """
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    exempt: Callable[[str, nn.Parameter], bool],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters split into those with and those without weight decay.

    Args:
        named_parameters: ``(name, parameter)`` pairs; frozen ones are skipped.
        exempt: ``exempt(name, param)`` is True for a parameter without weight decay.

    Example:
        >>> decay, no_decay = decay_groups(nn.Linear(2, 3).named_parameters(), no_weight_decay)
        >>> [tuple(p.shape) for p in decay], [tuple(p.shape) for p in no_decay]
        ([(3, 2)], [(3,)])
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in named_parameters:
        if param.requires_grad:
            (no_decay if exempt(name, param) else decay).append(param)
    return decay, no_decay


def scheduled_optimizer(
    optimizer: torch.optim.Optimizer,
    lr_scheduler_factory: Callable[..., Any] | None,
    interval: str,
    module: pl.LightningModule | None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer, with its scheduler if any.

    A scheduler factory that takes ``total_steps`` and was given none gets
    ``trainer.estimated_stepping_batches`` (``interval="step"``) or ``max_epochs``
    (``"epoch"``; ``inf`` when unbounded).

    Args:
        optimizer: the built optimizer.
        lr_scheduler_factory: ``factory(optimizer, **kwargs)``, or ``None`` for none.
        interval: ``"step"`` or ``"epoch"``.
        module: the module, whose trainer fills a missing ``total_steps`` (read only then).

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        >>> config = scheduled_optimizer(
        ...     opt, functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2), "epoch", None)
        >>> config["lr_scheduler"]["interval"], type(config["lr_scheduler"]["scheduler"]).__name__
        ('epoch', 'StepLR')
    """
    if lr_scheduler_factory is None:
        return optimizer
    kwargs = {}
    if _leaves_total_steps_unset(lr_scheduler_factory):
        kwargs["total_steps"] = _total_scheduler_steps(module, interval)
    scheduler = lr_scheduler_factory(optimizer, **kwargs)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": interval},
    }


def _total_scheduler_steps(module: pl.LightningModule | None, interval: str) -> int | float:
    """The scheduler's length: stepping batches, or epochs for ``interval="epoch"``."""
    if module is None:
        raise ValueError(
            "The scheduler needs `total_steps`, which comes from the Trainer; attach the "
            "module to a Trainer or give the scheduler `total_steps`."
        )
    trainer = module.trainer
    if interval == "epoch":
        epochs = trainer.max_epochs
        return math.inf if epochs is None or epochs < 0 else epochs
    return trainer.estimated_stepping_batches


def _leaves_total_steps_unset(factory: Any) -> bool:
    """Whether a scheduler factory takes ``total_steps`` and was given none.

    True for ``WarmupCosineLR`` (or ``OneCycleLR`` without ``epochs``) configured without
    ``total_steps``: the class itself, a ``functools.partial`` of it, or LightningCLI's
    callable (a partial whose arguments hold the class and whose keywords hold the
    ``init_args``).
    """
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        keywords = {**factory.keywords, **keywords}
        classes = [arg for arg in factory.args if isinstance(arg, type)]
        factory = classes[-1] if classes else factory.func
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False

    def unset(name: str) -> bool:
        parameter = parameters.get(name)
        default = None if parameter is None else parameter.default
        return keywords.get(name, default) is None

    # OneCycleLR may get its length from `epochs` and `steps_per_epoch` instead
    return "total_steps" in parameters and unset("total_steps") and unset("epochs")


def named_parameter_groups(
    parts: Mapping[str, nn.Module], exempt: Callable[[str, nn.Parameter], bool]
) -> list[dict[str, Any]]:
    """The trainable parameters of named parts, each split by weight decay; empty groups dropped.

    Groups ``<part>`` and ``<part>_no_decay`` (``weight_decay=0``) per part, in order.

    Example:
        >>> groups = named_parameter_groups({"head": nn.Linear(2, 3)}, no_weight_decay)
        >>> [(g["name"], len(g["params"])) for g in groups]
        [('head', 1), ('head_no_decay', 1)]
    """
    groups = []
    for part, module in parts.items():
        decay, no_decay = decay_groups(
            ((f"{part}.{n}", p) for n, p in module.named_parameters()), exempt
        )
        groups += [
            {"params": decay, "name": part},
            {"params": no_decay, "weight_decay": 0.0, "name": f"{part}_no_decay"},
        ]
    return [group for group in groups if group["params"]]


def scale_backbone_lr(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Multiply the learning rate of the groups named ``backbone*`` by ``scale`` (in place).

    Example:
        >>> opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "name": "backbone"}],
        ...                       lr=0.5)
        >>> scale_backbone_lr(opt, 0.1)
        >>> opt.param_groups[0]["lr"]
        0.05
    """
    for group in optimizer.param_groups:
        if str(group.get("name", "")).startswith("backbone"):
            group["lr"] = group["lr"] * scale
