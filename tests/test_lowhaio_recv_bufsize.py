"""`recv_bufsize` (issue 9, item 3): when a caller passes it, no response body piece is longer.

For every response framing (content-length arriving whole with the head or streamed after it,
chunked in small or large chunks, read until close), over http and https, bodies from 0 bytes
to 4 MiB and `recv_bufsize` from 1 byte to 1 MiB: every piece is at most `recv_bufsize` bytes
and none is empty, the pieces join to the exact body, and a connection read to the end is
reused. Without `recv_bufsize`, pieces come as the transport delivers them (larger than 16 KiB
for a 4 MiB body: the default path is not capped). Leaving a body early, by `aclose()` or by
dropping it, closes its connection, capped or not. A `recv_bufsize` that is not a positive
integer is refused by `Pool()` itself.

Servers: nginx for content-length bodies streamed from files, aiohttp.web for chunked bodies
(one chunk per write), and a raw asyncio server, with or without TLS, for bodies read until
close and for heads and bodies sent in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import time
from typing import AsyncIterator, Awaitable, Callable, Dict, List, Optional, Set, Tuple

import pytest
from aiohttp import web
from support import Nginx, client_ssl_context, server_ssl_context, web_server

import lowhaio
from lowhaio import HttpError, Pool

KIB = 1024
MIB = 1024 * KIB

RECV_BUFSIZES = [1, 7, 1024, 16384, 65536, MIB]
SCHEMES = ['http', 'https']

# More than the transport's 256 KiB read-ahead and not a multiple of any cap; and 4 MiB
MEDIUM = 300 * KIB + 7
LARGE = 4 * MIB
SIZES = {
    # framing: body sizes in bytes
    'length-whole': [0, 1, 7, 1000, 20000],
    'length-streamed': [70000, MEDIUM, LARGE],
    'chunked-small': [0, 1, 1000, 20000, MEDIUM, LARGE],
    'chunked-large': [0, 20000, MEDIUM, LARGE],
    'until-close': [0, 1, 1000, 20000, MEDIUM, LARGE],
}
FRAMINGS = list(SIZES)
STREAMED_FRAMINGS = ['length-streamed', 'chunked-small', 'chunked-large', 'until-close']
SMALL_CHUNK = 1000
LARGE_CHUNK = MIB
# Keeps the 1- and 7-byte caps to bodies that take well under a second to hand over
MAX_PIECES = 100_000

_DATA = random.Random(3).randbytes(LARGE)


def body_of(size: int) -> bytes:
    return _DATA[:size]


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------

def chunked_app() -> web.Application:
    """GET /small/N or /large/N: N body bytes, one chunk per write of SMALL_CHUNK or
    LARGE_CHUNK bytes."""
    async def chunked(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info['size'])
        chunk = SMALL_CHUNK if request.match_info['kind'] == 'small' else LARGE_CHUNK
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, size, chunk):
            await response.write(_DATA[start:min(start + chunk, size)])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get('/{kind:small|large}/{size:\\d+}', chunked)
    return app


class RawServer:
    """GET /whole/N: content-length, head and body in one write, keep-alive.
    GET /close/N: no content-length, the body in 64 KiB writes, then an orderly close."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.port = 0
        self.closed_by_client = 0

    def url(self, path: str) -> str:
        return '%s://127.0.0.1:%d%s' % ('https' if self.tls else 'http', self.port, path)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b'\r\n\r\n')
                except asyncio.IncompleteReadError:
                    return  # the client closed an idle connection
                kind, size = head.split(b' ', 2)[1].decode().strip('/').split('/')
                body = body_of(int(size))
                if kind == 'whole':
                    writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s'
                                 % (len(body), body))
                    await writer.drain()
                    continue
                writer.write(b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n')
                for start in range(0, len(body), 65536):
                    writer.write(body[start:start + 65536])
                    await writer.drain()
                return
        except ConnectionError:
            self.closed_by_client += 1
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(tls: bool) -> AsyncIterator[RawServer]:
    server = RawServer(tls)
    tcp_server = await asyncio.start_server(
        server.handle, '127.0.0.1', 0, ssl=server_ssl_context() if tls else None)
    server.port = tcp_server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        tcp_server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tcp_server.wait_closed(), 2.0)


def nginx_file(nginx: Nginx, size: int) -> str:
    name = 'recv-bufsize-%d' % (size,)
    path = nginx.root / name
    if not path.exists():
        path.write_bytes(body_of(size))
    return '/' + name


@contextlib.asynccontextmanager
async def framing_urls(framing: str, scheme: str, nginx: Nginx) -> AsyncIterator[
        Callable[[int], str]]:
    """A function from a body size to the URL that serves it with `framing`."""
    tls = scheme == 'https'
    if framing == 'length-streamed':
        yield lambda size: (nginx.tls_url if tls else nginx.url)(nginx_file(nginx, size))
    elif framing in ('chunked-small', 'chunked-large'):
        kind = framing.split('-')[1]
        async with web_server(chunked_app(), tls=tls) as server:
            yield lambda size: server.url('/%s/%d' % (kind, size))
    else:
        async with raw_server(tls) as raw:
            kind = 'whole' if framing == 'length-whole' else 'close'
            yield lambda size: raw.url('/%s/%d' % (kind, size))


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------

