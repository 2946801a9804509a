"""Serving the app: the listening socket, the address with its token, uvicorn, Ctrl-C.

The socket is bound here rather than by uvicorn so that a busy port is one clear line and
`--port 0` can pick a free one, whose number is then printed. uvicorn's own access log is off:
the app's `Guard` writes one line per request without the token.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import sys

from cxr.core.errors import CxrError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; the warning to print for another one with `allow_remote`;
    CxrError for another one without it."""
    if is_local(host):
        return None
    if not allow_remote:
        raise CxrError(
            f"--host {host} would serve credentialed MIMIC-CXR data to other machines; "
            "keep the default 127.0.0.1 (e.g. with an SSH tunnel) or add --allow-remote"
        )
    return (
        f"warning: serving on {host}: anyone who can reach this machine and has the token sees "
        "the images and reports, over unencrypted HTTP; the data use agreement forbids sharing "
        "them"
    )


def new_token() -> str:
    return secrets.token_urlsafe(24)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CxrError(
            f"{host}:{port}: cannot listen ({exc.strerror or exc}); choose another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def serve(app, sock: socket.socket) -> None:
    """Run uvicorn on the bound socket until Ctrl-C (uvicorn shuts down, then re-raises it)."""
    import uvicorn

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    access = logging.getLogger("cxr.view.access")
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run(sockets=[sock])
