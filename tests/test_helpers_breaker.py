"""lowhaio_breaker: per-origin circuits that open after consecutive failures, fail fast without
sending, and let exactly one trial through once half-open. Time is an injected clock; the
failures are real (refused connections, servers that hang up or stall, 5xx answers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse
from typing import AsyncIterator, Callable, List

import pytest
from aiohttp import web
from support import scripted_server, web_server

from lowhaio import (
    HttpConnectionClosedError,
    HttpConnectionError,
    HttpInvalidRequestError,
    HttpTimeoutError,
    Pool,
    buffered,
)
from lowhaio_breaker import SERVER_ERRORS, CircuitOpenError, circuit_breaker
from lowhaio_redirect import redirectable
from lowhaio_retry import retry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def request_():
    request, close = Pool(response_head_timeout=0.3)
    yield request
    await close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def no_sleep(_: float) -> None:
    pass


class Upstream:
    """An aiohttp.web server whose answer a test switches, counting the requests it gets."""

    def __init__(self) -> None:
        self.status = 200
        self.requests = 0
        self.delay = 0.0

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            self.requests += 1
            await asyncio.sleep(self.delay)
            return web.Response(status=self.status, body=b'status %d' % self.status)
        app = web.Application()
        app.router.add_route('*', '/{tail:.*}', handler)
        return app


@pytest.fixture
async def upstream():
    server = Upstream()
    async with web_server(server.app()) as running:
        server.url = running.url  # type: ignore[attr-defined]
        yield server


async def hang_up(conn) -> None:
    await conn.read_head()


async def stall(conn) -> None:
    await conn.read_head()
    await asyncio.sleep(30)


@contextlib.asynccontextmanager
async def refusing() -> AsyncIterator[Callable[[str], str]]:
    """A port nothing listens on (bound, so nothing else takes it): connecting is refused."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    try:
        yield lambda path: f'http://127.0.0.1:{sock.getsockname()[1]}{path}'
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def failing_origin(kind: str):
    """(url function, attempts counter) for an origin that fails in the way `kind` says."""
    if kind == 'refused':
        async with refusing() as url:
            yield url, None, HttpConnectionError
        return
    handler = hang_up if kind == 'hangs-up' else stall
    expected = HttpConnectionClosedError if kind == 'hangs-up' else HttpTimeoutError
    async with scripted_server(handler) as server:
        yield server.url, server, expected


FAILURE_KINDS = ['refused', 'hangs-up', 'stalls']


# ---------------------------------------------------------------------------------------------
# Closed to open
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', FAILURE_KINDS)
@pytest.mark.parametrize('threshold', [1, 3])
async def test_consecutive_failures_open_the_circuit_then_nothing_is_sent(request_, clock, kind,
                                                                         threshold):
    async with failing_origin(kind) as (url, server, expected):
        breaker = circuit_breaker(request_, failure_threshold=threshold, clock=clock)
        for _ in range(threshold):
            assert breaker.state(url('/')) == 'closed'
            with pytest.raises(expected):
                await breaker(b'GET', url('/a'))
        assert breaker.state(url('/')) == 'open'
        connections_before = server.connections if server else None
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as raised:
                await breaker(b'GET', url('/b'))
            assert isinstance(raised.value, HttpConnectionError)  # nothing was sent: retry-safe
        if server:
            assert server.connections == connections_before == threshold


async def test_a_success_resets_the_count_of_failures(request_, clock, upstream):
    breaker = circuit_breaker(request_, failure_threshold=3, failure_statuses=SERVER_ERRORS,
                              clock=clock)
    for status in [503, 503, 200, 503, 503, 200, 500, 502]:
        upstream.status = status
        code, _, body = await breaker(b'GET', upstream.url('/'))
        assert (code, await buffered(body)) == (b'%d' % status, b'status %d' % status)
        assert breaker.state(upstream.url('/')) == 'closed'
    upstream.status = 504
    code, _, body = await breaker(b'GET', upstream.url('/'))
    await buffered(body)
    assert breaker.state(upstream.url('/')) == 'open'


@pytest.mark.parametrize('statuses, opens', [
    ((), False), (SERVER_ERRORS, True), ((429, 503), True), ((b'503',), True), ((500,), False),
])
async def test_statuses_count_only_when_asked(request_, clock, upstream, statuses, opens):
    upstream.status = 503
    breaker = circuit_breaker(request_, failure_threshold=2, failure_statuses=statuses,
                              clock=clock)
    for _ in range(2):
        code, _, body = await breaker(b'GET', upstream.url('/'))
        assert code == b'503' and await buffered(body) == b'status 503'  # still returned
    assert breaker.state(upstream.url('/')) == ('open' if opens else 'closed')