class Sockets:
    """A `get_sock` that remembers the sockets it made, by inode, to tell how many
    connections were opened and whether each is still open (uvloop may duplicate a socket's
    descriptor; the inode is the same)."""

    def __init__(self) -> None:
        self.inodes: List[str] = []

    def get_sock(self, family: int = socket.AF_INET) -> socket.socket:
        sock = lowhaio.get_nonblocking_sock(family)
        self.inodes.append(os.readlink('/proc/self/fd/%d' % (sock.fileno(),)))
        return sock

    @property
    def created(self) -> int:
        return len(self.inodes)

    def still_open(self) -> int:
        open_now: Set[str] = set()
        for fd in os.listdir('/proc/self/fd'):
            with contextlib.suppress(OSError):
                open_now.add(os.readlink('/proc/self/fd/' + fd))
        return sum(1 for inode in self.inodes if inode in open_now)

    async def wait_until_open(self, expected: int, timeout: float = 2.0) -> int:
        deadline = time.monotonic() + timeout
        while self.still_open() > expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.still_open()


Request = Callable[..., Awaitable[Tuple[bytes, Tuple[Tuple[bytes, bytes], ...],
                                        AsyncIterator[bytes]]]]


@contextlib.asynccontextmanager
async def open_pool(sockets: Sockets, recv_bufsize: Optional[int]) -> AsyncIterator[Request]:
    options: Dict[str, object] = {} if recv_bufsize is None else {'recv_bufsize': recv_bufsize}
    request, close = Pool(get_sock=sockets.get_sock, get_ssl_context=client_ssl_context,
                          **options)  # type: ignore[arg-type]
    try:
        yield request
    finally:
        await close()


async def pieces_of(request: Request, url: str) -> List[bytes]:
    code, _, body = await asyncio.wait_for(request(b'GET', url), 10)
    assert code == b'200'
    return [piece async for piece in body]


def pool_counts(request: Request) -> Dict[str, int]:
    status = request.status()  # type: ignore[attr-defined]
    assert len(status) == 1
    counts: Dict[str, int] = next(iter(status.values()))
    return counts


# ---------------------------------------------------------------------------------------------
# With recv_bufsize: no piece longer, nothing lost, connections reused
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('recv_bufsize', RECV_BUFSIZES)
@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('framing', FRAMINGS)
async def test_no_body_piece_is_longer_than_recv_bufsize(framing: str, scheme: str,
                                                         recv_bufsize: int,
                                                         nginx: Nginx) -> None:
    sizes = [size for size in SIZES[framing] if size <= recv_bufsize * MAX_PIECES]
    sockets = Sockets()
    async with framing_urls(framing, scheme, nginx) as url_for, \
            open_pool(sockets, recv_bufsize) as request:
        for size in sizes:
            pieces = await pieces_of(request, url_for(size))
            assert [len(piece) for piece in pieces if not 0 < len(piece) <= recv_bufsize] \
                == [], 'pieces must be 1 to recv_bufsize bytes'
            assert b''.join(pieces) == body_of(size)
            if framing != 'until-close':
                # Read to the end: back in the pool, and the one connection used throughout
                assert pool_counts(request) == {'idle': 1, 'in_use': 0, 'waiting': 0}
        assert sockets.created == (len(sizes) if framing == 'until-close' else 1)
    assert await sockets.wait_until_open(0) == 0


# ---------------------------------------------------------------------------------------------
# Without recv_bufsize: pieces as the transport delivers them
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('framing', STREAMED_FRAMINGS)
async def test_without_recv_bufsize_pieces_are_not_capped(framing: str, scheme: str,
                                                          nginx: Nginx) -> None:
    sockets = Sockets()
    async with framing_urls(framing, scheme, nginx) as url_for, \
            open_pool(sockets, None) as request:
        pieces = await pieces_of(request, url_for(LARGE))
        assert b''.join(pieces) == body_of(LARGE)
        assert all(pieces)
        # The old default recv_bufsize was 16384: larger pieces prove nothing caps them now
        assert max(len(piece) for piece in pieces) > 16384


# ---------------------------------------------------------------------------------------------
# Leaving a body early closes its connection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('leave_by', ['aclose', 'drop'])
@pytest.mark.parametrize('recv_bufsize', [None, 7, 16384])
@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('framing', STREAMED_FRAMINGS)
async def test_leaving_a_body_mid_way_closes_the_connection(framing: str, scheme: str,
                                                            recv_bufsize: Optional[int],
                                                            leave_by: str,
                                                            nginx: Nginx) -> None:
    sockets = Sockets()
    async with framing_urls(framing, scheme, nginx) as url_for, \
            open_pool(sockets, recv_bufsize) as request:
        code, _, body = await request(b'GET', url_for(LARGE))
        assert code == b'200'
        received = b''
        for _ in range(3):
            received += await body.__anext__()  # type: ignore[attr-defined]
        assert body_of(LARGE).startswith(received)
        if leave_by == 'aclose':
            await body.aclose()  # type: ignore[attr-defined]
            # The body stays ended
            with pytest.raises(StopAsyncIteration):
                await body.__anext__()  # type: ignore[attr-defined]
        else:
            del body
            gc.collect()
        # Neither pooled nor in use, and its socket closed
        assert pool_counts(request) == {'idle': 0, 'in_use': 0, 'waiting': 0}
        assert await sockets.wait_until_open(0) == 0
        # And the next request gets a new connection that works
        assert b''.join(await pieces_of(request, url_for(MEDIUM))) == body_of(MEDIUM)
        assert sockets.created == 2


# ---------------------------------------------------------------------------------------------
# Invalid values
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('recv_bufsize', [0, -1, -16384, 1.5, '16384', b'16384'],
                         ids=['0', '-1', '-16384', 'float', 'str', 'bytes'])
async def test_a_recv_bufsize_that_is_not_a_positive_integer_is_refused_by_pool(
        recv_bufsize: object) -> None:
    # Refused at once, with a clear error: not when a body is read, as a TypeError
    with pytest.raises(HttpError) as raised:
        Pool(recv_bufsize=recv_bufsize)  # type: ignore[arg-type]
    assert 'recv_bufsize' in str(raised.value)
