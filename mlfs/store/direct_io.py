"""Writing a whole file from a page-aligned buffer with `O_DIRECT`.

On the machines we measure, copying freshly computed bytes into the page cache costs
about ten times the CPU of handing them to the disk directly (the first touch of
page-cache memory is slow in a VM), so bulk writers that will not read their bytes back
soon write them with `O_DIRECT`. Only the page-aligned part of a file can go that way;
the tail is written through the page cache. File systems that refuse `O_DIRECT`
(tmpfs before Linux 6.6, some network and FUSE file systems) get ordinary writes.
"""

from __future__ import annotations

import errno
import fcntl
import os

ALIGN = 4096
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class DirectWriter:
    """Creates files from buffers, with `O_DIRECT` until the file system refuses it."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def create(self, path: os.PathLike[str] | str, view: memoryview, aligned: bool) -> int:
        """Create `path` (it must not exist) holding `view`; returns the open descriptor,
        which the caller closes. `aligned`: `view` starts on a page boundary."""
        pending = self.begin(path, view, aligned)
        try:
            pending.bulk()
        except BaseException:
            pending.abandon()
            raise
        return pending.finish()

    def begin(self, path: os.PathLike[str] | str, view: memoryview, aligned: bool) -> PendingFile:
        """`create` in two steps: the file is created now, its bytes are written by the
        returned object's `bulk()` (on any thread) and `finish()` (on this one)."""
        fd, direct = self._open(path, aligned)
        return PendingFile(self, fd, view, direct)

    def _open(self, path: os.PathLike[str] | str, aligned: bool) -> tuple[int, bool]:
        if self.enabled and aligned:
            try:
                return os.open(path, _CREATE | os.O_DIRECT, 0o644), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.enabled = False
        return os.open(path, _CREATE, 0o644), False


class PendingFile:
    """A file being filled from a buffer in two steps.

    `bulk()` writes the page-aligned part with `O_DIRECT`, which waits for the disk, so
    a caller may run it on another thread while it computes; `finish()`, on the thread
    that created the file, writes the rest. Only the one long system call leaves the
    creating thread: each system call a Python thread makes hands the interpreter lock
    over, and with a busy main thread those hand-offs cost more CPU than the writes
    themselves (measured: about forty futex calls for each file a helper thread wrote
    with its handful of calls).
    """

    def __init__(self, writer: DirectWriter, fd: int, view: memoryview, direct: bool) -> None:
        self.fd = fd
        self._writer = writer
        self._view = view
        self._direct = direct
        self._done = 0
        self._error: OSError | None = None

    def bulk(self) -> None:
        """Write the page-aligned part; an error is kept for `finish` to raise."""
        if not self._direct:
            return
        aligned = len(self._view) - len(self._view) % ALIGN
        try:
            while self._done < aligned:
                self._done += os.write(self.fd, self._view[self._done:aligned])
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self._writer.enabled = False  # opened with O_DIRECT but refuses such writes
            else:
                self._error = exc

    def finish(self) -> int:
        """Write what `bulk` left; returns the open descriptor, which the caller closes.
        On an error the descriptor is closed here and the error raised."""
        try:
            if self._error is not None:
                raise self._error
            size = len(self._view)
            if self._direct and self._done < size:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            while self._done < size:
                self._done += os.write(self.fd, self._view[self._done:size])
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def abandon(self) -> None:
        """Close the file without finishing it (the caller removes it)."""
        os.close(self.fd)
