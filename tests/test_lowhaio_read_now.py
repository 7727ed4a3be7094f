"""Response bodies read straight from the socket while it holds bytes.

On asyncio's own socket transport, a body whose last read filled its buffer reads the next piece
from the socket at once, rather than waiting a turn of the event loop for the transport to read
it (up to _READS_NOW_MAX times in a row). What users rely on, and what this checks for every
framing, loop, and how the body is driven:
- exactly the bytes the server sent, in order, however they were read;
- other tasks still get their turn during a fast download;
- a connection reset in the middle of a body is an error, never an orderly end;
- an orderly close ends a body read until close, with all its bytes;
- a server that is not ahead costs no extra read (the fast path is not tried after a short read).
- nor does the next body on the connection after a fast download (nothing is carried over).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import lowhaio
from lowhaio import HttpConnectionClosedError
from aiohttp import web

from support import Connection, client_ssl_context, open_pool, scripted_server, web_server

BODY = bytes(range(256)) * (6 * 1024 * 1024 // 256 + 7)  # 6 MiB and a bit: 48+ full reads


def framed(kind: str, body: bytes) -> bytes:
    if kind == 'content-length':
        return b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(body), body)
    if kind == 'chunked':
        size = 100_000  # chunks that do not line up with reads
        chunks = b''.join(b'%x\r\n%s\r\n' % (len(body[i:i + size]), body[i:i + size])
                          for i in range(0, len(body), size))
        return b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%s0\r\n\r\n' % chunks
    return b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n%s' % body  # until close


FRAMINGS = ['content-length', 'chunked', 'until-close']


def sends(response: bytes, then: str = 'close') -> Any:
    async def handler(conn: Connection) -> None:
        await conn.read_request()
        conn.write(response)
        await conn.drain()
        if then == 'reset':
            await asyncio.sleep(0.05)  # the bytes reach the client's socket first
            conn.reset()
        elif then == 'close':
            conn.close()
        else:
            await conn.read_until_eof()
    return handler


@contextlib.contextmanager
def counted_data_received() -> Iterator[Dict[str, int]]:
    """How many times the transport handed bytes to a connection (the pieces a body did not
    read itself)."""
    counts = {'calls': 0}
    original = lowhaio._Connection.data_received

    def data_received(self: Any, data: bytes) -> None:
        counts['calls'] += 1
        original(self, data)

    lowhaio._Connection.data_received = data_received  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        lowhaio._Connection.data_received = original  # type: ignore[method-assign]


def on_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith('uvloop')


async def read_body(body: Any, how: str, pause: float) -> List[bytes]:
    # The pause lets the server's bytes pile up in the socket first, so reads fill their buffer
    await asyncio.sleep(pause)
    if how == 'async for':
        return [piece async for piece in body]
    pieces = []
    while True:
        try:
            pieces.append(await asyncio.wait_for(body.__anext__(), 10))
        except StopAsyncIteration:
            return pieces


@pytest.mark.parametrize('how', ['async for', 'wait_for(__anext__())'])
@pytest.mark.parametrize('kind', FRAMINGS)
async def test_bytes_exact_and_read_from_the_socket_on_asyncio(kind: str, how: str) -> None:
    then = 'close' if kind == 'until-close' else 'keep'
    with counted_data_received() as counts:
        async with scripted_server(sends(framed(kind, BODY), then)) as server, \
                open_pool() as request:
            code, _, body = await request(b'GET', server.url())
            pieces = await read_body(body, how, 0.05)
    assert code == b'200'
    assert b''.join(pieces) == BODY
    if on_uvloop():
        # uvloop's transport keeps its socket: every piece comes from data_received
        assert counts['calls'] >= len(pieces)
    elif how == 'async for':
        # Most pieces were read by the body itself, not handed over by the transport. (Not so
        # when each piece is asked for in a task of its own: the loop turns in between, and
        # the transport has read the next bytes by then.)
        assert counts['calls'] < len(pieces) / 2, (counts, len(pieces))
    assert server.errors == []


@pytest.mark.parametrize('attempt', range(3))
async def test_tls_bodies_are_never_read_from_the_tcp_socket(attempt: int) -> None:
    # TLS starts on the TCP transport once it is connected: from then on that socket carries
    # records, and only the TLS layer may read it (bytes piled up, so reads are full)
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get('/', big)
    context = client_ssl_context()
    async with web_server(app, tls=True) as server, \
            open_pool(get_ssl_context=lambda: context) as request:
        code, _, body = await request(b'GET', server.url())
        pieces = await read_body(body, 'async for', 0.1)
    assert code == b'200'
    assert b''.join(pieces) == BODY


@pytest.mark.parametrize('kind', FRAMINGS)
async def test_other_tasks_run_during_a_fast_download(kind: str) -> None:
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    then = 'close' if kind == 'until-close' else 'keep'
    async with scripted_server(sends(framed(kind, BODY), then)) as server, open_pool() as request:
        code, _, body = await request(b'GET', server.url())
        await asyncio.sleep(0.05)
        task = asyncio.ensure_future(ticker())
        seen: List[Tuple[int, int]] = []
        async for piece in body:
            seen.append((ticks, len(piece)))
        stop = True
        await task
    # However fast the bytes come, the ticker runs at least every _READS_NOW_MAX + 2 pieces:
    # the body's own reads, after the bytes it had (those that came with the head, and those
    # the transport handed over while it waited)
    run = longest = 0
    for (before, _), (after, _) in zip(seen, seen[1:]):
        run = run + 1 if after == before else 0
        longest = max(longest, run)
    assert longest <= lowhaio._READS_NOW_MAX + 1
    assert sum(size for _, size in seen) == len(BODY)


@pytest.mark.parametrize('attempt', range(5))
@pytest.mark.parametrize('kind', FRAMINGS)
async def test_reset_in_the_middle_of_a_body_is_an_error(kind: str, attempt: int) -> None:
    # The server sends part of the body, then resets: the body's own read meets the reset
    # (the transport does not read while the caller is away and its queue is full)
    response = framed(kind, BODY)[:1024 * 1024]  # fewer than _READS_NOW_MAX reads past the queue
    async with scripted_server(sends(response, 'reset')) as server, open_pool() as request:
        _, _, body = await request(b'GET', server.url())
        received = 0
        with pytest.raises(HttpConnectionClosedError):
            await asyncio.sleep(0.2)  # the bytes and the reset are in the socket
            async for piece in body:
                received += len(piece)
    assert received < len(BODY)


async def resets_after_a_few_bytes(conn: Connection) -> None:
    await conn.read_request()
    conn.write(b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nfirst bytes')
    await conn.drain()
    await asyncio.sleep(0.05)
    conn.reset()


@pytest.mark.parametrize('attempt', range(3))
async def test_a_reset_met_by_the_bodys_own_read_is_an_error(attempt: int) -> None:
    # The order of events made certain: the transport does not read while the reset arrives,
    # and the last read is taken as full, so the body's own read is the one that meets it.
    # It must report it as the transport does; swallowed, the socket would next read as an
    # orderly end, and a body read until close would end as if complete.
    async with scripted_server(resets_after_a_few_bytes) as server, open_pool() as request:
        _, _, body = await request(b'GET', server.url())
        conn = body._conn
        conn.transport.pause_reading()
        await asyncio.sleep(0.2)  # the reset is in the socket
        conn._last_full = True
        conn.transport.resume_reading()  # the transport reads on the loop's next turn only
        pieces = []
        with pytest.raises(HttpConnectionClosedError) as caught:
            async for piece in body:
                pieces.append(piece)
    assert b''.join(pieces) == b'first bytes'
    assert isinstance(caught.value.__cause__, ConnectionResetError)


@pytest.mark.parametrize('attempt', range(5))
async def test_orderly_close_ends_a_body_read_until_close(attempt: int) -> None:
    async with scripted_server(sends(framed('until-close', BODY), 'close')) as server, \
            open_pool() as request:
        _, _, body = await request(b'GET', server.url())
        await asyncio.sleep(0.1)  # the body and the FIN are in the socket
        assert b''.join([piece async for piece in body]) == BODY


async def trickle(conn: Connection) -> None:
    await conn.read_request()
    conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 4000\r\n\r\n')
    for _ in range(40):
        conn.write(b'x' * 100)
        await conn.drain()
        await asyncio.sleep(0.002)


async def test_a_server_that_is_not_ahead_costs_no_extra_read() -> None:
    # After a read that did not fill its buffer, the body waits for the loop at once: no read
    # of an empty socket (and its BlockingIOError) per piece. Every read is then the
    # transport's, and each one that got bytes handed them over.
    recvs = {'calls': 0}
    with counted_data_received() as counts:
        async with scripted_server(trickle) as server, open_pool() as request:
            _, _, body = await request(b'GET', server.url())
            transport = body._conn.transport
            if not on_uvloop():
                transport._sock = CountingSocket(transport._sock, recvs)
            assert b''.join([piece async for piece in body]) == b'x' * 4000
    if not on_uvloop():
        assert 0 < recvs['calls'] <= counts['calls']


class CountingSocket:
    """A transport's socket, its recv calls counted (whoever makes them)."""

    def __init__(self, sock: Any, counts: Dict[str, int]) -> None:
        self._sock = sock
        self._counts = counts

    def recv(self, size: int) -> bytes:
        self._counts['calls'] += 1
        return self._sock.recv(size)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def fills_whole_reads(n: int) -> int:
    # A body size whose response is n whole reads: if the server is ahead, the last read is full
    head = b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % (n * lowhaio._READ_SIZE)
    return n * lowhaio._READ_SIZE - len(head)


