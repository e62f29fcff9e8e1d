"""Fast recursive listing of image files: ``os.scandir`` with the directory-entry types the file system
reports, so no ``stat`` per file (one per directory, and one per symlink to follow it).

Same result as the former ``rglob('*')`` + ``is_file()`` listing: every regular file (or symlink to
one) below ``folder`` whose extension is one of ``formats`` (compared case-insensitively, ``.nii.gz``
style double extensions included), in ``pathlib`` sort order; symlinked directories are not entered;
folders that cannot be read are skipped. Where the file system reports no entry type (``DT_UNKNOWN``)
``os.DirEntry`` falls back to ``lstat`` by itself. One difference: a file in a folder that can be
listed but not entered (mode ``r--``) is listed (the loader then reports it unreadable) where the
former listing stopped with a traceback.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional, Sequence

from utility.data.compact import PathArray, join_root
from utility.data.io import nifti_slices
from utility.errors import UserError

_IGNORED = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)  # pathlib's "is not a file" errors

# (path, inode, mtime_ns, ctime_ns) of a directory a listing looked at (or a file the index read):
# a directory's times change when an entry is added, removed or renamed in it (and on chmod)
Stamp = tuple[str, int, int, int]


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class _Walk:
    def __init__(self, formats: Sequence[str], stamps: Optional[list[Stamp]]) -> None:
        self.fmts = {f.lower() for f in formats}
        self.double = tuple(f for f in self.fmts if f.count(".") > 1)  # .nii.gz
        self.singles = {f for f in self.fmts if f.startswith(".") and f.count(".") == 1 and len(f) > 1}
        self.ends = tuple(self.singles) + self.double
        self.stamps = stamps
        self.out: list[str] = []

    def wanted(self, name: str) -> bool:
        i = name.rfind(".")
        if 0 < i < len(name) - 1 and name[i:].lower() in self.fmts:
            return True
        return bool(self.double) and name.lower().endswith(self.double)

    def matching(self, names: list[str]) -> list[str]:
        """``[n for n in names if self.wanted(n)]`` in one comprehension (the hot loop). A name ends
        with a one-dot format ``.png`` exactly when its pathlib suffix is ``.png``, unless the whole
        name is ``.png`` (a hidden file without suffix); other formats never equal a suffix."""
        ends, singles = self.ends, self.singles
        return [n for n in names if (low := n.lower()).endswith(ends) and low not in singles]

    def walk(self, path: str, rel: str) -> None:
        if self.stamps is not None:
            self.stamps.append(stamp(path))  # before reading: a later change shows next time
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except PermissionError:
            return
        try:  # regular files by their entry type (no system call where the type is reported)
            regular = [e.is_file(follow_symlinks=False) for e in entries]
        except OSError:
            regular = [False] * len(entries)
        files = self.matching([e.name for e, r in zip(entries, regular) if r])
        subdirs: dict[str, str] = {}
        for e, r in zip(entries, regular):  # the few others: folders, symlinks, unknown types
            if r:
                continue
            name = e.name
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in _IGNORED:
                    raise
                is_dir = False
            if is_dir:
                subdirs[name] = e.path
            elif self.wanted(name) and _is_file(e):
                files.append(name)
        if not subdirs:  # pathlib order: by name, a folder's content at the folder's place
            files.sort()
            self.out.extend([rel + n for n in files] if rel else files)
            return
        for name in sorted(files + list(subdirs)):
            if name in subdirs:
                self.walk(subdirs[name], f"{rel}{name}/")
            else:
                self.out.append(rel + name)


def _is_file(e: os.DirEntry) -> bool:
    try:
        return e.is_file()  # no system call for a plain file; follows a symlink
    except OSError as exc:
        if exc.errno in _IGNORED:
            return False
        raise UserError(f"cannot check {e.path}: {exc}") from None


def list_files(folder: Path, formats: Sequence[str], stamps: Optional[list[Stamp]] = None) -> PathArray:
    """Files under ``folder`` with one of ``formats``, sorted as ``sorted(list_of_paths)`` sorts;
    ``stamps`` (if given) receives a :data:`Stamp` per directory visited."""
    w = _Walk(formats, stamps)
    root = str(Path(folder))
    w.walk(root, "")
    return PathArray.from_strings(w.out, root)


def expand_volumes(files: PathArray, slice_axis: Optional[int], stamps: Optional[list[Stamp]] = None) -> PathArray:
    """With ``slice_axis`` every NIfTI volume becomes one entry per slice (``file.nii.gz::<k>``);
    a volume whose header cannot be read stays one entry (the loader reports it). ``stamps``
    receives each volume's :data:`Stamp` (its slice count changes with its content)."""
    if slice_axis is None:
        return files
    rels = files.rel_strings()
    vols = [i for i, r in enumerate(rels) if r.lower().endswith((".nii", ".nii.gz"))]
    if not vols:
        return files
    out: list[str] = []
    last = 0
    for i in vols:
        out.extend(rels[last:i])
        last = i + 1
        full = join_root(files.root, rels[i])
        if stamps is not None:
            stamps.append(stamp(full))
        try:
            out.extend(rels[i] + str(s)[len(full):] for s in nifti_slices(Path(full), slice_axis))
        except Exception as exc:  # unreadable header: keep the file, the loader reports it
            out.append(rels[i])
            print(f"warning: cannot read NIfTI header of {full}: {exc}")
    out.extend(rels[last:])
    return PathArray.from_strings(out, files.root)


def find_images(folder: Path, formats: Sequence[str], slice_axis: Optional[int] = None,
                stamps: Optional[list[Stamp]] = None) -> PathArray:
    """All files under ``folder`` (recursive) whose extension is one of ``formats``, sorted; with
    ``slice_axis`` a NIfTI volume becomes one entry per slice (``file.nii.gz::<k>``)."""
    return expand_volumes(list_files(folder, formats, stamps), slice_axis, stamps)
