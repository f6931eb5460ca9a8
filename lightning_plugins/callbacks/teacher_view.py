"""TeacherView: a module run with the averaged weights of an EMATeacher."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from typing_extensions import override

if TYPE_CHECKING:
    from lightning_plugins.callbacks.ema_teacher import EMATeacher

__all__ = ["TeacherView"]


class TeacherView:
    """A module run with the averaged weights of an :class:`EMATeacher`: eval mode, no grad.

    Calling the view runs the module's ``forward``; any other method or property of the
    module (``view.encode_image(x)``, ``view.logit_scale``) runs with the averaged tensors
    too, and a submodule comes back as a view of that submodule (``view.model``). The
    module's own tensors stand in for everything that is not averaged (frozen parameters,
    constant buffers). No weights are copied: the call substitutes the averaged tensors
    with ``torch.func.functional_call`` and restores the train/eval flags afterwards.
    Before the first update, and while the average is swapped in for validation, it runs
    the module's own weights.

    Args:
        callback: the callback that keeps the average.
        module: the module (or a submodule of it) to run.
        prefix: ``module``'s path in the callback's module.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_plugins.callbacks import EMATeacher
        >>> module = pl.LightningModule()
        >>> module.net = nn.Linear(2, 1, bias=False)
        >>> _ = nn.init.zeros_(module.net.weight)
        >>> ema = EMATeacher(decay=0.5)
        >>> ema.on_fit_start(pl.Trainer(logger=False), module)  # as `Trainer.fit` does
        >>> ema.update(step=1)  # the first update copies the live weights: 0
        >>> _ = module.net.weight.data.fill_(2.0)  # training moves them to 2
        >>> ema.update(step=2)  # the average: 0.5 * 0 + 0.5 * 2 = 1
        >>> x = torch.ones(1, 2)
        >>> module.teacher.net(x), module.net(x).detach()
        (tensor([[2.]]), tensor([[4.]]))
        >>> module.teacher.training, module.net.weight.data
        (False, tensor([[2., 2.]]))
    """

    def __init__(self, callback: EMATeacher, module: nn.Module, prefix: str = "") -> None:
        self._callback = callback
        self._module = module
        self._prefix = prefix

    @property
    def training(self) -> bool:
        """Always ``False``: the teacher runs in eval mode."""
        return False

    @property
    def module(self) -> nn.Module:
        """The live module this view runs."""
        return self._module

    def _tensors(self) -> dict[str, torch.Tensor]:
        callback = self._callback
        device = next(self._module.parameters(), torch.empty(0)).device
        tensors = {}
        for path, tensor in callback.named_averages():
            if path.startswith(self._prefix):
                if tensor.device != device:
                    tensor = tensor.to(device, non_blocking=True)
                tensors["module." + path[len(self._prefix) :]] = tensor
        return tensors

    def _run(self, function: Callable[[], Any]) -> Any:
        callback = self._callback
        modules = list(self._module.modules())
        modes = [m.training for m in modules]
        for m in modules:
            m.training = False
        try:
            with torch.no_grad():
                if callback.swapped_in or not callback.updated:
                    return function()
                if callback.sharded:
                    raise RuntimeError(
                        "The EMA teacher cannot run forward under a sharded strategy (FSDP); "
                        "it validates and exports, but distillation needs DDP or one device."
                    )
                return torch.func.functional_call(
                    _CallUnderFunctionalCall(self._module),
                    self._tensors(),
                    (function,),
                    tie_weights=True,
                )
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.training = mode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module's ``forward`` with the averaged weights."""
        return self._run(lambda: self._module(*args, **kwargs))

    def _child_view(self, value: nn.Module) -> TeacherView:
        for path, child in self._module.named_modules():
            if child is value:
                prefix = f"{self._prefix}{path}." if path else self._prefix
                return TeacherView(self._callback, value, prefix)
        raise AttributeError(f"{type(value).__name__} is not a submodule of the teacher.")

    def __getitem__(self, index: Any) -> TeacherView:
        """A view of a child of a container module (``nn.Sequential``, ``nn.ModuleList``)."""
        return self._child_view(self._module[index])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if inspect.isfunction(inspect.getattr_static(type(self._module), name, None)):
            value = getattr(self._module, name)  # a method: it runs with the average when called
        else:  # a property, tensor or submodule: read with the average in place
            value = self._run(lambda: getattr(self._module, name))
        if isinstance(value, nn.Module):
            return self._child_view(value)
        if callable(value):

            @functools.wraps(value)
            def method(*args: Any, **kwargs: Any) -> Any:
                return self._run(lambda: getattr(self._module, name)(*args, **kwargs))

            return method
        return value

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        """A copy of the module has no teacher: the view belongs to the fitted module."""
        return None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        """Pickled as ``None``, as :meth:`__deepcopy__` (not the callback, not the Trainer)."""
        return type(None), ()

    def __repr__(self) -> str:
        return f"TeacherView({type(self._module).__name__}, name={self._callback.name!r})"


class _CallUnderFunctionalCall(nn.Module):
    """Runs a function inside ``functional_call``, so any method sees substituted tensors."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    @override
    def forward(self, function: Callable[[], Any]) -> Any:
        return function()
