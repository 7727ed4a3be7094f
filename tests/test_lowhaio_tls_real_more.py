"""lowhaio's TLS layer against `openssl s_server`: the cases test_lowhaio_tls_real leaves out.

- A renegotiation or KeyUpdate that arrives while the client has stopped reading (its body's
  consumer is slow, the connection is over its read-ahead limit, the transport beneath is
  paused): the handshake bytes wait unread in the socket until the consumer reads again. The
  body must then arrive byte-exact, a renegotiation be answered (and not before), nothing
  hang, no more be held than the read-ahead limit and one read, and the connection be
  reused. The same with the server closing (close_notify, then FIN) behind the unread end.
- TLS 1.3 post-handshake authentication: a client that does not offer it (the default) is
  never asked, and a server that requires a certificate the client lacks gives a clear
  HttpError (HttpTlsError under 1.2, HttpDataError under 1.3, the ssl error as its cause); a
  context that offers it answers a request between requests, in a response body or in an
  upload, and the server sees its certificate.
- Uploads in small chunks, under TLS 1.2 and 1.3: intact at the server, and how many TLS
  records they take (each chunk becomes a record of its own, the head going in the first:
  never more records than chunks need).
- An event in the middle of a chunked response's trailers; a server that closes with
  close_notify after a response on a kept-alive connection.

The servers are driven as in test_lowhaio_tls_real (whose helpers these tests use).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pathlib
import re
import ssl
import stat
import struct
import termios
from typing import Any, AsyncIterator, Awaitable, Callable, List, Tuple

import pytest

import lowhaio
import support
from test_lowhaio_tls_real import (
    EVENTS, FRAMINGS, HELLO, PATIENCE, SServer, assert_the_client_answered, body_bytes,
    cause, chunked, get, get_answered, pool, request_head, s_server, start_s_server, wait_until,
    wait_for_the_clients_part)

pytestmark = pytest.mark.timeout(90)


def stdin_is_empty(server: SServer) -> bool:
    """Whether s_server has read everything written to its stdin: then the next write is a
    read of its own (as a command must be) even while s_server is busy sending."""
    stdin = server.process.stdin
    assert stdin is not None
    transport: Any = stdin.transport
    if transport.get_write_buffer_size():
        return False
    # The kind of file is asked of the file itself: asyncio gives a child's stdin as a socket
    # pair on Python 3.9 (a pipe from 3.10) and uvloop as a socket pair, and on a socket
    # FIONREAD counts what this end could read (always nothing), not what the child has not
    pipe = transport.get_extra_info('pipe')
    fd = pipe.fileno() if pipe is not None else transport.get_extra_info('socket').fileno()
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        request = termios.TIOCOUTQ  # SIOCOUTQ: what the other end has not read
    else:
        request = termios.FIONREAD  # a pipe: what it holds unread
    unread: int = struct.unpack('i', fcntl.ioctl(fd, request, b'\0\0\0\0'))[0]
    return unread == 0


# ---------------------------------------------------------------------------------------------
# An event while the client has stopped reading
# ---------------------------------------------------------------------------------------------

# Each part of the body is sent once the client has read all the last: large enough that the
# client, its consumer having taken one piece, goes over its read-ahead limit (asyncio reads
# 128 KiB at a time, uvloop 256,000 bytes) and pauses reading with part of it still to come
PART = 1024 * 1024
LONGEST_READ = 256 * 1024
# How long the consumer stays away after the server acted: the three run side by side
PAUSES = (0.0, 0.2, 0.5)


def response_in_parts(framing: str, body: bytes, parts: int) -> List[bytes]:
    """The response to `body`, in `parts` parts of PART bytes of body each."""
    pieces = [body[i:i + PART] for i in range(0, len(body), PART)]
    assert len(pieces) == parts
    if framing == 'content-length':
        head = b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % len(body)
        return [head + pieces[0], *pieces[1:]]
    if framing == 'chunked':
        head = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
        framed = [chunked(piece) for piece in pieces]
        framed[0] = head + framed[0]
        framed[-1] += b'0\r\n\r\n'
        return framed
    head = b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n'
    return [head + pieces[0], *pieces[1:]]


def held_in_client(conn: Any) -> int:
    """What of the response the client holds: what waits for the consumer, and what the TLS
    layer has and has not decrypted."""
    layer = conn.transport
    assert isinstance(layer, lowhaio._TlsLayer)
    return conn._queued + layer._incoming.pending + layer._sslobj.pending()


async def read_until(pieces: AsyncIterator[bytes], received: bytearray, size: int) -> None:
    while len(received) < size:
        received.extend(await asyncio.wait_for(pieces.__anext__(), PATIENCE))


async def get_body_started(request: Any, server: SServer,
                           first: bytes) -> Tuple[Any, AsyncIterator[bytes]]:
    """GET /body, answered with `first` (the head and the start of the body): the response's
    connection, and its body's iterator."""
    async def answer() -> None:
        await server.wait_for(request_head(b'GET', b'/body'))
        await server.send(first)
    answering = asyncio.ensure_future(answer())
    _, _, response_body = await asyncio.wait_for(
        request(b'GET', 'https://127.0.0.1:%d/body' % server.port), PATIENCE)
    await asyncio.wait_for(answering, PATIENCE)
    return response_body._conn, response_body.__aiter__()


