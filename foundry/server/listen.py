"""Listening sockets for foundry's two web servers (`foundry serve`, `foundry dashboard`):
bound before the app starts, so a port in use is one clear error, never a traceback from
inside uvicorn."""

from __future__ import annotations

import socket

from foundry.errors import UsageError


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP. With proto 0, a response's headers and body went out as two writes
    # held ~40 ms apart by Nagle and delayed ACKs: measured, an L2 hit took 44 ms, not 1.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "pick another --port (or stop what is using it)",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
