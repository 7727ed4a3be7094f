"""Every deadline lowhaio enforces, and the exception it raises (issue 9, item 5).

One table, one row per deadline, the same as README.md's "Deadlines and the exceptions they
raise": for each, a real server on loopback that makes it expire (a DNS server that never
answers, a black-holed port, a TLS server that never speaks, a held connection slot, a server
that never reads, one that never answers, one that dribbles its head, one that stalls in a
body). Each row checks the exception's class; that it says it was a timeout (its `__cause__`
is an `asyncio.TimeoutError`); whether it is an `HttpConnectionError` (nothing was sent: any
retry is safe) or an `HttpDataError`; that it came when the deadline passed, not before and
not much after; that the calling task was not cancelled; and that no socket is left open.
Each row runs several times, since it depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import (
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    Optional,
    Tuple,
    Type,
)

import aiodnsresolver
import pytest
import support
from support import client_ssl_context, open_sockets, scripted_server, wait_for_sockets

import lowhaio
from lowhaio import (
    HttpConnectionError,
    HttpDataError,
    HttpDnsError,
    HttpError,
    HttpPoolTimeoutError,
    HttpTimeoutError,
    HttpTlsError,
    buffered,
)

HAS_CANCELLING = sys.version_info >= (3, 11)
REPETITIONS = 3
# How late a failure may come past its deadline on a shared, busy machine
SCHEDULING_MARGIN = 0.35
# How early: timers may fire a little early on a loop's coarse clock (uvloop's is in ms)
EARLY = 0.05
SHORT = 0.3  # the deadline under test, in every row

Request = Callable[..., Awaitable[Tuple[bytes, Tuple[Tuple[bytes, bytes], ...],
                                        AsyncIterator[bytes]]]]


# ---------------------------------------------------------------------------------------------
# Servers that make a deadline expire
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def silent_udp() -> Iterator[Tuple[str, int]]:
    """A UDP socket on 127.0.0.1 that receives DNS queries and never answers them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()


def resolver_asking(address: Tuple[str, int], attempt_timeout: float) -> Callable[..., object]:
    """A `get_dns_resolver` asking only `address`, once, giving up after `attempt_timeout`."""
    async def get_nameservers(_: object, __: object) -> AsyncIterator[
            Tuple[float, Tuple[str, int]]]:
        yield (attempt_timeout, address)
    return functools.partial(aiodnsresolver.Resolver, get_nameservers=get_nameservers)


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 where connection attempts neither succeed nor fail: a listener
    whose one-place accept queue is taken, so the kernel drops further SYNs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(('127.0.0.1', 0))
        listener.listen(0)
        filler.settimeout(1.0)
        filler.connect(listener.getsockname())  # takes the accept slot, never accepted
        yield listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


@contextlib.contextmanager
def never_accepting() -> Iterator[int]:
    """A port on 127.0.0.1 whose connections complete (the kernel does that) and are never
    accepted, so nothing is ever read from them: a server that never reads. Its receive
    buffer is small, so a client's upload stalls after a few KiB."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        listener.bind(('127.0.0.1', 0))
        listener.listen(16)
        yield listener.getsockname()[1]


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def https_server(handler: StreamHandler) -> AsyncIterator[str]:
    """An https server on 127.0.0.1 (certificate from the tests' CA, small receive buffer)
    running `handler` for each connection once its TLS handshake is done. Yields its URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    listener.bind(('127.0.0.1', 0))
    tasks = []
    writers = []

    async def on_connection(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError,
                asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, sock=listener,
                                        ssl=support.server_ssl_context())
    try:
        yield 'https://127.0.0.1:%d/' % (listener.getsockname()[1],)
    finally:
        server.close()
        for task in tasks:
            task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(*tasks, return_exceptions=True)  # type: ignore[arg-type]
        for writer in writers:
            # asyncio before 3.11 never finishes closing a TLS connection whose reading is
            # paused and whose peer has gone: the server's side is dropped at once instead,
            # so that the socket count measures the client alone
            writer.transport.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)


async def tls_never_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After the handshake, read nothing more: the client's upload fills the buffers."""
    writer.transport.pause_reading()
    await asyncio.sleep(30)


async def tls_silent_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           sent: bytes = b'') -> None:
    """Read the request head, send `sent`, then say nothing until the client leaves."""
    await reader.readuntil(b'\r\n\r\n')
    writer.write(sent)
    await writer.drain()
    await reader.read()


