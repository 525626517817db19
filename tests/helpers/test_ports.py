"""free_port never hands out a port twice, and each is free on every address."""

from __future__ import annotations

import socket

from tests.helpers.ports import free_port


def test_ports_are_distinct_and_bindable_on_all_addresses():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:  # what the EPP does: listen on every address
        s.bind(("", ports[-1]))
        s.listen()
