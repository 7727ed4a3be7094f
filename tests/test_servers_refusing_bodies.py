"""Real ASGI servers whose app answers an upload without reading it (413, 401): lowhaio returns
that answer, however the server then treats the body it left unread.

hypercorn closes the connection with the body unread, so the rest of the upload meets a reset:
before lowhaio read the answer that came before the reset, this was an HttpDataError every
time. (uvicorn's answer came back before that change too.) The scripted cases of every order
of events are in test_lowhaio_answer_before_the_body; these servers need the helpers' test
requirements, so they run in the whole suite.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, Dict

import pytest

import support
from asgi_servers import ASGI_SERVERS, asgi_server
from lowhaio import buffered

KIB = 1024
BODY_SIZE = 4 * KIB * KIB
REPEATS = 5

ANSWERS = {
    '413': (413, [(b'content-length', b'17')], b'body not accepted'),
    '401': (401, [(b'www-authenticate', b'Basic realm="x"')], b'log in first'),
}


def refusing_app(status: int, headers: Any, body: bytes) -> Callable[..., Awaitable[None]]:
    async def app(scope: Dict[str, Any], receive: Callable[..., Any],
                  send: Callable[..., Any]) -> None:
        if scope['type'] == 'lifespan':
            while True:
                message = await receive()
                if message['type'] == 'lifespan.startup':
                    await send({'type': 'lifespan.startup.complete'})
                else:
                    await send({'type': 'lifespan.shutdown.complete'})
                    return
        # Not one byte of the request's body is read
        await send({'type': 'http.response.start', 'status': status, 'headers': headers})
        await send({'type': 'http.response.body', 'body': body})
    return app


def body_of(chunk_size: int, gives_way: bool) -> Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        chunk = b'x' * chunk_size
        for _ in range(BODY_SIZE // chunk_size):
            if gives_way:
                await asyncio.sleep(0)
            yield chunk
    return body


BODIES = {
    'large-chunks': body_of(64 * KIB, False),
    'chunks-that-each-give-way': body_of(64 * KIB, True),
    'small-chunks': body_of(KIB, False),
}


@pytest.mark.parametrize('body', list(BODIES))
@pytest.mark.parametrize('answer', list(ANSWERS))
@pytest.mark.parametrize('server_kind', ASGI_SERVERS)
async def test_the_answer_to_an_unread_upload_is_returned(
        server_kind: str, answer: str, body: str) -> None:
    status, headers, text = ANSWERS[answer]
    async with asgi_server(server_kind, refusing_app(status, headers, text)) as server, \
            support.open_pool(socket_timeout=10) as request:
        for _ in range(REPEATS):
            code, response_headers, response = await request(
                b'POST', server.url('/upload'), body=BODIES[body],
                headers=((b'content-length', b'%d' % BODY_SIZE),))
            assert (code, headers[0] in response_headers, await buffered(response)) == \
                (answer.encode(), True, text)
