"""A cache of preprocessed images: memory-mapped files in shared memory, filled by whoever reads first.

Why not the predecessor's Manager dict: every item went through one server process by pickling.
Here the store is two files in a cache directory (default ``/dev/shm/<user>-mi-cache``, i.e. RAM):
``data.f32`` [N, C, H, W] float32 and ``filled.u8`` (one flag per item). Every DataLoader worker,
every DDP rank on the node and every later run with the same files and the same preprocessing maps
the same pages: the store is keyed by a hash of the file list (path, size, mtime, ctime) and of the
preprocessing parameters, so a changed file or setting gives a new store and a stale one is never
read. The flag is written after the data, and items are deterministic, so two processes filling the
same item at once write identical bytes. A store whose files are truncated or whose metadata does
not match is rebuilt (creation is under a file lock; metadata is written last, by rename).

What is found is not trusted blindly: the cache folder is created private (0700) and a folder owned
by another user or writable by others is refused; every item carries a CRC32 (``crc.u32``), checked
the first time this process uses the item, and a damaged item is read again from its file (with a
warning). The store's space is reserved when it is created (``posix_fallocate``), so a full tmpfs is an
error before training starts, never a SIGBUS in the middle of it.

List or remove stores: ``python -m utility.data.cache [--clear] [--cache_dir DIR]``.
"""
from __future__ import annotations

import errno
import fcntl
import getpass
import hashlib
import json
import os
import shutil
import stat
import sys
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utility.data.io import split_slice
from utility.diskspace import is_no_space, no_space_error
from utility.errors import UserError

VERSION = 2  # 2: per-item CRC32


def default_cache_dir() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return base / f"{user}-mi-cache"


def store_key(paths: Sequence[Path], prep_key: str) -> str:
    h = hashlib.sha256(f"v{VERSION}|{prep_key}|".encode())
    strings = getattr(paths, "strings", None)  # a PathArray: no Path object per file
    for name in (strings() if strings is not None else [str(p) for p in paths]):
        try:
            st = os.stat(split_slice(name)[0])  # a slice of a volume: the volume's file
            # ctime too: a file rewritten with the same size and its mtime restored (touch -r, rsync -t)
            # still gets a new inode change time, which no user call can set back
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}\n".encode())
        except OSError:
            h.update(f"{name}|missing\n".encode())
    return h.hexdigest()[:20]


