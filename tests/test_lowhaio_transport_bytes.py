"""Whatever kind of bytes a transport hands over, the responses are the same.

Windows' proactor event loop (the default there) hands a protocol `bytearray` slices of its read
buffer on Python 3.9 to 3.11, not `bytes`; another loop or transport may hand over a buffer it
then reuses. What users rely on: every response, through every path a head can take (parsed in
full, the same head again, the same but for a request id) and every framing, gives exactly what
it gives when the transport hands over `bytes`, and nothing changes when the transport reuses its
buffer after handing it over.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Iterator, List, Tuple

import pytest

import lowhaio
from support import Connection, open_pool, scripted_server


def head(request_id: bytes, framing: bytes) -> bytes:
    return (b'HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\n'
            b'x-request-id: ' + request_id + b'\r\n' + framing + b'\r\n\r\n')


# Each response, as (head, body as sent, body as read, the server waits before the body)
RESPONSES = [
    (head(b'a' * 16, b'content-length: 5'), b'hello', b'hello', False),  # parsed in full
    (head(b'a' * 16, b'content-length: 5'), b'hello', b'hello', False),  # the same again
    (head(b'b' * 16, b'content-length: 5'), b'world', b'world', False),  # a new request id
    (head(b'c' * 16, b'content-length: 5'), b'again', b'again', False),  # and another
    (head(b'd' * 16, b'content-length: 6'), b'stream', b'stream', True),  # body after the head
    (head(b'e' * 16, b'transfer-encoding: chunked'), b'3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n',
     b'abcde', True),
    (head(b'f' * 16, b'connection: close'), b'until the close', b'until the close', True),
]


async def serves_each_response(conn: Connection) -> None:
    for response_head, body, _, wait in RESPONSES:
        await conn.read_request()
        conn.write(response_head if wait else response_head + body)
        await conn.drain()
        if wait:
            await asyncio.sleep(0.02)
            conn.write(body)
            await conn.drain()
    conn.close()


@contextlib.contextmanager
def transport_hands_over(kind: str) -> Iterator[None]:
    """Connections made inside get what they receive as `kind`: bytes as ever, a bytearray
    (the proactor loop), or a bytearray overwritten once the call returns (a reused buffer)."""
    original = lowhaio._Connection.data_received
    if kind == 'bytes':
        yield
        return

    def data_received(self: Any, data: bytes) -> None:
        buffer = bytearray(data)
        original(self, buffer)  # type: ignore[arg-type]
        if kind == 'a reused bytearray':
            buffer[:] = b'\xff' * len(buffer)

    lowhaio._Connection.data_received = data_received  # type: ignore[method-assign]
    try:
        yield
    finally:
        lowhaio._Connection.data_received = original  # type: ignore[method-assign]


async def responses(kind: str) -> Tuple[List[Tuple[bytes, Any, bytes]], int]:
    with transport_hands_over(kind):
        async with scripted_server(serves_each_response) as server, open_pool() as request:
            results = []
            for _ in RESPONSES:
                code, headers, body = await request(b'GET', server.url())
                results.append((code, headers, b''.join([piece async for piece in body])))
            assert server.errors == []
            return results, server.connections


@pytest.mark.parametrize('attempt', range(3))
@pytest.mark.parametrize('kind', ['bytearray', 'a reused bytearray'])
async def test_responses_are_the_same_whatever_bytes_the_transport_hands_over(
        kind: str, attempt: int) -> None:
    expected, _ = await responses('bytes')
    got, connections = await responses(kind)
    assert got == expected
    assert [body for _, _, body in got] == [read for _, _, read, _ in RESPONSES]
    assert [dict(headers)[b'x-request-id'] for _, headers, _ in got] == \
        [b'a' * 16, b'a' * 16, b'b' * 16, b'c' * 16, b'd' * 16, b'e' * 16, b'f' * 16]
    assert connections == 1
