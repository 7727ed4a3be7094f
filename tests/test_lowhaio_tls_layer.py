"""lowhaio's TLS: what an https request gives, whatever the server's TLS does.

lowhaio runs TLS itself (lowhaio._TlsLayer, an SSLObject over the TCP transport) rather than
through the loop's TLS transport, on asyncio and uvloop alike. Users see the same outcomes on
both loops, asserted here: each TLS version the server may pin, each
way a response may be framed and the connection end, each way a handshake may fail, uploads,
and what the server may send between requests on a pooled connection (TLS 1.3 session tickets
after the handshake, stray bytes, close_notify).

The hostile servers are scripted: a TCP server whose TLS is driven by hand with the ssl
module's SSLObject, so that a test decides every record and every close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import socket
import ssl
import struct
from typing import AsyncIterator, Awaitable, Callable, List, Optional, Tuple

import pytest
import trustme
from aiohttp import web

import lowhaio
import support
from lowhaio import (
    HttpConnectionError,
    HttpTlsError,
    buffered,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# A scripted TLS server
# ---------------------------------------------------------------------------------------------

def server_context(version: str = 'any', *, cert: Optional[trustme.LeafCert] = None
                   ) -> ssl.SSLContext:
    """A server context with support.ca's certificate (or `cert`), pinned to `version`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (cert or support.server_cert()).configure_cert(context)
    if version == '1.2':
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == '1.3':
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


