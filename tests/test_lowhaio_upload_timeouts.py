"""Uploads and `socket_timeout` (issue 9, item 2): a send times out only after `socket_timeout`
in which no byte moved, however long a whole chunk takes to go.

Against a raw-socket server in a thread that reads the request body at a pace it is told, with
small socket buffers on both sides (the client's through `Pool(get_sock=...)`), so that what
the client has not yet handed to the kernel, not the kernel's buffers, decides the timing:

- a server that reads steadily, but so slowly that every chunk of 120 KiB or more takes twice
  `socket_timeout` to go: uploads with chunks from 1 byte to 16 MiB all succeed, and the server
  gets exactly the bytes sent (count and sha256), over TCP and over TLS. That includes the end
  of the upload: bytes still buffered when the last chunk has been handed over are still being
  sent, and the wait for the response head must not expire while they go;
- a server that stops reading mid-upload: the request fails with `HttpTimeoutError` (an
  `HttpDataError`) between `socket_timeout` and 1.125 × `socket_timeout` after the last byte
  moved, its connection is closed (the server sees it) and not pooled, and no descriptor leaks.
  Timing-dependent, so each cell runs several times.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import math
import random
import socket
import ssl
import struct
import termios
import threading
import time
from typing import AsyncIterator, Awaitable, Callable, List, Optional, Tuple

import pytest
from support import client_ssl_context, open_sockets, server_ssl_context, wait_for_sockets

import lowhaio
from lowhaio import HttpDataError, HttpTimeoutError, Pool, buffered

KIB = 1024
MIB = 1024 * KIB

CHUNK_SIZES = [1, KIB, 64 * KIB, 256 * KIB, MIB, 8 * MIB, 16 * MIB]
CHUNK_IDS = ['1B', '1KiB', '64KiB', '256KiB', '1MiB', '8MiB', '16MiB']
TRANSPORTS = ['tcp', 'tls']

# Small kernel buffers on both ends (Linux doubles what is asked): the ~32 KiB they hold
# together drain within a fraction of socket_timeout even at the slowest pace below, so a
# timeout can only come from the client's own waiting.
SOCKET_BUFFER = 8 * KIB

# The slow reader: a step of bytes, then a pause. Each step is at least MIN_STEP and large
# enough that a chunk of any size takes DRAIN_FACTOR x socket_timeout to be read.
STEP_INTERVAL = 0.02
MIN_STEP = 4 * KIB
DRAIN_FACTOR = 2.0
SLOW_SOCKET_TIMEOUT = 0.3

# The server that stops reading
STALL_SOCKET_TIMEOUT = 0.25
STALL_AFTER = 32 * KIB
STALL_REPETITIONS = 3
# The failure is due between socket_timeout and 1.125 x socket_timeout after the last byte
# moved; this much more allows for a shared, busy machine.
SCHEDULING_MARGIN = 0.3

# Bodies: the chunk, and a short tail so that the last chunk differs; at least 64 KiB, so that
# small chunks make many writes.
TAIL = 1000
MIN_BODY = 64 * KIB

_DATA = random.Random(9).randbytes(16 * MIB + TAIL)


# ---------------------------------------------------------------------------------------------
# The server: reads one request's body at a set pace, or stops reading part way
# ---------------------------------------------------------------------------------------------

class PacedReader:
    """A TCP (or TLS) server on 127.0.0.1 for one connection, run in a thread with blocking
    sockets so that its pace does not depend on the event loop under test.

    It reads the request head, then the body `step` bytes at a time with `interval` seconds
    between steps, and answers 200 with '<byte count> <sha256 hex>' of the body. With
    `stop_after`, it stops reading once it has that many body bytes (recording when in
    `stopped_at`), until `resume()`: then it reads on to see the client close the connection.
    """

    def __init__(self, *, tls: bool, step: int, interval: float = STEP_INTERVAL,
                 stop_after: Optional[int] = None) -> None:
        self.tls = tls
        self.step = step
        self.interval = interval
        self.stop_after = stop_after
        self.received = 0
        self.digest = ''
        self.stopped_at: Optional[float] = None
        self.last_arrival: Optional[float] = None
        self.saw_close = False
        self.errors: List[BaseException] = []
        self.done = threading.Event()
        self._resume = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before listen(), so that accepted sockets inherit it and the window fits it
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(1)
        self._listener.settimeout(10.0)
        self.port = self._listener.getsockname()[1]
        self._context = server_ssl_context() if tls else None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self) -> str:
        return '%s://127.0.0.1:%d/upload' % ('https' if self.tls else 'http', self.port)

    def resume(self) -> None:
        self._resume.set()

    async def finished(self, timeout: float = 5.0) -> None:
        """Wait, without blocking the loop, until the server is done with its connection."""
        deadline = time.monotonic() + timeout
        while not self.done.is_set():
            assert time.monotonic() < deadline, 'the server did not finish'
            await asyncio.sleep(0.01)

    def __enter__(self) -> PacedReader:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._resume.set()
        self._listener.close()
        self._thread.join(10.0)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with contextlib.closing(conn):
                conn.settimeout(10.0)
                if self._context is not None:
                    conn = self._context.wrap_socket(conn, server_side=True)
                self._read_request(conn)
        except BaseException as exception:
            self.errors.append(exception)
        finally:
            self.done.set()

    def _read_request(self, conn: socket.socket) -> None:
        buffered_bytes = b''
        while b'\r\n\r\n' not in buffered_bytes:
            data = conn.recv(4096)
            if not data:
                raise ConnectionError('closed before the end of the head')
            buffered_bytes += data
        head, _, body = buffered_bytes.partition(b'\r\n\r\n')
        length = content_length(head)
        digest = hashlib.sha256(body)
        self.received = len(body)
        in_step = len(body)
        while self.received < length:
            if self.stop_after is not None and self.received >= self.stop_after:
                self._stop_reading_then_watch_for_close(conn)
                return
            if in_step >= self.step:
                time.sleep(self.interval)
                in_step = 0
            data = conn.recv(min(self.step - in_step, length - self.received, 65536))
            if not data:
                raise ConnectionError('closed after %d of %d body bytes'
                                      % (self.received, length))
            digest.update(data)
            self.received += len(data)
            in_step += len(data)
        self.digest = digest.hexdigest()
        answer = b'%d %s' % (self.received, self.digest.encode())
        conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(answer), answer))
        # Then wait for the client to close the kept-alive connection, or the test to end
        self._resume.wait(10.0)

    def _stop_reading_then_watch_for_close(self, conn: socket.socket) -> None:
        self.stopped_at = self.last_arrival = time.monotonic()
        self._watch_arrivals(conn)
        conn.settimeout(2.0)
        try:
            while conn.recv(65536):
                pass  # what was still on its way when the client gave up
        except (socket.timeout, TimeoutError):
            return  # still open: saw_close stays False
        except (OSError, ssl.SSLError):
            pass  # a reset, or TLS cut short: closed all the same
        self.saw_close = True

    def _watch_arrivals(self, conn: socket.socket) -> None:
        """Until resume(), note when bytes last arrived in the kernel's receive queue. The
        kernel takes in bytes after the server stopped reading: until its buffer is full, and
        then in dribbles as it makes room (small segments cost more memory than their bytes,
        and it coalesces them), so this, not when reading stopped, is when the client last
        made progress."""
        queued = -1
        while not self._resume.wait(0.005):
            now_queued = queued_bytes(conn)
            if now_queued != queued:
                queued = now_queued
                self.last_arrival = time.monotonic()


def queued_bytes(conn: socket.socket) -> int:
    """Bytes received by the kernel and not yet read (FIONREAD)."""
    return struct.unpack('i', fcntl.ioctl(conn.fileno(), termios.FIONREAD, b'\0' * 4))[0]


def content_length(head: bytes) -> int:
    for line in head.split(b'\r\n')[1:]:
        name, _, value = line.partition(b':')
        if name.strip().lower() == b'content-length':
            return int(value)
    raise AssertionError('no content-length in %r' % (head,))


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------

def small_buffer_sock(family: int = socket.AF_INET) -> socket.socket:
    """lowhaio's default socket, with a small send buffer."""
    sock = lowhaio.get_nonblocking_sock(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    return sock


@contextlib.asynccontextmanager
async def small_buffer_pool(socket_timeout: float) -> AsyncIterator[Callable[..., Awaitable]]:
    request, close = Pool(get_sock=small_buffer_sock, socket_timeout=socket_timeout,
                          get_ssl_context=client_ssl_context)
    try:
        yield request
    finally:
        await close()


class Body:
    """A body function yielding `total` bytes of _DATA in `chunk_size` pieces, remembering
    when it last handed over a chunk (after which the client may wait for room)."""

    def __init__(self, chunk_size: int, total: int) -> None:
        self.chunk_size = chunk_size
        self.total = total
        self.last_yield = 0.0

    @property
    def headers(self) -> Tuple[Tuple[bytes, bytes], ...]:
        return ((b'content-length', b'%d' % (self.total,)),)

    @property
    def expected_answer(self) -> bytes:
        return b'%d %s' % (self.total, hashlib.sha256(_DATA[:self.total]).hexdigest().encode())

    async def __call__(self) -> AsyncIterator[bytes]:
        for start in range(0, self.total, self.chunk_size):
            self.last_yield = time.monotonic()
            yield _DATA[start:min(start + self.chunk_size, self.total)]


def body_size(chunk_size: int) -> int:
    return max(chunk_size, MIN_BODY) + TAIL


def slow_step(chunk_size: int, socket_timeout: float) -> int:
    """Bytes per step for a chunk to take DRAIN_FACTOR x socket_timeout to be read."""
    steps = DRAIN_FACTOR * socket_timeout / STEP_INTERVAL
    return max(MIN_STEP, math.ceil(chunk_size / steps))


def pool_entry(request: Callable[..., Awaitable], port: int) -> dict:
    status = request.status()  # type: ignore[attr-defined]
    return {key: value for key, value in status.items() if key[2] == port}


# ---------------------------------------------------------------------------------------------
# A slow but steady reader: every chunk size succeeds
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunk_size', CHUNK_SIZES, ids=CHUNK_IDS)
async def test_an_upload_to_a_slow_but_steady_reader_succeeds(transport: str,
                                                              chunk_size: int) -> None:
    body = Body(chunk_size, body_size(chunk_size))
    with PacedReader(tls=transport == 'tls',
                     step=slow_step(chunk_size, SLOW_SOCKET_TIMEOUT)) as server:
        async with small_buffer_pool(SLOW_SOCKET_TIMEOUT) as request:
            started = time.monotonic()
            code, _, response = await asyncio.wait_for(
                request(b'POST', server.url(), headers=body.headers, body=body), 60)
            answer = await buffered(response)
            elapsed = time.monotonic() - started
            assert (code, answer) == (b'200', body.expected_answer)
            # Kept: a successful upload leaves a reusable connection
            assert pool_entry(request, server.port) == {
                ('https' if server.tls else 'http', '127.0.0.1', server.port):
                    {'idle': 1, 'in_use': 0, 'waiting': 0}}
        assert server.errors == []
    if chunk_size >= 120 * KIB:
        # The server really was slower than socket_timeout per chunk
        assert elapsed >= 1.5 * SLOW_SOCKET_TIMEOUT


# ---------------------------------------------------------------------------------------------
# A reader that stops: the upload fails soon after socket_timeout, and leaves nothing behind
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunk_size', CHUNK_SIZES, ids=CHUNK_IDS)
async def test_an_upload_to_a_reader_that_stops_times_out_after_socket_timeout(
        transport: str, chunk_size: int) -> None:
    for _repetition in range(STALL_REPETITIONS):
        await upload_until_the_reader_stops(transport == 'tls', chunk_size)


async def upload_until_the_reader_stops(tls: bool, chunk_size: int) -> None:
    timeout = STALL_SOCKET_TIMEOUT
    # Large enough to fill every buffer on the way once the server stops, with 1-byte chunks too
    body = Body(chunk_size, max(body_size(chunk_size), MIB))
    with PacedReader(tls=tls, step=64 * KIB, interval=0.0, stop_after=STALL_AFTER) as server:
        baseline = open_sockets()
        async with small_buffer_pool(timeout) as request:
            started = time.monotonic()
            with pytest.raises(HttpTimeoutError) as raised:
                await asyncio.wait_for(
                    request(b'POST', server.url(), headers=body.headers, body=body), 30)
            failed_at = time.monotonic()
            assert server.stopped_at is not None and server.last_arrival is not None, \
                'failed %.3f s after starting, before the server stopped reading (%d bytes ' \
                'read): %r' % (failed_at - started, server.received, raised.value)
            # Bytes move after the server stops, into the kernel's buffers (until
            # last_arrival), and the client's last wait for room starts once it has written
            # its last chunk: not before the later of the two plus socket_timeout...
            assert failed_at - max(server.stopped_at, body.last_yield) >= timeout - 0.05
            # ...and within an eighth of it after
            since_progress = failed_at - max(server.last_arrival, body.last_yield)
            assert since_progress <= 1.125 * timeout + SCHEDULING_MARGIN, since_progress
            assert isinstance(raised.value, HttpDataError)  # some of the request was sent
            assert isinstance(raised.value.__cause__, asyncio.TimeoutError)
            assert 'sending' in str(raised.value)
            # Closed, not pooled
            key = ('https' if tls else 'http', '127.0.0.1', server.port)
            assert pool_entry(request, server.port) in (
                {}, {key: {'idle': 0, 'in_use': 0, 'waiting': 0}})
        server.resume()
        await server.finished()
        assert server.saw_close
        assert server.received < body.total
        assert server.errors == []
        assert await wait_for_sockets(baseline) == baseline
