"""Test helpers: run a function in several CPU processes joined by a gloo group."""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        result = fn(rank, world_size, *args)
        path = os.path.join(out_dir, f"{rank}.pt")
        torch.save(result, path + ".tmp")
        os.replace(path + ".tmp", path)  # complete, or absent
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ddp(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; return each result.

    ``fn`` must be a module-level function (it is pickled into spawned processes) and
    return tensors, numbers or containers of them.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.spawn(
                _worker,
                args=(world_size, free_port(), fn, args, out_dir),
                nprocs=world_size,
                join=True,
            )
        except mp.ProcessExitedException as error:
            # gloo's background threads can abort a process while it tears down ("terminate
            # called without an active exception"), after every rank wrote its result; a
            # failure before that leaves a result missing and is raised
            written = all(
                os.path.exists(os.path.join(out_dir, f"{r}.pt")) for r in range(world_size)
            )
            if not written:
                raise
            warnings.warn(
                f"run_ddp: a process died after writing its result ({error}).", stacklevel=2
            )
        return [
            torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