async def an_event_while_the_consumer_stops(
        event: str, framing: str, times: int, pause: float, tmp_path: pathlib.Path) -> None:
    _, letter, _ = EVENTS[event]
    body = body_bytes(PART * (times + 1), times)
    parts = response_in_parts(framing, body, times + 1)
    async with start_s_server(event, tmp_path) as server, pool() as request:
        conn, pieces = await get_body_started(request, server, parts[0])
        received = bytearray()

        for time in range(1, times + 1):
            # The consumer takes a piece of this part, then stays away: the client reads on
            # until over its limit, then stops
            await read_until(pieces, received, len(received) + 1)
            await wait_until(lambda: conn._reading_paused)
            await wait_until(lambda: stdin_is_empty(server))
            await server.command(letter)
            await asyncio.sleep(pause)
            # It waited with no more than it may hold, and did not read on by itself
            assert held_in_client(conn) <= lowhaio._READ_HIGH_WATER + LONGEST_READ
            assert conn._reading_paused
            if 'renegotiation' in event:
                # The server's request for one waits unread, unanswered
                assert server.received(b'ClientHello') == time
            await read_until(pieces, received, PART * time)
            # A renegotiation is answered now the client reads again
            await wait_for_the_clients_part(server, event, time)
            await server.send(parts[time])

        await read_until(pieces, received, len(body))
        if framing == 'close-delimited':
            await server.close_connection()
        with pytest.raises(StopAsyncIteration):
            received.extend(await asyncio.wait_for(pieces.__anext__(), PATIENCE))
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(body).hexdigest()

        assert await get_answered(request, server, b'/next', HELLO) == b'hello'
        assert server.connections == (2 if framing == 'close-delimited' else 1)
        assert_the_client_answered(server, event, times,
                                   wrote_since=framing != 'close-delimited')


@pytest.mark.parametrize('times', [1, 3])
@pytest.mark.parametrize('event', list(EVENTS))
async def test_an_event_while_the_client_has_stopped_reading_leaves_the_body_intact(
        event: str, times: int, tmp_path: pathlib.Path) -> None:
    await each_framing_and_pause_at_once(
        tmp_path, lambda framing, pause, directory: an_event_while_the_consumer_stops(
            event, framing, times, pause, directory))


async def each_framing_and_pause_at_once(
        tmp_path: pathlib.Path,
        run: Callable[[str, float, pathlib.Path], Awaitable[None]]) -> None:
    """`run` for every framing and pause at once, each against its own s_server (one after
    another would take nine times as long); a failure names its case; no socket left open."""
    cases = [(framing, pause) for framing in FRAMINGS for pause in PAUSES]
    sockets = support.open_sockets()

    async def case(framing: str, pause: float) -> None:
        directory = tmp_path / ('%s-%s' % (framing, pause))
        directory.mkdir()
        try:
            await run(framing, pause, directory)
        except BaseException as exception:
            raise AssertionError('%s, consumer away %s s: %r' % (
                framing, pause, exception)) from exception

    outcomes = await asyncio.gather(*(case(framing, pause) for framing, pause in cases),
                                    return_exceptions=True)
    failures = [outcome for outcome in outcomes if outcome is not None]
    if failures:
        raise failures[0]
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# TLS 1.3 post-handshake authentication
# ---------------------------------------------------------------------------------------------

