"""lowhaio_retry: what is retried, how long it waits, and that each attempt is a full request."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import itertools
import socket
import time
from typing import List

import pytest
from aiohttp import web
from support import scripted_server, web_server

import lowhaio
from lowhaio import HttpConnectionError, HttpDataError, Pool, buffered, streamed
from lowhaio_retry import (
    IDEMPOTENT_METHODS,
    default_exception_intervals,
    exponential_backoff,
    retry,
    retry_after_seconds,
)


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


class RecordingSleep:
    """Records the intervals instead of waiting, and can run something at the n-th sleep."""

    def __init__(self, on_sleep=None) -> None:
        self.intervals: List[float] = []
        self.on_sleep = on_sleep

    async def __call__(self, seconds: float) -> None:
        self.intervals.append(seconds)
        if self.on_sleep is not None:
            await self.on_sleep(len(self.intervals))


def refusing_port() -> socket.socket:
    """A bound socket that is not listening: connecting to its port is refused, and no one else
    can take the port until it is closed."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    return sock


def ok_app(seen: list) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read()))
        return web.Response(body=b'ok')
    app = web.Application()
    app.add_routes([web.route('*', '/', handler)])
    return app


# ---------------------------------------------------------------------------------------------
# exponential_backoff
# ---------------------------------------------------------------------------------------------

def test_backoff_windows_double_up_to_the_cap():
    upper_bounds = list(exponential_backoff(base=0.1, cap=1.0, max_count=6,
                                            jitter=lambda low, high: high))
    assert upper_bounds == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_has_full_jitter_within_each_window():
    windows = list(exponential_backoff(base=1.0, cap=8.0, max_count=5,
                                       jitter=lambda low, high: (low, high)))
    assert windows == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 8.0), (0.0, 8.0)]
    intervals = list(exponential_backoff(base=1.0, cap=8.0, max_count=2000))
    assert all(0.0 <= interval <= 8.0 for interval in intervals)
    assert len(set(intervals)) > 1000  # random, not a fixed schedule
    assert min(intervals[10:]) < 1.0
    assert max(intervals[10:]) > 7.0


def test_backoff_without_max_count_yields_forever_and_restarts_per_iteration():
    backoff = exponential_backoff(base=1.0, cap=2.0, jitter=lambda low, high: high)
    assert list(itertools.islice(backoff, 10_000))[-1] == 2.0
    assert list(itertools.islice(backoff, 3)) == [1.0, 2.0, 2.0]  # fresh from the start


# ---------------------------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------------------------

async def test_connection_error_retried_until_server_is_up(request_):
    seen: list = []
    blocker = refusing_port()
    port = blocker.getsockname()[1]
    servers = []

    async def start_server_on_second_sleep(count: int) -> None:
        if count == 2:
            blocker.close()
            server = web_server(ok_app(seen), port=port)
            servers.append(server)
            await server.__aenter__()

    sleep = RecordingSleep(start_server_on_second_sleep)
    retriable = retry(request_, exception_intervals=((HttpConnectionError, (0.5, 1.5, 2.5, 3.5)),),
                      sleep=sleep)
    try:
        code, _, body = await retriable(
            b'POST', f'http://127.0.0.1:{port}/', body=streamed(b'data'),
            headers=((b'content-length', b'4'),))
        assert (code, await buffered(body)) == (b'200', b'ok')
    finally:
        blocker.close()
        for server in servers:
            await server.__aexit__(None, None, None)
    assert sleep.intervals == [0.5, 1.5]
    assert seen == [('POST', b'data')]


async def test_exception_raised_when_intervals_run_out(request_):
    blocker = refusing_port()
    sleep = RecordingSleep()
    retriable = retry(request_, exception_intervals=((HttpConnectionError, (0, 1)),), sleep=sleep)
    with blocker, pytest.raises(HttpConnectionError):
        await retriable(b'GET', f'http://127.0.0.1:{blocker.getsockname()[1]}/')
    assert sleep.intervals == [0, 1]


@pytest.mark.parametrize('exception_intervals', [(), ((HttpConnectionError, ()),),
                                                 ((HttpDataError, (0, 0)),)])
