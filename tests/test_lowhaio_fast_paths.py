"""What the shortcuts on the path of a repeated request must never change.

A Pool remembers the head it built for a request (by method, URL and headers) and the response
head it parsed last, and hands a body that arrived whole with its head over without a coroutine
per piece. Each shortcut must give exactly what the long way gives: the request bytes on the
wire, the response's framing for the method asked, and the async-iterator protocol of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from typing import Any, Iterator, List, Sequence, Tuple

import pytest

import lowhaio
from lowhaio import HttpInvalidRequestError, Pool, buffered, streamed
from support import Connection, scripted_server

OK_HEAD = b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n'


def request_line_and_headers(raw: bytes) -> Tuple[bytes, List[bytes]]:
    head = raw.split(b'\r\n\r\n', 1)[0]
    line, *fields = head.split(b'\r\n')
    return line, fields


# Requests to one server in turn, each (method, path, params, headers), as a caller mixes
# them: the same again, the same URL with params, other headers, unhashable headers, another
# method. Every one must reach the server as asked, whatever was memoised before it.
REQUEST_SEQUENCES = {
    'same request repeated': [
        (b'GET', '/a', (), ()),
        (b'GET', '/a', (), ()),
        (b'GET', '/a', (), ()),
    ],
    'params after the same URL without': [
        (b'GET', '/a', (), ()),
        (b'GET', '/a', (('k', 'v'),), ()),
        (b'GET', '/a', (), ()),
        (b'GET', '/a', (('k', 'w'),), ()),
    ],
    'headers differ, then the first again': [
        (b'GET', '/a', (), ((b'x-one', b'1'),)),
        (b'GET', '/a', (), ((b'x-one', b'2'),)),
        (b'GET', '/a', (), ()),
        (b'GET', '/a', (), ((b'x-one', b'1'),)),
    ],
    'unhashable headers between hashable ones': [
        (b'GET', '/a', (), ((b'x-one', b'1'),)),
        (b'GET', '/a', (), [(b'x-one', b'2')]),
        (b'GET', '/a', (), [(b'x-one', b'2')]),
        (b'GET', '/a', (), ((b'x-one', b'1'),)),
    ],
    'methods differ on one URL': [
        (b'GET', '/a', (), ()),
        (b'DELETE', '/a', (), ()),
        (b'OPTIONS', '/a', (), ()),
        (b'GET', '/a', (), ()),
    ],
    'URLs differ': [
        (b'GET', '/a', (), ()),
        (b'GET', '/b', (), ()),
        (b'GET', '/a?q=1', (), ()),
        (b'GET', '/a', (), ()),
    ],
}


def expected_line_and_fields(method: bytes, path: str, params: Sequence[Tuple[str, str]],
                             headers: Sequence[Tuple[bytes, bytes]], authority: bytes) \
        -> Tuple[bytes, List[bytes]]:
    query = '&'.join('%s=%s' % pair for pair in params)
    target = path + (('&' if '?' in path else '?') + query if query else '')
    return (b'%s %s HTTP/1.1' % (method, target.encode()),
            [b'host: ' + authority] + [b'%s: %s' % pair for pair in headers])


async def answer_every_request(conn: Connection) -> None:
    while await conn.read_request():
        conn.write(OK_HEAD + b'hello')
        await conn.drain()


@pytest.mark.parametrize('sequence', REQUEST_SEQUENCES.values(), ids=list(REQUEST_SEQUENCES))
async def test_each_request_is_sent_as_asked_whatever_came_before(
        sequence: List[Tuple[bytes, str, Any, Any]]) -> None:
    async with scripted_server(answer_every_request) as server:
        request, close = Pool()
        try:
            for method, path, params, headers in sequence:
                code, _, body = await request(method, server.url(path), params=params,
                                              headers=headers)
                assert (code, await buffered(body)) == (b'200', b'hello')
        finally:
            await close()
        authority = b'%s:%d' % (server.host.encode(), server.port)
        assert [request_line_and_headers(raw) for raw in server.requests] == [
            expected_line_and_fields(method, path, params, headers, authority)
            for method, path, params, headers in sequence]
        assert server.connections == 1
        assert not server.errors


async def test_requests_are_right_after_the_memo_of_heads_is_cleared() -> None:
    """Over a thousand distinct URLs empty the memo at least once; each is still sent as
    asked, and so is the first one again."""
    async with scripted_server(answer_every_request) as server:
        request, close = Pool()
        paths = ['/p%d' % (number,) for number in range(1100)] + ['/p0', '/p1099']
        try:
            for path in paths:
                code, _, body = await request(b'GET', server.url(path))
                assert (code, await buffered(body)) == (b'200', b'hello')
        finally:
            await close()
        assert [request_line_and_headers(raw)[0] for raw in server.requests] == [
            b'GET %s HTTP/1.1' % (path.encode(),) for path in paths]
        assert not server.errors


async def test_a_bodiless_request_with_a_memoised_content_length_is_still_refused() -> None:
    async with scripted_server(answer_every_request) as server:
        request, close = Pool()
        headers = ((b'content-length', b'5'),)
        try:
            for _ in range(3):
                code, _, body = await request(b'POST', server.url('/'), headers=headers,
                                              body=streamed(b'hello'))
                assert (code, await buffered(body)) == (b'200', b'hello')
                with pytest.raises(HttpInvalidRequestError, match='no body'):
                    await request(b'POST', server.url('/'), headers=headers)
        finally:
            await close()
        assert len(server.requests) == 3


# The response head repeated byte for byte, answered to these methods in this order. A HEAD
# response's content-length frames no body, so the same bytes must not be taken as they were
# for a GET (nor the reverse); "connection: close" in the request stops reuse however the
# response head was recognised.
HEAD_REPEATS = {
    'GET, GET, GET': [b'GET', b'GET', b'GET'],
    'GET, GET, HEAD, GET': [b'GET', b'GET', b'HEAD', b'GET'],
    'HEAD, HEAD, GET, GET': [b'HEAD', b'HEAD', b'GET', b'GET'],
    'GET, HEAD, GET, HEAD, GET': [b'GET', b'HEAD', b'GET', b'HEAD', b'GET'],
}


@pytest.mark.parametrize('methods', HEAD_REPEATS.values(), ids=list(HEAD_REPEATS))
async def test_a_repeated_response_head_is_framed_for_the_method_asked(
        methods: List[bytes]) -> None:
    async def answer(conn: Connection) -> None:
        while True:
            raw = await conn.read_request()
            if not raw:
                return
            conn.write(OK_HEAD + (b'' if raw.startswith(b'HEAD ') else b'hello'))
            await conn.drain()

    async with scripted_server(answer) as server:
        request, close = Pool(socket_timeout=2)
        try:
            for method in methods:
                code, headers, body = await asyncio.wait_for(request(method, server.url()), 5)
                assert code == b'200'
                assert headers == ((b'content-length', b'5'),)
                assert await asyncio.wait_for(buffered(body), 5) == (
                    b'' if method == b'HEAD' else b'hello')
        finally:
            await close()
        assert server.connections == 1
        assert not server.errors


@pytest.mark.parametrize('extra', [b'x', b'HTTP/1.1 200 OK\r\n'],
                         ids=['a stray byte', 'the start of another response'])
async def test_bytes_after_a_repeated_head_and_body_stop_reuse(extra: bytes) -> None:
    """The third response repeats the head the Pool recognises, then sends more than its
    content-length: that connection is closed, and the next request opens another."""
    sent = 0

    async def answer(conn: Connection) -> None:
        nonlocal sent
        while await conn.read_request():
            sent += 1
            conn.write(OK_HEAD + b'hello' + (extra if sent == 3 else b''))
            await conn.drain()

    async with scripted_server(answer) as server:
        request, close = Pool()
        try:
            for _ in range(4):
                code, _, body = await request(b'GET', server.url())
                assert (code, await buffered(body)) == (b'200', b'hello')
        finally:
            await close()
        assert server.connections == 2
        assert not server.errors


@pytest.mark.parametrize('closes', [False, True], ids=['keep-alive', 'connection: close'])
async def test_connection_close_in_the_request_is_honoured_on_a_repeated_head(
        closes: bool) -> None:
    async with scripted_server(answer_every_request) as server:
        request, close = Pool()
        headers = ((b'connection', b'close'),) if closes else ()
        try:
            for _ in range(4):
                code, _, body = await request(b'GET', server.url(), headers=headers)
                assert (code, await buffered(body)) == (b'200', b'hello')
        finally:
            await close()
        assert server.connections == (4 if closes else 1)


async def test_a_body_that_arrived_whole_keeps_the_async_iterator_protocol() -> None:
    async with scripted_server(answer_every_request) as server:
        request, close = Pool()
        try:
            _, _, body = await request(b'GET', server.url())
            assert body.__aiter__() is body
            assert await body.__anext__() == b'hello'
            with pytest.raises(StopAsyncIteration):
                await body.__anext__()
            with pytest.raises(StopAsyncIteration):
                await body.__anext__()

            _, _, body = await request(b'GET', server.url())
            assert [chunk async for chunk in body] == [b'hello']
            assert [chunk async for chunk in body] == []

            _, _, body = await request(b'GET', server.url())
            await body.aclose()
            assert [chunk async for chunk in body] == []

            _, _, body = await request(b'GET', server.url())
            pieces = []
            while True:
                try:
                    pieces.append(await asyncio.wait_for(body.__anext__(), 5))
                except StopAsyncIteration:
                    break
            assert pieces == [b'hello']

            if sys.version_info >= (3, 10):
                # anext() with a default takes the end from the awaitable: a body whose
                # __anext__ raised it itself made CPython 3.11 crash here
                _, _, body = await request(b'GET', server.url())
                assert await anext(body, b'end') == b'hello'  # noqa: F821 - 3.10+
                assert await anext(body, b'end') == b'end'  # noqa: F821 - 3.10+
        finally:
            await close()
        assert server.connections == 1


async def test_reads_stay_under_mallocs_mmap_threshold() -> None:
    # asyncio's socket transport reads into a new bytes object of its max_size each time; at
    # its default, 256 KiB, glibc maps that afresh from the kernel and unmaps it when the read
    # shrinks it: two page faults for every small response (a third of the CPU at 64
    # concurrent requests). Below 128 KiB it comes from the heap. uvloop and TLS transports
    # read into buffers they keep, and have no max_size.
    async with scripted_server(answer_every_request) as server:
        loop = asyncio.get_running_loop()
        transport, connection = await loop.create_connection(
            lambda: lowhaio._Connection(loop, ('http', '127.0.0.1', server.port),
                                        '127.0.0.1', 15),
            '127.0.0.1', server.port)
        try:
            if isinstance(loop, asyncio.BaseEventLoop):
                assert transport.max_size + 64 < 128 * 1024
            else:
                assert not hasattr(transport, 'max_size')
        finally:
            connection.close()


# Debug logging switched on and off between requests on one pool, as an application does: each
# request logs exactly when the "lowhaio" logger would log a debug record at that moment (the
# pool looks up logging's own record of the level first, which logging clears on each change).
LOGGING_CHANGES = {
    'level set, then lowered': [logging.WARNING, logging.DEBUG, logging.INFO, logging.DEBUG],
    'parent level decides': ['root-debug', logging.WARNING, 'root-debug'],
    'logger disabled after logging': [logging.DEBUG, 'disabled', logging.DEBUG],
    'logging.disable() between': [logging.DEBUG, 'disable-all', logging.DEBUG],
}


class _RecordCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize('changes', LOGGING_CHANGES.values(), ids=list(LOGGING_CHANGES))
async def test_debug_logging_follows_every_level_change(changes: List[Any]) -> None:
    logger = logging.getLogger('lowhaio')
    root = logging.getLogger()
    saved = (logger.level, logger.disabled, root.level, logger.manager.disable)
    counter = _RecordCounter()
    logger.addHandler(counter)
    try:
        async with scripted_server(answer_every_request) as server:
            request, close = Pool()
            try:
                for change in changes:
                    logger.disabled = False
                    logging.disable(logging.NOTSET)
                    if change == 'root-debug':
                        logger.setLevel(logging.NOTSET)
                        root.setLevel(logging.DEBUG)
                    elif change == 'disabled':
                        logger.disabled = True
                    elif change == 'disable-all':
                        logging.disable(logging.CRITICAL)
                    else:
                        logger.setLevel(change)
                    expected = logger.isEnabledFor(logging.DEBUG)
                    before = len(counter.records)
                    _, _, body = await request(b'GET', server.url())
                    assert [chunk async for chunk in body] == [b'hello']
                    logged = any('connection to' in record.getMessage()
                                 for record in counter.records[before:])
                    assert logged == expected, change
            finally:
                await close()
    finally:
        logger.removeHandler(counter)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
        root.setLevel(saved[2])
        logging.disable(saved[3])


class _FutureCountingLoop(asyncio.SelectorEventLoop):
    """A loop with a create_future of its own, as uvloop and others have."""

    def __init__(self) -> None:
        super().__init__()
        self.futures_made = 0

    def create_future(self) -> 'asyncio.Future[Any]':
        self.futures_made += 1
        return super().create_future()


def _answer_in_a_thread(listener: socket.socket) -> None:
    # A blocking server on a thread of its own, so that every future on the loop is the client's
    conn, _ = listener.accept()
    with conn:
        received = b''
        while True:
            data = conn.recv(65536)
            if not data:
                return
            received += data
            while b'\r\n\r\n' in received:
                _, received = received.split(b'\r\n\r\n', 1)
                conn.sendall(OK_HEAD + b'hello')


@contextlib.contextmanager
def _server_on_a_thread() -> Iterator[str]:
    """The URL of a server answering every request with "hello", from a thread of its own."""
    listener = socket.create_server(('127.0.0.1', 0))
    thread = threading.Thread(target=_answer_in_a_thread, args=(listener,), daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d/' % (listener.getsockname()[1],)
    finally:
        listener.close()
        thread.join(5)


def test_a_loop_with_its_own_create_future_makes_the_futures() -> None:
    # asyncio's own loops have their futures made without the call to create_future; any other
    # loop's own method is used, for every wait on a response head
    loop = _FutureCountingLoop()

    async def futures_made_by_reused_requests(url: str) -> int:
        request, close = Pool()
        try:
            _, _, body = await request(b'GET', url)
            assert [chunk async for chunk in body] == [b'hello']
            made = loop.futures_made
            for _ in range(3):
                _, _, body = await request(b'GET', url)
                assert [chunk async for chunk in body] == [b'hello']
            return loop.futures_made - made
        finally:
            await close()
    try:
        with _server_on_a_thread() as url:
            assert loop.run_until_complete(futures_made_by_reused_requests(url)) >= 3
    finally:
        loop.close()


class _ShiftedClockLoop(asyncio.SelectorEventLoop):
    """A loop whose clock is not time.monotonic(): deadlines must be read on it."""

    def time(self) -> float:
        return super().time() + 1000


def test_a_loop_with_its_own_clock_times_everything_by_it() -> None:
    # asyncio's own loops have their clock read without the call to loop.time(); any other
    # loop's own clock is used: a deadline on another clock would be long past, or far off
    loop = _ShiftedClockLoop()

    async def requests(url: str) -> List[bool]:
        request, close = Pool(socket_timeout=5, keep_alive_timeout=5)
        try:
            reused = []
            for _ in range(4):
                _, _, body = await request(b'GET', url)
                assert [chunk async for chunk in body] == [b'hello']
                # the idle connection's expiry is on the loop's clock too: it is still there
                await asyncio.sleep(0.05)
                reused.append(request.status().totals['idle'] == 1)
            return reused
        finally:
            await close()
    try:
        with _server_on_a_thread() as url:
            assert loop.run_until_complete(asyncio.wait_for(requests(url), 30)) == [True] * 4
    finally:
        loop.close()


# A response still in flight when close() is called: its connection is closed once the response
# is finished, never pooled (the pool marks its host records closed, and release looks there),
# whether the body came whole with the head or streamed after it, and whether or not the pool is
# used again for the same host meanwhile.
@pytest.mark.parametrize('used_again', [False, True], ids=['not used again', 'used again'])
@pytest.mark.parametrize('path', ['/whole', '/streamed'])
async def test_a_response_in_flight_at_close_is_never_pooled(path: str, used_again: bool) -> None:
    asked = asyncio.Event()
    go = asyncio.Event()
    opened: List[int] = []  # the connections in the order they came, numbered from 0
    ended: List[int] = []  # the numbers of those the client closed

    async def answer(conn: Connection) -> None:
        number = len(opened)
        opened.append(number)
        while True:
            raw = await conn.read_request()
            if not raw:
                ended.append(number)
                return
            if b'/whole' in raw or b'/streamed' in raw:
                asked.set()
                await go.wait()
            if b'/streamed' in raw:
                conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello')
                await conn.drain()
                await asyncio.sleep(0.05)
                conn.write(b'world')
            else:
                conn.write(OK_HEAD + b'hello')
            await conn.drain()

    async with scripted_server(answer) as server:
        request, close = Pool()
        try:
            in_flight = asyncio.ensure_future(request(b'GET', server.url(path)))
            await asyncio.wait_for(asked.wait(), 5)
            await close()
            if used_again:
                _, _, body = await request(b'GET', server.url('/again'))
                assert [chunk async for chunk in body] == [b'hello']
            go.set()
            _, _, body = await asyncio.wait_for(in_flight, 5)
            assert b''.join([chunk async for chunk in body]) == \
                (b'helloworld' if path == '/streamed' else b'hello')
            for _ in range(100):
                if 0 in ended:
                    break
                await asyncio.sleep(0.02)
            assert 0 in ended  # the in-flight one's connection, closed by the client
            assert request.status().totals['idle'] == (1 if used_again else 0)
        finally:
            await close()
# Response heads in turn from one server: the same head again, heads with a line new each
# time (a request id), and a head seen before coming back after new ones. A head with a new
# line is not memoised whole; each must still give its own headers and framing.
RESPONSE_HEAD_SEQUENCES = {
    'unique request ids': ['id', 'id', 'id', 'id'],
    'repeated, then unique, then repeated': ['same', 'same', 'id', 'id', 'same', 'same'],
    'unique ids with lengths that change': ['id', 'id-7', 'id', 'id-7', 'same'],
    'unique ids, chunked among them': ['id', 'chunked-id', 'id', 'chunked-id', 'same'],
}


@pytest.mark.parametrize('kinds', RESPONSE_HEAD_SEQUENCES.values(),
                         ids=list(RESPONSE_HEAD_SEQUENCES))
async def test_heads_with_new_lines_give_their_own_headers_and_framing(
        kinds: List[str]) -> None:
    sent: List[Tuple[Tuple[bytes, bytes], ...]] = []

    async def answer(conn: Connection) -> None:
        for kind in kinds:
            if not await conn.read_request():
                return
            body = b'hello' if not kind.endswith('-7') else b'goodbye'
            fields: List[Tuple[bytes, bytes]] = [(b'server', b'test')]
            if kind != 'same':
                fields.append((b'x-request-id', b'%032x' % len(sent)))
            if kind.startswith('chunked'):
                fields.append((b'transfer-encoding', b'chunked'))
                payload = b'%x\r\n%s\r\n0\r\n\r\n' % (len(body), body)
            else:
                fields.append((b'content-length', b'%d' % len(body)))
                payload = body
            sent.append(tuple(fields))
            conn.write(b'HTTP/1.1 200 OK\r\n' + b''.join(
                b'%s: %s\r\n' % field for field in fields) + b'\r\n' + payload)
            await conn.drain()

    async with scripted_server(answer) as server:
        request, close = Pool(socket_timeout=2)
        try:
            for index, kind in enumerate(kinds):
                code, headers, body = await asyncio.wait_for(request(b'GET', server.url()), 5)
                assert code == b'200'
                assert headers == sent[index]
                assert await asyncio.wait_for(buffered(body), 5) == (
                    b'goodbye' if kind.endswith('-7') else b'hello')
        finally:
            await close()
        assert server.connections == 1
        assert not server.errors
