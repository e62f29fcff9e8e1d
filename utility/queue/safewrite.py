"""Status writes into a jobs file that other programs write at the same time.

Who else writes the file, and how this module keeps their bytes:

* **Appenders** (``echo ... >> Jobs.csv``, a script holding the file open with O_APPEND).
  A write replaces the file: the new text goes to a temporary file that is swapped with
  the jobs file in one step (``renameat2(RENAME_EXCHANGE)``). Before the swap the queue
  opened the old file and read it to its end (L bytes). An append that lands on the old
  file after that read (its writer opened it before the swap) is not lost: the queue keeps
  the old file open and *watches* it; whatever grows past L is appended to the current
  jobs file (whole lines; a partial last line once its writer is done). The watch ends when
  no process has the old file open for writing any more (checked with a read lease, which
  the kernel grants only then; the old file has no name left, so nobody can open it
  again), or after WATCH_SECS where leases are not available (NFS, a file owned by
  someone else).
* **Programs that save by rename** (``sed -i``, most editors, "move away, write anew").
  The swap is atomic and tells what it swapped out: if that is not the file the queue read
  (a save landed between the read and the swap), the queue swaps back at once, so the
  saved file is at the path again, and redoes its change on it. Anything appended to the
  queue's version during those microseconds is appended to the saved file. Without
  RENAME_EXCHANGE (NFS and other file systems without it) the queue checks the inode right
  before a plain rename; a save in that window of a few microseconds is lost.
* **The file is missing** (deleted, or moved away by an editor that has not written the
  new one yet): the swap fails (RENAME_EXCHANGE needs both names) and nothing is created;
  the caller gets Missing and tries again later.

A save made from a copy read *before* someone else's change (an editor writing its buffer,
``sed -i`` racing an append) overwrites that change; no program can prevent that without
the writers cooperating. Scripts may hold the queue's lock (``flock .Jobs.csv.lock ...``)
to edit the file without racing the queue. A symlinked jobs file is written through: the
link stays, its target is replaced (the lock sits next to the target).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Optional

from utility.queue.errors import QueueError
from utility.queue.jobsfile import STATUSES, Line, locked, parse_line
from utility.queue.parsecache import ParseCache

WATCH_SECS = 10.0          # how long an old file is watched where leases are unavailable
MAX_WATCHES = 256          # open old files at most (the oldest is drained and dropped)
ATTEMPTS = 5               # swaps per update before giving up for now (Busy)

Change = tuple[tuple[str, int], str, Optional[tuple[str, ...]]]


class Missing(QueueError):
    """The jobs file does not exist right now."""


class Busy(QueueError):
    """The file kept being replaced while the queue tried to write; try again later."""


def real_path(path: str) -> str:
    """Where writes go: the target of a symlinked jobs file (the link itself stays)."""
    return os.path.realpath(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):         # pragma: no cover - glibc < 2.28 / other libc
    _renameat2 = None


def exchange(a: str, b: str) -> None:
    """Atomically swap the files named a and b (both must exist). OSError(ENOSYS/EINVAL)
    where the system or file system cannot."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 not available")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), b)


def _fsync_dir(d: str) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _read_all(fd: int, start: int = 0) -> bytes:
    chunks, pos = [], start
    while True:
        b = os.pread(fd, 1 << 20, pos)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        pos += len(b)


