"""ShardCache: a local file for every shard URL, for wids' memory-mapped random access.

wids (webdataset's indexed reader) memory-maps each shard, so every shard needs a local
file. It asks its ``localname`` function for the file of a URL, downloads the shard only
when that file does not exist yet, and locks ``<file>.lock`` while it opens it.
:class:`ShardCache` is such a function that puts the file in place itself: a local shard
gets a symlink (no copy; wids' lock files land in the cache folder, never in the data
folder), a remote one (``pipe:``, ``http(s)``) is downloaded with
:func:`~lightning_plugins.datamodules.shard_urls.open_url`. Every file is checked once per
process for the end-of-archive marker: a tar cut at a member boundary would otherwise
lose its last samples silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
import urllib.parse
from http.client import HTTPException

from lightning_plugins.datamodules.shard_samples import END_OF_ARCHIVE, GZIP_MAGIC
from lightning_plugins.datamodules.shard_urls import is_local, local_path, open_url

__all__ = ["ShardCache", "default_cache_dir"]

_DOWNLOAD_ERRORS = (OSError, HTTPException, ValueError)
"""What a failing download raises (``HTTPException``: e.g. an incomplete HTTP read)."""


def default_cache_dir() -> str:
    """``$WIDS_CACHE``, else ``<tempfile.gettempdir()>/lightning_plugins_shards``."""
    return os.environ.get("WIDS_CACHE") or os.path.join(
        tempfile.gettempdir(), "lightning_plugins_shards"
    )


def _cache_name(url: str) -> str:
    """``<first 16 hex digits of sha256(url)>-<basename of the URL's path>``."""
    if url.startswith("pipe:"):
        base = "pipe.tar"
    else:
        base = os.path.basename(urllib.parse.urlparse(url).path) or "shard.tar"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"


class ShardCache:
    """Maps a shard URL to a local file of that shard (a callable for wids' ``localname``).

    ``cache(url)`` returns a path inside ``cache_dir``:

    - a local shard (a plain path or a ``file:`` URL) gets a symlink to its absolute path
      (nothing is copied);
    - a remote shard (``pipe:<command>``, ``http(s)://``) is downloaded to
      ``<name>.part-<pid>-<random>`` and moved into place with ``os.replace``, so two
      processes may both download it: one file wins, both are complete. A file already in
      place is reused (by later datasets and processes too).

    The name of a shard in the cache is the first 16 hex digits of the SHA-256 of its URL
    (of the absolute path for a local shard), ``-`` and the basename of the URL's path
    (``pipe.tar`` for a ``pipe:`` command). Each file is checked once per process: it must
    be an uncompressed tar that ends in the end-of-archive marker (two zero blocks).
    Files stay in the cache until deleted; ``cache_dir`` may be removed at any time
    between runs.

    Args:
        cache_dir: the cache folder (created when missing); by default
            :func:`default_cache_dir`.

    Raises:
        TypeError: for a ``cache_dir`` that is not a path or ``None``.

    Example:
        >>> import io, tarfile, tempfile
        >>> folder = (scratch := tempfile.TemporaryDirectory()).name
        >>> with tarfile.open(f"{folder}/0.tar", "w") as tar:
        ...     info = tarfile.TarInfo("k0.txt")
        ...     info.size = 5
        ...     tar.addfile(info, io.BytesIO(b"hello"))
        >>> cache = ShardCache(f"{folder}/cache")
        >>> local = cache(f"{folder}/0.tar")
        >>> os.path.islink(local), os.path.realpath(local) == os.path.realpath(f"{folder}/0.tar")
        (True, True)
        >>> remote = cache(f"pipe:cat {folder}/0.tar")
        >>> os.path.basename(remote)[16:], os.path.islink(remote)
        ('-pipe.tar', False)
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(
                f"`cache_dir` must be a folder path or None, got {cache_dir!r} "
                f"({type(cache_dir).__name__})."
            )
        self.cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
        self._checked: set[str] = set()

    def __call__(self, url: str) -> str:
        """The local file of shard ``url``, made and checked when needed.

        Raises:
            ValueError: naming ``url``, for a shard that cannot be opened or downloaded
                (a missing file, an HTTP error, a failing ``pipe:`` command), a
                gzip-compressed shard, or a truncated one (without the end-of-archive
                marker; a downloaded one is deleted, so a retry downloads it again).
        """
        os.makedirs(self.cache_dir, exist_ok=True)
        if is_local(url):
            path = os.path.abspath(local_path(url))
            if not os.path.isfile(path):
                raise ValueError(f"Cannot open shard {url!r}: there is no file {path!r}.")
            local = os.path.join(self.cache_dir, _cache_name(path))
            self._link(path, local)
        else:
            local = os.path.join(self.cache_dir, _cache_name(url))
            if not os.path.exists(local):
                self._download(url, local)
                self._checked.discard(local)  # a new file: check it again
        if local not in self._checked:
            self._check(url, local, downloaded=not is_local(url))
            self._checked.add(local)
        return local

    def _part(self, local: str) -> str:
        return f"{local}.part-{os.getpid()}-{secrets.token_hex(4)}"

    def _link(self, target: str, local: str) -> None:
        if os.path.islink(local) and os.readlink(local) == target:
            return
        part = self._part(local)
        os.symlink(target, part)
        os.replace(part, local)

    def _download(self, url: str, local: str) -> None:
        part = self._part(local)
        try:
            stream = open_url(url)
            try:
                with open(part, "wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
            finally:
                stream.close()  # a pipe: command's exit status is checked here
            os.replace(part, local)
        except _DOWNLOAD_ERRORS as err:
            if isinstance(err, ValueError) and str(err).startswith("Cannot open shard"):
                raise  # open_url's message names the url
            raise ValueError(
                f"Cannot download shard {url!r}: {type(err).__name__}: {err}."
            ) from err
        finally:
            if os.path.exists(part):
                os.remove(part)

    def _check(self, url: str, local: str, downloaded: bool) -> None:
        problem = None
        try:
            with open(local, "rb") as handle:
                head = handle.read(2)
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(size - len(END_OF_ARCHIVE), 0))
                tail = handle.read()
        except OSError as err:
            reason = err.strerror or str(err)
            raise ValueError(f"Cannot open shard {url!r}: {type(err).__name__}: {reason}.") from err
        if head == GZIP_MAGIC:
            problem = (
                f"Shard {url!r} is gzip-compressed; indexed access memory-maps the shards; "
                ".tar.gz cannot be: unpack them or use the streaming path."
            )
        elif tail != END_OF_ARCHIVE:
            problem = (
                f"Shard {url!r} is truncated: it lacks the end-of-archive marker (it holds "
                f"{size} bytes), so samples at its end may be lost. Write the shard again."
            )
        if problem is not None:
            if downloaded:
                with contextlib.suppress(FileNotFoundError):  # another process was first
                    os.remove(local)
            raise ValueError(problem)
