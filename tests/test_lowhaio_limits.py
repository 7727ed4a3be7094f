"""Pool limits and whole-request deadlines: what users of aiohttp's and httpx's limits and
`asyncio.timeout()` rely on.

- `max_connections` caps connections across every host, with `max_connections_per_host` too;
  requests wait in one FIFO queue, up to `pool_timeout`; idle connections to one host are
  closed to make room for another host rather than starving it.
- `max_idle_per_host` closes a released connection beyond that many idle ones.
- `request.status()` reports each host and, in `.totals`, the whole pool.
- A deadline around a request and its body (`lowhaio.deadline`, `asyncio.wait_for`,
  `asyncio.timeout`) may fire in any phase: DNS, waiting for a slot, connecting, TLS, sending,
  waiting for the head, mid-head, mid-body. The caller then sees TimeoutError, the connection
  is closed (never pooled half-read), its slot is free, and no descriptor, task or timer is
  left behind.

Many hosts are distinct loopback addresses (127.0.0.x); counts are checked both through
`request.status()` and at the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from typing import (
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
)

import pytest

import lowhaio
import support
from lowhaio import (
    HttpConnectionError,
    HttpError,
    HttpPoolTimeoutError,
    Pool,
    buffered,
)

HAS_CANCELLING = sys.version_info >= (3, 11)  # Task.cancelling() and asyncio.timeout()

Headers = Tuple[Tuple[bytes, bytes], ...]
Request = Callable[..., Awaitable[Tuple[bytes, Headers, AsyncIterator[bytes]]]]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

open_pool = support.open_pool  # a Pool, closed on leaving the block


async def get(request: Request, url: str) -> Tuple[bytes, bytes]:
    code, _, body = await request(b'GET', url)
    return code, await buffered(body)


def status(request: Request) -> lowhaio.PoolStatus:
    return request.status()  # type: ignore[attr-defined,no-any-return]


def totals(request: Request) -> Dict[str, int]:
    return status(request).totals


def task_cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling() if HAS_CANCELLING else 0  # type: ignore[attr-defined]


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'condition not reached in time'
        await asyncio.sleep(0.01)


def ok(body: bytes) -> bytes:
    return b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(body), body)


def path_of(request: bytes) -> bytes:
    return request.split(b' ', 2)[1]


class Servers:
    """What a set of keep-alive servers saw: connections open now, at most, and in all, per
    server; requests being answered at once, at most; the order requests arrived in; and
    which connections closed."""

    def __init__(self) -> None:
        self.open: Dict[str, int] = {}
        self.max_open: Dict[str, int] = {}
        self.accepted: Dict[str, int] = {}
        self.closed: List[Tuple[str, int]] = []  # (host, connection number)
        self.paths: List[bytes] = []
        # Requests being answered: each means the client holds a connection in use. (Open
        # connections, by contrast, can briefly overlap when the client closes one and opens
        # another, since the server may accept the new one before it reads the old one's FIN.)
        self.in_flight = 0
        self.max_in_flight = 0

    def handler(self, host: str, delay: float = 0.0,
                hold: Optional[asyncio.Event] = None) -> support.Handler:
        """Answer each request with its path, after `delay`; /held only once `hold` is set."""
        async def handle(conn: support.Connection) -> None:
            number = self.accepted[host] = self.accepted.get(host, 0) + 1
            self.open[host] = self.open.get(host, 0) + 1
            self.max_open[host] = max(self.max_open.get(host, 0), self.open[host])
            try:
                while True:
                    request = await conn.read_request()
                    if not request:
                        return
                    path = path_of(request)
                    self.paths.append(path)
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    try:
                        if delay:
                            await asyncio.sleep(delay)
                        if hold is not None and path.startswith(b'/held'):
                            await hold.wait()
                    finally:
                        self.in_flight -= 1
                    conn.write(ok(path))
                    await conn.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            finally:
                self.open[host] -= 1
                self.closed.append((host, number))
        return handle


@contextlib.asynccontextmanager
async def servers_on(hosts: List[str], log: Servers, delay: float = 0.0,
                     hold: Optional[asyncio.Event] = None) -> AsyncIterator[List[str]]:
    """A keep-alive server on each loopback address; yields a base URL for each."""
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for host in hosts:
            server = await stack.enter_async_context(
                support.scripted_server(log.handler(host, delay, hold), host=host))
            urls.append(server.url('').rstrip('/'))
        yield urls


def hosts(count: int) -> List[str]:
    return ['127.0.0.%d' % (i,) for i in range(2, 2 + count)]


# ---------------------------------------------------------------------------------------------
# max_connections: a limit across hosts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('max_connections, per_host', [(3, None), (3, 2), (5, 1), (1, None)])
async def test_max_connections_caps_connections_across_all_hosts(
        max_connections: int, per_host: Optional[int]) -> None:
    log = Servers()
    async with servers_on(hosts(6), log, delay=0.03) as urls:
        async with open_pool(max_connections=max_connections,
                             max_connections_per_host=per_host) as request:
            seen_in_use = []

            async def fetch(i: int) -> Tuple[bytes, bytes]:
                result = await get(request, '%s/%d' % (urls[i % len(urls)], i))
                seen_in_use.append(totals(request)['in_use'] + totals(request)['idle'])
                return result

            results = await asyncio.gather(*(fetch(i) for i in range(30)))
            assert totals(request)['waiting'] == 0
        assert results == [(b'200', b'/%d' % i) for i in range(30)]
        assert max(seen_in_use) <= max_connections
        assert log.max_in_flight == min(max_connections, 6 * (per_host or max_connections))
        if per_host is not None:
            assert max(log.max_open.values()) <= per_host


async def test_requests_waiting_on_the_global_limit_are_served_in_arrival_order() -> None:
    log = Servers()
    async with servers_on(hosts(3), log, delay=0.01) as urls:
        async with open_pool(max_connections=1) as request:
            tasks = []
            for i in range(12):
                tasks.append(asyncio.ensure_future(get(request, '%s/%d' % (urls[i % 3], i))))
                await asyncio.sleep(0)  # each joins the queue before the next is made
            results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert results == [(b'200', b'/%d' % i) for i in range(12)]
        assert log.paths == [b'/%d' % i for i in range(12)]
        assert log.max_in_flight == 1


async def test_a_busy_host_does_not_starve_an_older_request_to_another_host() -> None:
    # Host A is busy with a stream of requests; one to B arrives while the only slot is held.
    # A's connection, released while requests to both hosts wait, goes to the oldest (B's),
    # rather than to the next request to A.
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(2), log, hold=hold) as (a, b):
        async with open_pool(max_connections=1, pool_timeout=5) as request:
            first = asyncio.ensure_future(get(request, a + '/held'))
            await eventually(lambda: log.paths == [b'/held'])
            to_b = asyncio.ensure_future(get(request, b + '/b'))
            await eventually(lambda: totals(request)['waiting'] == 1)
            later_to_a = [asyncio.ensure_future(get(request, a + '/a%d' % i)) for i in range(3)]
            await eventually(lambda: totals(request)['waiting'] == 4)
            hold.set()
            await asyncio.wait_for(asyncio.gather(first, to_b, *later_to_a), 5)
        assert log.paths == [b'/held', b'/b', b'/a0', b'/a1', b'/a2']
        assert log.max_in_flight == 1


async def test_pool_timeout_applies_to_the_global_limit() -> None:
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(2), log, hold=hold) as (a, b):
        async with open_pool(max_connections=1, pool_timeout=0.2) as request:
            holding = asyncio.ensure_future(get(request, a + '/held'))
            await eventually(lambda: log.paths == [b'/held'])
            started = time.monotonic()
            with pytest.raises(HttpPoolTimeoutError) as raised:
                await asyncio.wait_for(request(b'GET', b + '/other'), 3)
            elapsed = time.monotonic() - started
            assert isinstance(raised.value, HttpConnectionError)  # nothing sent: retry-safe
            assert totals(request) == {'idle': 0, 'in_use': 1, 'waiting': 0}
            hold.set()
            assert await holding == (b'200', b'/held')
        assert 0.15 <= elapsed < 1.5
        assert log.paths == [b'/held']


# The case the global limit must not get wrong: every slot idle on one host


@pytest.mark.parametrize('repeat', range(3))
async def test_idle_connections_to_one_host_are_closed_oldest_first_to_make_room(
        repeat: int) -> None:
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(2), log, hold=hold) as (a, b):
        key_a = ('http', '127.0.0.2', int(a.rsplit(':', 1)[1]))
        key_b = ('http', '127.0.0.3', int(b.rsplit(':', 1)[1]))
        async with open_pool(max_connections=2, keep_alive_timeout=60,
                             pool_timeout=2) as request:
            # Two connections to A; the one released first is the oldest idle one
            slow = asyncio.ensure_future(get(request, a + '/held'))
            await eventually(lambda: log.paths == [b'/held'])
            assert await get(request, a + '/quick') == (b'200', b'/quick')
            assert log.accepted == {'127.0.0.2': 2}
            hold.set()
            await slow
            assert status(request) == {key_a: {'idle': 2, 'in_use': 0, 'waiting': 0}}

            # The pool is full, of idle connections to A: B is served at once, not after
            # keep_alive_timeout nor pool_timeout
            started = time.monotonic()
            assert await get(request, b + '/b') == (b'200', b'/b')
            assert time.monotonic() - started < 1.0
            await eventually(lambda: len(log.closed) == 1)
            # A's second connection served /quick and went idle first
            assert log.closed == [('127.0.0.2', 2)]
            assert status(request) == {key_a: {'idle': 1, 'in_use': 0, 'waiting': 0},
                                       key_b: {'idle': 1, 'in_use': 0, 'waiting': 0}}
            assert totals(request) == {'idle': 2, 'in_use': 0, 'waiting': 0}

            # A's remaining connection is reused, not replaced
            assert await get(request, a + '/again') == (b'200', b'/again')
            assert log.accepted == {'127.0.0.2': 2, '127.0.0.3': 1}
        assert log.max_in_flight == 2


async def test_a_request_waiting_on_the_global_limit_gets_a_connection_released_idle_elsewhere(
        ) -> None:
    # One slot, held by A; B waits. When A's response ends, its connection would go idle:
    # instead it is closed and B connects.
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(2), log, hold=hold) as (a, b):
        async with open_pool(max_connections=1, keep_alive_timeout=60,
                             pool_timeout=2) as request:
            holding = asyncio.ensure_future(get(request, a + '/held'))
            await eventually(lambda: log.paths == [b'/held'])
            waiting = asyncio.ensure_future(get(request, b + '/b'))
            await eventually(lambda: totals(request)['waiting'] == 1)
            hold.set()
            assert await holding == (b'200', b'/held')
            assert await asyncio.wait_for(waiting, 2) == (b'200', b'/b')
            await eventually(lambda: log.closed == [('127.0.0.2', 1)])
            assert totals(request) == {'idle': 1, 'in_use': 0, 'waiting': 0}
        assert log.max_in_flight == 1


async def test_a_request_waiting_on_its_host_limit_does_not_take_another_hosts_connection(
        ) -> None:
    # max_connections has room; A is at its per-host limit: a connection released by B must
    # not be closed for A's waiting request, which needs A's own slot.
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(2), log, hold=hold) as (a, b):
        async with open_pool(max_connections=3, max_connections_per_host=1,
                             keep_alive_timeout=60) as request:
            holding = asyncio.ensure_future(get(request, a + '/held'))
            await eventually(lambda: log.paths == [b'/held'])
            waiting = asyncio.ensure_future(get(request, a + '/next'))
            await eventually(lambda: totals(request)['waiting'] == 1)
            assert await get(request, b + '/b') == (b'200', b'/b')
            assert totals(request) == {'idle': 1, 'in_use': 1, 'waiting': 1}
            hold.set()
            assert await holding == (b'200', b'/held')
            assert await asyncio.wait_for(waiting, 2) == (b'200', b'/next')
            assert totals(request) == {'idle': 2, 'in_use': 0, 'waiting': 0}
            assert log.closed == []
        assert log.accepted == {'127.0.0.2': 1, '127.0.0.3': 1}


@pytest.mark.parametrize('max_connections', [None, 4])
async def test_status_reports_each_host_and_totals_for_the_pool(
        max_connections: Optional[int]) -> None:
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(3), log, hold=hold) as urls:
        ports = [int(url.rsplit(':', 1)[1]) for url in urls]
        keys = [('http', host, port) for host, port in zip(hosts(3), ports)]
        async with open_pool(max_connections=max_connections,
                             max_connections_per_host=1) as request:
            assert status(request) == {}
            assert totals(request) == {'idle': 0, 'in_use': 0, 'waiting': 0}
            assert await get(request, urls[0] + '/idle') == (b'200', b'/idle')
            held = [asyncio.ensure_future(get(request, urls[1] + '/held')),
                    asyncio.ensure_future(get(request, urls[1] + '/held2')),
                    asyncio.ensure_future(get(request, urls[2] + '/held'))]
            await eventually(lambda: totals(request)['waiting'] == 1)
            await eventually(lambda: len(log.paths) == 3)
            snapshot = status(request)
            # The mapping has host keys only, as before: indexing, iterating and comparing
            # with a dict work unchanged
            assert list(snapshot) == keys
            assert snapshot[keys[0]] == {'idle': 1, 'in_use': 0, 'waiting': 0}
            assert snapshot == {keys[0]: {'idle': 1, 'in_use': 0, 'waiting': 0},
                                keys[1]: {'idle': 0, 'in_use': 1, 'waiting': 1},
                                keys[2]: {'idle': 0, 'in_use': 1, 'waiting': 0}}
            assert snapshot.totals == {'idle': 1, 'in_use': 2, 'waiting': 1}
            assert sum(counts['in_use'] for counts in snapshot.values()) == 2
            hold.set()
            await asyncio.wait_for(asyncio.gather(*held), 3)
            assert totals(request) == {'idle': 3, 'in_use': 0, 'waiting': 0}
        assert log.accepted == {host: 1 for host in hosts(3)}


@pytest.mark.parametrize('option, value', [
    ('max_connections', 0), ('max_connections', -1), ('max_connections', 1.5),
    ('max_connections_per_host', 0), ('max_idle_per_host', -1), ('max_idle_per_host', '2'),
])
async def test_a_limit_that_cannot_work_is_refused_at_once(option: str, value: object) -> None:
    with pytest.raises(lowhaio.HttpInvalidRequestError, match=option):
        Pool(**{option: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# max_idle_per_host
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('max_idle', [0, 1, 2, 5])
async def test_max_idle_per_host_closes_connections_released_beyond_it(max_idle: int) -> None:
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(hosts(1), log, hold=hold) as (a,):
        key = ('http', '127.0.0.2', int(a.rsplit(':', 1)[1]))
        async with open_pool(max_idle_per_host=max_idle, keep_alive_timeout=60) as request:
            held = [asyncio.ensure_future(get(request, a + '/held%d' % i)) for i in range(5)]
            await eventually(lambda: len(log.paths) == 5)
            hold.set()
            assert await asyncio.gather(*held) == [(b'200', b'/held%d' % i) for i in range(5)]
            await eventually(lambda: len(log.closed) == 5 - max_idle)
            assert status(request)[key] == {'idle': max_idle, 'in_use': 0, 'waiting': 0}
            # The ones kept are reused
            for i in range(max_idle):
                assert await get(request, a + '/again%d' % i) == (b'200', b'/again%d' % i)
            assert log.accepted['127.0.0.2'] == 5
        await eventually(lambda: len(log.closed) == 5)


async def test_max_idle_per_host_counts_each_host_separately() -> None:
    log = Servers()
    async with servers_on(hosts(3), log) as urls:
        async with open_pool(max_idle_per_host=1, max_connections=10) as request:
            for url in urls:
                assert await get(request, url + '/x') == (b'200', b'/x')
            assert totals(request) == {'idle': 3, 'in_use': 0, 'waiting': 0}
            assert log.closed == []
        await eventually(lambda: len(log.closed) == 3)  # by close()


# ---------------------------------------------------------------------------------------------
# Whole-request deadlines, in every phase
# ---------------------------------------------------------------------------------------------

STYLES = ['lowhaio.deadline', 'asyncio.wait_for'] + (['asyncio.timeout'] if HAS_CANCELLING
                                                       else [])


async def within(style: str, seconds: float, work: Callable[[], Awaitable[object]]) -> object:
    """Run `work()` (a request and the reading of its body) under a deadline, as a caller
    would."""
    if style == 'lowhaio.deadline':
        async with lowhaio.deadline(seconds):
            return await work()
    if style == 'asyncio.wait_for':
        return await asyncio.wait_for(work(), seconds)
    async with asyncio.timeout(seconds):  # type: ignore[attr-defined]
        return await work()


def live_timers(loop: asyncio.AbstractEventLoop) -> Optional[int]:
    """Timers scheduled and not cancelled: the default loop exposes them (uvloop does not,
    and there leaks show up in descriptors and tasks instead)."""
    scheduled = getattr(loop, '_scheduled', None)
    return None if scheduled is None else sum(1 for handle in scheduled if not handle.cancelled())


class Stalling:
    """A scripted server that stops in a given phase, and records whether the client closed
    the connection afterwards."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.received = 0
        self.client_left = asyncio.Event()
        self.go_on = asyncio.Event()

    async def handler(self, conn: support.Connection) -> None:
        try:
            if self.phase == 'tls':
                await conn.read_until_eof()  # accepted, and never a byte of TLS
                return
            head = await conn.read_head()
            if self.phase == 'send':
                await self.go_on.wait()  # not reading: the client's writes fill the buffers
            else:
                self.received = len(head)
            if self.phase == 'mid-head':
                conn.write(b'HTTP/1.1 200 OK\r\ncontent-le')
            elif self.phase == 'mid-body':
                conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n' + b'x' * 1000)
            elif self.phase == 'mid-chunked-body':
                conn.write(b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
                           b'3e8\r\n' + b'x' * 1000 + b'\r\n')
            await conn.drain()
            self.received += len(await conn.read_until_eof())
        except ConnectionError:
            pass
        finally:
            self.client_left.set()