class _Watch:
    """A replaced file still open by someone: bytes past `offset` belong in the jobs file.
    `data` (what the queue read) tells appends from an in-place rewrite (truncate + write:
    nano, VS Code, `cat > Jobs.csv`), which can change bytes before `offset`."""

    def __init__(self, fd: int, offset: int, data: bytes = b""):
        self.fd, self.offset, self.since = fd, offset, time.monotonic()
        self.head, self.tail = data[:512], data[-512:]
        self.read_to = offset            # where `tail` ends
        self.rewritten = False
        self.writers = False             # the last probe saw a writer

    def check(self, size: int) -> bool:
        """False when the file was rewritten in place since the queue read it."""
        if not self.rewritten:
            if size < self.offset or os.pread(self.fd, len(self.head), 0) != self.head or \
                    os.pread(self.fd, len(self.tail), self.read_to - len(self.tail)) != self.tail:
                self.rewritten = True
        return not self.rewritten

    def probe(self) -> Optional[bool]:
        """True: no process can write this file any more; False: some process has it open
        for writing; None: cannot tell (no leases here, or the file still has a name)."""
        try:
            if os.fstat(self.fd).st_nlink == 0:
                # deliver a lease break (impossible: no name left) as an ignored signal
                fcntl.fcntl(self.fd, fcntl.F_SETSIG, signal.SIGURG)
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                self.writers = False
                return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.writers = True
                return False                   # open for writing somewhere
        return None

    def writers_gone(self) -> bool:
        p = self.probe()
        if p is None:
            self.writers = False               # unknown: watched for WATCH_SECS
            return time.monotonic() - self.since > WATCH_SECS
        return p

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class JobsFile:
    """Compare-and-swap status updates of one jobs file, safe for concurrent writers (see
    the module doc). Call drain() now and then (the queue loop does, every ~20 ms) and
    close() at the end, so late appends to replaced files are carried over."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.watches: list[_Watch] = []
        self.cache = ParseCache(self.path)      # shared with the queue loop's reads
        self.can_exchange = True
        self.last_sig: Optional[tuple[int, int, int]] = None   # the file as we left it
        self.swapped_back = 0                                  # saves we put back (stats)
        self.carried = 0                                       # bytes carried over (stats)
        self.conflicts: list[str] = []     # in-place rewrites kept aside (the caller says so)

    # -- the update ---------------------------------------------------------------------
    def update(self, changes: list[Change]) -> list[tuple[bool, Optional[Line]]]:
        """Apply [(key, new status, expected current statuses or None)] in one write: each
        job (command, occurrence) gets its new status only when its current status is one
        of `expect` (a status edited by hand meanwhile wins). Returns per change (changed,
        the job's line or None when it is not in the file). Raises Missing / Busy."""
        if not changes:
            return []
        real = real_path(self.path)
        with locked(real):
            self._drain(real, locked_already=True)
            for _ in range(ATTEMPTS):
                try:
                    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO must not block
                except FileNotFoundError:
                    raise Missing(f"jobs file {self.path} does not exist")
                try:
                    done, results = self._attempt(real, fd, changes)
                except BaseException:
                    os.close(fd)
                    raise
                if done:
                    return results
            raise Busy(f"jobs file {self.path} was replaced {ATTEMPTS} times while the queue "
                       f"tried to write it")

    def _attempt(self, real: str, fd: int, changes: list[Change]):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise QueueError(f"jobs file {self.path} is not a regular file any more")
        data = _read_all(fd)
        text = data.decode("utf-8", "surrogateescape")
        lines = self.cache.parse(text)
        by_key = {ln.key: ln for ln in lines if ln.kind == "job"}
        new_status: dict[int, str] = {}
        results: list[tuple[bool, Optional[Line]]] = []
        for key, new, expect in changes:
            assert new in STATUSES
            target = by_key.get(key)
            if target is None:
                results.append((False, None))
                continue
            cur = new_status.get(id(target), target.status)
            if expect is not None and cur not in expect:
                results.append((False, target))
                continue
            new_status[id(target)] = new
            results.append((True, target))
        if not any(new_status.get(id(ln), ln.status) != ln.status for ln in lines):
            os.close(fd)
            return True, results
        new_lines = list(lines)
        for i, ln in enumerate(lines):
            if id(ln) in new_status and new_status[id(ln)] != ln.status:
                nl = parse_line(ln.with_status(new_status[id(ln)]), ln.lineno, self.path)
                nl.occurrence, nl.ident = ln.occurrence, ln.ident
                new_lines[i] = nl
        out_text = "".join(ln.raw for ln in new_lines)
        out = out_text.encode("utf-8", "surrogateescape")
        d = str(Path(real).parent)
        tfd, tmp = tempfile.mkstemp(prefix=f".{Path(real).name}.", suffix=".tmp",
                                    dir=d)
        mine = os.fstat(tfd).st_ino
        try:
            with os.fdopen(tfd, "wb") as f:
                f.write(out)
                f.flush()
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                os.fsync(f.fileno())
            swapped_out = self._swap(tmp, real, st)
        except BaseException:
            try:
                if os.lstat(tmp).st_ino == mine:     # never someone else's file
                    os.unlink(tmp)
            except OSError:
                pass
            raise
        if swapped_out is None:
            self._forget_old(fd)
            return False, results
        # the old file has no name now; whoever still has it open may append to it
        self._watch(fd, len(data), data)
        self.cache.set(out_text, new_lines)
        _fsync_dir(d)
        try:
            st2 = os.stat(real)
            self.last_sig = (st2.st_ino, st2.st_size, st2.st_mtime_ns)
        except OSError:
            self.last_sig = None
        return True, results

    def _swap(self, tmp: str, real: str, st: os.stat_result) -> Optional[bool]:
        """Put tmp at real. True when the file we read was the one replaced; None when a
        save had replaced it meanwhile (it is put back; the caller retries)."""
        try:
            now = os.stat(real)          # (the temp file is written and synced by now)
        except FileNotFoundError:
            raise Missing(f"jobs file {self.path} does not exist")
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            os.unlink(tmp)
            return None                  # replaced since we read it: read again
        if self.can_exchange:
            try:
                exchange(tmp, real)
            except FileNotFoundError:
                raise Missing(f"jobs file {self.path} does not exist")
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
                self.can_exchange = False
        if not self.can_exchange:
            os.replace(tmp, real)        # (a save in the microseconds since the stat is lost)
            return True
        out = os.lstat(tmp)
        if (out.st_ino, out.st_dev) == (st.st_ino, st.st_dev):
            os.unlink(tmp)                     # the old file: gone from the directory
            return True
        # someone saved the file after our read: give their file its name back
        try:
            exchange(tmp, real)
        except OSError as e:
            # our version was moved away (an editor saving again) in those microseconds
            self._restore(tmp, real)
            raise Busy(f"jobs file {self.path} was replaced twice while the queue wrote it "
                       f"({e.strerror})")
        self.swapped_back += 1
        ours = os.open(tmp, os.O_RDONLY)
        os.unlink(tmp)
        size = os.fstat(ours).st_size
        # whoever opened our version in those microseconds appended at its end
        self._watch(ours, size, _read_all(ours)[:size])
        return None

    def _restore(self, tmp: str, real: str) -> None:
        """The swap back failed (the path was moved away in those microseconds): give the
        saved file at tmp the name back if it is free, else keep it next to it."""
        try:
            os.link(tmp, real)
            os.unlink(tmp)
            return
        except OSError:
            pass
        side = f"{real}.conflict-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.rename(tmp, side)
        self.conflicts.append(side)

    def _forget_old(self, fd: int) -> None:
        os.close(fd)

    # -- late appends to replaced files -----------------------------------------------------
    def _watch(self, fd: int, offset: int, data: bytes) -> None:
        self.watches.append(_Watch(fd, offset, data))
        while len(self.watches) > MAX_WATCHES:
            w = self.watches.pop(0)
            try:
                self._carry(w, real_path(self.path), final=True)
            except (QueueError, OSError):
                pass
            w.close()

    def drain(self) -> None:
        """Carry bytes appended to replaced files over; stop watching files nobody can
        write any more. Cheap when nothing happened (one fstat per watched file)."""
        if self.watches:
            self._drain(real_path(self.path))

    def _drain(self, real: str, locked_already: bool = False) -> None:
        keep = []
        grown = [w for w in self.watches if os.fstat(w.fd).st_size != w.offset]
        if grown and not locked_already:
            with locked(real):
                self._drain(real, locked_already=True)
            return
        for w in self.watches:
            gone = w.writers_gone()
            try:
                self._carry(w, real, final=gone)
            except (Missing, OSError):
                keep.append(w)                 # the jobs file is missing: later
                continue
            if gone and (w.rewritten or os.fstat(w.fd).st_size <= w.offset):
                if w.rewritten:
                    self._keep_rewritten(w, real)
                w.close()
            else:
                keep.append(w)
        self.watches = keep

    def _keep_rewritten(self, w: _Watch, real: str) -> None:
        """Someone rewrote the replaced file in place (their save raced the queue's write):
        keep their version next to the jobs file and say so."""
        side = f"{real}.conflict-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        with open(side, "wb") as f:
            f.write(_read_all(w.fd))
        self.conflicts.append(side)

    def _carry(self, w: _Watch, real: str, final: bool) -> None:
        size = os.fstat(w.fd).st_size
        if size == w.offset or not w.check(size):
            return
        extra = _read_all(w.fd, w.offset)
        if not final:
            cut = extra.rfind(b"\n") + 1       # whole lines while the writer may go on
            extra = extra[:cut]
        if not extra:
            return
        try:
            afd = os.open(real, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            raise Missing(f"jobs file {self.path} does not exist")
        try:
            os.write(afd, extra)
            os.fsync(afd)
            st = os.fstat(afd)
        finally:
            os.close(afd)
        w.offset += len(extra)
        self.carried += len(extra)
        self.last_sig = (st.st_ino, st.st_size, st.st_mtime_ns)

    def busy(self) -> bool:
        """A replaced file is still open for writing somewhere (known from a lease probe);
        what that process appends is carried over only while this object is drained."""
        return any(w.writers for w in self.watches)

    def close(self, wait: float = 2.0) -> None:
        """Drain until no replaced file is open for writing (at most `wait` s), then carry
        over what is left and let go."""
        end = time.monotonic() + wait
        while self.watches:
            try:
                self.drain()                   # (probes who still writes)
            except OSError:
                pass
            if not self.busy() or time.monotonic() >= end:
                break
            time.sleep(0.01)
        for w in self.watches:
            try:
                self._carry(w, real_path(self.path), final=True)
                if w.rewritten:
                    self._keep_rewritten(w, real_path(self.path))
            except (QueueError, OSError):
                pass
            w.close()
        self.watches = []


def update_many(path: str, changes: list[tuple[tuple[str, int], str, Optional[tuple[str, ...]]]]
                ) -> list[tuple[bool, Optional[Line]]]:
    """Apply several status changes [(key, new, expect)] in one locked write.

    For each job identified by (command, occurrence): re-read the file, find the line, and
    change only its status field, and only when its current status is one of `expect`
    (compare-and-swap: a status the user edited by hand in the meantime wins).  Returns per
    change (changed, current line or None when the job is no longer in the file, e.g.
    commented out or deleted).  One-shot: appends racing the write are carried over for up
    to a second; the queue loop keeps a safewrite.JobsFile instead (see safewrite)."""
    jf = JobsFile(path)
    try:
        return jf.update(changes)
    finally:
        jf.close(wait=1.0)
