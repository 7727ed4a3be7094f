"""A server that answers while the request's body is still being sent, and does not close.

A server that will not take a body (413 Content Too Large, 401 Unauthorized, a redirect) may
answer as soon as it has the head. Then it either stops reading the connection, or reads the
rest of the body and throws it away (nginx, aiohttp.web). RFC 9112 §9.6 has the client watch
for such an answer while it sends, and stop. What users rely on:

- an answer of 300 or more ends the upload. It is returned with its whole body, the rest of the
  request's body is not sent and its generator is closed. This holds however the body is made,
  over TCP and TLS, on both loops, and when the server never reads again and the body never
  ends: the request never waits for socket_timeout;
- 1xx responses before that answer do not end the upload, and a head is read whole, however it
  arrives;
- such a connection is not reused (the server may or may not go on reading the body): the next
  request opens a new one;
- a 2xx answer does not end the upload: the server wants the body (it answers as it reads). The
  whole body reaches it, and the connection is reused;
- bytes that are not a response fail the request with HttpProtocolError at once;
- nothing is logged on the way.

A server that answers and then closes is in test_lowhaio_answer_before_the_body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, NamedTuple, Tuple

import pytest

import support
from lowhaio import HttpProtocolError, HttpTimeoutError, buffered

KIB = 1024
BODY_SIZE = 4 * KIB * KIB
ENDLESS = 1 << 40  # the content-length sent with a body that never ends
REPEATS = 5

OK = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'


class Answer(NamedTuple):
    pieces: Tuple[bytes, ...]  # written in turn, a moment apart
    code: bytes
    header: Tuple[bytes, bytes] = (b'', b'')  # one header the answer must carry
    body: bytes = b''


TOO_LARGE = b'HTTP/1.1 413 Content Too Large\r\ncontent-length: 17\r\n\r\nbody not accepted'
# Each ends the upload
REFUSALS: Dict[str, Answer] = {
    'content-length': Answer((TOO_LARGE,), b'413', (b'content-length', b'17'),
                             b'body not accepted'),
    'chunked': Answer((b'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm="x"\r\n'
                       b'transfer-encoding: chunked\r\n\r\n5\r\nlog i\r\n7\r\nn first\r\n'
                       b'0\r\n\r\n',),
                      b'401', (b'www-authenticate', b'Basic realm="x"'), b'log in first'),
    'redirect': Answer((b'HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\n'
                        b'content-length: 0\r\n\r\n',), b'307', (b'location', b'/elsewhere')),
    'connection-close': Answer((b'HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n'
                                b'content-length: 4\r\n\r\noops',),
                               b'500', (b'connection', b'close'), b'oops'),
    'after-100-continue': Answer((b'HTTP/1.1 100 Continue\r\n\r\n', TOO_LARGE), b'413',
                                 (b'content-length', b'17'), b'body not accepted'),
    'after-103-early-hints': Answer((b'HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n' +
                                     TOO_LARGE,), b'413', (b'content-length', b'17'),
                                    b'body not accepted'),
    'in-pieces': Answer((TOO_LARGE[:20], TOO_LARGE[20:50], TOO_LARGE[50:]), b'413',
                        (b'content-length', b'17'), b'body not accepted'),
    # Its body arrives after the head, a moment later
    'body-later': Answer((TOO_LARGE[:-5], TOO_LARGE[-5:]), b'413', (b'content-length', b'17'),
                         b'body not accepted'),
}
ACCEPTED = Answer((b'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstored',), b'200',
                  (b'content-length', b'6'), b'stored')

# What the server does once it has answered: reads nothing more (the upload could only wait
# for room, until socket_timeout, if it went on); or reads the rest of the body and throws it
# away, until the client closes or the body ends
AFTERWARDS = ('stops-reading', 'reads-on')


class Generator(NamedTuple):
    yielded: List[int]  # bytes yielded
    closed: List[bool]  # whether its finally clause ran


def body_of(kind: str, total: int, made: Generator) -> Callable[[], AsyncIterator[bytes]]:
    """A body function of `total` bytes (at least) in chunks of the `kind` BODIES names."""
    size, gives_way = BODIES[kind]

    async def body() -> AsyncIterator[bytes]:
        chunk = b'x' * size
        try:
            while made.yielded[0] < total:
                if gives_way:
                    await asyncio.sleep(0)
                made.yielded[0] += size
                yield chunk
        finally:
            made.closed[0] = True
    return body


# The size of each chunk, and whether the generator gives way to the loop before each. Small
# chunks are gathered into large writes (see lowhaio's gather).
BODIES = {
    'large-chunks': (64 * KIB, False),
    'chunks-that-each-give-way': (64 * KIB, True),
    'small-chunks': (KIB, False),
    'small-chunks-that-each-give-way': (KIB, True),
}


class Received(NamedTuple):
    bodies: List[int]  # bytes of each request's body the server read


def gets_answered_then(handle_upload: Callable[[support.Connection, bytes], Awaitable[bool]]) \
        -> support.Handler:
    """A scripted server's handler that answers each GET at once with OK, and hands the head
    of a request of another method to `handle_upload`, which says whether the connection takes
    another request."""
    async def handler(conn: support.Connection) -> None:
        while True:
            head = await conn.read_head()
            if not head:
                return
            if head.startswith(b'GET '):
                conn.write(OK)
                await conn.drain()
            elif not await handle_upload(conn, head):
                return
    return handler


def answering_early(answer: Answer, afterwards: str, received: Received) -> support.Handler:
    """A scripted server's handler that reads a request's head and 1,000 bytes of its body,
    writes `answer`'s pieces, then does as `afterwards` says; a GET it answers at once."""
    async def handle_upload(conn: support.Connection, head: bytes) -> bool:
        length = int(re.search(rb'content-length: (\d+)', head, re.I).group(1))  # type: ignore[union-attr]
        await conn.read(1000)
        await conn.write_in_turn(answer.pieces)
        if afterwards == 'stops-reading':
            await asyncio.sleep(60)  # the client goes first, or the test times out
            return False
        read = 1000
        while read < length:
            data = await conn.read_some(min(length - read, 64 * KIB))
            if not data:
                received.bodies.append(read)
                return False
            read += len(data)
        received.bodies.append(read)
        return True
    return gets_answered_then(handle_upload)