async def test_no_retry_when_no_rule_allows_it(request_, exception_intervals):
    blocker = refusing_port()
    sleep = RecordingSleep()
    retriable = retry(request_, exception_intervals=exception_intervals, sleep=sleep)
    with blocker, pytest.raises(HttpConnectionError):
        await retriable(b'GET', f'http://127.0.0.1:{blocker.getsockname()[1]}/')
    assert sleep.intervals == []


async def test_infinite_generator_function_and_fresh_intervals_per_call(request_):
    blocker = refusing_port()
    port = blocker.getsockname()[1]
    sleep = RecordingSleep()
    retriable = retry(request_, sleep=sleep, exception_intervals=(
        (HttpConnectionError, lambda: (i / 10 for i in itertools.count())),))

    async def give_up_after(count: int) -> None:
        if count % 50 == 0:
            raise RuntimeError('stop the infinite retries')

    sleep.on_sleep = give_up_after
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await retriable(b'GET', f'http://127.0.0.1:{port}/')
    blocker.close()
    # Each call started its own iterator from the first interval
    assert sleep.intervals[:3] == sleep.intervals[50:53] == [0.0, 0.1, 0.2]
    assert len(sleep.intervals) == 100


async def test_tuple_intervals_restart_for_each_call(request_):
    blocker = refusing_port()
    sleep = RecordingSleep()
    retriable = retry(request_, exception_intervals=((HttpConnectionError, (0.25,)),), sleep=sleep)
    with blocker:
        for _ in range(3):
            with pytest.raises(HttpConnectionError):
                await retriable(b'GET', f'http://127.0.0.1:{blocker.getsockname()[1]}/')
    assert sleep.intervals == [0.25] * 3


async def test_sleeps_for_real_by_default(request_):
    blocker = refusing_port()
    retriable = retry(request_, exception_intervals=((HttpConnectionError, (0.2, 0.2)),))
    start = time.monotonic()
    with blocker, pytest.raises(HttpConnectionError):
        await retriable(b'GET', f'http://127.0.0.1:{blocker.getsockname()[1]}/')
    assert time.monotonic() - start >= 0.4


async def test_default_retries_connection_errors_for_any_method(request_):
    blocker = refusing_port()
    sleep = RecordingSleep()
    with blocker:
        for method in (b'GET', b'POST', b'PATCH'):
            with pytest.raises(HttpConnectionError):
                await retry(request_, sleep=sleep)(
                    method, f'http://127.0.0.1:{blocker.getsockname()[1]}/')
    assert len(sleep.intervals) == 3 * 5
    assert all(0 <= interval <= 5.0 for interval in sleep.intervals)


def test_default_rules_retry_closed_before_response_only_if_idempotent():
    closed_before_response = lowhaio.HttpConnectionClosedBeforeResponseError
    assert issubclass(closed_before_response, HttpDataError)
    for method in (b'GET', b'HEAD', b'OPTIONS', b'TRACE', b'PUT', b'DELETE', b'get'):
        assert closed_before_response in [cls for cls, _ in default_exception_intervals(method)]
    for method in (b'POST', b'PATCH', b'CONNECT'):
        assert [cls for cls, _ in default_exception_intervals(method)] == [HttpConnectionError]
    assert IDEMPOTENT_METHODS == {b'GET', b'HEAD', b'OPTIONS', b'TRACE', b'PUT', b'DELETE'}


def close_second_request_on_first_connection():
    """A keep-alive server that answers the first request on its first connection, then closes
    that connection when the next request arrives on it, before answering: as when a server's
    idle timeout and a client's reuse cross. Later connections are answered normally."""
    connections = 0

    async def handler(conn) -> None:
        nonlocal connections
        connections += 1
        first_connection = connections == 1
        answered = 0
        while True:
            request = await conn.read_request()
            if not request:
                return
            if first_connection and answered == 1:
                conn.close()
                return
            conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
            await conn.drain()
            answered += 1

    return handler