BIG = 1 << 30


async def big_body() -> AsyncIterator[bytes]:
    chunk = b'x' * 65536
    for _ in range(BIG // len(chunk)):
        yield chunk


@contextlib.asynccontextmanager
async def phase_setup(phase: str, hold: asyncio.Event) -> AsyncIterator[
        Tuple[str, Dict[str, object], Dict[str, object], Optional[Stalling]]]:
    """For a phase: the URL, Pool options, request keywords, and the stalling server if any."""
    options: Dict[str, object] = {'connect_timeout': 10, 'socket_timeout': 10,
                                  'max_connections': 1, 'max_connections_per_host': 1}
    if phase == 'dns':
        async with support.dns_server() as dns:
            dns.ignore('silent.test')
            options['get_dns_resolver'] = dns.get_dns_resolver
            yield 'http://silent.test:80/', options, {}, None
    elif phase == 'connect':
        with support.black_hole() as port:
            yield 'http://127.0.0.1:%d/' % (port,), options, {}, None
    elif phase == 'pool':
        log = Servers()
        async with servers_on(hosts(1), log, hold=hold) as (url,):
            # The one slot is taken by a request to another host before the timed one starts
            yield url + '/waits', options, {}, None
    else:
        server = Stalling(phase)
        async with support.scripted_server(server.handler) as scripted:
            url = scripted.url()
            kwargs: Dict[str, object] = {}
            if phase == 'tls':
                url = 'https://127.0.0.1:%d/' % (scripted.port,)
                options['get_ssl_context'] = support.client_ssl_context
            if phase == 'send':
                kwargs = {'headers': ((b'content-length', b'%d' % (BIG,)),), 'body': big_body}
            try:
                yield url, options, kwargs, server
            finally:
                server.go_on.set()


async def request_and_read(request: Request, url: str, kwargs: Dict[str, object],
                           reached: List[str]) -> bytes:
    """A request and the reading of its body, noting in `reached` how far it got."""
    code, _, body = await request(b'GET', url, **kwargs)
    reached.append('head')
    async for _ in body:
        reached.append('body')
    return code


PHASES = ['dns', 'pool', 'connect', 'tls', 'send', 'head', 'mid-head', 'mid-body',
          'mid-chunked-body']


@pytest.mark.parametrize('style', STYLES)
@pytest.mark.parametrize('phase', PHASES)
async def test_a_deadline_in_any_phase_raises_timeout_error_and_leaves_nothing_behind(
        phase: str, style: str) -> None:
    loop = asyncio.get_running_loop()
    log = Servers()
    hold = asyncio.Event()
    async with servers_on(['127.0.0.9'], log, hold=hold) as (good,):
        async with phase_setup(phase, hold) as (url, options, kwargs, server):
            baseline_fds = support.open_fds()
            baseline_tasks = len(asyncio.all_tasks())
            baseline_timers = live_timers(loop)
            async with open_pool(**options) as request:
                holder = None
                if phase == 'pool':
                    holder = asyncio.ensure_future(get(request, good + '/held'))
                    await eventually(lambda: log.paths == [b'/held'])
                expected_in_use = 1 if holder is not None else 0
                for _attempt in range(2):
                    reached: List[str] = []
                    started = time.monotonic()
                    with pytest.raises(asyncio.TimeoutError) as raised:
                        await within(style, 0.1, functools.partial(
                            request_and_read, request, url, kwargs, reached))
                    elapsed = time.monotonic() - started
                    assert not isinstance(raised.value, HttpError)
                    if style == 'lowhaio.deadline':
                        assert isinstance(raised.value, TimeoutError)  # on every Python
                    assert task_cancelling() == 0
                    assert 0.09 <= elapsed < 2.0
                    # The phase was the one meant
                    assert reached == (['head', 'body'] if phase.startswith('mid-body') or
                                       phase == 'mid-chunked-body' else [])
                    if server is not None:
                        # The server sees the connection closed, not pooled
                        server.go_on.set()
                        await asyncio.wait_for(server.client_left.wait(), 2)
                        server.client_left.clear()
                        server.go_on.clear()
                        if phase == 'send':
                            assert server.received < BIG
                    # Nothing in use and nothing waiting; only a request held on purpose
                    await eventually(lambda: totals(request)['in_use'] == expected_in_use)
                    assert totals(request) == {'idle': 0, 'in_use': expected_in_use,
                                               'waiting': 0}
                if holder is not None:
                    hold.set()
                    assert await holder == (b'200', b'/held')
                # The single slot is free for the next request
                assert await asyncio.wait_for(get(request, good + '/after'), 3) == \
                    (b'200', b'/after')
            assert await support.wait_for_fds(baseline_fds) == baseline_fds
            await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks)
            if baseline_timers is not None:
                await eventually(lambda: live_timers(loop) <= baseline_timers)  # type: ignore


