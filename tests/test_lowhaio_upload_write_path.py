"""What each request body chunk costs on its way to the socket, and what it must still do
(issue 13, section 1).

Every chunk of an upload passes through the connection's write: the fast path there is kept
short (no call to find that the socket is corked already, no method call to find that the
transport is not closing). These pin down what those shortcuts must not change, on a real TCP
connection whose server reads the bytes afterwards:

- the cork follows the writer's bursts exactly: none for the first large write after the writer
  gave way, one setsockopt(TCP_CORK, 1) at the second, none after it however many follow, and
  one setsockopt(TCP_CORK, 0) when the writer gives way. A body's later small chunks
  (`gather`) are gathered into writes of 64 KiB or more, which count as large; the first of
  them after the writer gave way is sent at once, and begins the burst; what is left gathered
  when the writer gives way is written then, and corks, if 16 KiB or more, just before the
  uncork. Every byte arrives, in order;
- bytes written once the transport has begun closing (close or abort) never reach the server,
  whatever their size, and the write raises nothing: they are the transport's to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from typing import Any, Iterator, List, Tuple

import pytest
from test_lowhaio_upload_cork import LARGE, CountingSocket

import lowhaio

KIB = 1024
MIB = 1024 * KIB
SMALL = 1000


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(('127.0.0.1', 0))
        server.listen(1)
        server.settimeout(10.0)
        yield server
    finally:
        server.close()


def read_to_end(server: socket.socket) -> bytes:
    conn, _ = server.accept()
    with conn:
        conn.settimeout(10.0)
        received = []
        while True:
            data = conn.recv(MIB)
            if not data:
                return b''.join(received)
            received.append(data)


async def connection_to(server: socket.socket, sock: Any = None) \
        -> Tuple[lowhaio._Connection, Any]:
    """A lowhaio connection to `server` (over `sock` if given), and its socket."""
    loop = asyncio.get_running_loop()
    host, port = server.getsockname()
    if sock is None:
        sock = lowhaio.get_nonblocking_sock()
    await loop.sock_connect(sock, (host, port))
    _, conn = await loop.create_connection(
        lambda: lowhaio._Connection(loop, ('http', host, port), host, 15.0), sock=sock)
    return conn, sock


async def lost(conn: lowhaio._Connection) -> None:
    deadline = time.monotonic() + 10
    while not conn._lost:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# The cork follows the writer's bursts
# ---------------------------------------------------------------------------------------------

# Each burst: the sizes written without giving way to the loop in between
BURSTS = {
    'one-large': [[LARGE]],
    'two-large': [[LARGE, LARGE]],
    'five-large': [[20 * KIB] * 5],
    'small-first': [[SMALL, LARGE, SMALL, LARGE, LARGE]],
    'small-only': [[SMALL] * 4],
    'alternating': [[LARGE] * 3, [LARGE], [SMALL, LARGE], [LARGE, LARGE], [LARGE] * 4],
    'many-small': [[SMALL] * 200, [SMALL] * 3, [SMALL] * 70, [LARGE, SMALL, SMALL, LARGE],
                   [SMALL] * 20],
}


class BurstModel:
    """Which writes of a burst cork the socket, as lowhaio's write and gather decide it."""

    def __init__(self, later_chunks: bool) -> None:
        self.later_chunks = later_chunks
        self.burst = self.corked = False
        self.gathered = 0

    def write(self, size: int) -> bool:
        """Whether this write corks."""
        if self.later_chunks and size < lowhaio._GATHER_BELOW:
            if not self.burst:
                self.burst = True
                return False
            self.gathered += size
            if self.gathered < lowhaio._GATHER_UP_TO:
                return False
            size = self.gathered
        self.gathered = 0
        if self.corked or size < LARGE:
            return False
        if not self.burst:
            self.burst = True
            return False
        self.corked = True
        return True

    def give_way(self) -> bool:
        """Whether the burst that ends uncorks."""
        corked = self.corked or self.gathered >= LARGE
        self.burst = self.corked = False
        self.gathered = 0
        return corked


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='TCP_CORK is Linux-only')
@pytest.mark.parametrize('later_chunks', [False, True], ids=['writes', 'later-chunks'])
@pytest.mark.parametrize('bursts', list(BURSTS.values()), ids=list(BURSTS))
def test_the_cork_follows_the_writers_bursts(bursts: List[List[int]], later_chunks: bool) -> None:
    # On asyncio's loop alone (a plain function, which conftest does not run under uvloop):
    # uvloop calls a socket object of its own, whose calls can't be counted
    asyncio.run(the_cork_follows_the_writers_bursts(bursts, later_chunks))


async def the_cork_follows_the_writers_bursts(bursts: List[List[int]],
                                              later_chunks: bool) -> None:
    # later_chunks: written as send_request writes a body's chunks after its first (small
    # ones gathered); else each written as it comes
    model = BurstModel(later_chunks)
    expected: List[int] = []

    sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.corks = []
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Room for every burst at once: no write waits, so the loop runs only between bursts
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
    sock.setblocking(False)
    sent = []
    with listener() as server:
        conn, _ = await connection_to(server, sock)
        for burst in bursts:
            for size in burst:
                data = bytes([len(sent) % 251]) * size
                sent.append(data)
                before = list(sock.corks)
                gathered = later_chunks and size < lowhaio._GATHER_BELOW
                assert (conn.gather(data) if gathered else conn.write(data)) is False
                assert sock.corks[len(before):] == ([1] if model.write(size) else [])
            await asyncio.sleep(0)  # the writer gives way: the burst ends
            if model.give_way():
                expected += [1, 0]
            assert sock.corks == expected
        conn.close()
        await lost(conn)
        received = await asyncio.get_running_loop().run_in_executor(None, read_to_end, server)
    assert received == b''.join(sent)


# ---------------------------------------------------------------------------------------------
# Nothing is sent once the transport is closing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [SMALL, 64 * KIB, 8 * MIB], ids=['1000B', '64KiB', '8MiB'])
@pytest.mark.parametrize('how', ['close', 'abort'])
async def test_bytes_written_once_the_transport_is_closing_never_reach_the_server(
        how: str, size: int) -> None:
    with listener() as server:
        conn, _ = await connection_to(server)
        assert conn.write(b'before') is False
        getattr(conn.transport, how)()
        conn.write(b'x' * size)  # the transport's to drop: no error here
        await lost(conn)
        received = await asyncio.get_running_loop().run_in_executor(None, read_to_end, server)
    assert received == b'before'
