"""A server that answers before it has read the request's body, and closes.

A server that will not take a body (413 Content Too Large, 401 Unauthorized, ...) may answer
as soon as it has the head, and close the connection with the body unread. The rest of the
upload then meets a reset or a broken pipe. RFC 9112 §9.6 has the client watch for such an
answer while it sends, stop sending, and close. What users rely on:

- the answer is returned, as any response: its code, headers and whole body, whichever of the
  loop's read and the body's next write meets the reset first (a race: every case runs several
  times), however the body is made, over TCP and TLS, on both loops;
- the connection is not reused: the next request opens a new one;
- only when no whole head of an answer arrived does the request fail, with HttpDataError
  (something was sent), the connection's error as its cause;
- nothing is logged on the way (asyncio warned for every write to the failed transport: dozens
  per upload).

Then real servers: nginx and aiohttp.web, which read and discard a refused body before closing,
so that the answer comes after the upload (hypercorn, which closes at once, is in
test_servers_refusing_bodies, with the ASGI servers).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest
from aiohttp import web

import support
from lowhaio import HttpDataError, HttpError, buffered

KIB = 1024
BODY_SIZE = 16 * KIB * KIB
REPEATS = 5

# The request after the refused ones: a GET, answered as usual
OK = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'


class Answer(NamedTuple):
    pieces: Tuple[bytes, ...]  # written in turn, a moment apart
    code: Optional[bytes]  # what request() returns; None: it fails with HttpDataError
    header: Tuple[bytes, bytes] = (b'', b'')  # one header the answer must carry
    body: bytes = b''


REFUSED = b'HTTP/1.1 413 Content Too Large\r\ncontent-length: 17\r\nconnection: close\r\n' \
    b'\r\nbody not accepted'
ANSWERS: Dict[str, Answer] = {
    'content-length': Answer((REFUSED,), b'413', (b'connection', b'close'), b'body not accepted'),
    'chunked': Answer((b'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm="x"\r\n'
                       b'transfer-encoding: chunked\r\n\r\n5\r\nlog i\r\n7\r\nn first\r\n'
                       b'0\r\n\r\n',),
                      b'401', (b'www-authenticate', b'Basic realm="x"'), b'log in first'),
    'after-100-continue': Answer((b'HTTP/1.1 100 Continue\r\n\r\n' + REFUSED,), b'413',
                                 (b'connection', b'close'), b'body not accepted'),
    'in-pieces': Answer((REFUSED[:20], REFUSED[20:60], REFUSED[60:]), b'413',
                        (b'connection', b'close'), b'body not accepted'),
    # No "connection: close", though the server closes all the same
    'without-connection-close': Answer(
        (b'HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno',), b'403',
        (b'content-length', b'2'), b'no'),
    # Not an answer: the request fails
    'nothing': Answer((), None),
    'half-a-head': Answer((REFUSED[:25],), None),
}

# How the server ends, once it has answered: an abortive close (RST at once); a close with
# the body unread (which resets too, for plain TCP; under TLS, asyncio's close sends
# close_notify first); a FIN, then such a close a moment later; a FIN, then neither reading
# nor closing (until the client goes); a FIN, then reading and discarding the body (nginx's
# lingering close). The last three for plain TCP only: asyncio's TLS transport cannot
# half-close.
ENDINGS = {'tcp': ('reset', 'close', 'fin-then-close', 'fin-then-wait', 'fin-then-read'),
           'tls': ('reset', 'close')}
CASES = [(transport, ending) for transport, endings in ENDINGS.items() for ending in endings]


async def large_chunks() -> AsyncIterator[bytes]:
    for _ in range(BODY_SIZE // (64 * KIB)):
        yield b'x' * (64 * KIB)


async def chunks_that_each_give_way() -> AsyncIterator[bytes]:
    for _ in range(BODY_SIZE // (64 * KIB)):
        await asyncio.sleep(0)
        yield b'x' * (64 * KIB)


async def small_chunks() -> AsyncIterator[bytes]:
    # Gathered into large writes (see lowhaio's gather)
    chunk = b'x' * KIB
    for _ in range(BODY_SIZE // KIB):
        yield chunk


BODIES: Dict[str, Callable[[], AsyncIterator[bytes]]] = {
    'large-chunks': large_chunks,
    'chunks-that-each-give-way': chunks_that_each_give_way,
    'small-chunks': small_chunks,
}


def refusing(answer: Answer, ending: str) -> support.Handler:
    """A scripted server's handler that reads a request's head and 1,000 bytes of its body,
    writes `answer`'s pieces and ends as `ending` says; a GET it answers with 200 at once."""
    async def handler(conn: support.Connection) -> None:
        try:
            head = await conn.read_head()
            if head.startswith(b'GET '):
                conn.write(OK)
                await conn.drain()
                return
            await conn.read(1000)
            await conn.write_in_turn(answer.pieces)
            if ending.startswith('fin-then-'):
                conn.half_close()
            if ending == 'fin-then-close':
                await asyncio.sleep(0.05)
            elif ending == 'fin-then-wait':
                await asyncio.sleep(60)  # the client goes first, or the test times out
            elif ending == 'fin-then-read':
                await conn.read_until_eof()
            if ending == 'reset':
                conn.reset()
            else:
                conn.close()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client may leave any way it likes: the test checks what it saw
    return handler