class TlsPeer:
    """The server's end of one connection, its TLS driven record by record."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 context: ssl.SSLContext) -> None:
        self.reader = reader
        self.writer = writer
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.plaintext = b''
        self.held = b''  # ciphertext made but not sent yet (see hold_outgoing)

    async def receive(self) -> bool:
        """More ciphertext from the client; False at its end of file."""
        data = await self.reader.read(65536)
        if not data:
            return False
        self.incoming.write(data)
        return True

    async def send_outgoing(self) -> None:
        if self.outgoing.pending:
            self.writer.write(self.outgoing.read())
        await self.writer.drain()

    def hold_outgoing(self) -> None:
        """Keep what the SSLObject has made (for a TLS 1.3 server after the handshake: its
        session tickets) to send later, with send_held."""
        self.held += self.outgoing.read()

    async def send_held(self) -> None:
        self.writer.write(self.held)
        self.held = b''
        await self.writer.drain()

    async def handshake(self, send_last_flight: bool = True) -> None:
        while True:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                await self.send_outgoing()
                if not await self.receive():
                    raise ConnectionResetError('client closed during the handshake') from None
            else:
                break
        if send_last_flight:
            await self.send_outgoing()

    async def read_request(self) -> bytes:
        """A request head and its content-length body, b'' if the client closed first."""
        while True:
            head, separator, rest = self.plaintext.partition(b'\r\n\r\n')
            if separator:
                length = 0
                for line in head.split(b'\r\n')[1:]:
                    name, _, value = line.partition(b':')
                    if name.strip().lower() == b'content-length':
                        length = int(value)
                if len(rest) >= length:
                    self.plaintext = rest[length:]
                    return head + separator + rest[:length]
            try:
                self.plaintext += self.sslobj.read(65536)
                continue
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            if not await self.receive():
                return b''

    async def send(self, *pieces: bytes) -> None:
        """Each piece as a TLS record of its own, all in one TCP write."""
        for piece in pieces:
            self.sslobj.write(piece)
        await self.send_outgoing()

    async def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.sslobj.unwrap()
        await self.send_outgoing()
        self.writer.close()

    def fin(self) -> None:
        """A TCP FIN without close_notify."""
        self.writer.close()

    def reset(self) -> None:
        sock = self.writer.get_extra_info('socket')
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        self.writer.transport.abort()


TlsHandler = Callable[[TlsPeer], Awaitable[None]]


class TlsServer:
    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.errors: List[BaseException] = []

    def url(self, path: str = '/') -> str:
        return f'https://127.0.0.1:{self.port}{path}'


@contextlib.asynccontextmanager
async def tls_server(handler: TlsHandler, context: Optional[ssl.SSLContext] = None
                     ) -> AsyncIterator[TlsServer]:
    """Run `await handler(peer)` for each connection: the handler does the handshake itself
    (or not)."""
    server = TlsServer()
    context = context or server_context()
    tasks: List[asyncio.Task] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            await handler(TlsPeer(reader, writer, context))
        except asyncio.CancelledError:
            pass
        except (ConnectionError, ssl.SSLError):
            pass  # the client may leave any way it likes: the test checks what it saw
        except Exception as exception:
            server.errors.append(exception)
        finally:
            writer.close()

    tcp_server = await asyncio.start_server(on_connection, '127.0.0.1', 0)
    server.port = tcp_server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        tcp_server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert server.errors == []


def pool(**options: object) -> contextlib.AbstractAsyncContextManager:
    return support.open_pool(get_ssl_context=support.client_ssl_context, **options)


async def outcome(request: Callable[..., Awaitable], url: str, *,
                  read_slowly: bool = False) -> Tuple[str, object]:
    """('ok', body) or (error type, its cause's type): what a user sees of one request."""
    try:
        _, _, body = await request(b'GET', url)
        pieces = []
        async for piece in body:
            pieces.append(piece)
            if read_slowly:
                await asyncio.sleep(0.002)
        return 'ok', b''.join(pieces)
    except lowhaio.HttpError as error:
        return type(error).__name__, type(error.__cause__).__name__


# ---------------------------------------------------------------------------------------------
# Responses, by TLS version, framing and how the server ends the connection
# ---------------------------------------------------------------------------------------------

LARGE = bytes(range(256)) * 4096  # 1 MiB: more than lowhaio buffers before it pauses reading

RESPONSES = {
    'content-length': (b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello', b'hello'),
    'chunked': (b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
                b'2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n', b'hello'),
    'close-delimited': (b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello', b'hello'),
    'large': (b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % len(LARGE) + LARGE, LARGE),
    'large close-delimited': (b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n' + LARGE, LARGE),
    'cut-short': (b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello', None),
}

# What a user sees for each framing and each way the connection ends after it. A TCP FIN
# without close_notify is an orderly end, as asyncio has always reported it (a body cut short
# is still told by its framing); a reset is not.
CLOSED_BEFORE_END = ('HttpConnectionClosedError', 'NoneType')
EXPECTED = {
    ('close-delimited', 'reset'): ('HttpConnectionClosedError', 'ConnectionResetError'),
    ('large close-delimited', 'reset'): ('HttpConnectionClosedError', 'ConnectionResetError'),
    ('cut-short', 'close_notify'): CLOSED_BEFORE_END,
    ('cut-short', 'fin'): CLOSED_BEFORE_END,
    ('cut-short', 'reset'): ('HttpConnectionClosedError', 'ConnectionResetError'),
}


def then_end(how: str) -> Callable[[TlsPeer], Awaitable[None]]:
    async def end(peer: TlsPeer) -> None:
        if how == 'close_notify':
            await peer.close_notify()
        elif how == 'fin':
            peer.fin()
        else:
            peer.reset()
    return end


@pytest.mark.parametrize('version', ['1.2', '1.3'])
@pytest.mark.parametrize('kind', list(RESPONSES))
@pytest.mark.parametrize('end', ['close_notify', 'fin', 'reset'])
async def test_each_response_and_each_end_of_the_connection(version: str, kind: str,
                                                           end: str) -> None:
    response, body = RESPONSES[kind]
    expected = EXPECTED.get((kind, end), ('ok', body))
    ended = then_end(end)

    async def handler(peer: TlsPeer) -> None:
        await peer.handshake()
        await peer.read_request()
        await peer.send(response)
        if end == 'reset' and expected[0] == 'ok':
            # A reset discards what the client has not read yet: only once it has had time to
            await asyncio.sleep(0.05)
        await ended(peer)

    async with tls_server(handler, server_context(version)) as server, pool() as request:
        # A reset or FIN races with the last bytes (either may be seen first): many times
        for _ in range(2 if expected[0] == 'ok' else 10):
            assert await outcome(request, server.url(), read_slowly=kind.startswith('large')) == \
                expected
            if end == 'reset':
                await asyncio.sleep(0.1)  # the reset is seen: the next request is on a new one


@pytest.mark.parametrize('version', ['1.2', '1.3'])
async def test_records_that_arrive_together_are_one_piece_of_the_body(version: str) -> None:
    # Many records in one TCP read: every one is read, in order, and handed on together
    pieces = [b'HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n'] + \
        [bytes([65 + i % 26]) * 10 for i in range(100)]

    async def handler(peer: TlsPeer) -> None:
        await peer.handshake()
        while await peer.read_request():
            await peer.send(*pieces)

    async with tls_server(handler, server_context(version)) as server, pool() as request:
        for _ in range(3):
            _, _, body = await request(b'GET', server.url())
            received = [piece async for piece in body]
            assert b''.join(received) == b''.join(pieces[1:])
        assert server.connections == 1


@pytest.mark.parametrize('version', ['1.2', '1.3'])
async def test_close_notify_in_the_same_read_as_the_body_ends_it(version: str) -> None:
    # The response and close_notify in one TCP write, the TCP connection left open: the
    # close_notify, already received, ends a body delimited by the close (not a hang)
    async def handler(peer: TlsPeer) -> None:
        await peer.handshake()
        await peer.read_request()
        peer.sslobj.write(b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello')
        with contextlib.suppress(ssl.SSLError):
            peer.sslobj.unwrap()
        await peer.send_outgoing()
        await peer.reader.read()  # until the client closes

    async with tls_server(handler, server_context(version)) as server, pool() as request:
        for _ in range(2):
            assert await asyncio.wait_for(outcome(request, server.url()), 5) == ('ok', b'hello')


@pytest.mark.parametrize('version', ['1.2', '1.3'])
async def test_records_split_across_reads_are_put_together(version: str) -> None:
    # Ciphertext a few bytes at a time: records arrive in pieces, and several at once
    async def handler(peer: TlsPeer) -> None:
        await peer.handshake()
        while await peer.read_request():
            for piece in (b'HTTP/1.1 200 OK\r\n', b'content-length: 10\r\n\r\n', b'hello',
                          b'world'):
                peer.sslobj.write(piece)
            ciphertext = peer.outgoing.read()
            for start in range(0, len(ciphertext), 7):
                peer.writer.write(ciphertext[start:start + 7])
                await peer.writer.drain()
                await asyncio.sleep(0.0005)

    async with tls_server(handler, server_context(version)) as server, pool() as request:
        for _ in range(2):
            assert await outcome(request, server.url()) == ('ok', b'helloworld')
        assert server.connections == 1


# ---------------------------------------------------------------------------------------------
# A pooled connection between requests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('when', ['before the response', 'with the response'])
async def test_session_tickets_after_the_handshake_are_not_response_bytes(when: str) -> None:
    # A TLS 1.3 server sends its session tickets after the handshake, as TLS records that
    # carry no application data: not part of a response, nor a reason not to reuse the
    # connection. (Not while idle: a server sends them before anything else after the
    # handshake, and records cannot arrive out of order.)
    async def handler(peer: TlsPeer) -> None:
        await peer.handshake(send_last_flight=False)
        peer.hold_outgoing()
        assert peer.held  # the tickets (and nothing else: the client already has Finished)
        requests = 0
        while await peer.read_request():
            requests += 1
            if requests == 1:
                await peer.send_held()
                if when == 'before the response':
                    await asyncio.sleep(0.05)  # the client waits for the head meanwhile
            await peer.send(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')

    async with tls_server(handler, server_context('1.3')) as server, pool() as request:
        for _ in range(3):
            assert await outcome(request, server.url()) == ('ok', b'ok')
            await asyncio.sleep(0.05)  # the client's loop reads anything that came after
        assert server.connections == 1


@pytest.mark.parametrize('version', ['1.2', '1.3'])
@pytest.mark.parametrize('sent', ['application data', 'close_notify', 'fin', 'reset'])
async def test_what_arrives_on_an_idle_connection_retires_it(version: str, sent: str) -> None:
    async def handler(peer: TlsPeer) -> None:
        await peer.handshake()
        if not await peer.read_request():
            return
        await peer.send(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
        await asyncio.sleep(0.05)
        if sent == 'application data':
            await peer.send(b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray')
            await peer.read_request()
        else:
            await then_end(sent)(peer)

    async with tls_server(handler, server_context(version)) as server, pool() as request:
        assert await outcome(request, server.url()) == ('ok', b'ok')
        await asyncio.sleep(0.2)
        # The next request goes on a new connection, and never gets the stray bytes
        assert await outcome(request, server.url()) == ('ok', b'ok')
        assert server.connections == 2


# What reaches an idle connection's socket just as the next request takes the connection,
# before the loop has read it: the check before reuse finds the socket readable and, under
# TLS, reads it then, since TLS's own records carry no data and are no reason to drop the
# connection (test_lowhaio_tls_real: KeyUpdate and renegotiation from s_server; a Python
# server cannot send those, nor session tickets once it has sent data: records keep their
# order). What is a reason still retires it: data, a close_notify, a FIN. The server is made to
# write by the test itself, with no await between that and the request, so that no loop can
# read it first.
AT_REUSE = ['application data', 'close_notify', 'close_notify and a fin', 'fin']


def send_at_once(peer: TlsPeer, sent: str) -> None:
    """Make `peer` send `sent` without awaiting anything: into the kernel at once."""
    if 'application data' in sent:
        peer.sslobj.write(b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray')
        peer.writer.write(peer.outgoing.read())
    if 'close_notify' in sent:
        with contextlib.suppress(ssl.SSLError):
            peer.sslobj.unwrap()
        peer.writer.write(peer.outgoing.read())
    if 'fin' in sent:
        # On a duplicate of the descriptor: uvloop's transport sockets have no shutdown
        sock = peer.writer.get_extra_info('socket')
        with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_WR)
    assert peer.writer.transport.get_write_buffer_size() == 0


@pytest.mark.parametrize('version', ['1.2', '1.3'])
@pytest.mark.parametrize('sent', AT_REUSE)
async def test_what_arrives_just_as_an_idle_connection_is_reused_retires_it(
        version: str, sent: str) -> None:
    peers: List[TlsPeer] = []

    async def handler(peer: TlsPeer) -> None:
        peers.append(peer)
        await peer.handshake()
        while await peer.read_request():
            await peer.send(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')

    sockets = support.open_sockets()
    async with tls_server(handler, server_context(version)) as server:
        for _ in range(10):  # each time anew: two pools, two servers' connections
            peers.clear()
            server.connections = 0
            async with pool() as request:
                assert await outcome(request, server.url()) == ('ok', b'ok')
                client = support.fd_of_the_socket_connected_to(('127.0.0.1', server.port))
                send_at_once(peers[0], sent)
                readable, _, _ = select.select([client], [], [], 5)
                assert readable
                # The request coroutine is awaited directly: it takes the idle connection
                # before the loop runs again
                assert await outcome(request, server.url()) == ('ok', b'ok')
                assert server.connections == 2  # the stray bytes never seen
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# Handshakes that fail
# ---------------------------------------------------------------------------------------------

other_ca = trustme.CA()

HANDSHAKE_FAILURES = {
    # server's answer -> (handler, server context, the HttpTlsError's cause)
    'untrusted certificate': ('complete', lambda: server_context(
        cert=other_ca.issue_cert('127.0.0.1')), 'SSLCertVerificationError'),
    'certificate for another name': ('complete', lambda: server_context(
        cert=support.ca.issue_cert('elsewhere.test')), 'SSLCertVerificationError'),
    'FIN before reading': ('fin at once', server_context, 'ConnectionResetError'),
    'RST before reading': ('reset at once', server_context, 'ConnectionResetError'),
    'FIN after the client hello': ('fin after hello', server_context, 'ConnectionResetError'),
    'RST after the client hello': ('reset after hello', server_context,
                                   'ConnectionResetError'),
    # TLS 1.2: the client's handshake ends only with the server's Finished
    'FIN after the first TLS 1.2 flight': ('fin after flight', lambda: server_context('1.2'),
                                           'ConnectionResetError'),
    'RST after the first TLS 1.2 flight': ('reset after flight',
                                           lambda: server_context('1.2'),
                                           'ConnectionResetError'),
    'garbage': ('garbage', server_context, 'SSLError'),
    'garbage after the client hello': ('garbage after hello', server_context, 'SSLError'),
    'silence': ('silence', server_context, 'TimeoutError'),
}


def failing(how: str) -> TlsHandler:
    async def handler(peer: TlsPeer) -> None:
        if how == 'complete':
            await peer.handshake()
            await peer.read_request()
            return
        if how.endswith('at once'):
            pass
        elif how.endswith('after hello'):
            await peer.receive()
        elif how.endswith('after flight'):
            await peer.receive()
            with contextlib.suppress(ssl.SSLWantReadError):
                peer.sslobj.do_handshake()
            await peer.send_outgoing()
            await peer.receive()  # the client's flight: it now waits for the server's Finished
        if how.startswith('fin'):
            peer.fin()
        elif how.startswith('reset'):
            peer.reset()
        elif how.startswith('garbage'):
            peer.writer.write(b'HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n')
            await peer.writer.drain()
            await peer.reader.read()
        else:
            await asyncio.sleep(30)
    return handler


@pytest.mark.parametrize('failure', list(HANDSHAKE_FAILURES))
async def test_each_failed_handshake_is_an_http_tls_error_with_its_cause(failure: str) -> None:
    how, context, cause = HANDSHAKE_FAILURES[failure]
    async with tls_server(failing(how), context()) as server, \
            pool(connect_timeout=0.5) as request:
        for _ in range(3):
            with pytest.raises(HttpTlsError) as raised:
                await request(b'GET', server.url())
            # Nothing was sent: safe to retry
            assert isinstance(raised.value, HttpConnectionError)
            assert type(raised.value.__cause__).__name__ == cause
            assert ('timed out' in str(raised.value)) == (cause == 'TimeoutError')


async def test_a_failed_handshake_leaves_no_socket_open() -> None:
    async with tls_server(failing('complete'), server_context(
            cert=other_ca.issue_cert('127.0.0.1'))) as server, pool() as request:
        before = support.open_sockets()
        for _ in range(5):
            with pytest.raises(HttpTlsError):
                await request(b'GET', server.url())
        assert await support.wait_for_sockets(before) == before


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------

async def digest_app() -> web.Application:
    async def digest(request: web.Request) -> web.Response:
        hashed = hashlib.sha256()
        size = 0
        async for data in request.content.iter_any():
            hashed.update(data)
            size += len(data)
        return web.json_response({'sha256': hashed.hexdigest(), 'size': size})
    app = web.Application(client_max_size=2 ** 30)
    app.router.add_post('/digest', digest)
    return app


@pytest.mark.parametrize('chunks', ['one of 8 MiB', '64 KiB each', '1 byte each'])
async def test_uploads_arrive_intact(chunks: str) -> None:
    if chunks == 'one of 8 MiB':
        pieces = [bytes(range(256)) * 32768]
    elif chunks == '64 KiB each':
        pieces = [bytes([i]) * 65536 for i in range(128)]
    else:
        pieces = [bytes([65 + i % 26]) for i in range(2000)]
    expected = hashlib.sha256(b''.join(pieces)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async with support.web_server(await digest_app(), tls=True) as server, pool() as request:
        for _ in range(2):  # the second on the pooled connection
            _, _, response = await request(
                b'POST', server.url('/digest'), body=body,
                headers=((b'content-length', b'%d' % sum(map(len, pieces))),))
            answer = b''.join([piece async for piece in response])
            assert answer == b'{"sha256": "%s", "size": %d}' % (
                expected.encode(), sum(map(len, pieces)))


async def test_a_response_while_the_upload_is_paused_is_not_lost() -> None:
    # The server answers early and resets: its answer is returned, never a hang (and never
    # the reset instead: see test_lowhaio_answer_before_the_body)
    async def handler(peer: TlsPeer) -> None:
        await peer.handshake()
        await peer.receive()
        await peer.send(b'HTTP/1.1 413 Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n')
        await asyncio.sleep(0.1)
        peer.reset()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1024):
            yield b'x' * 65536

    async with tls_server(handler) as server, pool(socket_timeout=5) as request:
        code, headers, response = await request(
            b'POST', server.url(), headers=((b'content-length', b'%d' % (1024 * 65536),),),
            body=body)
        assert (code, (b'connection', b'close') in headers, await buffered(response)) == \
            (b'413', True, b'')


# ---------------------------------------------------------------------------------------------
# The user's context, and what a 0.0.89 hook may ask of the transport
# ---------------------------------------------------------------------------------------------

class RecordingSSLObject(ssl.SSLObject):
    made: List[str] = []

    def do_handshake(self) -> None:
        RecordingSSLObject.made.append(self.server_hostname or '')
        super().do_handshake()


async def test_the_users_context_and_its_sslobject_class_are_used() -> None:
    def get_ssl_context() -> ssl.SSLContext:
        context = support.client_ssl_context()
        context.sslobject_class = RecordingSSLObject
        return context

    RecordingSSLObject.made.clear()
    async with support.web_server(await digest_app(), tls=True) as server, \
            support.open_pool(get_ssl_context=get_ssl_context) as request:
        _, _, body = await request(b'POST', server.url('/digest'))
        assert b'"size": 0' in b''.join([piece async for piece in body])
    assert set(RecordingSSLObject.made) == {'127.0.0.1'}


async def test_a_hook_sees_the_tls_details_on_the_transport() -> None:
    seen = {}

    async def send_body(logger: object, loop: object, sock: lowhaio._Connection,
                        socket_timeout: float, body: object, body_args: object,
                        body_kwargs: object) -> None:
        transport = sock.transport
        for name in ('ssl_object', 'peercert', 'cipher', 'compression', 'sslcontext',
                     'peername'):
            seen[name] = transport.get_extra_info(name)
        seen['socket'] = transport.get_extra_info('socket').getpeername()  # the TCP socket

    context = support.client_ssl_context()
    async with support.web_server(await digest_app(), tls=True) as server, \
            support.open_pool(get_ssl_context=lambda: context, send_body=send_body) as request:
        _, _, body = await request(b'POST', server.url('/digest'),
                                   headers=((b'content-length', b'0'),))
        assert b'"size": 0' in b''.join([piece async for piece in body])
    assert seen['ssl_object'].version() in ('TLSv1.2', 'TLSv1.3')
    assert ('IP Address', '127.0.0.1') in seen['peercert']['subjectAltName']
    assert seen['cipher'][1] in ('TLSv1.2', 'TLSv1.3')
    assert seen['compression'] is None
    assert seen['sslcontext'] is context
    assert seen['peername'][:2] == ('127.0.0.1', server.port)
    assert seen['socket'][:2] == ('127.0.0.1', server.port)