class SharedStore:
    def __init__(self, paths: Sequence[Path], channels: int, shape: tuple[int, int], prep_key: str,
                 cache_dir: Path | None = None, what: str = "dataset") -> None:
        self.n = len(paths)
        self.item_shape = (channels, *shape)
        self.cache_dir = cache_dir or default_cache_dir()
        self.key = store_key(paths, prep_key)
        self.dir = self.cache_dir / self.key
        self.meta = {"version": VERSION, "n": self.n, "shape": list(self.item_shape), "prep": prep_key,
                     "what": what}
        nbytes = self.n * int(np.prod(self.item_shape)) * 4
        private_dir(self.cache_dir, tighten=cache_dir is None)
        with open(self.cache_dir / f".{self.key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._valid(nbytes):
                self._create(nbytes, what)
        self.data = np.memmap(self.dir / "data.f32", dtype=np.float32, mode="r+",
                              shape=(self.n, *self.item_shape))
        self.filled = np.memmap(self.dir / "filled.u8", dtype=np.uint8, mode="r+", shape=(self.n,))
        self.crc = np.memmap(self.dir / "crc.u32", dtype=np.uint32, mode="r+", shape=(self.n,))
        self.verified = np.zeros(self.n, dtype=bool)  # checked (or written) by this process
        self.what = what

    def _valid(self, nbytes: int) -> bool:
        try:
            meta = json.loads((self.dir / "meta.json").read_text())
            return (meta == self.meta and (self.dir / "data.f32").stat().st_size == nbytes
                    and (self.dir / "filled.u8").stat().st_size == self.n
                    and (self.dir / "crc.u32").stat().st_size == 4 * self.n)
        except (OSError, ValueError):
            return False

    def _create(self, nbytes: int, what: str) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        free = shutil.disk_usage(self.cache_dir).free
        if nbytes > free * 0.95:
            raise UserError(
                f"the cache of {what} needs {nbytes / 2**30:.2f} GiB but {self.cache_dir} has "
                f"{free / 2**30:.2f} GiB free; use opmode: disk, a smaller shape_desired, or cache_dir "
                "on a larger file system")
        self.dir.mkdir(parents=True, mode=0o700)
        try:
            for name, size in (("data.f32", nbytes), ("filled.u8", self.n), ("crc.u32", 4 * self.n)):
                reserve(self.dir / name, size)
        except OSError as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            if is_no_space(exc):
                raise no_space_error(self.cache_dir, nbytes, f"the cache of {what}",
                                     "use opmode: disk, a smaller shape_desired, or cache_dir on a larger "
                                     "file system (old stores: python -m utility.data.cache --clear)") from None
            raise UserError(f"cannot create the cache in {self.dir}: {exc.strerror or exc}") from None
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta))
        tmp.replace(self.dir / "meta.json")

    def __len__(self) -> int:
        return int(np.count_nonzero(self.filled == 1))

    def get(self, i: int) -> torch.Tensor | None:
        """The cached item as a tensor over the mapped pages (no copy), or None (not yet cached,
        known to be unreadable, or damaged: the caller reads it again and reports or re-caches it)."""
        if self.filled[i] != 1 or self.damaged([i]):
            return None
        return torch.from_numpy(self.data[i])

    def put(self, i: int, x: torch.Tensor) -> None:
        self.data[i] = x.detach().cpu().numpy()
        self.crc[i] = zlib.crc32(self.data[i])
        self.filled[i] = 1  # last: a reader sees a flag only with its data and checksum
        self.verified[i] = True

    def damaged(self, indices: Sequence[int] | np.ndarray) -> list[int]:
        """Of the cached ``indices`` not yet checked by this process, those whose content no longer
        matches its checksum; they are marked not cached (the caller fills them again)."""
        bad = []
        for i in np.asarray(indices, dtype=np.int64).tolist():
            if self.verified[i] or self.filled[i] != 1:
                continue
            if zlib.crc32(self.data[i]) != int(self.crc[i]):
                self.filled[i] = 0
                bad.append(i)
            else:
                self.verified[i] = True
        if bad:
            print(f"warning: {len(bad)} cached item(s) of {self.what} in {self.dir} were damaged "
                  f"(checksum mismatch, e.g. item {bad[0]}); reading them again from their files",
                  file=sys.stderr, flush=True)
        return bad

    def mark_bad(self, i: int) -> None:
        """Remember that item i could not be read (flag 2), so a full store can still be complete."""
        self.filled[i] = 2

    @property
    def complete(self) -> bool:
        """Every item decided: cached (1) or known bad (2)."""
        return bool(self.filled.all())


def private_dir(folder: Path, tighten: bool = False) -> None:
    """Create ``folder`` readable only by this user, or check that an existing one is this user's and
    not writable by others: in a shared /dev/shm another user could create it first and feed this
    run their images. ``tighten``: make an existing folder of ours 0700 (the default folder, which
    earlier versions created readable by all; a cache_dir the user chose keeps its mode)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(folder)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(folder) if os.lstat(folder).st_uid == os.getuid() else st
    except OSError as exc:
        raise UserError(f"cannot create the cache directory {folder}: {exc.strerror or exc}") from None
    if st.st_uid != os.getuid():
        raise UserError(f"cache directory {folder} belongs to another user (uid {st.st_uid}); refusing to "
                        "use it (its content could be anything); set cache_dir to a folder of yours")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):  # others may have written into it already
        raise UserError(f"cache directory {folder} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                        f"refusing to use it: remove it, or set cache_dir to a private folder")
    if tighten and stat.S_IMODE(st.st_mode) != 0o700 and not stat.S_ISLNK(os.lstat(folder).st_mode):
        os.chmod(folder, 0o700)


def reserve(path: Path, size: int) -> None:
    """A file of ``size`` bytes whose blocks are allocated now (a full device fails here, not later
    with SIGBUS when a mapped page is first written); plain truncate where allocation is unsupported."""
    with open(path, "wb") as fh:
        if size == 0:
            return
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            fh.truncate(size)


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="List (or --clear) preprocessed-image caches.")
    ap.add_argument("--cache_dir", type=Path, default=default_cache_dir())
    ap.add_argument("--clear", action="store_true")
    args = ap.parse_args(argv)
    if not args.cache_dir.is_dir():
        print(f"no caches in {args.cache_dir}")
        return 0
    for d in sorted(p for p in args.cache_dir.iterdir() if p.is_dir()):
        size = sum(f.stat().st_blocks * 512 for f in d.iterdir() if f.is_file())
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        print(f"{d.name}  {size / 2**20:9.1f} MiB  {meta.get('what', '?')}  n={meta.get('n', '?')}")
        if args.clear:
            shutil.rmtree(d, ignore_errors=True)
    if args.clear:
        for f in args.cache_dir.glob(".*.lock"):
            f.unlink(missing_ok=True)
        print("cleared")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