@pytest.mark.parametrize('method, retried', [(b'GET', True), (b'PUT', True), (b'POST', False)])
@pytest.mark.parametrize('by_keyword', [False, True], ids=['positional', 'keywords'])
async def test_default_retries_reused_connection_closed_before_response_if_idempotent(
        request_, method, retried, by_keyword):
    async with scripted_server(close_second_request_on_first_connection()) as server:
        sleep = RecordingSleep()
        retriable = retry(request_, sleep=sleep)

        def call():  # the method found by the default rules however it is passed
            return retriable(method=method, url=server.url('/')) if by_keyword else \
                retriable(method, server.url('/'))

        code, _, body = await call()
        assert (code, await buffered(body)) == (b'200', b'ok')
        # Give the server's close time to arrive, so the pooled connection is dead when reused
        await asyncio.sleep(0)

        if retried:
            code, _, body = await call()
            assert (code, await buffered(body)) == (b'200', b'ok')
            assert len(sleep.intervals) == 1
        else:
            with pytest.raises(lowhaio.HttpConnectionClosedBeforeResponseError):
                await call()
            assert sleep.intervals == []


async def no_arguments():
    return 'done'


async def one_argument(url):
    return url


async def keywords_only(*, method, url):
    return method, url


async def anything(*args, **kwargs):
    return args, kwargs


@pytest.mark.parametrize('function, args, kwargs, result', [
    (no_arguments, (), {}, 'done'),
    (one_argument, ('http://a/',), {}, 'http://a/'),
    (one_argument, (), {'url': 'http://a/'}, 'http://a/'),
    (keywords_only, (), {'method': b'GET', 'url': 'http://a/'}, (b'GET', 'http://a/')),
    (anything, (1, None), {'x': 2}, ((1, None), {'x': 2})),
    (anything, (), {}, ((), {})),
], ids=['no-arguments', 'one-positional', 'one-keyword', 'keywords-only', 'not-a-method',
        'nothing'])
@pytest.mark.parametrize('rules', ['given', 'default'])
async def test_any_coroutine_function_is_retried_with_its_arguments_as_given(
        function, args, kwargs, result, rules):
    """As lowhaio-retry 0.0.5: whatever the function takes, each attempt gets exactly the
    arguments of the call; the default rules, which look for a method, do not need one."""
    calls = []

    async def fails_once(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) == 1:
            raise HttpConnectionError('nothing was sent')
        return await function(*args, **kwargs)

    sleep = RecordingSleep()
    retriable = retry(fails_once, ((HttpConnectionError, (0,)),) if rules == 'given' else None,
                      sleep=sleep)
    assert await retriable(*args, **kwargs) == result
    assert calls == [(args, kwargs)] * 2
    assert len(sleep.intervals) == 1


@pytest.mark.parametrize('args, kwargs, retried', [
    ((b'GET', 'http://a/'), {}, True),
    (('GET', 'http://a/'), {}, True),
    ((), {'method': b'PUT', 'url': 'http://a/'}, True),
    ((b'POST', 'http://a/'), {}, False),
    ((), {'method': b'POST', 'url': 'http://a/'}, False),
    ((), {'url': 'http://a/'}, False),
    ((None,), {}, False),
], ids=['GET', 'GET-as-str', 'PUT-by-keyword', 'POST', 'POST-by-keyword', 'no-method',
        'not-a-method'])
async def test_default_rules_find_the_method_however_it_is_passed(args, kwargs, retried):
    closed = lowhaio.HttpConnectionClosedBeforeResponseError('closed before the response')
    calls = []

    async def closed_once(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) == 1:
            raise closed
        return 'answered'

    retriable = retry(closed_once, sleep=RecordingSleep())
    if retried:
        assert await retriable(*args, **kwargs) == 'answered'
        assert len(calls) == 2
    else:
        with pytest.raises(lowhaio.HttpConnectionClosedBeforeResponseError):
            await retriable(*args, **kwargs)
        assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# Statuses
# ---------------------------------------------------------------------------------------------

def status_app(statuses: list, seen: list, retry_after=None, padding: int = 0
               ) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read(),
                     request.transport.get_extra_info('peername')))
        status = statuses.pop(0) if statuses else 200
        headers = {} if retry_after is None or status == 200 else {'retry-after': retry_after}
        body = b'status %d' % status
        return web.Response(status=status, headers=headers,
                            body=body if status == 200 else body + b'.' * padding)
    app = web.Application()
    app.add_routes([web.route('*', '/', handler)])
    return app