def paced_handler(pause: float) -> support.Handler:
    """Each phase of a response a little late: the head, then five pieces of the body."""
    async def handler(conn: support.Connection) -> None:
        try:
            while True:
                request = await conn.read_request()
                if not request:
                    return
                await asyncio.sleep(pause)
                conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n')
                for _ in range(5):
                    await conn.drain()
                    await asyncio.sleep(pause)
                    conn.write(b'y' * 10)
                await conn.drain()
        except (ConnectionError, RuntimeError):  # RuntimeError: uvloop, written after close
            return
    return handler


@pytest.mark.parametrize('style', STYLES)
async def test_deadlines_swept_across_a_paced_response_either_finish_or_time_out_cleanly(
        style: str) -> None:
    # The deadline falls in turn before connecting, waiting for the head, and between each
    # piece of the body, and on the boundaries between them (timing-dependent, so many runs).
    # Each run either returns the whole body or raises TimeoutError, and leaves the pool clean.
    pause = 0.015
    outcomes = {'done': 0, 'timed out': 0}
    async with support.scripted_server(paced_handler(pause)) as server:
        baseline_fds = support.open_fds()
        async with open_pool(max_connections=1) as request:
            for step in range(22):  # 0 to 0.105 s: the response takes 6 x 0.015 s
                seconds = step * 0.005

                async def work() -> Tuple[bytes, bytes]:
                    return await get(request, server.url())

                try:
                    result = await within(style, seconds, work)
                except asyncio.TimeoutError as exception:
                    assert not isinstance(exception, HttpError)
                    outcomes['timed out'] += 1
                else:
                    assert result == (b'200', b'y' * 50)
                    outcomes['done'] += 1
                assert task_cancelling() == 0
                await eventually(lambda: totals(request)['in_use'] == 0)
                assert totals(request)['waiting'] == 0
            assert await asyncio.wait_for(get(request, server.url()), 3) == (b'200', b'y' * 50)
        assert await support.wait_for_fds(baseline_fds) == baseline_fds
    assert outcomes['timed out'] >= 10  # the short ones, at least
    assert server.errors == []


