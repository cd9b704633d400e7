"""Ending a connection the HTTP server is stuck writing to.

hypercorn shields its socket writes from cancellation, so a download to a client that
stopped reading cannot be abandoned by cancelling the handler: the write would wait
for the client forever. Instead the connection itself is shut down, which makes the
pending write fail at once. The ASGI scope names the connection only by its address
pair, so the socket is found among this process's descriptors by that pair.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

Address = tuple[str, int]


def shut_down(client: Address, server: Address) -> bool:
    """Shut down the TCP connection between `client` and `server`; False if none was found."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            # A duplicate of the descriptor (family detected from it): shutting it down
            # ends the connection it shares with the original.
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.getpeername()[:2] == tuple(client) and sock.getsockname()[:2] == tuple(server):
                    # Linger 0: the close that follows resets the connection and drops the
                    # unsent bytes, instead of leaving them queued for a client that never reads.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)
                    return True
        except OSError:
            continue  # closed meanwhile, not connected, or another family
    log.debug("no connection %s -> %s to shut down", client, server)
    return False