def client_certificate_der() -> bytes:
    """The certificate support.client_ssl_context(with_client_cert=True) presents."""
    pem = support._client_cert().cert_chain_pems[0].bytes().decode()
    return ssl.PEM_cert_to_DER_cert(pem)


def received_certificates(server: SServer) -> List[bytes]:
    """Each TLS Certificate message the server received, as its bytes."""
    return [bytes.fromhex(hexdump.decode().replace('\n', ' '))
            for hexdump in re.findall(
                rb'<<< TLS 1\.3, Handshake \[length [0-9a-f]+\], Certificate\n'
                rb'((?:    [0-9a-f]{2}(?: [0-9a-f]{2})* *\n)*)', server.output)]


@contextlib.asynccontextmanager
async def s_server_verifying(version: str, tmp_path: pathlib.Path, *options: str
                             ) -> AsyncIterator[SServer]:
    """s_server that trusts the CA of the client certificate (it checks any it gets)."""
    support.ca.cert_pem.write_to_path(str(tmp_path / 'ca.pem'))
    async with s_server(version, tmp_path, '-verifyCAfile', str(tmp_path / 'ca.pem'),
                        *options) as server:
        yield server


async def ask_for_a_certificate(server: SServer) -> None:
    """s_server's `c`: a CertificateRequest after the handshake, if the client offered to
    answer one."""
    done = server.output.count(b'SSL_do_handshake -> ') + server.output.count(
        b'Failed to initiate request')
    await server.send(b'c\n')
    await wait_until(lambda: server.output.count(b'SSL_do_handshake -> ') + server.output.count(
        b'Failed to initiate request') > done)


async def test_a_client_that_does_not_offer_post_handshake_authentication_is_not_asked(
        tmp_path: pathlib.Path) -> None:
    # The default: the client's context does not offer it (Python's post_handshake_auth is
    # False), so a server may not ask (RFC 8446 4.6.2) and OpenSSL's will not
    sockets = support.open_sockets()
    async with s_server_verifying('1.3', tmp_path) as server, pool() as request:
        assert await get_answered(request, server, b'/1', HELLO) == b'hello'
        await ask_for_a_certificate(server)
        assert b'extension not received' in server.output
        assert b'CertificateRequest' not in server.output
        assert await get_answered(request, server, b'/2', HELLO) == b'hello'
        assert server.connections == 1
        assert received_certificates(server) == []
    assert await support.wait_for_sockets(sockets) <= sockets


def offering_post_handshake_authentication(with_client_cert: bool) -> ssl.SSLContext:
    context = support.client_ssl_context(with_client_cert=with_client_cert)
    context.post_handshake_auth = True
    return context


async def asked_between_two_requests(request: Any, server: SServer) -> None:
    assert await get_answered(request, server, b'/1', HELLO) == b'hello'
    await ask_for_a_certificate(server)
    # Once the client has answered, s_server sends it new session tickets: they may reach the
    # client before, as or after the next request takes the connection, which stays in use
    # whichever it is (the check before reuse reads records that arrived and carry no data)
    assert await get_answered(request, server, b'/2', HELLO) == b'hello'


async def asked_in_the_middle_of_a_response_body(request: Any, server: SServer) -> None:
    body = body_bytes(200_000, 5)
    first = b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(body), body[:64_000])

    async def answer() -> None:
        await server.wait_for(request_head(b'GET', b'/1'))
        await server.send(first)
    answering = asyncio.ensure_future(answer())
    _, _, response_body = await asyncio.wait_for(
        request(b'GET', 'https://127.0.0.1:%d/1' % server.port), PATIENCE)
    await asyncio.wait_for(answering, PATIENCE)
    received = bytearray()
    async for piece in response_body:
        received.extend(piece)
        if len(received) == 64_000:
            await ask_for_a_certificate(server)
            await wait_until(lambda: server.received(b'Finished') == 2)
            await server.send(body[64_000:])
    assert bytes(received) == body
    assert await get_answered(request, server, b'/2', HELLO) == b'hello'