async def test_a_deadline_that_does_not_fire_changes_nothing() -> None:
    log = Servers()
    async with servers_on(hosts(1), log) as (url,):
        async with open_pool() as request:
            for style in STYLES:
                assert await within(style, 5, lambda: get(request, url + '/fine')) == \
                    (b'200', b'/fine')
                assert task_cancelling() == 0
            assert totals(request) == {'idle': 1, 'in_use': 0, 'waiting': 0}
        assert log.accepted == {'127.0.0.2': 1}


async def test_lowhaio_deadline_leaves_an_outer_cancellation_alone() -> None:
    # Cancelled from outside (not by the deadline): CancelledError, not TimeoutError
    started = asyncio.Event()

    async def work() -> None:
        async with lowhaio.deadline(5):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_lowhaio_deadline_nests_and_the_inner_one_fires_first() -> None:
    with pytest.raises(asyncio.TimeoutError):
        async with lowhaio.deadline(5):
            async with lowhaio.deadline(0.05):
                await asyncio.sleep(1)
            pytest.fail('the inner deadline did not raise')  # pragma: no cover
    assert task_cancelling() == 0
    # And after it, the task is not cancelled: it can go on awaiting
    await asyncio.sleep(0.01)


async def test_lowhaio_deadline_of_none_never_fires() -> None:
    async with lowhaio.deadline(None):
        await asyncio.sleep(0.05)