async def test_errors_the_caller_causes_do_not_count(request_, clock, upstream):
    breaker = circuit_breaker(request_, failure_threshold=1, clock=clock)
    for _ in range(3):
        with pytest.raises(HttpInvalidRequestError):
            await breaker(b'BAD METHOD', upstream.url('/'))
    assert breaker.state(upstream.url('/')) == 'closed'


@pytest.mark.parametrize('threshold', [0, -1])
def test_a_threshold_below_one_is_refused(threshold):
    with pytest.raises(HttpInvalidRequestError, match='failure_threshold'):
        circuit_breaker(None, failure_threshold=threshold)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Open to half-open to closed, or back to open
# ---------------------------------------------------------------------------------------------

async def open_circuit(breaker, upstream, clock) -> None:
    upstream.status = 503
    for _ in range(2):
        _, _, body = await breaker(b'GET', upstream.url('/'))
        await buffered(body)
    assert breaker.state(upstream.url('/')) == 'open'


@pytest.mark.parametrize('trial_status, state_after', [(200, 'closed'), (503, 'open')])
async def test_after_recovery_time_one_trial_decides(request_, clock, upstream, trial_status,
                                                     state_after):
    breaker = circuit_breaker(request_, failure_threshold=2, recovery_time=30,
                              failure_statuses=SERVER_ERRORS, clock=clock)
    await open_circuit(breaker, upstream, clock)
    clock.now += 29.9
    assert breaker.state(upstream.url('/')) == 'open'
    with pytest.raises(CircuitOpenError):
        await breaker(b'GET', upstream.url('/'))
    clock.now += 0.1
    assert breaker.state(upstream.url('/')) == 'half-open'

    upstream.status = trial_status
    requests_before = upstream.requests
    code, _, body = await breaker(b'GET', upstream.url('/'))
    assert code == b'%d' % trial_status and await buffered(body)
    assert upstream.requests == requests_before + 1
    assert breaker.state(upstream.url('/')) == state_after
    if state_after == 'open':
        # A failed trial opens the circuit for a whole new recovery_time
        clock.now += 29.9
        assert breaker.state(upstream.url('/')) == 'open'
        clock.now += 0.1
        assert breaker.state(upstream.url('/')) == 'half-open'


@pytest.mark.parametrize('concurrency', [2, 10, 100])
async def test_half_open_lets_exactly_one_of_many_concurrent_requests_through(
        request_, clock, upstream, concurrency):
    breaker = circuit_breaker(request_, failure_threshold=2, recovery_time=30,
                              failure_statuses=SERVER_ERRORS, clock=clock)
    for _ in range(10):  # the order of events varies with the loop: repeat
        await open_circuit(breaker, upstream, clock)
        clock.now += 30
        upstream.status, upstream.delay = 200, 0.05
        requests_before = upstream.requests

        async def one() -> bytes:
            code, _, body = await breaker(b'GET', upstream.url('/'))
            await buffered(body)
            return code

        results = await asyncio.gather(*(one() for _ in range(concurrency)),
                                       return_exceptions=True)
        upstream.delay = 0.0
        assert results.count(b'200') == 1
        assert all(isinstance(result, CircuitOpenError) for result in results
                   if result != b'200')
        assert upstream.requests == requests_before + 1
        assert breaker.state(upstream.url('/')) == 'closed'


@pytest.mark.parametrize('ending', ['cancelled', 'uncounted-error'])
async def test_a_trial_that_ends_undecided_leaves_the_circuit_half_open(
        request_, clock, upstream, ending):
    breaker = circuit_breaker(request_, failure_threshold=2, recovery_time=30,
                              failure_statuses=SERVER_ERRORS, clock=clock)
    await open_circuit(breaker, upstream, clock)
    clock.now += 30
    if ending == 'cancelled':
        upstream.delay = 5
        trial = asyncio.ensure_future(breaker(b'GET', upstream.url('/')))
        while upstream.requests < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(CircuitOpenError):  # the trial is in flight
            await breaker(b'GET', upstream.url('/'))
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        upstream.delay = 0
    else:
        with pytest.raises(HttpInvalidRequestError):
            await breaker(b'GET', upstream.url('/'), headers=((b'bad\nname', b'x'),))
    assert breaker.state(upstream.url('/')) == 'half-open'
    upstream.status = 200
    code, _, body = await breaker(b'GET', upstream.url('/'))
    assert code == b'200' and await buffered(body)
    assert breaker.state(upstream.url('/')) == 'closed'