async def asked_in_the_middle_of_an_upload(request: Any, server: SServer) -> None:
    upload = body_bytes(2 * 2 ** 20, 8)
    chunk_size = 65536

    async def body() -> AsyncIterator[bytes]:
        for number, start in enumerate(range(0, len(upload), chunk_size)):
            if number == 8:
                await ask_for_a_certificate(server)
            yield upload[start:start + chunk_size]

    await post_intact(request, server, upload, body)
    assert await get_answered(request, server, b'/2', HELLO) == b'hello'


async def post_intact(request: Any, server: SServer, upload: bytes,
                      body: Callable[[], AsyncIterator[bytes]]) -> None:
    """POST `body`, which yields `upload`, to s_server, which answers once it has all of it:
    the response is read, and the server got the upload intact."""
    async def answer() -> None:
        await server.wait_for(request_head(b'POST', b'/upload'))
        await wait_until(lambda: len(uploaded_body(server, b'/upload', len(upload)))
                         == len(upload), 0.05)
        await server.send(HELLO)
    answering = asyncio.ensure_future(answer())
    _, _, response_body = await asyncio.wait_for(request(
        b'POST', 'https://127.0.0.1:%d/upload' % server.port, body=body,
        headers=((b'content-length', b'%d' % len(upload)),)), PATIENCE)
    assert b''.join([piece async for piece in response_body]) == b'hello'
    await asyncio.wait_for(answering, PATIENCE)
    assert hashlib.sha256(uploaded_body(server, b'/upload', len(upload))).hexdigest() \
        == hashlib.sha256(upload).hexdigest()


CERTIFICATE_REQUEST_MOMENTS = {
    'between two requests': asked_between_two_requests,
    'in the middle of a response body': asked_in_the_middle_of_a_response_body,
    'in the middle of an upload': asked_in_the_middle_of_an_upload,
}


@pytest.mark.parametrize('with_client_cert', [True, False], ids=['certificate', 'none'])
@pytest.mark.parametrize('moment', list(CERTIFICATE_REQUEST_MOMENTS))
async def test_a_context_offering_post_handshake_authentication_answers_the_request(
        moment: str, with_client_cert: bool, tmp_path: pathlib.Path) -> None:
    # The server asks once the handshake is over; the client answers as it reads the
    # request, with its certificate or an empty one (s_server goes on without)
    sockets = support.open_sockets()
    async with s_server_verifying('1.3', tmp_path) as server, support.open_pool(
            get_ssl_context=lambda: offering_post_handshake_authentication(with_client_cert)
    ) as request:
        await CERTIFICATE_REQUEST_MOMENTS[moment](request, server)

        assert b'>>> TLS 1.3, Handshake [length 004d], CertificateRequest' in server.output
        # The client's answer: its certificate (or none), then Finished
        certificates = received_certificates(server)
        assert len(certificates) == 1
        assert (client_certificate_der() in certificates[0]) is with_client_cert
        await wait_until(lambda: server.received(b'Finished') == 2)
        if with_client_cert:
            assert server.received(b'CertificateVerify') == 1
            assert b'verify return:1' in server.output
        assert server.connections == 1
    assert await support.wait_for_sockets(sockets) <= sockets


@pytest.mark.parametrize('attempt', range(3))
@pytest.mark.parametrize('version', ['1.2', '1.3'])
async def test_a_server_requiring_a_certificate_the_client_lacks_gives_a_clear_error(
        version: str, attempt: int, tmp_path: pathlib.Path) -> None:
    # Under TLS 1.2 the server refuses during the handshake: nothing was sent. Under TLS 1.3
    # the client's handshake is over before the server has its (empty) certificate, so the
    # request has gone when the server's alert comes
    expected = lowhaio.HttpTlsError if version == '1.2' else lowhaio.HttpDataError
    sockets = support.open_sockets()
    async with s_server_verifying(version, tmp_path, '-Verify', '1') as server, \
            pool() as request:
        with pytest.raises(expected) as raised:
            await get(request, 'https://127.0.0.1:%d/' % server.port)
        await server.wait_for(b'peer did not return a certificate')
    assert isinstance(raised.value.__cause__, ssl.SSLError), repr(raised.value.__cause__)
    alert = 'HANDSHAKE_FAILURE' if version == '1.2' else 'CERTIFICATE_REQUIRED'
    assert alert in str(raised.value.__cause__).upper()
    # The message itself says why, not only "closed"
    assert alert in str(raised.value).upper(), str(raised.value)
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# Uploads in small chunks
# ---------------------------------------------------------------------------------------------

