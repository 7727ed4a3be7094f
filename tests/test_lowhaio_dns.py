"""DNS: what `request` does for every answer that a name's A and AAAA lookups can get.

The rule (RFC 8305 §3), which every test here checks from the outside:

- lowhaio asks for AAAA and A at once. A lookup fails only when **both** families have failed,
  or when the deadline (`connect_timeout`, by default `socket_timeout`) has passed. A failure of
  one family (NODATA, NXDOMAIN, SERVFAIL) ends nothing while the other is still running.
- A positive AAAA answer is used at once. The A lookup goes on; its addresses join the
  connection attempts, and the cached answer, when they arrive by the deadline.
- A positive A answer that comes first waits at most 50 ms more for AAAA ("Resolution Delay"),
  so that IPv6 is still preferred when both answer about together.
- When neither family gives an address, `request` raises `HttpDnsError` whose `__cause__` says
  why: an `asyncio.TimeoutError` when the deadline passed or the resolver timed out (then with
  aiodnsresolver's `DnsTimeout` as that error's `__cause__`), else the most telling resolver
  error: SERVFAIL's `DnsResponseCode` before NXDOMAIN's or NODATA's `DnsRecordDoesNotExist`.

Everything is real: an in-process DNS server (dnslib) whose answers, response codes and delays
are set per name and per record type, dnsmasq for the resolver most systems run, and aiohttp
servers on 127.0.0.2 and ::1 (one port) whose response says which of them answered. Cells whose
outcome depends on timing run many times each, every time with a fresh name, so that a race
cannot hide; after each cell no task is left once the deadline has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    Union,
)

import aiodnsresolver
import pytest
from aiodnsresolver import DnsRecordDoesNotExist, DnsResponseCode, DnsTimeout
from aiohttp import web

import support
from lowhaio import HttpDnsError, HttpError, Pool, buffered

Request = Callable[..., Awaitable[Tuple[bytes, Any, AsyncIterator[bytes]]]]

IN_CI = bool(os.environ.get('CI'))

V4 = '127.0.0.2'  # where the IPv4 server listens
V6 = '::1'  # where the IPv6 server listens, on the same port
DEAD_V4 = '127.0.0.3'  # nothing listens there: a connection is refused at once
DEAD_V6 = '::ffff:127.0.0.3'  # an IPv6 address (IPv4-mapped, so loopback) with no listener

# How late a deadline may be seen on a machine shared with other test runs
DEADLINE_MARGIN = 1.0

# Outcomes of one family's lookup
ANSWERS = 'answers'
NODATA = 'NODATA'
NXDOMAIN = 'NXDOMAIN'
SERVFAIL = 'SERVFAIL'
NEVER = 'never answers'
OUTCOMES = (ANSWERS, NODATA, NXDOMAIN, SERVFAIL, NEVER)

# Orders of arrival: (seconds before the A answer, seconds before the AAAA answer). 20 ms is
# well inside the 50 ms resolution delay and 120 ms well past it. The resolver asks again on
# SERVFAIL, so a SERVFAIL arrives after as many times its delay as the resolver makes attempts.
ORDERS: Dict[str, Tuple[float, float]] = {
    'together': (0.0, 0.0),
    'A 20 ms first': (0.0, 0.02),
    'A 120 ms first': (0.0, 0.12),
    'AAAA 20 ms first': (0.02, 0.0),
    'AAAA 120 ms first': (0.12, 0.0),
}

REPETITIONS = 20  # of every timing-dependent cell, each with a fresh name
# Repetitions start this far apart, so that the loop is never so busy that it sees an answer
# late: that would test the machine's load rather than lowhaio's timing.
STAGGER = 0.005

_names = itertools.count()


def fresh_name(label: str) -> str:
    """A name nobody has looked up before, so that no cache can answer for it."""
    return f'{label}-{next(_names)}.test'


# ---------------------------------------------------------------------------------------------
# Servers that say who answered
# ---------------------------------------------------------------------------------------------

def whoami_app() -> web.Application:
    """Responds with the address it was reached at and the loop time it was reached."""
    async def handle(request: web.Request) -> web.Response:
        address = request.transport.get_extra_info('sockname')[0]  # type: ignore[union-attr]
        return web.Response(text=f'{address} {asyncio.get_running_loop().time()!r}')

    app = web.Application()
    app.router.add_get('/', handle)
    return app


class Servers(NamedTuple):
    port: int
    stack: contextlib.AsyncExitStack  # to stop them one by one: see stop()
    stops: Dict[str, Callable[[], Awaitable[None]]]

    def url(self, name: str) -> str:
        return f'http://{name}:{self.port}/'

    async def stop(self, address: str) -> None:
        await self.stops[address]()


@contextlib.asynccontextmanager
async def servers_on(*addresses: str) -> AsyncIterator[Servers]:
    """aiohttp servers on each of `addresses`, all on one kernel-chosen port."""
    for _attempt in range(20):
        async with contextlib.AsyncExitStack() as stack:
            stops: Dict[str, Callable[[], Awaitable[None]]] = {}
            try:
                port = 0
                for address in addresses:
                    inner = contextlib.AsyncExitStack()
                    server = await inner.enter_async_context(
                        support.web_server(whoami_app(), host=address, port=port))
                    port = server.port
                    stack.push_async_callback(inner.aclose)
                    stops[address] = inner.aclose
            except OSError:
                continue  # the port was taken on another address: try another
            yield Servers(port, stack, stops)
            return
    raise RuntimeError(f'no port free on all of {addresses}')


# ---------------------------------------------------------------------------------------------
# Requests and what they did
# ---------------------------------------------------------------------------------------------

class Outcome(NamedTuple):
    started: float
    ended: float
    reached: Optional[str] = None  # the address of the server that answered
    handled_at: float = 0.0  # when that server saw the request
    error: Optional[HttpError] = None

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    def __str__(self) -> str:
        if self.error is None:
            return f'reached {self.reached} after {self.elapsed:.3f}s'
        cause = self.error.__cause__
        return (f'{type(self.error).__name__} from {cause!r}'
                f'{f" from {cause.__cause__!r}" if cause is not None and cause.__cause__ else ""}'
                f' after {self.elapsed:.3f}s')


async def fetch(request: Request, url: str) -> Outcome:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        _, _, body = await request(b'GET', url)
        address, handled_at = (await buffered(body)).decode().split()
    except HttpError as error:
        return Outcome(started, loop.time(), error=error)
    return Outcome(started, loop.time(), reached=address, handled_at=float(handled_at))


class Reaches(NamedTuple):
    """`request` reaches the server at `address`."""
    address: str

    def __str__(self) -> str:
        return f'reached {self.address}'


class FailsWith(NamedTuple):
    """`request` raises `HttpDnsError` whose cause is a `cause`, at the deadline or before."""
    cause: Type[BaseException]
    at_deadline: bool
    cause_of_cause: Optional[Type[BaseException]] = None

    def __str__(self) -> str:
        return (f'HttpDnsError from {self.cause.__name__}'
                f'{f" from {self.cause_of_cause.__name__}" if self.cause_of_cause else ""}'
                f'{" at the deadline" if self.at_deadline else " before the deadline"}')


Expected = Union[Reaches, FailsWith]


def mismatch(expected: Expected, outcome: Outcome, connect_timeout: float) -> Optional[str]:
    """Why `outcome` is not what `expected` says, or None."""
    if isinstance(expected, Reaches):
        if outcome.reached != expected.address:
            return f'expected {expected}'
        if outcome.elapsed >= connect_timeout / 2:
            return f'expected {expected} well before connect_timeout ({connect_timeout}s)'
        return None
    error = outcome.error
    if not isinstance(error, HttpDnsError) or not isinstance(error.__cause__, expected.cause):
        return f'expected {expected}'
    if expected.cause_of_cause is not None and \
            not isinstance(error.__cause__.__cause__, expected.cause_of_cause):
        return f'expected {expected}'
    if expected.at_deadline and not (
            connect_timeout - 0.01 <= outcome.elapsed <= connect_timeout + DEADLINE_MARGIN):
        return f'expected {expected} ({connect_timeout}s)'
    if not expected.at_deadline and outcome.elapsed >= connect_timeout / 2:
        return f'expected {expected}, well before connect_timeout ({connect_timeout}s)'
    return None


def assert_no_mismatches(mismatches: Sequence[str], total: int) -> None:
    shown = '\n'.join(mismatches[:1000])
    assert not mismatches, f'{len(mismatches)} of {total} requests went wrong:\n{shown}'


@contextlib.asynccontextmanager
async def open_pool(**options: Any) -> AsyncIterator[Request]:
    request, close = Pool(**options)
    try:
        yield request
    finally:
        await close()


@contextlib.asynccontextmanager
async def no_leftovers(deadline_after: Callable[[], float]) -> AsyncIterator[None]:
    """On exit: once `deadline_after()` (a loop time) has passed, no task is left of those
    started inside, and the loop saw no unhandled exception ("Task exception was never
    retrieved" and the like)."""
    loop = asyncio.get_running_loop()
    baseline: Set[asyncio.Task[Any]] = set(asyncio.all_tasks())
    unhandled: List[Dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        yield
        # Closed connections end their server tasks a moment later: a short grace period
        give_up_at = deadline_after() + 0.2
        left = set(asyncio.all_tasks()) - baseline
        while left and loop.time() < give_up_at:
            await asyncio.sleep(0.01)
            left = set(asyncio.all_tasks()) - baseline
        assert not left, f'{len(left)} tasks left after the deadline: {list(left)[:3]}'
        gc.collect()  # an unretrieved exception of a dead task is reported when it is freed
        await asyncio.sleep(0)
        assert not unhandled, f'unhandled in the loop: {unhandled}'
    finally:
        loop.set_exception_handler(previous_handler)


@pytest.fixture
def quiet_resolver() -> Iterator[None]:
    """aiodnsresolver logs a warning for every SERVFAIL or silent attempt: thousands here, whose
    formatting and capture would load the loop enough to skew the timing under test."""
    logger = logging.getLogger('aiodnsresolver')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# The test DNS server does what it is told (the matrix relies on it)
# ---------------------------------------------------------------------------------------------

async def test_dns_server_scripts_each_type_of_a_name_independently() -> None:
    async with support.dns_server() as dns:
        dns.set_reply('n.test', 'A', support.dns_addresses(V4, ttl=0).after(0.1))
        dns.set_reply('n.test', 'AAAA', support.DNS_NXDOMAIN)
        dns.set_reply('nodata.test', 'A', support.DNS_NODATA)
        dns.set_reply('fail.test', 'AAAA', support.DNS_SERVFAIL)
        resolve, _ = dns.get_dns_resolver()
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow_a = asyncio.ensure_future(resolve('n.test', aiodnsresolver.TYPES.A))
        # The delayed answer blocks nothing: other queries are answered meanwhile
        with pytest.raises(DnsRecordDoesNotExist):
            await resolve('n.test', aiodnsresolver.TYPES.AAAA)
        with pytest.raises(aiodnsresolver.DnsNoMatchingAnswers):
            await resolve('nodata.test', aiodnsresolver.TYPES.A)
        with pytest.raises(DnsResponseCode):
            await resolve('fail.test', aiodnsresolver.TYPES.AAAA)
        assert not slow_a.done()
        assert [str(address) for address in await slow_a] == [V4]
        assert loop.time() - started >= 0.1
        assert (await slow_a)[0].expires_at <= loop.time()  # TTL 0
        assert dns.queries_for('fail.test') == ['AAAA'] * dns.attempts  # asked again each time
        assert not dns.errors


async def test_dns_server_that_never_answers_times_the_resolver_out() -> None:
    async with support.dns_server() as dns:
        dns.attempts, dns.attempt_timeout = 2, 0.05
        dns.set_reply('mute.test', 'A', support.DNS_SILENT)
        resolve, _ = dns.get_dns_resolver()
        with pytest.raises(DnsTimeout):
            await resolve('mute.test', aiodnsresolver.TYPES.A)
        assert dns.queries_for('mute.test') == ['A', 'A']
        assert dns.answered == []


async def test_dns_server_serves_cname_chains_whole_or_hop_by_hop() -> None:
    async with support.dns_server() as dns:
        dns.set('target.test', [V4, V6])
        dns.set_cname('whole.test', 'middle.test')
        dns.set_cname('middle.test', 'target.test')
        dns.set_cname('hop.test', 'target.test', include_target=False)
        resolve, _ = dns.get_dns_resolver()
        for name in ('whole.test', 'hop.test'):
            assert [str(a) for a in await resolve(name, aiodnsresolver.TYPES.AAAA)] == [V6]
        assert dns.queries_for('hop.test') == ['AAAA']
        assert dns.queries_for('target.test') == ['AAAA']  # asked for by the client


async def test_dns_server_truncates_an_answer_beyond_512_bytes() -> None:
    async with support.dns_server() as dns:
        dns.set('big.test', [f'::ffff:127.0.1.{i}' for i in range(40)])
        resolve, _ = dns.get_dns_resolver()
        addresses = await resolve('big.test', aiodnsresolver.TYPES.AAAA)
        assert 10 < len(addresses) < 40


# ---------------------------------------------------------------------------------------------
# The matrix: each outcome of A x each outcome of AAAA x each order of arrival,
# first lookup and re-lookup once the TTL has expired
# ---------------------------------------------------------------------------------------------

def family_reply(outcome: str, address: str, delay: float, ttl: int) -> support.DnsReply:
    replies = {
        ANSWERS: support.dns_addresses(address, ttl=ttl),
        NODATA: support.DNS_NODATA,
        NXDOMAIN: support.DNS_NXDOMAIN,
        SERVFAIL: support.DNS_SERVFAIL,
        NEVER: support.DNS_SILENT,
    }
    return replies[outcome].after(delay)


def expected_for(a: str, aaaa: str, order: str) -> Expected:
    """What `request` must do when the A lookup has outcome `a`, AAAA `aaaa`, in `order`."""
    if a == ANSWERS and aaaa == ANSWERS:
        # An A answer waits 50 ms for AAAA, an AAAA answer is used at once: IPv6, unless A
        # came so much earlier that the resolution delay was over before AAAA arrived.
        return Reaches(V4 if order == 'A 120 ms first' else V6)
    if aaaa == ANSWERS:
        return Reaches(V6)
    if a == ANSWERS:
        return Reaches(V4)  # whatever happened to AAAA, and whenever
    if NEVER in (a, aaaa):
        return FailsWith(asyncio.TimeoutError, at_deadline=True)
    if SERVFAIL in (a, aaaa):
        return FailsWith(DnsResponseCode, at_deadline=False)
    return FailsWith(DnsRecordDoesNotExist, at_deadline=False)


def connect_timeout_for(a: str, aaaa: str) -> float:
    if NEVER not in (a, aaaa):
        return 5.0  # never reached: every lookup ends well before
    if ANSWERS in (a, aaaa):
        return 1.0  # time to connect, while the silent lookup runs on until the deadline
    return 0.25  # nothing to connect to: the deadline is what ends it


@pytest.mark.parametrize('aaaa', OUTCOMES, ids=[f'AAAA {o}' for o in OUTCOMES])
@pytest.mark.parametrize('a', OUTCOMES, ids=[f'A {o}' for o in OUTCOMES])
async def test_each_answer_of_a_and_aaaa_in_every_order(a: str, aaaa: str,
                                                         quiet_resolver: None) -> None:
    """Each order of arrival, REPETITIONS times with fresh names (TTL 0): the first request
    resolves the name, the second resolves it again (its answer expired) with a connection of
    the first in the pool. Both must do what `expected_for` says, and leave no task behind."""
    connect_timeout = connect_timeout_for(a, aaaa)
    loop = asyncio.get_running_loop()
    async with support.dns_server() as dns, servers_on(V4, V6) as servers:
        # Two attempts, each given long enough that only the cells' own silences time out (and
        # half the load of the usual five when every one is answered with SERVFAIL)
        dns.attempts, dns.attempt_timeout = 2, 2.0
        cases = []
        for _ in range(REPETITIONS):
            for order, (a_delay, aaaa_delay) in ORDERS.items():
                name = fresh_name('m')
                dns.set_reply(name, 'A', family_reply(a, V4, a_delay, ttl=0))
                dns.set_reply(name, 'AAAA', family_reply(aaaa, V6, aaaa_delay, ttl=0))
                cases.append((order, name))
        last_start = [loop.time()]

        async def first_then_again(index: int, name: str) -> Tuple[Outcome, Outcome]:
            await asyncio.sleep(index * STAGGER)
            first = await fetch(request, servers.url(name))
            last_start[0] = loop.time()
            return first, await fetch(request, servers.url(name))

        async with no_leftovers(lambda: last_start[0] + connect_timeout), \
                open_pool(get_dns_resolver=dns.get_dns_resolver,
                          connect_timeout=connect_timeout) as request:
            results = await asyncio.gather(*(
                first_then_again(index, name) for index, (_, name) in enumerate(cases)))

        mismatches = []
        for (order, name), outcomes in zip(cases, results):
            expected = expected_for(a, aaaa, order)
            for lookup, outcome in zip(('first lookup', 're-lookup'), outcomes):
                problem = mismatch(expected, outcome, connect_timeout)
                if problem:
                    mismatches.append(f'{order}, {lookup} of {name}: {problem}; got {outcome}')
        assert_no_mismatches(mismatches, 2 * len(cases))
        assert not dns.errors