@contextlib.asynccontextmanager
async def serving(handler: support.Handler, transport: str) \
        -> AsyncIterator[Tuple[support.ScriptedServer, Any]]:
    """A scripted server over `transport` (tcp or tls), and a pool's request function."""
    async with support.scripted_server(handler, tls=transport == 'tls') as server, \
            support.open_pool(get_ssl_context=support.client_ssl_context,
                              socket_timeout=10) as request:
        yield server, request


@pytest.mark.parametrize('body', list(BODIES))
@pytest.mark.parametrize('answer', list(REFUSALS))
@pytest.mark.parametrize('afterwards', AFTERWARDS)
@pytest.mark.parametrize('transport', ['tcp', 'tls'])
async def test_an_answer_of_300_or_more_ends_the_upload(
        transport: str, afterwards: str, answer: str, body: str,
        asyncio_warnings: Callable[[], List[str]]) -> None:
    expected = REFUSALS[answer]
    # A body that never ends: only the answer can end it. (One that ends might fit whole in
    # the sockets' buffers before the server, on the same loop, even answers.)
    size = ENDLESS
    received = Received([])
    async with serving(answering_early(expected, afterwards, received), transport) \
            as (server, request):
        for _ in range(REPEATS):
            made = Generator([0], [False])
            code, response_headers, response = await request(
                b'POST', server.url('/upload'), headers=((b'content-length', b'%d' % size),),
                body=body_of(body, size, made))
            assert (code, expected.header in response_headers, await buffered(response),
                    made.closed[0]) == (expected.code, True, expected.body, True)
        await support.assert_no_connection_was_reused(request, server, REPEATS)
    assert server.errors == []
    assert asyncio_warnings() == []


