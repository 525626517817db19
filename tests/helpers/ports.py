"""Free TCP ports for the servers tests start.

The kernel reports a port free once the probing socket closes, so two calls in a row can
return the same port when the first caller's server has not bound it yet (a worker still
starting, the EPP's metrics listener): CI once saw the EPP fail with "address already in use"
on a port handed out twice. This process never hands a port out twice, and a port must be
free on every address (the EPP listens on all of them; the routing replicas on 127.0.0.x).
"""

from __future__ import annotations

import socket

_given: set[int] = set()


def free_port() -> int:
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no free port not handed out before")