SIZES_AFTER_A_FAST_DOWNLOAD = [fills_whole_reads(n) + delta
                               for n in (2, 3, 4, 8) for delta in (0, 0, -64, 64)]


async def test_a_fast_download_leaves_no_hint_for_the_next_body() -> None:
    # A body whose last read filled its buffer must not send the connection's next body to
    # read its socket before the loop says there is anything: that read would only meet an
    # empty socket. Each download's sizes differ, so its last read ends in different places.
    async def downloads_then_trickles(conn: Connection) -> None:
        for size in SIZES_AFTER_A_FAST_DOWNLOAD:
            await conn.read_request()
            conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % size + BODY[:size])
            await conn.drain()
            await conn.read_request()
            conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n')
            await conn.drain()
            await asyncio.sleep(0.05)
            conn.write(b'y' * 100)
            await conn.drain()

    async with scripted_server(downloads_then_trickles) as server, open_pool() as request:
        for size in SIZES_AFTER_A_FAST_DOWNLOAD:
            _, _, body = await request(b'GET', server.url())
            assert b''.join(await read_body(body, 'async for', 0.05)) == BODY[:size]
            _, _, body = await request(b'GET', server.url())
            recvs = {'calls': 0}
            with counted_data_received() as counts:
                if not on_uvloop():
                    transport = body._conn.transport
                    transport._sock = CountingSocket(transport._sock, recvs)
                assert b''.join([piece async for piece in body]) == b'y' * 100
                if not on_uvloop():
                    transport._sock = transport._sock._sock
            if not on_uvloop():
                # Every read of the socket got bytes, and handed them over (uvloop's transport
                # keeps its socket, and no body reads it)
                assert recvs['calls'] <= counts['calls'] == 1, (size, recvs, counts)
    assert server.connections == 1
    assert server.errors == []