RECORD = 16 * 1024  # the most plaintext one TLS record holds
# Chunk size -> how many chunks the upload is made of
UPLOAD_CHUNKS = {1: 1000, 100: 1000, RECORD - 1: 40, RECORD: 40, RECORD + 1: 40,
                 64 * 1024: 16}
RECEIVED_RECORD = re.compile(
    rb'<<< TLS 1\.2, RecordHeader \[length 0005\]\n    ([0-9a-f]{2}) [0-9a-f]{2} [0-9a-f]{2}'
    rb' ([0-9a-f]{2}) ([0-9a-f]{2}) *\n'
    rb'(?:<<< TLS 1\.3, InnerContent \[length 0001\]\n    ([0-9a-f]{2}) *\n)?')
APPLICATION_DATA = b'17'


def application_data_records(server: SServer) -> List[int]:
    """The plaintext length, or under TLS 1.3 the ciphertext length, of each record of
    application data the server received after the handshake."""
    after_handshake = bytes(server.output[server.output.index(b'CIPHER is '):])
    return [int(high + low, 16) for outer, high, low, inner in
            RECEIVED_RECORD.findall(after_handshake)
            if (inner or outer) == APPLICATION_DATA]


# What s_server writes of each certificate it checks, wherever it is in what it received
VERIFIED = re.compile(rb'depth=\d+ [^\n]*\nverify return:\d+\n')


def uploaded_body(server: SServer, path: bytes, size: int) -> bytes:
    plaintext = VERIFIED.sub(b'', server.plaintext())
    start = plaintext.index(request_head(b'POST', path))
    body_start = plaintext.index(b'\r\n\r\n', start) + 4
    return plaintext[body_start:body_start + size]


