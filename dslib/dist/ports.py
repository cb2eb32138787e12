"""Free TCP ports on this machine, for a rendezvous (torchrun's master, a one-rank group)."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. It is released before the caller binds it, so another
    process can take it in between: launchers retry on EADDRINUSE (dslib.dist.launch)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
