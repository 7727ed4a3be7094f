"""Uploads arrive whole and in order whatever the socket takes at a time (issue 13, section 1).

On asyncio's own loop before Python 3.12, lowhaio writes request bytes to the socket itself and
keeps what the socket did not take as the caller's own bytes until the selector says there is
room, instead of letting the transport copy it. Under TLS, uvloop and Python 3.12+ the transport
sends. Either way the server must get exactly the bytes of the body, so this checks, against a
real server reading on a thread at a set pace and hashing what it reads:

- chunk sizes from 1 byte to several MiB, around the socket buffer and around glibc malloc's
  mmap threshold (128 KiB), as bytes, bytearray and memoryview chunks, over TCP and TLS, to a
  server reading as fast as it can and to one reading slowly: byte count and SHA-256;
- a server that stops reading: the upload fails with HttpTimeoutError after socket_timeout with
  no progress, whatever the chunk size (the full matrix is in test_lowhaio_upload_timeouts.py);
- writes that do not wait for room (the 0.0.89 hooks' `send`): still in order;
- the bytes the socket has not taken are not copied: an 8 MiB chunk to a slow reader leaves
  the client's traced memory far below 8 MiB;
- a TLS connection lets 64 KiB of ciphertext wait before the writer waits, not asyncio's 512 KiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
from typing import Any, AsyncIterator, Callable, Tuple

import pytest
from test_lowhaio_upload_timeouts import PacedReader, small_buffer_pool

import lowhaio
from lowhaio import HttpDataError, HttpTimeoutError, buffered

KIB = 1024
MIB = 1024 * KIB

CHUNK_SIZES = [1, 1000, 16 * KIB, 64 * KIB, 128 * KIB - 1, 128 * KIB + 1, 256 * KIB, 3 * MIB]
CHUNK_IDS = ['1B', '1000B', '16KiB', '64KiB', '128KiB-1', '128KiB+1', '256KiB', '3MiB']
KINDS = ['bytes', 'bytearray', 'memoryview']
TRANSPORTS = ['tcp', 'tls']
TAIL = 777

# The pace of each reader: bytes per step, seconds between steps
READERS = {'fast': (4 * MIB, 0.0), 'slow': (48 * KIB, 0.002)}
SOCKET_TIMEOUT = 2.0


def make_body(chunk_size: int, total: int, kind: str) -> Tuple[Callable[[], AsyncIterator[Any]],
                                                                bytes]:
    """A body function of `kind` chunks, and the bytes it stands for."""
    data = bytes((i * 7 + i // 251) & 0xff for i in range(total))
    convert: Callable[[bytes], Any] = {
        'bytes': bytes, 'bytearray': bytearray, 'memoryview': memoryview}[kind]

    async def body() -> AsyncIterator[Any]:
        for start in range(0, total, chunk_size):
            yield convert(data[start:start + chunk_size])

    return body, data


def answer_for(data: bytes) -> bytes:
    return b'%d %s' % (len(data), hashlib.sha256(data).hexdigest().encode())


def total_for(chunk_size: int) -> int:
    # Several chunks, and a last one that differs; small chunks make at least 256 KiB, but at
    # most 64 Ki chunks: 64 Ki one-byte writes already fill the socket buffers (16 KiB each
    # way) several times over, and since Python 3.11 asyncio's TLS makes each write a record
    # of its own, which made 256 Ki of them take ~50 s per case
    return max(3 * chunk_size, min(256 * KIB, 64 * KIB * chunk_size)) + TAIL


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunk_size', CHUNK_SIZES, ids=CHUNK_IDS)
async def test_a_fast_reader_gets_exactly_the_body(chunk_size: int, transport: str,
                                                  kind: str) -> None:
    await upload_and_check(chunk_size, transport, kind, 'fast')


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunk_size', CHUNK_SIZES[1:], ids=CHUNK_IDS[1:])
async def test_a_slow_reader_gets_exactly_the_body(chunk_size: int, transport: str) -> None:
    # (1-byte chunks to a slow reader: in test_lowhaio_upload_timeouts.py)
    await upload_and_check(chunk_size, transport, 'bytes', 'slow')


async def upload_and_check(chunk_size: int, transport: str, kind: str, reader: str) -> None:
    body, data = make_body(chunk_size, total_for(chunk_size), kind)
    step, interval = READERS[reader]
    with PacedReader(tls=transport == 'tls', step=step, interval=interval) as server:
        async with small_buffer_pool(SOCKET_TIMEOUT) as request:
            code, _, response = await asyncio.wait_for(request(
                b'POST', server.url(), headers=((b'content-length', b'%d' % len(data)),),
                body=body), 60)
            assert (code, await buffered(response)) == (b'200', answer_for(data))
        assert server.errors == []


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunk_size', [1000, 64 * KIB, 128 * KIB + 1, 3 * MIB],
                         ids=['1000B', '64KiB', '128KiB+1', '3MiB'])
async def test_an_upload_to_a_reader_that_stops_times_out(chunk_size: int,
                                                          transport: str) -> None:
    timeout = 0.25
    body, data = make_body(chunk_size, max(total_for(chunk_size), 2 * MIB), 'bytes')
    with PacedReader(tls=transport == 'tls', step=64 * KIB, interval=0.0,
                     stop_after=32 * KIB) as server:
        async with small_buffer_pool(timeout) as request:
            with pytest.raises(HttpTimeoutError) as raised:
                await asyncio.wait_for(request(
                    b'POST', server.url(), headers=((b'content-length', b'%d' % len(data)),),
                    body=body), 30)
            failed_at = time.monotonic()
            assert isinstance(raised.value, HttpDataError)
            assert server.stopped_at is not None
            assert failed_at - server.stopped_at >= timeout - 0.05
        server.resume()
        await server.finished()
        assert server.saw_close
        assert server.errors == []


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunk_size', [1000, 64 * KIB, 3 * MIB], ids=['1000B', '64KiB', '3MiB'])
async def test_sends_that_do_not_wait_for_room_stay_in_order(chunk_size: int,
                                                            transport: str) -> None:
    # A 0.0.89 send_body hook that hands every chunk to sock.send() without draining, so
    # chunks are written while earlier ones still wait for room
    body, data = make_body(chunk_size, total_for(chunk_size), 'bytes')

    async def send_body(logger: Any, loop: Any, sock: Any, socket_timeout: float, body: Any,
                        body_args: Any, body_kwargs: Any) -> None:
        for start in range(0, len(data), chunk_size):
            sock.send(data[start:start + chunk_size])
        await lowhaio.send_all(loop, sock, socket_timeout, b'')

    await post_through_hook(send_body, body, data, 'slow', tls=transport == 'tls')


async def post_through_hook(send_body: Any, body: Any, data: bytes, reader: str,
                            tls: bool) -> None:
    """POST `data` with a 0.0.89 send_body hook to a paced reader: the server must get every
    byte, and no error."""
    step, interval = READERS[reader]
    with PacedReader(tls=tls, step=step, interval=interval) as server:
        request, close = lowhaio.Pool(send_body=send_body, socket_timeout=SOCKET_TIMEOUT,
                                      get_ssl_context=_client_ssl_context)
        try:
            code, _, response = await asyncio.wait_for(request(
                b'POST', server.url(), headers=((b'content-length', b'%d' % len(data)),),
                body=body), 60)
            assert (code, await buffered(response)) == (b'200', answer_for(data))
        finally:
            await close()
        assert server.errors == []


def _client_ssl_context() -> Any:
    from support import client_ssl_context
    return client_ssl_context()


async def test_bytes_the_socket_has_not_taken_are_not_copied() -> None:
    # One 8 MiB chunk to a reader far slower than the socket buffers: almost all of it waits
    # in the client. As the caller's own bytes, that costs no memory; copied into a write
    # buffer, it would cost 8 MiB or more.
    chunk = bytes(range(256)) * (8 * MIB // 256)

    async def body() -> AsyncIterator[bytes]:
        yield chunk

    with PacedReader(tls=False, step=256 * KIB, interval=0.004) as server:
        async with small_buffer_pool(SOCKET_TIMEOUT) as request:
            tracemalloc.start()
            try:
                code, _, response = await asyncio.wait_for(request(
                    b'POST', server.url(), headers=((b'content-length', b'%d' % len(chunk)),),
                    body=body), 60)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert (code, await buffered(response)) == (b'200', answer_for(chunk))
    assert peak < 2 * MIB, peak



async def test_tls_lets_64_kib_wait_before_the_writer_waits_not_512() -> None:
    # asyncio's TLS transport lets 512 KiB of ciphertext pile up while the socket is full,
    # which then leaves as one bytes object above glibc's mmap threshold (page faults each
    # time, and peak memory): lowhaio sets TCP's 64 KiB.
    seen = []

    async def send_body(logger: Any, loop: Any, sock: Any, socket_timeout: float, body: Any,
                        body_args: Any, body_kwargs: Any) -> None:
        seen.append(sock.transport.get_write_buffer_limits())
        async for chunk in body():
            await lowhaio.send_all(loop, sock, socket_timeout, chunk)

    body, data = make_body(64 * KIB, MIB, 'bytes')
    await post_through_hook(send_body, body, data, 'fast', tls=True)
    assert seen == [(16 * KIB, 64 * KIB)]
