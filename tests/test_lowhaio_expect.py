"""Expect: 100-continue (RFC 9110 §10.1.1): the body waits for the server's go-ahead.

When a request carries `expect: 100-continue` and a body, lowhaio sends the head alone and waits
up to `expect_continue_timeout` for the server's answer:
- 100 Continue, or nothing in time: the body is sent, and the final response read as usual;
- a final status instead (401, 413, 417, ...): the body is never sent, that response is returned,
  and the connection is closed once it is read (the server may still be waiting for the body);
- the connection closing instead: an error saying the body was not sent.

Against aiohttp.web (whose expect handler answers 100, or rejects in a custom handler), nginx,
and scripted servers for every order of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import time
from typing import AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple

import pytest
from aiohttp import web

import lowhaio
import support
from lowhaio import (
    HttpConnectionClosedBeforeResponseError,
    HttpConnectionClosedError,
    HttpConnectionError,
    HttpError,
    HttpTimeoutError,
    buffered,
)
from lowhaio_chunked import chunked

Headers = Tuple[Tuple[bytes, bytes], ...]
Request = Callable[..., Awaitable[Tuple[bytes, Headers, AsyncIterator[bytes]]]]

EXPECT = (b'expect', b'100-continue')


open_pool = support.open_pool  # a Pool, closed on leaving the block


class Body:
    """A request body function that records whether it was called and what it yielded."""

    def __init__(self, data: bytes, chunk_size: int = 65536) -> None:
        self.data = data
        self.chunk_size = chunk_size
        self.calls = 0
        self.sent = 0

    async def __call__(self) -> AsyncIterator[bytes]:
        self.calls += 1
        for start in range(0, len(self.data), self.chunk_size):
            chunk = self.data[start:start + self.chunk_size]
            self.sent += len(chunk)
            yield chunk

    def headers(self, *extra: Tuple[bytes, bytes]) -> Headers:
        return ((b'content-length', b'%d' % (len(self.data),)),) + extra


def status(request: Request) -> lowhaio.PoolStatus:
    return request.status()  # type: ignore[attr-defined,no-any-return]


# ---------------------------------------------------------------------------------------------
# aiohttp.web: its default expect handler answers 100; a custom one can reject
# ---------------------------------------------------------------------------------------------

class AiohttpLog:
    def __init__(self) -> None:
        self.handled: List[Tuple[str, int, str]] = []  # path, body length, sha256
        self.expect_seen: List[str] = []
        self.client_ports: List[int] = []


def aiohttp_app(log: AiohttpLog) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        log.handled.append((request.path, len(body), hashlib.sha256(body).hexdigest()))
        assert request.transport is not None
        log.client_ports.append(request.transport.get_extra_info('peername')[1])
        return web.Response(body=b'got %d' % (len(body),))

    def rejecting(status: int) -> Callable[[web.Request], Awaitable[Optional[web.Response]]]:
        async def expect_handler(request: web.Request) -> Optional[web.Response]:
            log.expect_seen.append(request.headers.get('expect', ''))
            assert request.transport is not None
            log.client_ports.append(request.transport.get_extra_info('peername')[1])
            return web.Response(status=status, body=b'rejected %d' % (status,))
        return expect_handler

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route('*', '/accept', handler)
    for code in (401, 413, 417):
        app.router.add_route('*', '/reject/%d' % (code,), handler,
                             expect_handler=rejecting(code))
    return app


@pytest.mark.parametrize('framing', ['content-length', 'chunked'])
@pytest.mark.parametrize('size', [1, 100000, 4 * 1024 * 1024])
async def test_aiohttp_answers_100_and_the_body_follows_at_once(framing: str, size: int) -> None:
    log = AiohttpLog()
    data = bytes(range(256)) * (size // 256) + b'z' * (size % 256)
    body = Body(data)
    async with support.web_server(aiohttp_app(log)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            if framing == 'chunked':
                headers: Headers = ((b'transfer-encoding', b'chunked'), EXPECT)
                body_function = chunked(body)
            else:
                headers, body_function = body.headers(EXPECT), body
            started = time.monotonic()
            code, _, response = await request(b'POST', server.url('/accept'), headers=headers,
                                              body=body_function)
            assert (code, await buffered(response)) == (b'200', b'got %d' % (size,))
            assert time.monotonic() - started < 3  # 100 came: no wait for the 5 s timeout
            # The connection is kept: the next request reuses it
            code, _, response = await request(b'POST', server.url('/accept'), headers=headers,
                                              body=body_function)
            assert (code, await buffered(response)) == (b'200', b'got %d' % (size,))
    assert log.handled == [('/accept', size, hashlib.sha256(data).hexdigest())] * 2
    assert len(set(log.client_ports)) == 1
    assert body.calls == 2


@pytest.mark.parametrize('framing', ['content-length', 'chunked'])
@pytest.mark.parametrize('code', [401, 413, 417])
async def test_aiohttp_rejecting_in_its_expect_handler_gets_its_answer_and_no_body(
        framing: str, code: int) -> None:
    log = AiohttpLog()
    body = Body(b'x' * 1024 * 1024)
    async with support.web_server(aiohttp_app(log)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            if framing == 'chunked':
                headers: Headers = ((b'transfer-encoding', b'chunked'), EXPECT)
                body_function = chunked(body)
            else:
                headers, body_function = body.headers(EXPECT), body
            started = time.monotonic()
            status_code, _, response = await request(
                b'PUT', server.url('/reject/%d' % (code,)), headers=headers, body=body_function)
            assert (status_code, await buffered(response)) == \
                (b'%d' % (code,), b'rejected %d' % (code,))
            assert time.monotonic() - started < 3
            assert body.calls == 0  # not a byte of the body was made, let alone sent
            # The connection was closed (aiohttp would have read the next request as the
            # body it still expected): the next request gets a new one, and works
            assert status(request).totals == {'idle': 0, 'in_use': 0, 'waiting': 0}
            plain = Body(b'after')
            status_code, _, response = await request(
                b'POST', server.url('/accept'), headers=plain.headers(), body=plain)
            assert (status_code, await buffered(response)) == (b'200', b'got 5')
    assert log.expect_seen == ['100-continue']
    assert log.handled == [('/accept', 5, hashlib.sha256(b'after').hexdigest())]
    assert len(set(log.client_ports)) == 2


async def test_without_expect_the_body_goes_with_the_head_as_before() -> None:
    log = AiohttpLog()
    body = Body(b'abc')
    async with support.web_server(aiohttp_app(log)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            code, _, response = await request(b'PUT', server.url('/reject/417'),
                                              headers=body.headers(), body=body)
            assert (code, await buffered(response)) == (b'200', b'got 3')
    assert log.expect_seen == []


# ---------------------------------------------------------------------------------------------
# nginx: 100 Continue when it starts reading a body; 413 at once for one too large
# ---------------------------------------------------------------------------------------------

async def test_nginx_stores_a_body_sent_after_its_100_continue(nginx: support.Nginx) -> None:
    data = b'0123456789abcdef' * 65536
    body = Body(data)
    async with open_pool(expect_continue_timeout=5) as request:
        started = time.monotonic()
        code, _, response = await request(b'PUT', nginx.url('/dav/expect-put'),
                                          headers=body.headers(EXPECT), body=body)
        await buffered(response)
        assert code in (b'201', b'204')
        assert time.monotonic() - started < 3
        code, _, response = await request(b'GET', nginx.url('/dav/expect-put'))
        assert (code, await buffered(response)) == (b'200', data)
        assert status(request).totals['idle'] == 1  # one connection, kept throughout


async def test_nginx_refusing_a_body_too_large_gets_413_and_no_body(
        nginx: support.Nginx) -> None:
    body = Body(b'y' * 4096)  # over the location's 1 KiB
    async with open_pool(expect_continue_timeout=5) as request:
        started = time.monotonic()
        code, _, response = await request(b'PUT', nginx.url('/small-dav/too-big'),
                                          headers=body.headers(EXPECT), body=body)
        await buffered(response)
        assert code == b'413'
        assert time.monotonic() - started < 3
        assert body.calls == 0
        small = Body(b'fits')
        code, _, response = await request(b'PUT', nginx.url('/small-dav/fits'),
                                          headers=small.headers(EXPECT), body=small)
        await buffered(response)
        assert code in (b'201', b'204')
        code, _, response = await request(b'GET', nginx.url('/dav/fits'))
        assert (code, await buffered(response)) == (b'200', b'fits')


# ---------------------------------------------------------------------------------------------
# Scripted servers: every order of events
# ---------------------------------------------------------------------------------------------

def ok(body: bytes, *headers: bytes) -> bytes:
    return b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s' % (
        len(body), b''.join(header + b'\r\n' for header in headers), body)


CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
EARLY_HINTS = b'HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n'
REJECTED = b'HTTP/1.1 417 Expectation Failed\r\ncontent-length: 8\r\n\r\nrejected'


class Script:
    """What a scripted server saw of the body after each request head: the bytes, and whether
    they came at all."""

    def __init__(self) -> None:
        self.heads: List[bytes] = []
        self.bodies: List[bytes] = []
        self.after_final: List[bytes] = []  # what arrived after an early final response


async def read_body(conn: support.Connection, head: bytes) -> bytes:
    match = re.search(rb'(?im)^content-length:[ \t]*([0-9]+)', head)
    return await conn.read(int(match[1])) if match else b''


async def read_what_follows(conn: support.Connection, seconds: float = 0.5) -> bytes:
    """Whatever the client sends within `seconds`, until it closes."""
    received = b''
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        received = await asyncio.wait_for(conn.read_until_eof(), seconds)
    return received


# Each scenario: what the server does after reading the head, and what the client must see:
# (status, body sent?, connection kept?)
Scenario = Callable[[support.Connection, bytes, Script], Awaitable[None]]


async def continue_then_final(conn: support.Connection, head: bytes, script: Script) -> None:
    conn.write(CONTINUE)
    await conn.drain()
    script.bodies.append(await read_body(conn, head))
    conn.write(ok(b'stored'))


async def continue_and_final_at_once(conn: support.Connection, head: bytes,
                                     script: Script) -> None:
    # A 100, then straight away a final answer: the final one decides, the body is not sent
    conn.write(CONTINUE + REJECTED)
    await conn.drain()
    script.after_final.append(await read_what_follows(conn))


async def final_without_continue(conn: support.Connection, head: bytes, script: Script) -> None:
    conn.write(REJECTED)
    await conn.drain()
    script.after_final.append(await read_what_follows(conn))


async def final_dribbled(conn: support.Connection, head: bytes, script: Script) -> None:
    await conn.write_slowly(REJECTED, chunk_size=3, delay=0.005)
    script.after_final.append(await read_what_follows(conn))


async def final_with_chunked_body(conn: support.Connection, head: bytes,
                                  script: Script) -> None:
    conn.write(b'HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n')
    await conn.drain()
    await asyncio.sleep(0.05)
    conn.write(b'8\r\nrejected\r\n0\r\n\r\n')
    await conn.drain()
    script.after_final.append(await read_what_follows(conn))


async def final_and_close(conn: support.Connection, head: bytes, script: Script) -> None:
    conn.write(REJECTED.replace(b'\r\n\r\n', b'\r\nconnection: close\r\n\r\n', 1))
    await conn.drain()
    conn.close()


async def early_hints_then_continue(conn: support.Connection, head: bytes,
                                    script: Script) -> None:
    conn.write(EARLY_HINTS)
    await conn.drain()
    await asyncio.sleep(0.02)
    conn.write(CONTINUE)
    await conn.drain()
    script.bodies.append(await read_body(conn, head))
    conn.write(ok(b'stored'))


async def early_hints_then_final(conn: support.Connection, head: bytes,
                                 script: Script) -> None:
    conn.write(EARLY_HINTS)
    await conn.drain()
    await asyncio.sleep(0.02)
    conn.write(REJECTED)
    await conn.drain()
    script.after_final.append(await read_what_follows(conn))


async def nothing_then_read_body(conn: support.Connection, head: bytes,
                                 script: Script) -> None:
    # A server that ignores Expect: it just waits for the body
    script.bodies.append(await read_body(conn, head))
    conn.write(ok(b'stored'))


async def continue_after_the_timeout(conn: support.Connection, head: bytes,
                                     script: Script) -> None:
    # The body is already on its way when the 100 comes: it is skipped like any 1xx
    await asyncio.sleep(0.3)
    conn.write(CONTINUE)
    await conn.drain()
    script.bodies.append(await read_body(conn, head))
    conn.write(ok(b'stored'))


SCENARIOS: Dict[str, Tuple[Scenario, bytes, bool, bool]] = {
    '100 then final': (continue_then_final, b'200', True, True),
    '100 and final at once': (continue_and_final_at_once, b'417', False, False),
    'final without 100': (final_without_continue, b'417', False, False),
    'final dribbled': (final_dribbled, b'417', False, False),
    'final with a chunked body': (final_with_chunked_body, b'401', False, False),
    'final and connection: close': (final_and_close, b'417', False, False),
    '103 then 100 then final': (early_hints_then_continue, b'200', True, True),
    '103 then final': (early_hints_then_final, b'417', False, False),
    'nothing within the timeout': (nothing_then_read_body, b'200', True, True),
    '100 after the timeout': (continue_after_the_timeout, b'200', True, True),
}
# The timing-dependent ones run several times
REPEATS = {'nothing within the timeout': 3, '100 after the timeout': 3, 'final dribbled': 3}


EXPECTS_CONTINUE = re.compile(rb'(?im)^expect:[ \t]*100-continue[ \t]*\r$')


def scripted(scenario: Scenario, script: Script) -> support.Handler:
    """Requests with expect follow the scenario; others (and one after a 100) are answered."""
    async def handler(conn: support.Connection) -> None:
        try:
            while True:
                head = await conn.read_head()
                if not head:
                    return
                script.heads.append(head)
                if EXPECTS_CONTINUE.search(head):
                    await scenario(conn, head, script)
                else:
                    await read_body(conn, head)
                    conn.write(ok(b'plain'))
                await conn.drain()
                if conn.closed:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
    return handler


@pytest.mark.parametrize('name', list(SCENARIOS))
async def test_each_order_of_events(name: str) -> None:
    scenario, expected_code, body_sent, kept = SCENARIOS[name]
    for _ in range(REPEATS.get(name, 1)):
        script = Script()
        data = b'payload-' * 1000
        body = Body(data, chunk_size=1000)
        async with support.scripted_server(scripted(scenario, script)) as server:
            async with open_pool(expect_continue_timeout=0.1, socket_timeout=5) as request:
                code, _, response = await asyncio.wait_for(request(
                    b'PUT', server.url('/'), headers=body.headers(EXPECT), body=body), 5)
                content = await asyncio.wait_for(buffered(response), 5)
                assert code == expected_code
                assert content == (b'stored' if body_sent else b'rejected')
                assert body.sent == (len(data) if body_sent else 0)
                if body_sent:
                    assert script.bodies == [data]
                elif name != 'final and connection: close':
                    # Not a byte of it reached the server, which then saw the client close
                    await eventually(lambda script=script: len(script.after_final) == 1)
                    assert script.after_final == [b'']
                # A second request works, on the same connection only when that is safe
                plain = Body(b'next')
                code, _, response = await asyncio.wait_for(request(
                    b'PUT', server.url('/'), headers=plain.headers(), body=plain), 5)
                assert (code, await buffered(response)) == (b'200', b'plain')
            assert server.connections == (1 if kept else 2)
            assert server.errors == []


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'condition not reached in time'
        await asyncio.sleep(0.01)


@pytest.mark.parametrize('repeat', range(3))
async def test_the_wait_for_100_lasts_expect_continue_timeout(repeat: int) -> None:
    script = Script()
    arrived: List[float] = []

    async def timed(conn: support.Connection, head: bytes, script: Script) -> None:
        started = time.monotonic()
        script.bodies.append(await read_body(conn, head))
        arrived.append(time.monotonic() - started)
        conn.write(ok(b'stored'))

    body = Body(b'b' * 100)
    async with support.scripted_server(scripted(timed, script)) as server:
        async with open_pool(expect_continue_timeout=0.3) as request:
            code, _, response = await request(b'PUT', server.url('/'),
                                              headers=body.headers(EXPECT), body=body)
            assert (code, await buffered(response)) == (b'200', b'stored')
    assert 0.25 <= arrived[0] < 1.5


@pytest.mark.parametrize('value', [b'100-continue', b'100-Continue', b'100-CONTINUE',
                                   b' 100-continue '])
async def test_the_expectation_is_recognised_in_any_letter_case(value: bytes) -> None:
    script = Script()
    body = Body(b'q' * 10)
    async with support.scripted_server(scripted(final_without_continue, script)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            code, _, response = await request(
                b'PUT', server.url('/'), headers=body.headers((b'Expect', value)), body=body)
            assert (code, await buffered(response)) == (b'417', b'rejected')
    assert body.calls == 0


@pytest.mark.parametrize('case', ['no body', 'content-length: 0'])
async def test_with_nothing_to_send_there_is_nothing_to_wait_for(case: str) -> None:
    script = Script()
    async with support.scripted_server(scripted(nothing_then_read_body, script)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            started = time.monotonic()
            if case == 'no body':
                code, _, response = await request(b'GET', server.url('/'), headers=(EXPECT,))
            else:
                body = Body(b'')
                code, _, response = await request(
                    b'PUT', server.url('/'), headers=body.headers(EXPECT), body=body)
            assert (code, await buffered(response)) == (b'200', b'stored')
            assert time.monotonic() - started < 3  # no wait for the 5 s
            assert status(request).totals['idle'] == 1


# Errors: they say that the body was not sent

@pytest.mark.parametrize('how', ['close', 'reset'])
async def test_the_server_closing_instead_of_answering_says_the_body_was_not_sent(
        how: str) -> None:
    async def closing(conn: support.Connection, head: bytes, script: Script) -> None:
        if how == 'close':
            conn.close()
        else:
            conn.reset()

    script = Script()
    body = Body(b'r' * 100)
    async with support.scripted_server(scripted(closing, script)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            with pytest.raises(HttpConnectionClosedError, match='body was not sent') as raised:
                await asyncio.wait_for(request(b'PUT', server.url('/'),
                                               headers=body.headers(EXPECT), body=body), 5)
            # A new connection: the server may have acted on the head, so this is not
            # flagged safe to retry
            assert not isinstance(raised.value, HttpConnectionClosedBeforeResponseError)
            assert status(request).totals == {'idle': 0, 'in_use': 0, 'waiting': 0}
    assert body.calls == 0


async def test_a_reused_connection_closed_while_waiting_for_100_is_flagged_retry_safe() -> None:
    async def closing(conn: support.Connection, head: bytes, script: Script) -> None:
        conn.close()

    script = Script()
    body = Body(b'r' * 100)
    async with support.scripted_server(scripted(closing, script)) as server:
        async with open_pool(expect_continue_timeout=5) as request:
            plain = Body(b'first')
            code, _, response = await request(b'PUT', server.url('/'), headers=plain.headers(),
                                              body=plain)
            assert (code, await buffered(response)) == (b'200', b'plain')
            with pytest.raises(HttpConnectionClosedBeforeResponseError,
                               match='body was not sent'):
                await asyncio.wait_for(request(b'PUT', server.url('/'),
                                               headers=body.headers(EXPECT), body=body), 5)
    assert body.calls == 0
    assert server.connections == 1


async def test_a_head_that_stalls_while_waiting_for_100_times_out() -> None:
    async def stalling(conn: support.Connection, head: bytes, script: Script) -> None:
        conn.write(b'HTTP/1.1 417 Exp')
        await conn.drain()
        await read_what_follows(conn, 5)

    script = Script()
    body = Body(b's' * 100)
    async with support.scripted_server(scripted(stalling, script)) as server:
        async with open_pool(expect_continue_timeout=0.05, response_head_timeout=0.3) \
                as request:
            started = time.monotonic()
            with pytest.raises(HttpTimeoutError, match='body was not sent') as raised:
                await asyncio.wait_for(request(b'PUT', server.url('/'),
                                               headers=body.headers(EXPECT), body=body), 5)
            assert isinstance(raised.value.__cause__, asyncio.TimeoutError)
            assert 0.25 <= time.monotonic() - started < 2
    assert body.calls == 0  # a response was on its way: the body waited for it


async def test_a_deadline_while_waiting_for_100_is_a_clean_timeout_error() -> None:
    async def silent(conn: support.Connection, head: bytes, script: Script) -> None:
        await read_what_follows(conn, 5)

    script = Script()
    body = Body(b't' * 100)
    async with support.scripted_server(scripted(silent, script)) as server:
        baseline = support.open_fds()
        async with open_pool(expect_continue_timeout=5) as request:
            with pytest.raises(asyncio.TimeoutError) as raised:
                async with lowhaio.deadline(0.1):
                    await request(b'PUT', server.url('/'), headers=body.headers(EXPECT),
                                  body=body)
            assert not isinstance(raised.value, HttpError)
            assert status(request).totals == {'idle': 0, 'in_use': 0, 'waiting': 0}
        assert await support.wait_for_fds(baseline) == baseline
    assert body.calls == 0


async def test_a_connection_error_before_the_head_is_still_retry_safe() -> None:
    # Nothing listens: the usual HttpConnectionError, whatever the expectation
    with socket.socket() as refusing:
        refusing.bind(('127.0.0.1', 0))  # bound, not listening: connections are refused
        body = Body(b'u')
        async with open_pool(expect_continue_timeout=5) as request:
            with pytest.raises(HttpConnectionError):
                await request(b'PUT', 'http://127.0.0.1:%d/' % (refusing.getsockname()[1],),
                              headers=body.headers(EXPECT), body=body)
    assert body.calls == 0
