"""Detach from the terminal once the mount is live, reporting mount errors back to it;
tell systemd (Type=notify) when the mount is ready and when it stops.

The parent waits on a pipe: the child writes "ok" when the filesystem is mounted or
"error: <message>" when it failed, so the user sees mount errors on their terminal and
`mlfs mount` exits non-zero without leaving anything mounted. Lines "note: <message>"
before that are printed as they are (what the user should know about a mount that
goes ahead).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Detached:
    """The child's line to the terminal the user started `mlfs mount` from."""

    _fd: int
    _reported: bool = False

    def note(self, message: str) -> None:
        """Printed on that terminal (once the verdict comes); the mount goes on."""
        if not self._reported:
            os.write(self._fd, b"note: " + " ".join(message.split()).encode() + b"\n")

    def report(self, error: str | None) -> None:
        """The verdict: mounted (None) or the error; only the first counts."""
        if self._reported:
            return
        self._reported = True
        line = "ok" if error is None else f"error: {error}"
        os.write(self._fd, line.encode() + b"\n")
        os.close(self._fd)


def daemonize(log_path: Path) -> Detached:
    """Fork; the parent exits with the child's verdict, the child gets its `Detached` line."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        chunks = []
        while data := os.read(read_fd, 4096):
            chunks.append(data)
        lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
        while lines and lines[0].startswith("note: "):
            print(lines.pop(0)[6:], file=sys.stderr)
        message = lines[0] if lines else ""
        if message == "ok":
            sys.stderr.flush()
            os._exit(0)
        if message.startswith("error: "):
            print(f"mlfs: {message[7:]}", file=sys.stderr)
        else:
            print(f"mlfs: the mount process exited before the mount was ready; see {log_path}", file=sys.stderr)
        os._exit(1)

    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    os.chdir("/")
    return Detached(write_fd)


def notify_systemd(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd's notification socket, if there is one.

    The sd_notify protocol is one datagram on the Unix socket named by $NOTIFY_SOCKET
    (a leading "@" means the abstract namespace); without the variable this does nothing.
    """
    import socket

    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
