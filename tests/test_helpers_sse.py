"""lowhaio_sse: event streams parsed by the WHATWG HTML rules however the bytes are split and
whichever line endings are used, reconnection with Last-Event-ID after the server's retry
delay, 204 to stop, errors for what is not an event stream, and bounded memory against endless
lines. Servers: scripted raw sockets for exact bytes, sse-starlette under uvicorn, aiohttp.web.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from typing import List, Tuple

import pytest
from aiohttp import web
from asgi_support import servers_in_a_thread, uvicorn_server
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from support import scripted_server, web_server

from lowhaio import HttpConnectionClosedError, HttpConnectionError, HttpDataError, Pool
from lowhaio_defaults import with_defaults
from lowhaio_redirect import redirectable
from lowhaio_retry import retry
from lowhaio_sse import Event, EventStreamError, EventStreamParser, events

STREAM_HEAD = (b'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n'
               b'cache-control: no-store\r\n\r\n')


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


async def collect(iterator, limit: int = 1000) -> List[Event]:
    collected = []
    async for event in iterator:
        collected.append(event)
        if len(collected) >= limit:
            break
    return collected


async def no_sleep(_: float) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# The parsing matrix: every rule, every line ending, every way of splitting the bytes
# ---------------------------------------------------------------------------------------------

# Lines of a stream (joined by the line ending under test) and the events the WHATWG rules give.
# The first four blocks are the standard's own examples.
STREAM_LINES = [
    # "data: YHOO / data: +2 / data: 10": one event, its data the lines joined by LF
    'data: YHOO', 'data: +2', 'data: 10', '',
    # Comment, id, an id field without a value resetting the id, two leading spaces
    ': test stream', '', 'data: first event', 'id: 1', '', 'data:second event', 'id', '',
    'data:  third event', '',
    # "data" with no colon is a data field with an empty value; "data\ndata" gives one LF
    'data', '', 'data', 'data', '',
    'data:test', '', 'data: test', '',
    # Named event, retry, unknown fields, colons in values, a non-ASCII id
    'event: update', 'data: a:b: c', 'retry: 2500', 'unknown: x', 'id: é-7', '',
    # The type does not carry over to the next event; the id does
    'data: plain again', '',
    # retry must be digits only: all of these are ignored
    'retry: 12a', 'retry: -1', 'retry: ', 'retry: ١٢', 'retry: 1.5', 'data: kept', '',
    # id with NUL is ignored; "event" without data dispatches nothing but consumes the type
    'id: bad\0id', 'event: lost', '', 'data: after', '',
    # Field names are case-sensitive; a space before the colon is part of the name
    'Data: no', 'data : no', 'DATA: no', 'data: yes', '',
    # Invalid UTF-8 becomes U+FFFD, not an error
    'data: \udcff\udcfe', '',
    # An event cut off by the end of the stream is never dispatched
    'data: incomplete',
]

EXPECTED_EVENTS = [
    Event('message', 'YHOO\n+2\n10', '', None),
    Event('message', 'first event', '1', None),
    Event('message', 'second event', '', None),
    Event('message', ' third event', '', None),
    Event('message', '', '', None),
    Event('message', '\n', '', None),
    Event('message', 'test', '', None),
    Event('message', 'test', '', None),
    Event('update', 'a:b: c', 'é-7', 2500),
    Event('message', 'plain again', 'é-7', None),
    Event('message', 'kept', 'é-7', None),
    Event('message', 'after', 'é-7', None),
    Event('message', 'yes', 'é-7', None),
    Event('message', '\ufffd\ufffd', 'é-7', None),
]

LINE_ENDINGS = {'LF': '\n', 'CR': '\r', 'CRLF': '\r\n'}


def stream_bytes(ending: str, bom: bool = False) -> bytes:
    text = ending.join(STREAM_LINES)
    data = text.encode('utf-8', errors='surrogateescape')
    return (b'\xef\xbb\xbf' if bom else b'') + data


def mixed_endings_stream() -> bytes:
    endings = ['\n', '\r', '\r\n']
    text = ''.join(line + endings[index % 3] for index, line in enumerate(STREAM_LINES[:-1]))
    return (text + STREAM_LINES[-1]).encode('utf-8', errors='surrogateescape')


def streams() -> List[Tuple[str, bytes]]:
    cases = [(name, stream_bytes(ending)) for name, ending in LINE_ENDINGS.items()]
    cases.append(('mixed', mixed_endings_stream()))
    cases.append(('CRLF-with-BOM', stream_bytes('\r\n', bom=True)))
    return cases


STREAMS = streams()


def split_points(data: bytes) -> List[Tuple[bytes, ...]]:
    """The stream whole, then in two pieces at every position."""
    return [(data,)] + [(data[:at], data[at:]) for at in range(1, len(data))]


@pytest.mark.parametrize('name, data', STREAMS, ids=[name for name, _ in STREAMS])
def test_the_parser_gives_the_same_events_however_the_bytes_are_split(name, data):
    for pieces in split_points(data) + [tuple(data[at:at + 1] for at in range(len(data)))]:
        parser = EventStreamParser()
        parsed = [event for piece in pieces for event in parser.feed(piece)]
        assert parsed == EXPECTED_EVENTS, pieces
        assert parser.reconnection_time == 2500


def scripted_stream(pieces: List[Tuple[bytes, ...]], seen_requests: List[bytes]):
    """Each connection gets the next way of splitting the stream, written piece by piece with
    a pause between, so each piece arrives in its own read; then 204 stops the client."""
    remaining = list(pieces)

    async def handler(conn) -> None:
        seen_requests.append(await conn.read_head())
        if not remaining:
            conn.write(b'HTTP/1.1 204 No Content\r\n\r\n')
            return
        conn.write(STREAM_HEAD)
        pieces = remaining.pop(0)
        # A real pause between two pieces; byte by byte, each write is its own send() and
        # most arrive alone, without hundreds of pauses
        pause = 0.002 if len(pieces) <= 2 else 0
        for piece in pieces:
            conn.write(piece)
            await conn.drain()
            await asyncio.sleep(pause)
    return handler


@pytest.mark.parametrize('name, data', STREAMS, ids=[name for name, _ in STREAMS])
async def test_through_a_socket_split_at_every_point(request_, name, data):
    # A selection of split points keeps the test quick; the parser test above covers all
    ways = split_points(data)
    ways = ways[:1] + ways[1::11] + [tuple(data[at:at + 1] for at in range(len(data)))]
    seen: List[bytes] = []
    async with scripted_stream_server(ways, seen) as server:
        received = await collect(events(request_, server.url('/'), sleep=no_sleep))
    # A reconnection starts with the last event ID string it resumed from: the first event,
    # before any id field, carries it
    resumed = [EXPECTED_EVENTS[0]._replace(id='é-7')] + EXPECTED_EVENTS[1:]
    assert received == EXPECTED_EVENTS + resumed * (len(ways) - 1)
    # Each reconnection resumes from the last event ID dispatched before it
    assert all(b'\r\nlast-event-id: \xc3\xa9-7\r\n' in head for head in seen[1:])
    assert b'last-event-id' not in seen[0].lower()


def scripted_stream_server(ways, seen):
    return scripted_server(scripted_stream(ways, seen))


# ---------------------------------------------------------------------------------------------
# Reconnecting
# ---------------------------------------------------------------------------------------------

def connections_answering(*answers: bytes, then_reset: Tuple[int, ...] = ()):
    """Each connection gets the next answer; the connections numbered in then_reset end with
    a RST rather than a FIN. Records each request head."""
    heads: List[bytes] = []
    remaining = list(answers)

    async def handler(conn) -> None:
        heads.append(await conn.read_head())
        number = len(heads) - 1
        conn.write(remaining.pop(0) if remaining else b'HTTP/1.1 204 No Content\r\n\r\n')
        await conn.drain()
        if number in then_reset:
            conn.reset()
    return handler, heads


@pytest.mark.parametrize('ending', ['fin', 'rst'])
async def test_a_dropped_stream_reconnects_with_last_event_id_after_retry(request_, ending):
    handler, heads = connections_answering(
        STREAM_HEAD + b'retry: 150\nid: 41\ndata: a\n\nid: 42\ndata: b\n\nid: 43\ndata: cut',
        STREAM_HEAD + b'data: c\n\n',
        then_reset=(0,) if ending == 'rst' else ())
    async with scripted_server(handler) as server:
        started = time.monotonic()
        received = await collect(events(request_, server.url('/'), last_event_id='40'))
        elapsed = time.monotonic() - started
    assert [(event.data, event.id) for event in received] == [('a', '41'), ('b', '42'),
                                                              ('c', '42')]
    assert [head.split(b'last-event-id: ')[1].split(b'\r\n')[0] for head in heads] == \
        [b'40', b'42', b'42']  # the cut event's id 43 was never dispatched
    assert elapsed >= 2 * 0.150  # the server's retry before each of the two reconnections
    assert all(b'\r\naccept: text/event-stream\r\n' in head for head in heads)


async def test_without_a_retry_field_the_default_delay_is_used(request_):
    slept: List[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)
    handler, _ = connections_answering(STREAM_HEAD + b'data: a\n\n',
                                       STREAM_HEAD + b'retry: 20\n\n', STREAM_HEAD)
    async with scripted_server(handler) as server:
        await collect(events(request_, server.url('/'), reconnection_time=1.25, sleep=record))
    assert slept == [1.25, 0.02, 0.02]  # a retry applies to every later reconnection


async def test_a_huge_retry_is_capped(request_):
    slept: List[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)
    handler, _ = connections_answering(STREAM_HEAD + b'retry: ' + b'9' * 10000 + b'\n\n')
    async with scripted_server(handler) as server:
        await collect(events(request_, server.url('/'), max_reconnection_time=7, sleep=record))
    assert slept == [7]


@pytest.mark.parametrize('answer', [
    b'HTTP/1.1 204 No Content\r\n\r\n',
    b'HTTP/1.1 204 No Content\r\ncontent-type: text/event-stream\r\n\r\n',
])
async def test_204_stops_at_once_and_for_good(request_, answer):
    handler, heads = connections_answering(answer, STREAM_HEAD + b'data: never\n\n')
    async with scripted_server(handler) as server:
        assert await collect(events(request_, server.url('/'))) == []
    assert len(heads) == 1


async def test_reconnection_gives_up_after_max_reconnect_attempts(request_):
    refusing = []

    async def handler(conn) -> None:
        await conn.read_head()
        if refusing:
            conn.reset()
            return
        refusing.append(True)
        conn.write(STREAM_HEAD + b'data: only\n\n')

    async with scripted_server(handler) as server:
        received = []
        with pytest.raises(HttpDataError):
            async for event in events(request_, server.url('/'), max_reconnect_attempts=3,
                                      sleep=no_sleep):
                received.append(event.data)
        assert received == ['only']
        assert server.connections == 1 + 1 + 3


async def test_a_first_request_that_fails_raises_at_once(request_):
    import socket
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    try:
        with pytest.raises(HttpConnectionError):
            await collect(events(request_, f'http://127.0.0.1:{sock.getsockname()[1]}/'))
    finally:
        sock.close()


async def test_an_idle_stream_that_times_out_reconnects():
    request, close = Pool(socket_timeout=0.2)
    handler, heads = connections_answering(STREAM_HEAD + b'id: 1\ndata: a\n\n')
    try:
        async with scripted_server(handler) as server:
            # the first connection stays open and silent: lowhaio's socket_timeout ends it
            received = await collect(events(request, server.url('/'), sleep=no_sleep))
    finally:
        await close()
    assert [event.data for event in received] == ['a']
    assert b'last-event-id: 1\r\n' in heads[1]


# ---------------------------------------------------------------------------------------------
# Not an event stream
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('head, code', [
    (b'HTTP/1.1 404 Not Found\r\ncontent-type: text/event-stream\r\ncontent-length: 0\r\n\r\n',
     b'404'),
    (b'HTTP/1.1 500 Oops\r\ncontent-type: text/event-stream\r\ncontent-length: 0\r\n\r\n',
     b'500'),
    (b'HTTP/1.1 301 Moved\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n', b'301'),
    (b'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\r\ndata: x\n', b'200'),
    (b'HTTP/1.1 200 OK\r\ncontent-type: text/event-streams\r\n\r\ndata: x\n\n', b'200'),
    (b'HTTP/1.1 200 OK\r\n\r\ndata: x\n\n', b'200'),
])
async def test_other_statuses_and_content_types_raise(request_, head, code):
    handler, heads = connections_answering(head)
    async with scripted_server(handler) as server:
        with pytest.raises(EventStreamError, match='Not an event stream') as raised:
            await collect(events(request_, server.url('/')))
        assert raised.value.code == code
        assert isinstance(raised.value, HttpDataError)
        assert len(heads) == 1  # no reconnection
        assert all(counts['in_use'] == 0 for counts in request_.status().values())


@pytest.mark.parametrize('content_type', [
    b'text/event-stream', b'TEXT/Event-Stream', b'text/event-stream; charset=utf-8',
    b'text/event-stream ;charset=utf-8'])
async def test_content_type_parameters_and_case_are_accepted(request_, content_type):
    handler, _ = connections_answering(
        b'HTTP/1.1 200 OK\r\ncontent-type: ' + content_type + b'\r\n\r\ndata: x\n\n')
    async with scripted_server(handler) as server:
        received = await collect(events(request_, server.url('/'), sleep=no_sleep))
    assert [event.data for event in received] == ['x']


# ---------------------------------------------------------------------------------------------
# Hostile streams: bounded memory
# ---------------------------------------------------------------------------------------------

def endless(prefix: bytes, unit: bytes):
    async def handler(conn) -> None:
        await conn.read_head()
        conn.write(STREAM_HEAD + prefix)
        try:
            while True:
                conn.write(unit * 4096)
                await conn.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
    return handler


@pytest.mark.parametrize('kind, prefix, unit', [
    ('data-line', b'data: ', b'x'),
    ('comment', b':', b'y'),
    ('field-name', b'', b'z'),
    ('multibyte', b'data: ', '€'.encode()),
    ('data-lines-without-blank', b'', b'data: abcdefgh\n'),
    ('cr-data-lines', b'', b'data: abcdefgh\r'),
])
async def test_an_endless_line_or_event_raises_in_bounded_memory(request_, kind, prefix, unit):
    async with scripted_server(endless(prefix, unit)) as server:
        tracemalloc.start()
        try:
            with pytest.raises(EventStreamError, match='max_event_size'):
                await collect(events(request_, server.url('/'), max_event_size=256 * 1024))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert all(counts['in_use'] == 0 for counts in request_.status().values())
    assert peak < 8 * 1024 * 1024, peak


# ---------------------------------------------------------------------------------------------
# Real servers: sse-starlette under uvicorn, aiohttp.web
# ---------------------------------------------------------------------------------------------

async def starlette_stream(request: Request) -> EventSourceResponse:
    """Events numbered after Last-Event-ID; 'n' of them per connection, then it ends; 204 from
    number 'stop' on."""
    start = int(request.headers.get('last-event-id', '0'))
    per_connection = int(request.query_params.get('n', '3'))
    stop = int(request.query_params.get('stop', '6'))
    if start >= stop:
        return EventSourceResponse(iter(()), status_code=204)

    async def numbered():
        for number in range(start + 1, min(start + per_connection, stop) + 1):
            yield ServerSentEvent(data=f'line one {number}\nline two', event='tick',
                                  id=str(number), retry=10)
            yield {'comment': 'keep-alive'}
    return EventSourceResponse(numbered(),
                               sep=LINE_ENDINGS[request.query_params.get('sep', 'CRLF')])


@pytest.fixture(scope='module')
def starlette_url():
    app = Starlette(routes=[Route('/events', starlette_stream)])
    with servers_in_a_thread(lambda: uvicorn_server(app)) as (server,):
        yield server.url


@pytest.mark.parametrize('sep', list(LINE_ENDINGS))
@pytest.mark.parametrize('per_connection', [1, 2, 6])
async def test_sse_starlette_events_resume_across_reconnections(request_, starlette_url, sep,
                                                                per_connection):
    url = starlette_url(f'/events?n={per_connection}&stop=6&sep={sep}')
    received = await collect(events(request_, url))
    assert received == [Event('tick', f'line one {number}\nline two', str(number), 10)
                        for number in range(1, 7)]


async def test_sse_starlette_from_a_given_last_event_id(request_, starlette_url):
    received = await collect(events(request_, starlette_url('/events?n=10&stop=6'),
                                    last_event_id='4'))
    assert [event.id for event in received] == ['5', '6']


@pytest.mark.parametrize('closing', ['aclosing', 'garbage-collected'])
async def test_leaving_the_loop_early_closes_the_connection(request_, starlette_url, closing):
    url = starlette_url('/events?n=1000&stop=1000')
    if closing == 'aclosing':
        async with contextlib.aclosing(events(request_, url)) as stream:
            async for event in stream:
                assert event.id == '1'
                break
        assert all(counts['in_use'] == 0 for counts in request_.status().values())
    else:
        # A plain break leaves the generator to be closed when it is collected, as for any
        # async generator: the event loop's finaliser then closes the connection
        async for event in events(request_, url):
            assert event.id == '1'
            break
        for _ in range(100):
            if all(counts['in_use'] == 0 for counts in request_.status().values()):
                break
            await asyncio.sleep(0.01)
        assert all(counts['in_use'] == 0 for counts in request_.status().values())


def aiohttp_stream_app(drops: List[int]) -> web.Application:
    """Sends three events per connection, then drops the connection mid-event (no FIN of a
    complete stream: the transport is aborted), resuming from Last-Event-ID; 204 after 9."""
    async def stream(request: web.Request) -> web.StreamResponse:
        start = int(request.headers.get('last-event-id', '0'))
        if start >= 9:
            return web.Response(status=204)
        response = web.StreamResponse(headers={'content-type': 'text/event-stream'})
        await response.prepare(request)
        for number in range(start + 1, start + 4):
            await response.write(b'id: %d\ndata: {"n": %d}\n\n' % (number, number))
        await response.write(b'id: 999\ndata: never dispatched')
        drops.append(start)
        assert request.transport is not None
        request.transport.abort()
        return response
    app = web.Application()
    app.router.add_get('/stream', stream)
    return app


async def test_aiohttp_web_stream_dropped_mid_event(request_):
    drops: List[int] = []
    async with web_server(aiohttp_stream_app(drops)) as server:
        received = await collect(events(request_, server.url('/stream'), reconnection_time=0.01))
    assert [(event.id, event.data) for event in received] == \
        [(str(n), '{"n": %d}' % n) for n in range(1, 10)]
    assert drops == [0, 3, 6]


# ---------------------------------------------------------------------------------------------
# With the other helpers
# ---------------------------------------------------------------------------------------------

async def test_under_redirectable_and_with_defaults(request_, starlette_url):
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(starlette_url('/events?n=2&stop=4'))
    app = web.Application()
    app.router.add_get('/v1/old-stream', moved)
    async with web_server(app) as server:
        api = with_defaults(redirectable(request_), base_url=server.url('/v1/'),
                            headers=((b'x-client', b'test'),))
        received = await collect(events(api, 'old-stream'))
    assert [event.id for event in received] == ['1', '2', '3', '4']


async def test_under_retry_a_failing_first_request_is_retried(request_):
    handler, heads = connections_answering(b'', STREAM_HEAD + b'id: 1\ndata: a\n\n',
                                           then_reset=(0,))
    retrying = retry(request_, exception_intervals=((HttpConnectionClosedError, [0]),),
                     sleep=no_sleep)
    async with scripted_server(handler) as server:
        received = await collect(events(retrying, server.url('/'), sleep=no_sleep))
    assert [event.data for event in received] == ['a']
    assert len(heads) == 3  # reset and retried, the stream, and the 204 that ends it
