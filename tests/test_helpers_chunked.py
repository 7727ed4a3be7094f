"""lowhaio_chunked: request bodies of unknown length, chunk-encoded (RFC 9112 section 7.1)."""

from __future__ import annotations

import os
import re

import pytest
from aiohttp import web
from support import scripted_server, web_server

from lowhaio import Pool, buffered
from lowhaio_chunked import chunked

CHUNKED = ((b'transfer-encoding', b'chunked'),)


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


def yielding(*chunks):
    async def body():
        for chunk in chunks:
            yield chunk
    return body


async def encoded(body, *args, **kwargs):
    return [piece async for piece in chunked(body)(*args, **kwargs)]


def decode_chunked(data: bytes) -> bytes:
    """A strict decoder, so a test fails on any deviation from the grammar."""
    decoded = b''
    while True:
        match = re.match(rb'([0-9a-f]+)\r\n', data)
        assert match, data[:20]
        size = int(match.group(1), 16)
        data = data[match.end():]
        if size == 0:
            assert data == b'\r\n'
            return decoded
        assert data[size:size + 2] == b'\r\n'
        decoded, data = decoded + data[:size], data[size + 2:]


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

async def test_each_chunk_is_one_piece_then_terminator():
    pieces = await encoded(yielding(b'abc', b'x' * 300))
    assert pieces == [b'3\r\nabc\r\n', b'12c\r\n' + b'x' * 300 + b'\r\n', b'0\r\n\r\n']


async def test_empty_chunks_do_not_end_the_body():
    pieces = await encoded(yielding(b'', b'abc', b'', b'', b'de', b''))
    assert pieces == [b'3\r\nabc\r\n', b'2\r\nde\r\n', b'0\r\n\r\n']
    assert decode_chunked(b''.join(pieces)) == b'abcde'


async def test_empty_body_is_just_the_terminator():
    assert await encoded(yielding()) == [b'0\r\n\r\n']


async def test_bytes_like_chunks_accepted():
    pieces = await encoded(yielding(bytearray(b'ab'), memoryview(b'cde')))
    assert decode_chunked(b''.join(pieces)) == b'abcde'


async def test_arguments_reach_the_body_and_each_call_starts_afresh():
    async def body(data, *, times):
        for _ in range(times):
            yield data

    body_function = chunked(body)
    first = [piece async for piece in body_function(b'ab', times=2)]
    second = [piece async for piece in body_function(b'ab', times=2)]
    assert first == second == [b'2\r\nab\r\n', b'2\r\nab\r\n', b'0\r\n\r\n']


# ---------------------------------------------------------------------------------------------
# Against real servers
# ---------------------------------------------------------------------------------------------

def recording_app(seen: list) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen.append((request.headers.get('transfer-encoding'), request.headers.get(
            'content-length'), await request.read()))
        return web.Response(body=b'received')
    app = web.Application(client_max_size=2 ** 30)
    app.add_routes([web.route('*', '/', handler)])
    return app


async def test_every_chunk_size_received_intact_with_body_kwargs(request_):
    data = b'abcdefghijklmnopqrstuvwxyz'

    async def in_chunks_of(size):
        for start in range(0, len(data), size):
            yield data[start:start + size]

    seen: list = []
    async with web_server(recording_app(seen)) as server:
        for size in range(1, len(data) + 1):
            code, _, body = await request_(
                b'POST', server.url('/'), headers=CHUNKED, body=chunked(in_chunks_of),
                body_kwargs=(('size', size),))
            assert (code, await buffered(body)) == (b'200', b'received')
    assert seen == [('chunked', None, data)] * len(data)


async def test_large_and_empty_chunks_received_intact(request_):
    data = os.urandom(3_000_000)
    seen: list = []
    async with web_server(recording_app(seen)) as server:
        body_function = chunked(yielding(b'', data[:1], b'', data[1:2_000_000], b'',
                                         data[2_000_000:], b''))
        code, _, body = await request_(b'PUT', server.url('/'), headers=CHUNKED,
                                       body=body_function)
        await buffered(body)
    assert code == b'200'
    assert seen[0][2] == data


async def test_bytes_on_the_wire_are_valid_chunked_encoding(request_):
    async def handler(conn) -> None:
        head, _, raw = (await conn.read_request()).partition(b'\r\n\r\n')
        assert b'\r\ntransfer-encoding: chunked' in head.lower()
        received.append(raw)
        conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n')
        await conn.drain()

    received: list = []
    async with scripted_server(handler) as server:
        code, _, body = await request_(b'POST', server.url('/'), headers=CHUNKED,
                                       body=chunked(yielding(b'hello', b'', b' world')))
        await buffered(body)
        assert server.errors == []
    assert code == b'200'
    assert received == [b'5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n']
