"""lowhaio's TLS layer against `openssl s_server`: the cases test_lowhaio_tls_real leaves out.

- TLS 1.3 post-handshake authentication: a client that does not offer it (the default) is
  never asked, and a server that requires a certificate the client lacks gives a clear
  HttpError (HttpTlsError under 1.2, HttpDataError under 1.3, the ssl error as its cause and
  its alert in the message); a context that offers it answers a request between requests, in
  a response body or in an upload, and the server sees its certificate.
- Uploads in small chunks, under TLS 1.2 and 1.3: intact at the server, and how many TLS
  records they take (each chunk becomes a record of its own, the head going in the first:
  never more records than chunks need).
- A server that closes with close_notify after a response on a kept-alive connection.

The servers are driven as in test_lowhaio_tls_real (whose helpers these tests use).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import pathlib
import re
import ssl
import struct
import termios
from typing import Any, AsyncIterator, Callable, List

import pytest

import lowhaio
import support
from test_lowhaio_tls_real import (
    HELLO, PATIENCE, SServer, body_bytes,
    get, get_answered, pool, request_head, s_server, wait_until)

pytestmark = pytest.mark.timeout(90)


def stdin_is_empty(server: SServer) -> bool:
    """Whether s_server has read everything written to its stdin: then the next write is a
    read of its own (as a command must be) even while s_server is busy sending."""
    stdin = server.process.stdin
    assert stdin is not None
    transport: Any = stdin.transport
    if transport.get_write_buffer_size():
        return False
    pipe = transport.get_extra_info('pipe')
    if pipe is not None:  # asyncio: a pipe, and what it holds unread
        request, fd = termios.FIONREAD, pipe.fileno()
    else:  # uvloop: a socket pair, and what the other end has not read (SIOCOUTQ)
        request, fd = termios.TIOCOUTQ, transport.get_extra_info('socket').fileno()
    unread: int = struct.unpack('i', fcntl.ioctl(fd, request, b'\0\0\0\0'))[0]
    return unread == 0


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
    start = len(server.output)
    await ask_for_a_certificate(server)
    # Once the client has answered, s_server sends it new session tickets. The next request
    # waits until they are sent (s_server reads again), and so read by the client: a record
    # still unread in an idle connection's socket makes the check before reuse drop it (it
    # cannot tell a ticket from a close_notify without reading), and this test is of one
    # connection
    await wait_until(lambda: tickets_then_a_read(server.output[start:]))
    assert await get_answered(request, server, b'/2', HELLO) == b'hello'


def tickets_then_a_read(output: bytes) -> bool:
    """Whether s_server sent its two NewSessionTickets, then waited to read."""
    return re.search(rb'(?:>>> TLS 1\.3, Handshake \[length [0-9a-f]+\], NewSessionTicket\n'
                     rb'(?:(?!Read BLOCK).*\n)*?){2}Read BLOCK\n', output) is not None


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
