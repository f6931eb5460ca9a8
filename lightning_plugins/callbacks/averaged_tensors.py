"""AveragedTensors: the mechanics of an EMA of a module's tensors (select, update, swap)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lightning_plugins.callbacks.ema_sharding import is_dtensor, local_part
from lightning_plugins.functional.ema import ema_update_

__all__ = ["AveragedTensors"]

# wrappers that strategies and torch.compile put into parameter names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def select_paths(module: nn.Module, include_buffers: bool) -> list[str]:
    """Attribute paths of the tensors to average in ``module``.

    Its trainable parameters, and (with ``include_buffers``) the persistent buffers of
    every direct child that holds a trainable parameter.
    """
    trained_children = {
        name
        for name, child in module.named_children()
        if any(p.requires_grad for p in child.parameters())
    }
    paths = [path for path, p in module.named_parameters() if p.requires_grad]
    if include_buffers:
        for module_path, submodule in module.named_modules():
            if module_path.split(".")[0] not in trained_children:
                continue
            non_persistent = getattr(submodule, "_non_persistent_buffers_set", set())
            for name, buffer in submodule.named_buffers(recurse=False):
                if buffer is not None and name not in non_persistent:
                    paths.append(f"{module_path}.{name}")
    return paths


class AveragedTensors:
    """A copy of some of a module's tensors, moved towards them by :meth:`update`.

    No policy lives here (when to update, with which decay): only the mechanics. The copy
    is kept on ``device`` (default: with each tensor) and, for floating-point tensors, in
    ``dtype`` (default: the tensor's own). :meth:`swapped_in` puts the average into the
    module and restores the live values afterwards, bitwise: a parameter of the average's
    dtype and device is exchanged in place (no extra memory); every other tensor
    (buffers, an average in another dtype or on another device) is stashed, so the average
    itself is never written while swapped in (under DDP, the buffers that DDP broadcasts
    from rank 0 at every forward do not reach another rank's average).

    Args:
        module: the module whose tensors are averaged.
        paths: attribute paths of the tensors in ``module``.
        device: where to keep the average; ``None``: with the tensors.
        dtype: the floating-point dtype of the average; ``None``: the tensors' own.
        sharded: whether ``module`` is sharded across ranks (each rank averages its shards).

    Example:
        >>> net = nn.Linear(2, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> average = AveragedTensors(net, ["weight"])
        >>> _ = net.weight.data.fill_(2.0)  # training moves the weights to 2
        >>> average.update(0.5)  # 0.5 * 0 + 0.5 * 2
        >>> with average.swapped_in():
        ...     print(net.weight.tolist())
        [[1.0, 1.0]]
        >>> net.weight.tolist()
        [[2.0, 2.0]]
    """

    def __init__(
        self,
        module: nn.Module,
        paths: list[str],
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        sharded: bool = False,
    ) -> None:
        self.module = module
        self.sharded = sharded
        self.paths = paths
        self.keys = [_clean_name(path) for path in paths]  # names in the state dict
        self._owners = []
        for path in paths:
            owner, _, attribute = path.rpartition(".")
            self._owners.append((module.get_submodule(owner), attribute))
        self.device = device
        self.dtype = dtype
        self.tensors = [self._copy(t) for t in self.live()]
        # sharded as DTensors (fully_shard, ModelParallelStrategy), not as FSDP1's flat views
        self.dtensors = any(is_dtensor(t) for t in self.tensors)
        self._stash: list[torch.Tensor | None] | None = None  # set while swapped in

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype if self.dtype is not None and tensor.is_floating_point() else None
        with torch.no_grad():
            return tensor.detach().to(device=self.device, dtype=dtype, copy=True)

    def live(self) -> list[torch.Tensor]:
        """The module's tensors that are averaged, in the order of :attr:`keys`."""
        return [getattr(owner, attribute) for owner, attribute in self._owners]

    @property
    def swapped(self) -> bool:
        """Whether the module holds the average now."""
        return self._stash is not None

    @property
    def nbytes(self) -> int:
        """Bytes of this rank's part of the average."""
        return sum(local_part(t).numel() * t.element_size() for t in self.tensors)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``average = decay * average + (1 - decay) * live`` (non-float tensors copied).

        A tensor registered empty and sized later (a lazily sized buffer) is adopted: its
        average starts as a copy of its first non-empty value. Any other change of shape
        raises ``ValueError`` naming the tensor.
        """
        if self.swapped:
            raise RuntimeError("The average cannot be updated while it is swapped in.")
        live = self.live()
        try:
            ema_update_(self.tensors, live, decay)
        except ValueError:  # a shape mismatch (checked before anything is averaged)
            self._adopt_resized(live)
            ema_update_(self.tensors, live, decay)

    def _adopt_resized(self, live: list[torch.Tensor]) -> None:
        for index, (average, tensor) in enumerate(zip(self.tensors, live, strict=True)):
            if average.shape == tensor.shape:
                continue
            if average.numel():
                raise ValueError(
                    f"EMATeacher averages {self.keys[index]!r}, whose shape changed from "
                    f"{tuple(average.shape)} to {tuple(tensor.shape)} during training; only a "
                    "tensor registered empty may be sized later."
                )
            self.tensors[index] = self._copy(tensor)

    def averages(self) -> list[torch.Tensor]:
        """The averaged values, wherever they are now (in the module where exchanged)."""
        if self._stash is None:
            return list(self.tensors)
        return [
            live if stashed is None else average
            for average, live, stashed in zip(self.tensors, self.live(), self._stash, strict=True)
        ]

    def live_values(self) -> list[torch.Tensor]:
        """The live values, wherever they are now (stashed or exchanged while swapped in)."""
        if self._stash is None:
            return self.live()
        return [
            average if stashed is None else stashed
            for average, stashed in zip(self.tensors, self._stash, strict=True)
        ]

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the average into the module (see the class docstring)."""
        if self._stash is not None:
            return
        stash: list[torch.Tensor | None] = []
        for average, live in zip(self.tensors, self.live(), strict=True):
            if (
                isinstance(live, nn.Parameter)
                and average.dtype == live.dtype
                and average.device == live.device
            ):
                exchange = live.detach().clone()
                live.copy_(average)
                average.copy_(exchange)
                stash.append(None)
            else:
                stash.append(live.detach().clone())
                live.copy_(average)
        self._stash = stash

    @torch.no_grad()
    def swap_out(self, write_back: bool = False) -> None:
        """Restore the live values; with ``write_back`` the module's values become the average."""
        if self._stash is None:
            return
        for average, live, stashed in zip(self.tensors, self.live(), self._stash, strict=True):
            if stashed is None:
                exchange = live.detach().clone()
                live.copy_(average)
                average.copy_(exchange)
            else:
                if write_back:
                    average.copy_(live)
                live.copy_(stashed)
        self._stash = None

    @torch.no_grad()
    def load(self, average: dict[str, torch.Tensor]) -> None:
        """Set the average from a full one by name (a checkpoint's), checking names and shapes."""
        missing = [key for key in self.keys if key not in average]
        unexpected = [key for key in average if key not in set(self.keys)]
        if missing or unexpected:
            raise ValueError(
                "The checkpoint's average does not match the averaged tensors of the module "
                f"(did the set of trainable parameters change?): missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}."
            )
        for index, key in enumerate(self.keys):
            tensor = self.tensors[index]
            if average[key].shape != tensor.shape and tensor.numel():
                raise ValueError(
                    f"The checkpoint's average of {key!r} has shape "
                    f"{tuple(average[key].shape)}, the module's {tuple(tensor.shape)}."
                )
            self.tensors[index] = average[key].to(tensor.device, tensor.dtype, copy=True)

    def put_into(self, state: dict[str, torch.Tensor], values: list[torch.Tensor]) -> None:
        """Write ``values`` (one per averaged tensor) into a state dict of the module.

        As CPU copies, under the names the state dict uses (with or without wrapper prefixes).
        """
        for path, key, value in zip(self.paths, self.keys, values, strict=True):
            for name in {path, key} & state.keys():
                state[name] = value.detach().cpu().clone()

    @contextlib.contextmanager
    def swapped_in(self, write_back: bool = False) -> Iterator[None]:
        """Within the block the module holds the average (no-op if it does already)."""
        if self.swapped:
            yield
            return
        self.swap_in()
        try:
            yield
        finally:
            self.swap_out(write_back)