@pytest.mark.parametrize('body', list(BODIES))
@pytest.mark.parametrize('answer', list(ANSWERS))
@pytest.mark.parametrize('transport, ending', CASES)
async def test_the_answer_of_a_server_that_closes_on_the_body_is_returned(
        transport: str, ending: str, answer: str, body: str,
        asyncio_warnings: Callable[[], List[str]]) -> None:
    expected = ANSWERS[answer]
    headers = ((b'content-length', b'%d' % BODY_SIZE),)
    async with support.scripted_server(refusing(expected, ending), tls=transport == 'tls') \
            as server, \
            support.open_pool(get_ssl_context=support.client_ssl_context,
                              socket_timeout=10) as request:
        for _ in range(REPEATS):
            if expected.code is None:
                with pytest.raises(HttpDataError) as caught:
                    await request(b'POST', server.url('/upload'), headers=headers,
                                  body=BODIES[body])
                assert isinstance(caught.value.__cause__, ConnectionError)
                continue
            code, response_headers, response = await request(
                b'POST', server.url('/upload'), headers=headers, body=BODIES[body])
            assert (code, expected.header in response_headers, await buffered(response)) == \
                (expected.code, True, expected.body)
        await support.assert_no_connection_was_reused(request, server, REPEATS)
    assert server.errors == []
    assert asyncio_warnings() == []


async def test_a_body_left_unread_after_the_answer_fails_as_truncated() -> None:
    # The answer's own body is cut off by the reset: the response is returned (its head is
    # whole), and reading its body fails, as for any body cut short
    answer = Answer((b'HTTP/1.1 413 Content Too Large\r\ncontent-length: 100\r\n\r\nonly',),
                    b'413')
    async with support.scripted_server(refusing(answer, 'reset')) as server, \
            support.open_pool(socket_timeout=10) as request:
        for _ in range(REPEATS):
            code, _, response = await request(
                b'POST', server.url('/upload'), body=large_chunks,
                headers=((b'content-length', b'%d' % BODY_SIZE),))
            assert code == b'413'
            with pytest.raises(HttpError):
                await buffered(response)


# ---------------------------------------------------------------------------------------------
# Real servers: each reads and discards the refused body, then answers or closes
# ---------------------------------------------------------------------------------------------

async def test_nginx_refusing_a_body_too_large_answers_413_after_it(
        nginx: support.Nginx) -> None:
    async with support.open_pool(socket_timeout=10) as request:
        for _ in range(REPEATS):
            code, _, response = await request(
                b'PUT', nginx.url('/small-dav/too-big'),
                headers=((b'content-length', b'%d' % BODY_SIZE),), body=large_chunks)
            await buffered(response)
            assert code == b'413'


async def test_aiohttp_refusing_a_body_too_large_answers_413() -> None:
    async def read_all(request: web.Request) -> web.Response:
        await request.read()  # over client_max_size: 413
        return web.Response(text='stored')

    app = web.Application(client_max_size=KIB)
    app.router.add_post('/upload', read_all)
    async with support.web_server(app) as server, \
            support.open_pool(socket_timeout=10) as request:
        for body in BODIES.values():
            code, _, response = await request(
                b'POST', server.url('/upload'),
                headers=((b'content-length', b'%d' % BODY_SIZE),), body=body)
            assert (code, b'Maximum request body size' in await buffered(response)) == \
                (b'413', True)