# ---------------------------------------------------------------------------------------------
# Per origin
# ---------------------------------------------------------------------------------------------

async def test_each_origin_has_its_own_circuit(request_, clock, upstream):
    async with refusing() as refused_url:
        breaker = circuit_breaker(request_, failure_threshold=1, clock=clock)
        with pytest.raises(HttpConnectionError):
            await breaker(b'GET', refused_url('/x'))
        code, _, body = await breaker(b'GET', upstream.url('/'))
        assert code == b'200' and await buffered(body)
        # Same origin, however the URL is written: path, query, case of scheme and host
        assert breaker.state(refused_url('/other?q=1').replace('http:', 'HTTP:')) == 'open'
        assert breaker.state(upstream.url('/anything')) == 'closed'
        assert breaker.state('https://never.used/') == 'closed'
        assert breaker.states() == {
            ('http', '127.0.0.1', urllib.parse.urlsplit(refused_url('/')).port): 'open',
            ('http', '127.0.0.1', urllib.parse.urlsplit(upstream.url('/')).port): 'closed',
        }


@pytest.mark.parametrize('url, same_as', [
    ('http://localhost/', 'http://LOCALHOST:80/x'),
    ('https://localhost/', 'https://localhost:443/y?z'),
])
async def test_default_ports_are_the_same_origin(clock, url, same_as):
    async def refused(method: bytes, url: str, **_: object):
        raise HttpConnectionError('refused')
    breaker = circuit_breaker(refused, failure_threshold=1, clock=clock)
    with pytest.raises(HttpConnectionError):
        await breaker(b'GET', url)
    assert breaker.state(same_as) == 'open'
    assert breaker.state(url.replace('localhost', 'localhost:8080')) == 'closed'


# ---------------------------------------------------------------------------------------------
# With the other helpers
# ---------------------------------------------------------------------------------------------

async def test_retry_over_the_breaker_stops_reaching_the_server_once_open(request_, clock):
    async with scripted_server(hang_up) as server:
        breaker = circuit_breaker(request_, failure_threshold=3, clock=clock)
        retrying = retry(breaker, exception_intervals=(
            (HttpConnectionClosedError, [0] * 10), (HttpConnectionError, [0] * 10)),
            sleep=no_sleep)
        with pytest.raises(CircuitOpenError):
            await retrying(b'GET', server.url('/'))
        assert server.connections == 3  # then the retries failed fast, sending nothing


async def test_the_default_retry_rules_retry_circuit_open_as_a_connection_error(request_, clock,
                                                                                upstream):
    slept: List[float] = []

    async def record_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += 10  # the circuit recovers while the retrier waits

    breaker = circuit_breaker(request_, failure_threshold=2, recovery_time=30,
                              failure_statuses=SERVER_ERRORS, clock=clock)
    await open_circuit(breaker, upstream, clock)
    upstream.status = 200
    code, _, body = await retry(breaker, sleep=record_sleep)(b'GET', upstream.url('/'))
    assert code == b'200' and await buffered(body) == b'status 200'
    assert len(slept) == 3  # open, open, open, then the half-open trial went through


async def test_breaker_over_retry_counts_one_failure_per_call(request_, clock):
    async with scripted_server(hang_up) as server:
        breaker = circuit_breaker(
            retry(request_, exception_intervals=((HttpConnectionClosedError, [0, 0]),),
                  sleep=no_sleep),
            failure_threshold=2, clock=clock)
        for _ in range(2):
            with pytest.raises(HttpConnectionClosedError):
                await breaker(b'GET', server.url('/'))
        assert server.connections == 6
        assert breaker.state(server.url('/')) == 'open'


async def test_under_redirectable_each_hop_is_judged_by_its_own_origin(request_, clock,
                                                                       upstream):
    async with refusing() as refused_url:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(refused_url('/gone'))
        app = web.Application()
        app.router.add_get('/', redirect)
        async with web_server(app) as origin:
            breaker = circuit_breaker(request_, failure_threshold=1, clock=clock)
            with pytest.raises(HttpConnectionError):
                await redirectable(breaker)(b'GET', origin.url('/'))
            assert breaker.state(origin.url('/')) == 'closed'
            assert breaker.state(refused_url('/')) == 'open'
            with pytest.raises(CircuitOpenError):
                await redirectable(breaker)(b'GET', origin.url('/'))