async def test_statuses_retried_with_body_sent_again_and_discarded_bodies_closed(request_):
    seen: list = []
    calls = []

    async def body(data, *, times):
        calls.append(data)
        for _ in range(times):
            yield data

    sleep = RecordingSleep()
    # Bodies too large to arrive with the head: only closing them frees their connections
    async with web_server(status_app([503, 429], seen, padding=4_000_000)) as server:
        retriable = retry(request_, retry_statuses=(429, 503), status_intervals=(0.1, 0.2, 0.3),
                          sleep=sleep)
        code, _, response = await retriable(
            b'POST', server.url('/'), body=body, body_args=(b'ab',), body_kwargs=(('times', 2),),
            headers=((b'content-length', b'4'),))
        assert (code, await buffered(response)) == (b'200', b'status 200')
    assert sleep.intervals == [0.1, 0.2]
    assert [received for _, received, _ in seen] == [b'abab'] * 3
    assert calls == [b'ab'] * 3
    # Closing an unread body closes its connection: each attempt needed a new one
    assert len({peer for _, _, peer in seen}) == 3


async def test_last_response_returned_when_status_intervals_run_out(request_):
    seen: list = []
    sleep = RecordingSleep()
    async with web_server(status_app([503, 503, 503], seen)) as server:
        retriable = retry(request_, retry_statuses=(b'503',), status_intervals=(0, 0), sleep=sleep)
        code, _, body = await retriable(b'GET', server.url('/'))
        assert (code, await buffered(body)) == (b'503', b'status 503')
    assert len(seen) == 3


async def test_statuses_not_listed_are_returned(request_):
    seen: list = []
    async with web_server(status_app([500], seen)) as server:
        code, _, body = await retry(request_, retry_statuses=(503,))(b'GET', server.url('/'))
        assert (code, await buffered(body)) == (b'500', b'status 500')
    assert len(seen) == 1


@pytest.mark.parametrize('retry_after, expected', [
    ('3', 3.0),
    ('1000', 60.0),  # capped by max_retry_after
    ('not a date', 0.125),  # unparseable: the interval is used instead
])
async def test_retry_after_seconds_honoured_and_capped(request_, retry_after, expected):
    seen: list = []
    sleep = RecordingSleep()
    async with web_server(status_app([503], seen, retry_after=retry_after)) as server:
        retriable = retry(request_, retry_statuses=(503,), status_intervals=(0.125,), sleep=sleep)
        code, _, body = await retriable(b'GET', server.url('/'))
        await buffered(body)
    assert code == b'200'
    assert sleep.intervals == [expected]


async def test_retry_after_http_date_honoured(request_):
    seen: list = []
    sleep = RecordingSleep()
    in_30_seconds = email.utils.format_datetime(
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30),
        usegmt=True)
    async with web_server(status_app([429], seen, retry_after=in_30_seconds)) as server:
        retriable = retry(request_, retry_statuses=(429,), status_intervals=(0,), sleep=sleep)
        _, _, body = await retriable(b'GET', server.url('/'))
        await buffered(body)
    assert 27 < sleep.intervals[0] <= 30


@pytest.mark.parametrize('value, expected', [
    (b'0', 0.0),
    (b' 17 ', 17.0),
    (b'Wed, 21 Oct 2015 07:28:00 GMT', 0.0),  # in the past: no wait
    (b'-5', None),
    (b'1.5', None),
    (b'', None),
])
def test_retry_after_parsing(value, expected):
    assert retry_after_seconds(((b'retry-after', value),)) == expected


def test_retry_after_absent():
    assert retry_after_seconds(((b'content-length', b'0'),)) is None


async def test_discarded_response_bodies_are_closed_and_the_last_one_is_not(request_):
    closed = []

    class RecordingBody:
        def __init__(self, code, body):
            self.code, self.body = code, body

        def __aiter__(self):
            return self.body.__aiter__()

        async def aclose(self):
            closed.append(self.code)
            await self.body.aclose()

    async def recording_request(*args, **kwargs):
        code, headers, body = await request_(*args, **kwargs)
        return code, headers, RecordingBody(code, body)

    seen: list = []
    async with web_server(status_app([503, 503], seen)) as server:
        retriable = retry(recording_request, retry_statuses=(503,), status_intervals=(0, 0),
                          sleep=RecordingSleep())
        code, _, body = await retriable(b'GET', server.url('/'))
        assert (code, await buffered(body)) == (b'200', b'status 200')
    assert closed == [b'503', b'503']