@pytest.mark.parametrize('chunk_size', list(UPLOAD_CHUNKS))
@pytest.mark.parametrize('version', ['1.2', '1.3'])
async def test_an_upload_in_small_chunks_arrives_intact_in_no_more_records_than_chunks(
        version: str, chunk_size: int, tmp_path: pathlib.Path) -> None:
    chunks = UPLOAD_CHUNKS[chunk_size]
    upload = body_bytes(chunk_size * chunks, chunk_size)
    sockets = support.open_sockets()
    async with s_server(version, tmp_path) as server, pool() as request:
        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(upload), chunk_size):
                yield upload[start:start + chunk_size]

        await post_intact(request, server, upload, body)
        records = application_data_records(server)
        # lowhaio promises no coalescing of the caller's chunks: each write of the SSLObject
        # is one record or, over 16 KiB, several. So at most one for the head and, for each
        # chunk, as many as it takes to hold it
        assert len(records) <= 1 + chunks * -(-chunk_size // RECORD)
        print('TLS %s, %d chunks of %d bytes: %d records of application data' % (
            version, chunks, chunk_size, len(records)))
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# An event in the middle of a chunked response's trailers
# ---------------------------------------------------------------------------------------------

TRAILERS = b'x-checksum: abc\r\nx-more: def\r\n\r\n'
# Where the trailer section is cut, the event coming between its two parts
TRAILER_CUTS = {
    'before the trailers': 0,
    'in a trailer field': TRAILERS.index(b'abc'),
    'before the last CRLF': len(TRAILERS) - 2,
}


@pytest.mark.parametrize('cut', list(TRAILER_CUTS))
@pytest.mark.parametrize('event', list(EVENTS))
async def test_an_event_in_the_middle_of_the_trailers_leaves_the_connection_usable(
        event: str, cut: str, tmp_path: pathlib.Path) -> None:
    body = body_bytes(100_000, 6)
    split = TRAILER_CUTS[cut]
    first = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%s0\r\n%s' % (
        chunked(body), TRAILERS[:split])
    rest = TRAILERS[split:]
    sockets = support.open_sockets()
    async with start_s_server(event, tmp_path) as server, pool() as request:
        async def answer() -> None:
            await server.wait_for(request_head(b'GET', b'/trailers'))
            await server.send(first)
            await wait_until(lambda: stdin_is_empty(server))
            await cause(server, event)
            await server.send(rest)

        answering = asyncio.ensure_future(answer())
        assert await get(request, 'https://127.0.0.1:%d/trailers' % server.port) == body
        await asyncio.wait_for(answering, PATIENCE)
        assert await get_answered(request, server, b'/next', HELLO) == b'hello'
        assert server.connections == 1
        assert_the_client_answered(server, event, 1)
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# close_notify after a response on a kept-alive connection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('attempt', range(3))
@pytest.mark.parametrize('when', ['once the client is idle', 'right after the response'])
@pytest.mark.parametrize('version', ['1.2', '1.3'])
async def test_a_server_closing_with_close_notify_after_a_response_costs_no_request(
        version: str, when: str, attempt: int, tmp_path: pathlib.Path) -> None:
    sockets = support.open_sockets()
    async with s_server(version, tmp_path) as server, pool() as request:
        for number in range(3):
            path = b'/%d' % number
            if when == 'once the client is idle':
                assert await get_answered(request, server, path, HELLO) == b'hello'
                await server.close_connection()
                await asyncio.sleep(0.1)
            else:
                # The close_notify and the end of the connection follow the response at
                # once, and the next request goes as soon as the response is read: whichever
                # comes first, the next request goes over a new connection
                async def answer_and_close(path: bytes) -> None:
                    await server.wait_for(request_head(b'GET', path))
                    await server.send(HELLO)
                    await wait_until(lambda: stdin_is_empty(server))
                    await server.close_connection()
                closing = asyncio.ensure_future(answer_and_close(path))
                assert await get(request, 'https://127.0.0.1:%d%s' % (
                    server.port, path.decode())) == b'hello'
                await asyncio.wait_for(closing, PATIENCE)
        assert server.connections == 3
        # The last connection, closed too, leaves the pool
        await wait_until(lambda: all(entry['idle'] == 0 for entry in request.status().values()))
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# The server closes while the client has stopped reading
# ---------------------------------------------------------------------------------------------

async def a_close_while_the_consumer_stops(event: str, framing: str, pause: float,
                                           tmp_path: pathlib.Path) -> None:
    body = body_bytes(PART, 7)
    response, = response_in_parts(framing, body, 1)
    version, letter, options = EVENTS.get(event, ('1.3', '', ()))
    async with s_server(version, tmp_path, *options) as server, pool() as request:
        conn, pieces = await get_body_started(request, server, response)
        received = bytearray()
        await read_until(pieces, received, 1)
        await wait_until(lambda: conn._reading_paused)
        await wait_until(lambda: stdin_is_empty(server))
        if letter:
            await server.command(letter)
        # close_notify, then the connection closed: behind the rest of the body, unread
        await server.close_connection()
        await asyncio.sleep(pause)
        assert conn._reading_paused
        await read_until(pieces, received, len(body))
        with pytest.raises(StopAsyncIteration):
            received.extend(await asyncio.wait_for(pieces.__anext__(), PATIENCE))
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(body).hexdigest()
        assert await get_answered(request, server, b'/next', HELLO) == b'hello'
        assert server.connections == 2


@pytest.mark.parametrize('event', ['nothing', *EVENTS])
async def test_a_close_while_the_client_has_stopped_reading_leaves_the_body_whole(
        event: str, tmp_path: pathlib.Path) -> None:
    # The server ends the connection (after `event`) with the end of the body still
    # unread behind the client's paused reading: the whole body, then the end
    await each_framing_and_pause_at_once(
        tmp_path, lambda framing, pause, directory: a_close_while_the_consumer_stops(
            event, framing, pause, directory))