def small_buffer_sock(family: int = socket.AF_INET) -> socket.socket:
    sock = lowhaio.get_nonblocking_sock(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return sock


async def silent_after(conn: support.Connection, sent: bytes = b'',
                       dribble: Optional[float] = None) -> None:
    """Read the request, send `sent` (one byte every `dribble` seconds if given), then say
    nothing until the client leaves."""
    with contextlib.suppress(ConnectionError):
        await conn.read_request()
        if dribble is not None:
            await conn.write_slowly(sent, chunk_size=1, delay=dribble)
        elif sent:
            conn.write(sent)
            await conn.drain()
        await conn.read_until_eof()


open_pool = support.open_pool  # a Pool, closed on leaving the block


def task_cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling() if HAS_CANCELLING else 0  # type: ignore[attr-defined]


async def failure_of(awaitable: Awaitable[object]) -> Tuple[BaseException, float]:
    """The exception `awaitable` raises and how long it took. Bounded, so that a deadline not
    enforced shows up as a plain TimeoutError that fails every check, not a hung test."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(awaitable, 5.0)
    except Exception as exception:
        return exception, time.monotonic() - started
    raise AssertionError('no exception raised')


# ---------------------------------------------------------------------------------------------
# The rows: each makes its deadline expire once, and returns the exception and its timing
# ---------------------------------------------------------------------------------------------

async def dns_not_answered() -> Tuple[BaseException, float]:
    with silent_udp() as address:
        async with open_pool(connect_timeout=SHORT,
                             get_dns_resolver=resolver_asking(address, 5.0)) as request:
            return await failure_of(request(b'GET', 'http://silent.lowhaio.test/'))


async def dns_resolver_gives_up() -> Tuple[BaseException, float]:
    with silent_udp() as address:
        async with open_pool(get_dns_resolver=resolver_asking(address, SHORT)) as request:
            return await failure_of(request(b'GET', 'http://silent.lowhaio.test/'))


async def connect_black_holed() -> Tuple[BaseException, float]:
    with black_hole() as port:
        async with open_pool(connect_timeout=SHORT) as request:
            return await failure_of(request(b'GET', 'http://127.0.0.1:%d/' % (port,)))


async def tls_handshake_unanswered() -> Tuple[BaseException, float]:
    async with scripted_server(silent_after) as server:
        async with open_pool(connect_timeout=SHORT,
                             get_ssl_context=client_ssl_context) as request:
            return await failure_of(request(b'GET', 'https://127.0.0.1:%d/' % (server.port,)))


async def pool_slot_held() -> Tuple[BaseException, float]:
    held = b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc'
    async with scripted_server(functools.partial(silent_after, sent=held)) as server:
        async with open_pool(max_connections_per_host=1, pool_timeout=SHORT) as request:
            _, _, holding = await request(b'GET', server.url())  # its body unread: slot held
            try:
                return await failure_of(request(b'GET', server.url()))
            finally:
                await holding.aclose()  # type: ignore[attr-defined]


async def send_never_read(tls: bool = False) -> Tuple[BaseException, float]:
    async def one_large_chunk() -> AsyncIterator[bytes]:
        yield b'u' * (8 * 1024 * 1024)

    async with contextlib.AsyncExitStack() as stack:
        if tls:
            url = await stack.enter_async_context(https_server(tls_never_reading))
        else:
            url = 'http://127.0.0.1:%d/' % (stack.enter_context(never_accepting()),)
        async with open_pool(socket_timeout=SHORT, get_sock=small_buffer_sock,
                             get_ssl_context=client_ssl_context) as request:
            return await failure_of(request(
                b'POST', url, headers=((b'content-length', b'%d' % (8 * 1024 * 1024)),),
                body=one_large_chunk))
    raise AssertionError('unreachable')  # for type checkers: the block above returns


async def head_never_sent(tls: bool = False) -> Tuple[BaseException, float]:
    if tls:
        async with https_server(tls_silent_after) as url:
            async with open_pool(socket_timeout=SHORT,
                                 get_ssl_context=client_ssl_context) as request:
                return await failure_of(request(b'GET', url))
    async with scripted_server(silent_after) as server:
        async with open_pool(socket_timeout=SHORT) as request:
            return await failure_of(request(b'GET', server.url()))


async def head_stalls_part_way() -> Tuple[BaseException, float]:
    handler = functools.partial(silent_after, sent=b'HTTP/1.1 200 OK\r\nserver: half')
    async with scripted_server(handler) as server:
        async with open_pool(socket_timeout=SHORT) as request:
            return await failure_of(request(b'GET', server.url()))


async def head_dribbled() -> Tuple[BaseException, float]:
    # A byte every 50 ms: each wait is far within socket_timeout, the whole head is not
    head = b'HTTP/1.1 200 OK\r\n' + b'x-padding: %s\r\n\r\n' % (b'p' * 200,)
    handler = functools.partial(silent_after, sent=head, dribble=0.05)
    async with scripted_server(handler) as server:
        async with open_pool(socket_timeout=5.0, response_head_timeout=SHORT) as request:
            return await failure_of(request(b'GET', server.url()))


async def body_stalls(head_and_start: bytes, tls: bool = False) -> Tuple[BaseException, float]:
    async with contextlib.AsyncExitStack() as stack:
        if tls:
            url = await stack.enter_async_context(https_server(
                functools.partial(tls_silent_after, sent=head_and_start)))
        else:
            url = (await stack.enter_async_context(scripted_server(
                functools.partial(silent_after, sent=head_and_start)))).url()
        async with open_pool(socket_timeout=SHORT,
                             get_ssl_context=client_ssl_context) as request:
            code, _, body = await request(b'GET', url)
            assert code == b'200'
            return await failure_of(buffered(body))
    raise AssertionError('unreachable')  # for type checkers: the block above returns


@dataclass(frozen=True)
class Deadline:
    """One row of the table in README.md."""
    keyword: str
    phase: str
    expire: Callable[[], Awaitable[Tuple[BaseException, float]]]
    exception: Type[HttpError]
    connection_error: bool  # True: nothing sent, any retry is safe; else an HttpDataError
    says: str  # in the message: what was going on
    # A send is checked 8 times per socket_timeout, so it fails within an eighth more
    late_factor: float = 1.0


DEADLINES: Dict[str, Deadline] = {
    'dns': Deadline('connect_timeout', 'DNS lookup', dns_not_answered,
                    HttpDnsError, True, 'silent.lowhaio.test'),
    'dns-resolver': Deadline("the resolver's own timeout", 'DNS lookup', dns_resolver_gives_up,
                             HttpDnsError, True, 'silent.lowhaio.test'),
    'connect': Deadline('connect_timeout', 'TCP connect', connect_black_holed,
                        HttpConnectionError, True, 'connecting'),
    'tls': Deadline('connect_timeout', 'TLS handshake', tls_handshake_unanswered,
                    HttpTlsError, True, 'TLS handshake'),
    'pool': Deadline('pool_timeout', 'waiting for a connection slot', pool_slot_held,
                     HttpPoolTimeoutError, True, 'No connection became free'),
    'send': Deadline('socket_timeout', 'sending the request', send_never_read,
                     HttpTimeoutError, False, 'sending', late_factor=1.125),
    'send-https': Deadline('socket_timeout', 'sending the request, over TLS', functools.partial(
        send_never_read, tls=True), HttpTimeoutError, False, 'sending', late_factor=1.125),
    'head': Deadline('socket_timeout', 'waiting for the response head', head_never_sent,
                     HttpTimeoutError, False, 'response head'),
    'head-https': Deadline('socket_timeout', 'waiting for the response head, over TLS',
                           functools.partial(head_never_sent, tls=True),
                           HttpTimeoutError, False, 'response head'),
    'head-partial': Deadline('socket_timeout', 'reading the response head',
                             head_stalls_part_way, HttpTimeoutError, False, 'response head'),
    'head-total': Deadline('response_head_timeout', 'reading the response head',
                           head_dribbled, HttpTimeoutError, False, 'response head'),
    'body-length': Deadline('socket_timeout', 'reading the body', functools.partial(
        body_stalls, b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc'),
        HttpTimeoutError, False, 'body'),
    'body-chunked': Deadline('socket_timeout', 'reading the body', functools.partial(
        body_stalls, b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n'),
        HttpTimeoutError, False, 'body'),
    'body-https': Deadline('socket_timeout', 'reading the body, over TLS', functools.partial(
        body_stalls, b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc', tls=True),
        HttpTimeoutError, False, 'body'),
}


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(DEADLINES))
async def test_an_expired_deadline_raises_its_exception_saying_it_timed_out(name: str) -> None:
    row = DEADLINES[name]
    baseline = open_sockets()
    for _repetition in range(REPETITIONS):
        exception, elapsed = await row.expire()
        seen = '%r (caused by %r) after %.3f s' % (exception, exception.__cause__, elapsed)
        assert type(exception) is row.exception, seen
        # Said as a timeout: an HttpTimeoutError, and in any case caused by asyncio.TimeoutError
        assert isinstance(exception.__cause__, asyncio.TimeoutError), seen
        assert isinstance(exception, HttpTimeoutError) == (row.exception is HttpTimeoutError)
        # Whether a retry is safe whatever the method
        assert isinstance(exception, HttpConnectionError) == row.connection_error
        assert isinstance(exception, HttpDataError) == (not row.connection_error)
        assert row.says in str(exception), seen
        # When the deadline passed: not before, and not much after
        assert SHORT - EARLY <= elapsed <= SHORT * row.late_factor + SCHEDULING_MARGIN, seen
        # lowhaio's deadlines never cancel the caller's task
        assert task_cancelling() == 0
        # No socket left behind (fewer is fine: one an earlier test left closing has gone)
        assert await wait_for_sockets(baseline) <= baseline


async def test_a_tls_handshake_timeout_keeps_the_loops_own_error_behind_the_timeout() -> None:
    # The loop reports its handshake timeout in its own way (asyncio: ConnectionAbortedError);
    # it stays reachable, one step further down the chain
    exception, _ = await tls_handshake_unanswered()
    assert isinstance(exception.__cause__, asyncio.TimeoutError)
    assert exception.__cause__.__cause__ is not None


async def test_a_dns_timeout_of_the_resolver_keeps_its_error_behind_the_timeout() -> None:
    exception, _ = await dns_resolver_gives_up()
    assert isinstance(exception.__cause__, asyncio.TimeoutError)
    assert isinstance(exception.__cause__.__cause__, aiodnsresolver.DnsTimeout)
