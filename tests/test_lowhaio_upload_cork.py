"""Request body chunks leave in full TCP segments, and nothing waits for the body generator
(issue 13, section 1).

A chunk rarely fills its last TCP segment: over loopback, whose MSS is 65,483 bytes, a 64 KiB
chunk written to an idle socket is two packets, one of 53 bytes. A small chunk is a packet of
its own (TCP_NODELAY), and a thousand 1-byte chunks a thousand packets. Over TCP on Linux, TLS
or not, lowhaio corks the socket from the second write in a row that its writer makes without
giving way to the loop (of a body's later chunks, whatever their size; of a request's first
write, only from 16 KiB), so each chunk fills the last segment of the one before, and uncorks
it as soon as the writer gives way: when it waits for room, for the body generator, or for the
response. Against a real server on a thread (default socket buffers, reading as fast as it
can, counting and hashing the body, and counting the data segments it receives):

- chunks of 1 byte to 100 KiB from a generator that never waits arrive in about as many
  segments as the body fills, not one or two a chunk, over TCP and TLS (a server in a process
  of its own, so that its pace is not set by sharing the GIL with the client);
- bytes held back leave at once when the generator waits, however many chunks, small or
  large, came before in a row: the cork would otherwise hold them for Linux's 200 ms;
- bodies mixing chunk sizes, from 1 byte and around the 16 KiB threshold, from generators that
  wait after every chunk, every third, or never, arrive whole and in order (byte count and
  SHA-256), over TCP and TLS;
- a body of one chunk, or of chunks that each wait for the generator, costs no setsockopt,
  with small chunks or large; a fast body of many chunks costs two (cork and uncork) each time
  the writer gives way;
- a server that hangs up mid-upload: the upload fails with HttpDataError, and the uncork that
  comes after the close reports nothing to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import (Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Optional,
                    Sequence, Tuple)

import pytest
from support import client_ssl_context, server_cert, server_ssl_context

import lowhaio
from lowhaio import HttpDataError, Pool, buffered

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith('linux'),
    reason='TCP_CORK, and the tcp_info layout read here, are Linux-only')

KIB = 1024
MIB = 1024 * KIB
# Loopback's MTU, 65,536 bytes, less the IP and TCP headers with timestamps
LOOPBACK_MSS = 65483
LARGE = lowhaio._CORK_MIN  # a first write this large or larger corks the ones after it (16 KiB)
# A TLS 1.3 record's overhead (AES-GCM): a 5-byte header, the content type and a 16-byte tag
TLS_RECORD_OVERHEAD = 22
TLS_RECORD_MAX = 16 * KIB

# struct tcp_info (linux/tcp.h): tcpi_bytes_received, tcpi_data_segs_in
TCP_INFO_BYTES_RECEIVED = 128
TCP_INFO_DATA_SEGS_IN = 152
TCP_INFO_SIZE = 232


def data_segments_in(conn: socket.socket) -> int:
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    return int(struct.unpack_from('I', info, TCP_INFO_DATA_SEGS_IN)[0])


def bytes_in(conn: socket.socket) -> int:
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    return int(struct.unpack_from('Q', info, TCP_INFO_BYTES_RECEIVED)[0])


_DATA = random.Random(13).randbytes(17 * MIB)


def pattern(total: int) -> bytes:
    return _DATA[:total]


# ---------------------------------------------------------------------------------------------
# The server: reads request bodies as fast as it can, on a thread with blocking sockets
# ---------------------------------------------------------------------------------------------

class Sink:
    """A TCP (or TLS) server on 127.0.0.1 for one kept-alive connection. For each request it
    reads the head and the content-length body, and answers 200 '<byte count> <sha256 hex>
    <data segments> <wire bytes>': the TCP data segments the request came in, and the bytes
    they carried (under TLS, its records' too). Without `hashing`
    it reads as fast as it can, into one buffer, and sends '-' for the hash. `received` is
    the body bytes of the current request so far, and `hang_up_after` closes the connection
    once that many body bytes have arrived."""

    def __init__(self, *, tls: bool = False, hashing: bool = True,
                 hang_up_after: Optional[int] = None, cert_file: Optional[str] = None) -> None:
        self.tls = tls
        self.hashing = hashing
        self.hang_up_after = hang_up_after
        self.received = 0
        # Data segments in when the last request was in: the client sends its next request
        # only once it has the response, so every segment after it is that request's
        self._segments_mark = 0
        self._bytes_mark = 0
        self.errors: List[BaseException] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(1)
        self._listener.settimeout(10.0)
        self.port = self._listener.getsockname()[1]
        self._context = (server_context_from(cert_file) if cert_file else
                         server_ssl_context()) if tls else None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self) -> str:
        return '%s://127.0.0.1:%d/upload' % ('https' if self.tls else 'http', self.port)

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._listener.close()
        self.join()

    def join(self) -> None:
        self._thread.join(10.0)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with contextlib.closing(conn):
                conn.settimeout(10.0)
                self._segments_mark = data_segments_in(conn)
                self._bytes_mark = bytes_in(conn)
                if self._context is not None:
                    conn = self._context.wrap_socket(conn, server_side=True)
                left: Optional[bytes] = b''
                while left is not None:
                    left = self._serve_request(conn, left)
        except BaseException as exception:
            self.errors.append(exception)

    def _serve_request(self, conn: socket.socket, buffered_bytes: bytes) -> Optional[bytes]:
        """Serve one request; None once the client has closed the connection."""
        while b'\r\n\r\n' not in buffered_bytes:
            data = conn.recv(65536)
            if not data:
                return None
            buffered_bytes += data
        head, _, body = buffered_bytes.partition(b'\r\n\r\n')
        length = content_length(head)
        digest = hashlib.sha256(body[:length])
        into = memoryview(bytearray(MIB))
        self.received = min(len(body), length)
        while self.received < length:
            if self.hang_up_after is not None and self.received >= self.hang_up_after:
                conn.close()
                return None
            if self.hashing:
                data = conn.recv(min(length - self.received, MIB))
                digest.update(data)
                size = len(data)
            else:
                size = conn.recv_into(into, min(length - self.received, MIB))
            if not size:
                raise ConnectionError('closed after %d of %d body bytes'
                                      % (self.received, length))
            self.received += size
        segments_in = data_segments_in(conn)
        segments = segments_in - self._segments_mark
        self._segments_mark = segments_in
        wire_in = bytes_in(conn)
        wire = wire_in - self._bytes_mark
        self._bytes_mark = wire_in
        answer = b'%d %s %d %d' % (
            self.received, digest.hexdigest().encode() if self.hashing else b'-', segments, wire)
        conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(answer), answer))
        return body[length:]


def server_context_from(cert_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file)
    return context


def serve_one_connection(cert_file: Optional[str]) -> None:
    """Run a Sink in this process, its port on stdout (see sink_process); TLS with the
    key and certificate chain in `cert_file`, if given."""
    with Sink(hashing=False, tls=cert_file is not None, cert_file=cert_file) as server:
        print(server.port, flush=True)
        server.join()


@contextlib.contextmanager
def sink_process(tls: bool) -> Iterator[str]:
    """A Sink in a process of its own, so that it reads at its own pace, not one it gets by
    taking turns with the client for the GIL: its URL."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with tempfile.TemporaryDirectory() as directory:
        args = [sys.executable, __file__]
        if tls:
            # The certificate the client trusts (its CA is this process's)
            args.append(os.path.join(directory, 'server.pem'))
            server_cert().private_key_and_cert_chain_pem.write_to_path(args[-1])
        process = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
        try:
            assert process.stdout is not None
            yield '%s://127.0.0.1:%d/upload' % ('https' if tls else 'http',
                                                int(process.stdout.readline()))
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def content_length(head: bytes) -> int:
    for line in head.split(b'\r\n')[1:]:
        name, _, value = line.partition(b':')
        if name.strip().lower() == b'content-length':
            return int(value)
    raise AssertionError('no content-length in %r' % (head,))


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------

class CountingSocket(socket.socket):
    """lowhaio's default socket, counting the TCP_CORK settings made on it, and its sends.
    (asyncio's transport calls the socket it is given; uvloop's calls a socket object of its
    own.)"""

    corks: List[int]
    sends = 0

    def send(self, data: Any, *rest: Any) -> int:
        self.sends += 1
        return super().send(data, *rest)

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if level == socket.IPPROTO_TCP and option == socket.TCP_CORK:  # type: ignore[attr-defined,unused-ignore]
            self.corks.append(value)
        super().setsockopt(level, option, value, *rest)


def counting_sockets_into(sockets: List[CountingSocket]) -> Callable[[int], socket.socket]:
    """A get_sock for Pool: lowhaio's default socket, but a CountingSocket, kept in `sockets`."""

    def get_sock(family: int) -> socket.socket:
        sock = CountingSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.corks = []
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
        return sock

    return get_sock


@contextlib.asynccontextmanager
async def pool(**options: Any) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    request, close = Pool(get_ssl_context=client_ssl_context, socket_timeout=5, **options)
    try:
        yield request
    finally:
        await close()
        # The loops close a transport's socket on their next turn: a server on a blocking
        # thread or in another process waits for that close before it ends
        await asyncio.sleep(0.05)


async def post(request: Callable[..., Awaitable[Any]], url: str, body: Any,
               data: bytes) -> int:
    """POST `body`, standing for `data`: the server must get exactly `data`. The TCP data
    segments it came in."""
    return (await post_counting(request, url, body, data))[0]


async def post_counting(request: Callable[..., Awaitable[Any]], url: str, body: Any,
                        data: bytes) -> Tuple[int, int]:
    """As post: the TCP data segments the request came in, and the bytes on the wire."""
    code, _, response = await asyncio.wait_for(request(
        b'POST', url, headers=((b'content-length', b'%d' % len(data)),), body=body), 60)
    count, digest, segments, wire = (await buffered(response)).split(b' ')
    assert (code, count) == (b'200', b'%d' % len(data))
    if digest != b'-':  # a Sink that hashes
        assert digest == hashlib.sha256(data).hexdigest().encode()
    return int(segments), int(wire)


def chunked(data: bytes, sizes: Sequence[int]) -> List[bytes]:
    """`data` cut into pieces of `sizes`, repeated; the last piece whatever is left."""
    pieces = []
    start = 0
    i = 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        pieces.append(data[start:start + size])
        start += size
        i += 1
    return pieces


def body_of(pieces: List[bytes], wait_every: int) -> Callable[[], AsyncIterator[bytes]]:
    """A body function yielding `pieces`, giving way to the loop after every `wait_every`th
    (never if 0), as a generator reading from a file or a queue does."""

    async def body() -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces, 1):
            yield piece
            if wait_every and i % wait_every == 0:
                await asyncio.sleep(0)

    return body


