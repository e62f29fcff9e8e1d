"""A persistent cache of indexes (file listings and encoded targets), so a queue of runs on the same
data lists it once.

Where: ``<output_root>/index_cache/`` (default ``logs_and_checkpoints/index_cache/``, next to the run
outputs, shared by every run with that output root); config key ``index_cache_dir`` moves it.
One file per (kind, key): ``<kind>-<hash>.npz`` holding numpy arrays and a JSON header (the key, the
stamps below, a BLAKE2 digest of the arrays). Writes go to a temporary file renamed into place, so a
reader sees the old file or the new one, never half of one.

When is a cached index used? When its key matches (data folder, task fields that shape the index,
formats, slice axis) and every stamp still matches: (inode, mtime, ctime) of every directory the
listing visited and of every file the index read (labels CSV, list files, class lists, NIfTI volumes).
A directory's times change when an entry is added, removed or renamed in it, so new, deleted and
renamed images are seen; they do NOT change when a file's content is rewritten in place (not needed
for the listing), nor when a symlinked file's target changes. On file systems whose directory times
are unreliable (some network or FUSE mounts), set ``reindex: true``: the index is then built anew
and the cache rewritten. A cache file that cannot be read or whose digest does not match is never
trusted: it is rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from utility.data.compact import PathArray
from utility.data.listing import Stamp, find_images, stamp

VERSION = 1
META = "__meta__"

Built = tuple[dict[str, np.ndarray], dict[str, Any], list[Stamp]]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class IndexCache:
    """``get_or_build(kind, key, build)``; ``last`` says what happened (for the start-up line)."""

    def __init__(self, folder: Path, reindex: bool = False) -> None:
        self.folder = folder
        self.reindex = reindex
        self.last = ""

    def file_for(self, kind: str, key: dict[str, Any]) -> Path:
        text = json.dumps({"v": VERSION, "kind": kind, **key}, sort_keys=True, default=str)
        return self.folder / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"

    def get_or_build(self, kind: str, key: dict[str, Any], build: Callable[[], Built]
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        path = self.file_for(kind, key)
        keytext = json.dumps({"v": VERSION, "kind": kind, **key}, sort_keys=True, default=str)
        why = "reindex: true" if self.reindex else "no cache file"
        if not self.reindex and path.exists():
            got = self._load(path, keytext)
            if isinstance(got, tuple):
                self.last = f"from cache {path}"
                return got
            why = got
        arrays, info, stamps = build()
        self._save(path, keytext, arrays, info, stamps)
        self.last = f"built ({why}); cache {path}"
        return arrays, info

    def _load(self, path: Path, keytext: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | str:
        """The cached arrays and info, or why they cannot be used."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop(META).tobytes().decode())
            if meta.get("key") != keytext:
                return "key differs"
            if _digest(arrays) != meta["digest"]:
                raise ValueError("digest mismatch")
        except Exception as exc:  # never trusted: any damage means rebuild
            print(f"warning: index cache {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); "
                  "rebuilding it", file=sys.stderr)
            return "corrupt cache file"
        for s in meta["stamps"]:
            if list(stamp(s[0])) != list(s):
                return f"{s[0]} changed"
        return arrays, meta["info"]

    def _save(self, path: Path, keytext: str, arrays: dict[str, np.ndarray], info: dict[str, Any],
              stamps: list[Stamp]) -> None:
        meta = {"key": keytext, "info": info, "stamps": [list(s) for s in stamps], "digest": _digest(arrays),
                "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.folder)
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # readable by the other users of a shared cache, as a plain file
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays, **{META: blob})
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            print(f"warning: cannot write the index cache {path}: {exc} (runs still work; they index anew)",
                  file=sys.stderr)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def cached_listing(folder: Path, formats: Sequence[str], slice_axis: Optional[int],
                   cache: Optional[IndexCache]) -> PathArray:
    """:func:`find_images` of ``folder``, through ``cache`` when one is given (pretraining folders)."""
    if cache is None:
        return find_images(folder, formats, slice_axis)

    def build() -> Built:
        stamps: list[Stamp] = []
        files = find_images(folder, formats, slice_axis, stamps)
        return {"blob": files.blob, "offsets": files.offsets}, {"root": files.root}, stamps

    key = {"folder": str(folder.resolve()), "formats": list(formats), "slice_axis": slice_axis}
    arrays, info = cache.get_or_build("listing", key, build)
    return PathArray(info["root"], arrays["blob"], arrays["offsets"])
