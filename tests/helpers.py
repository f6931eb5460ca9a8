"""Test helpers: run a function in several CPU processes joined by a gloo group.

Starting processes and importing torch and Lightning in them takes several seconds, more
than most distributed tests compute. So :func:`run_ddp` keeps one pool of ``world_size``
processes per world size for the whole test session: each process joins a gloo group
once and then runs the functions it is sent, one test after another. A function that
raises (or a rank that dies or hangs) tears the pool down, so the next call starts a fresh
one and no test inherits a half-finished collective.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.server
import io
import os
import queue
import socket
import tarfile
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 900.0  # one call; a hung collective fails the test instead of the whole run


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_lightning(rank: int, world_size: int, port: int) -> None:
    """Let a Lightning ``Trainer(strategy="ddp")`` in a :func:`run_ddp` process join its group.

    Lightning reads the rank and the world from these variables and, finding the default
    process group initialised, joins it instead of starting another.
    """
    os.environ.update(
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _serve(rank: int, world_size: int, port: int, tasks: Any, replies: Any) -> None:
    """A pool process: join the group, then run each task sent until told to stop."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args, path = task
        try:
            result = fn(rank, world_size, *args)
            torch.save(result, path + ".tmp")
            os.replace(path + ".tmp", path)  # complete, or absent
            dist.barrier()  # every rank done before any starts the next task
            replies.put((rank, None))
        except BaseException:  # reported to the test; the pool is then torn down
            replies.put((rank, traceback.format_exc()))
            return
    dist.destroy_process_group()


class _Pool:
    """``world_size`` processes in one gloo group, running one task at a time."""

    def __init__(self, world_size: int) -> None:
        context = mp.get_context("spawn")
        self.world_size = world_size
        self.replies = context.Queue()
        self.tasks = [context.Queue() for _ in range(world_size)]
        port = free_port()
        self.processes = [
            context.Process(
                target=_serve,
                args=(rank, world_size, port, self.tasks[rank], self.replies),
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for process in self.processes:
            process.start()

    def run(self, fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
        for rank, tasks in enumerate(self.tasks):
            tasks.put((fn, args, os.path.join(out_dir, f"{rank}.pt")))
        pending = set(range(self.world_size))
        while pending:
            try:
                rank, error = self.replies.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r in pending if not self.processes[r].is_alive()]
                if dead:
                    message = f"run_ddp: rank {dead[0]} died running {fn.__name__}"
                    raise RuntimeError(message) from None
                continue
            if error is not None:
                raise RuntimeError(f"run_ddp: rank {rank} raised in {fn.__name__}:\n{error}")
            pending.discard(rank)

    def close(self, graceful: bool = True) -> None:
        if graceful:
            for tasks in self.tasks:
                tasks.put(None)
            for process in self.processes:
                process.join(timeout=10)
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()


_POOLS: dict[int, _Pool] = {}


@atexit.register
def _close_pools() -> None:
    while _POOLS:
        _POOLS.popitem()[1].close()


def run_ddp(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; return each result.

    The processes are a session-wide pool (module docstring) that already joined a gloo
    process group; ``fn`` may use ``torch.distributed`` directly, and a Lightning
    ``Trainer(strategy="ddp")`` joins that group (set ``LOCAL_RANK``, ``WORLD_SIZE`` etc.).
    ``fn`` must be a module-level function (it is pickled into the processes) and return
    tensors, numbers or containers of them. A rank that raises fails the call with its
    traceback.
    """
    pool = _POOLS.get(world_size)
    if pool is None:
        pool = _POOLS[world_size] = _Pool(world_size)
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            pool.run(fn, args, out_dir)
        except BaseException:
            del _POOLS[world_size]
            pool.close(graceful=False)
            raise
        return [
            torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]


@contextlib.contextmanager
def serve_folder(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) in a thread; yields its base URL.

    Python's ``http.server``, quiet; ``<base>/<name>`` is ``folder/<name>``. Stopped on exit.
    """
    handler = functools.partial(_QuietHandler, directory=os.fspath(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: tests read their own output."""


def write_shard(path: str | os.PathLike[str], samples: list[tuple[str, dict[str, bytes]]]) -> Any:
    """Write a tar shard of ``(key, {extension: payload})`` samples, members in order."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path
