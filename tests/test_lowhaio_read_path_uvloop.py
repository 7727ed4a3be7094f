"""How a response body hands on what the transport read, on both loops.

uvloop reads 256,000 bytes at a time and, while the server is ahead, several times before the
consumer's task runs; asyncio reads 128 KiB - 256 bytes at a time, once a turn. What users rely
on, for every framing and loop:
- exactly the bytes the server sent, in order;
- each piece is one read as the transport made it, never several copied into one (that copy
  was a second pass over almost every byte of a download under uvloop): no piece after the
  first (which comes with the head) is longer than the longest read, 256 KiB;
- a consumer that does not keep up stops the client reading: what waits in its memory stays
  under the high-water mark and one read, and the server is held back by the sockets;
- once such a consumer reads again, the body completes and the connection is reused.
"""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest
from aiohttp import web

import lowhaio

from support import Connection, open_pool, scripted_server, web_server

MIB = 1024 * 1024
LONGEST_READ = 256 * 1024  # uvloop's 256,000 bytes; asyncio's 128 KiB - 256 (lowhaio sets it)
BODY = bytes(range(256)) * (6 * MIB // 256 + 7)  # 6 MiB and a bit: many full reads
FRAMINGS = ['content-length', 'chunked', 'until-close']


def framed(kind: str, body: bytes) -> bytes:
    if kind == 'content-length':
        return b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(body), body)
    if kind == 'chunked':
        size = 300_000  # chunks that do not line up with reads, and longer than one
        chunks = b''.join(b'%x\r\n%s\r\n' % (len(body[i:i + size]), body[i:i + size])
                          for i in range(0, len(body), size))
        return b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%s0\r\n\r\n' % chunks
    return b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n%s' % body  # until close


def sends(response: bytes, close: bool) -> Any:
    async def handler(conn: Connection) -> None:
        await conn.read_request()
        conn.write(response)
        await conn.drain()
        if close:
            conn.close()
        else:
            await conn.read_until_eof()
    return handler


@pytest.mark.parametrize('attempt', range(3))
@pytest.mark.parametrize('pause', [0.0, 0.1])
@pytest.mark.parametrize('kind', FRAMINGS)
async def test_each_read_is_handed_on_as_it_came(kind: str, pause: float, attempt: int) -> None:
    async with scripted_server(sends(framed(kind, BODY), kind == 'until-close')) as server, \
            open_pool() as request:
        code, _, body = await request(b'GET', server.url())
        # With a pause, reads pile up until reading is paused: several wait at once
        await asyncio.sleep(pause)
        pieces: List[bytes] = [piece async for piece in body]
    assert code == b'200'
    assert b''.join(pieces) == BODY
    longest = max(len(piece) for piece in pieces[1:])
    assert longest <= LONGEST_READ, (longest, len(pieces))
    assert server.errors == []


def streaming_app(size: int, written: List[int]) -> web.Application:
    """GET / sends `size` bytes in 64 KiB writes, each waiting until the socket takes it;
    `written[0]` counts the bytes the server got rid of."""
    piece = b'x' * (64 * 1024)

    async def handler(request_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={'content-length': str(size)})
        await response.prepare(request_)
        for _ in range(size // len(piece)):
            await response.write(piece)
            written[0] += len(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get('/', handler)
    return app


@pytest.mark.parametrize('attempt', range(2))
async def test_a_consumer_that_does_not_read_stops_the_client_reading(attempt: int) -> None:
    size = 256 * MIB
    written = [0]
    async with web_server(streaming_app(size, written)) as server, open_pool() as request:
        code, _, body = await request(b'GET', server.url())
        assert code == b'200'
        conn = body._conn
        # Long enough for the whole body to arrive several times over were reading not paused
        await asyncio.sleep(1.0)
        waiting_in_client = conn._queued
        held_back_at = written[0]
        received = 0
        async for piece in body:
            received += len(piece)
        status = request.status()
    assert waiting_in_client <= lowhaio._READ_HIGH_WATER + LONGEST_READ
    # What the server wrote fits in the client's queue and the sockets' buffers (a few MiB
    # each on loopback), nowhere near the body
    assert held_back_at < 64 * MIB, held_back_at
    assert received == size
    assert [entry['idle'] for entry in status.values()] == [1]


@pytest.mark.parametrize('attempt', range(3))
@pytest.mark.parametrize('kind', FRAMINGS)
async def test_a_consumer_that_stops_now_and_then_gets_every_byte(kind: str, attempt: int) -> None:
    # Reading is paused and resumed many times over, at every point in the queue
    close = kind == 'until-close'
    async with scripted_server(sends(framed(kind, BODY), close)) as server, \
            open_pool() as request:
        code, _, body = await request(b'GET', server.url())
        pieces: List[bytes] = []
        async for piece in body:
            pieces.append(piece)
            if len(pieces) % 3 == 0:
                await asyncio.sleep(0.005)
        status = request.status()
    assert code == b'200'
    assert b''.join(pieces) == BODY
    assert [entry['idle'] for entry in status.values()] == [0 if close else 1]
    assert server.errors == []