@pytest.mark.parametrize('body', list(BODIES))
@pytest.mark.parametrize('transport', ['tcp', 'tls'])
async def test_a_2xx_answer_does_not_end_the_upload(
        transport: str, body: str, asyncio_warnings: Callable[[], List[str]]) -> None:
    received = Received([])
    async with serving(answering_early(ACCEPTED, 'reads-on', received), transport) \
            as (server, request):
        for _ in range(REPEATS):
            made = Generator([0], [False])
            code, response_headers, response = await request(
                b'POST', server.url('/upload'),
                headers=((b'content-length', b'%d' % BODY_SIZE),),
                body=body_of(body, BODY_SIZE, made))
            assert (code, await buffered(response), made.yielded[0]) == \
                (b'200', b'stored', BODY_SIZE)
        code, _, response = await request(b'GET', server.url('/'))
        assert (code, await buffered(response)) == (b'200', b'ok')
        # Every body whole, and all on one connection
        assert (received.bodies, server.connections) == ([BODY_SIZE] * REPEATS, 1)
    assert server.errors == []
    assert asyncio_warnings() == []


@pytest.mark.parametrize('afterwards', AFTERWARDS)
@pytest.mark.parametrize('bytes_sent', [
    b'garbage\r\n\r\n', b'HTTP/1.1 abc\r\n\r\n',
    b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 abc\r\n\r\n',
    # More interim responses than any final one follows (each arrival would parse them all)
    b'HTTP/1.1 103 Early Hints\r\n\r\n' * 17,
])
async def test_bytes_that_are_not_a_response_fail_the_upload(
        afterwards: str, bytes_sent: bytes) -> None:
    received = Received([])
    async with support.scripted_server(
            answering_early(Answer((bytes_sent,), b''), afterwards, received)) as server, \
            support.open_pool(socket_timeout=10) as request:
        for _ in range(REPEATS):
            made = Generator([0], [False])
            with pytest.raises(HttpProtocolError):
                await request(b'POST', server.url('/upload'),
                              headers=((b'content-length', b'%d' % ENDLESS),),
                              body=body_of('large-chunks', ENDLESS, made))
            assert made.closed[0]
        assert server.connections == REPEATS


async def test_bytes_trickling_in_do_not_keep_a_stalled_upload_alive() -> None:
    # A server that never reads, and sends a head a byte at a time that it never finishes:
    # what it sends moves none of the body, so the upload still times out after
    # socket_timeout with no byte of it moving (without this rule it would never end)
    async def handler(conn: support.Connection) -> None:
        await conn.read_head()
        conn.write(b'HTTP/1.1 413 Content Too Large\r\nx-slow: ')
        while True:
            await asyncio.sleep(0.1)
            conn.write(b'x')

    async with support.scripted_server(handler) as server, \
            support.open_pool(socket_timeout=1) as request:
        for _ in range(3):
            made = Generator([0], [False])
            with pytest.raises(HttpTimeoutError) as caught:
                await request(b'POST', server.url('/upload'),
                              headers=((b'content-length', b'%d' % ENDLESS),),
                              body=body_of('large-chunks', ENDLESS, made))
            assert ('sending the request' in str(caught.value), made.closed[0]) == (True, True)


@pytest.mark.parametrize('body', list(BODIES))
@pytest.mark.parametrize('transport', ['tcp', 'tls'])
async def test_an_answer_after_the_whole_body_keeps_the_connection(transport: str,
                                                                   body: str) -> None:
    # An error answered once the body is all read, as most are: the request was whole, and
    # the connection goes on (even though the client may still be waiting to learn that its
    # last bytes left, as a TLS flush does, when the answer comes)
    sizes: List[int] = []

    async def handler(conn: support.Connection) -> None:
        while True:
            request_bytes = await conn.read_request()
            if not request_bytes:
                return
            sizes.append(len(request_bytes) - len(request_bytes.split(b'\r\n\r\n', 1)[0]) - 4)
            conn.write(b'HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found')

    async with serving(handler, transport) as (server, request):
        for _ in range(REPEATS * 4):
            code, _, response = await request(
                b'POST', server.url('/upload'), headers=((b'content-length', b'%d' % BODY_SIZE),),
                body=body_of(body, BODY_SIZE, Generator([0], [False])))
            assert (code, await buffered(response)) == (b'404', b'not found')
        assert (sizes, server.connections) == ([BODY_SIZE] * REPEATS * 4, 1)
