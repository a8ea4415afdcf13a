"""Where an app listens, read from /proc, and what that says about $PORT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from forge.nodeagent.listening import Listener, listening, parse_listeners, port_verdict
from forge.nodeagent.supervisor import descendants

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0
   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 4444 1 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 5555 1 0
"""


def test_parse_listeners_reads_listen_rows_of_both_tables() -> None:
    """LISTEN rows only, with their address, port and inode; IPv6 in ordinary notation."""
    assert parse_listeners(TCP) == [Listener("127.0.0.1", 8080, 1111), Listener("0.0.0.0", 5000, 2222)]
    assert parse_listeners(TCP6) == [Listener("::", 3000, 4444), Listener("::1", 80, 5555)]


@pytest.mark.parametrize(
    ("listeners", "words"),
    [
        ([Listener("0.0.0.0", 3000, 1)], ["0.0.0.0:3000", "not on $PORT=24000", "PORT environment"]),
        (
            [Listener("127.0.0.1", 5000, 1), Listener("::", 8000, 2)],
            ["127.0.0.1:5000", "[::]:8000", "$PORT=24000"],
        ),
    ],
    ids=["other-port", "two-other-ports"],
)
def test_port_verdict_names_the_given_port_and_the_bound_ones(
    listeners: list[Listener], words: list[str]
) -> None:
    """A listener only on other ports is named, with the port Forge gave."""
    why = port_verdict(24000, listeners)
    assert why is not None
    for w in words:
        assert w in why, why


@pytest.mark.parametrize(
    "listeners",
    [
        [],
        [Listener("0.0.0.0", 24000, 1)],
        [Listener("127.0.0.1", 24000, 1)],
        [Listener("0.0.0.0", 9100, 1), Listener("::", 24000, 2)],
    ],
    ids=["nothing-yet", "right", "loopback", "side-port-too"],
)
def test_port_verdict_is_silent_when_nothing_is_known_wrong(listeners: list[Listener]) -> None:
    """Nothing bound yet, or $PORT bound at any address (the node reaches loopback too): no verdict."""
    assert port_verdict(24000, listeners) is None


@pytest.fixture
def child_listening() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real child process (a grandchild, through a shell) listening on a port of its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        f"import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
        "print('up', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen(["sh", "-c", f'{sys.executable} -c "{code}"; true'], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        yield proc, port
    finally:
        for pid in descendants(proc.pid):
            os.kill(pid, 9)
        proc.kill()
        proc.wait()


def test_listening_finds_a_descendants_socket_and_not_others(
    child_listening: tuple[subprocess.Popen[bytes], int],
) -> None:
    """The sockets of the process tree are found; a socket this test holds (same namespace) is not."""
    proc, port = child_listening
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        my_port = mine.getsockname()[1]
        found = listening([proc.pid, *descendants(proc.pid)])
        assert [(x.address, x.port) for x in found] == [("127.0.0.1", port)]
        assert my_port in {x.port for x in listening([os.getpid()])}
    assert listening([proc.pid]) == []  # the shell itself holds no socket