# ---------------------------------------------------------------------------------------------
# Full segments
# ---------------------------------------------------------------------------------------------

# (chunk size, chunks, transport). Not 100 KiB chunks over TLS: the TLS transport writes some
# of their ciphertext later, uncorked, when the TCP transport has room, and what tells
# corked from uncorked there is within the spread.
SEGMENT_CASES = [(64 * KIB, 8, 'tcp'), (20 * KIB, 24, 'tcp'), (100 * KIB, 10, 'tcp'),
                 (1, 30000, 'tcp'), (100, 5000, 'tcp'), (1000, 2000, 'tcp'),
                 (64 * KIB, 16, 'tls'), (20 * KIB, 24, 'tls'),
                 (1, 10000, 'tls'), (100, 5000, 'tls'), (1000, 2000, 'tls')]
SEGMENT_IDS = ['64KiB-tcp', '20KiB-tcp', '100KiB-tcp', '1B-tcp', '100B-tcp', '1000B-tcp',
               '64KiB-tls', '20KiB-tls', '1B-tls', '100B-tls', '1000B-tls']


@pytest.mark.parametrize('chunk_size,count,transport', SEGMENT_CASES, ids=SEGMENT_IDS)
async def test_chunks_from_a_body_that_never_waits_leave_in_full_segments(
        chunk_size: int, count: int, transport: str) -> None:
    warm_up = pattern(16 * MIB)
    data = pattern(chunk_size * count)
    segments = []
    with sink_process(tls=transport == 'tls') as url:
        async with pool() as request:
            # Grows the server's receive window, so that a body of under 2 MiB goes at once,
            # and only how the client wrote it decides its segments
            await post(request, url, body_of(chunked(warm_up, [64 * KIB]), 0), warm_up)
            for _ in range(9):
                segments.append(await post(request, url, body_of(chunked(data, [chunk_size]), 0),
                                           data))
    # Corked: what the body fills, at loopback's MSS (TLS adds 22 bytes to each record of up
    # to 16 KiB, a chunk making at least one); and the head, sent alone before a chunk of 64 KiB
    # or more, the short end of the first chunk, which is not corked, the second chunk (small
    # chunks: the first in a row is not corked) and one for a wait for room. Uncorked: each
    # 64 KiB chunk a segment and a short one (16, or 33 for 16 under TLS), each 20 KiB chunk a
    # segment (24), each 100 KiB chunk two (20), each small chunk one (thousands). The median
    # allows for the odd retransmission over loopback.
    records = count * math.ceil(chunk_size / TLS_RECORD_MAX)
    full = math.ceil((len(data) + (TLS_RECORD_OVERHEAD * records if transport == 'tls' else 0))
                     / LOOPBACK_MSS)
    # Under TLS, the TLS transport sends some ciphertext later, from the loop, uncorked (more
    # often under uvloop): up to half as many again.
    allowed = full + 3 if transport == 'tcp' else full * 3 // 2
    assert sorted(segments)[len(segments) // 2] <= allowed, (segments, full)


# ---------------------------------------------------------------------------------------------
# Nothing waits for the generator
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('transport', ['tcp', 'tls'])
@pytest.mark.parametrize('in_a_row', [1, 2, 3])
@pytest.mark.parametrize('chunk_size', [1, 1000, LARGE, 20 * KIB, 64 * KIB, 100 * KIB],
                         ids=['1B', '1000B', '16KiB', '20KiB', '64KiB', '100KiB'])
async def test_bytes_held_back_leave_as_soon_as_the_generator_waits(
        chunk_size: int, in_a_row: int, transport: str) -> None:
    rounds = 6
    data = pattern(chunk_size * in_a_row * rounds)
    pieces = chunked(data, [chunk_size])
    waits: List[float] = []

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(pieces), in_a_row):
            for piece in pieces[start:start + in_a_row]:
                yield piece
            # Like a generator waiting for its source: until the server has everything sent
            expected = (start + in_a_row) * chunk_size
            started = time.monotonic()
            while server.received < expected:
                assert time.monotonic() - started < 5, 'bytes held back'
                await asyncio.sleep(0.001)
            waits.append(time.monotonic() - started)

    with Sink(tls=transport == 'tls') as server:
        async with pool() as request:
            await post(request, server.url(), body, data)
        assert server.errors == []
    # Held by the cork until Linux's 200 ms ceiling, each wait would take that long. The
    # median allows for a busy machine delaying the server thread now and then.
    assert sorted(waits)[len(waits) // 2] < 0.1, waits


# ---------------------------------------------------------------------------------------------
# Whole and in order
# ---------------------------------------------------------------------------------------------

PATTERNS = {
    'large': [64 * KIB],
    'threshold': [LARGE - 1, LARGE, LARGE + 1],
    'large-small': [64 * KIB, 1000, 100 * KIB, 10],
    'small-large': [1000, 1000, 64 * KIB, 20 * KIB],
    'large-then-tiny': [MIB] + [1] * 5,
    'tiny': [1, 7, 100],
    'small-around-large': [100, 64 * KIB, 3, 20 * KIB, 1000],
}


@pytest.mark.parametrize('transport', ['tcp', 'tls'])
@pytest.mark.parametrize('wait_every', [0, 1, 3], ids=['never-waits', 'waits-each', 'waits-3rd'])
@pytest.mark.parametrize('sizes', list(PATTERNS.values()), ids=list(PATTERNS))
async def test_bodies_mixing_chunk_sizes_arrive_whole(sizes: List[int], wait_every: int,
                                                      transport: str) -> None:
    data = pattern(max(3 * sum(sizes), 512 * KIB) + 777)
    with Sink(tls=transport == 'tls') as server:
        async with pool() as request:
            # Twice on the same connection: the second starts where the first left the socket
            for _ in range(2):
                await post(request, server.url(), body_of(chunked(data, sizes), wait_every), data)
        assert server.errors == []


# ---------------------------------------------------------------------------------------------
# What it costs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('chunk_size', [100, 64 * KIB], ids=['100B', '64KiB'])
@pytest.mark.parametrize('body_kind', ['one-chunk', 'each-waits', 'never-waits'])
def test_corking_costs_a_system_call_only_for_writes_in_a_row(body_kind: str,
                                                              chunk_size: int) -> None:
    # On asyncio's loop alone (a plain function, which conftest does not run under uvloop):
    # uvloop calls a socket object of its own, whose calls can't be counted
    asyncio.run(corking_costs_a_system_call_only_for_writes_in_a_row(body_kind, chunk_size))


async def corking_costs_a_system_call_only_for_writes_in_a_row(body_kind: str,
                                                               chunk_size: int) -> None:
    sockets: List[CountingSocket] = []
    get_sock = counting_sockets_into(sockets)

    # Small chunks: enough for several gathered writes of 64 KiB (see the test below)
    in_body = 64 if chunk_size >= LARGE else 2000
    data = pattern(chunk_size * (1 if body_kind == 'one-chunk' else in_body))
    pieces = chunked(data, [chunk_size])
    with Sink() as server:
        async with pool(get_sock=get_sock) as request:
            wait_every = 1 if body_kind == 'each-waits' else 0
            await post(request, server.url(), body_of(pieces, wait_every), data)
        assert server.errors == []
    [sock] = sockets
    if body_kind == 'never-waits':
        # Corked (small chunks: from the second write of those gathered), then uncorked each
        # time the writer waited (for room, or the response)
        assert sock.corks[:2] == [1, 0]
        assert sock.corks == [1, 0] * (len(sock.corks) // 2)
        assert len(sock.corks) <= len(pieces)
    else:
        assert sock.corks == []


@pytest.mark.parametrize('transport', ['tcp', 'tls'])
@pytest.mark.parametrize('chunk_size,count', [(1, 20000), (100, 5000), (1000, 5000)],
                         ids=['1B', '100B', '1000B'])
def test_small_chunks_in_a_row_leave_together(chunk_size: int, count: int,
                                              transport: str) -> None:
    # On asyncio's loop alone, as above
    asyncio.run(small_chunks_in_a_row_leave_together(chunk_size, count, transport))


async def small_chunks_in_a_row_leave_together(chunk_size: int, count: int,
                                               transport: str) -> None:
    sockets: List[CountingSocket] = []
    get_sock = counting_sockets_into(sockets)

    data = pattern(chunk_size * count)
    with sink_process(tls=transport == 'tls') as url:
        async with pool(get_sock=get_sock) as request:
            await post(request, url, body_of([b'warm'], 0), b'warm')  # and the TLS handshake
            [sock] = sockets
            sends_before = sock.sends
            _, wire = await post_counting(request, url, body_of(chunked(data, [chunk_size]), 0),
                                          data)
            sends = sock.sends - sends_before
    gathered = math.ceil(len(data) / lowhaio._GATHER_UP_TO)
    # A send for the head with the first chunk, one for the second chunk (the burst starts
    # there), then one for each 64 KiB gathered; as many again for the socket's room, which a
    # reader in another process makes as it goes. One a chunk before: thousands.
    assert sends <= 2 * (gathered + 2), (sends, count)
    # Under TLS, a write of 64 KiB or a little more (up to a chunk) is at most 5 records, each
    # adding 22 bytes (with the head, well under 1 KiB); one a chunk before, 22 bytes each.
    overhead = wire - len(data)
    records = gathered * math.ceil((lowhaio._GATHER_UP_TO + chunk_size) / TLS_RECORD_MAX) + 2
    assert overhead <= (TLS_RECORD_OVERHEAD * records if transport == 'tls' else 0) + KIB, \
        (overhead, count)


async def test_a_server_hanging_up_mid_upload_fails_the_upload_and_nothing_else() -> None:
    loop = asyncio.get_running_loop()
    reported: List[Dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    data = pattern(16 * MIB)
    try:
        with Sink(hang_up_after=MIB) as server:
            async with pool() as request:
                with pytest.raises(HttpDataError):
                    await post(request, server.url(), body_of(chunked(data, [64 * KIB]), 0), data)
                # Time for any uncork that was due to run
                for _ in range(10):
                    await asyncio.sleep(0.01)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


if __name__ == '__main__':
    serve_one_connection(sys.argv[1] if len(sys.argv) > 1 else None)
