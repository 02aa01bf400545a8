"""systemd's readiness protocol (sd_notify): a datagram to ``$NOTIFY_SOCKET``.

Without ``NOTIFY_SOCKET`` (not started by systemd as ``Type=notify``) every
call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable


def sd_notify(*fields: str) -> bool:
    """Send ``READY=1``, ``STATUS=…``, ``STOPPING=1``…; True if a socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.sendto("\n".join(fields).encode(), address)
        return True
    return False


def with_systemd(notify: Callable[[str], None]) -> Callable[[str], None]:
    """Wrap the daemon's readiness callback ("ok" or a reason) so systemd hears it too."""

    def both(message: str) -> None:
        if message == "ok":
            sd_notify("READY=1", "STATUS=mounted", f"MAINPID={os.getpid()}")
        else:
            sd_notify(f"STATUS={message}")
        notify(message)

    return both
