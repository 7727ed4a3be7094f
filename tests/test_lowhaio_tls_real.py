"""lowhaio's TLS layer against another TLS implementation: `openssl s_server`.

lowhaio runs TLS itself (lowhaio._TlsLayer, an SSLObject over the TCP transport) on both
loops. Python's own ssl servers cannot make it meet two of its paths: a TLS 1.2 renegotiation
(during which the SSLObject refuses plaintext and lowhaio keeps it back), and the records the
SSLObject writes after a read (the answer to a KeyUpdate that requests one, a renegotiation's
ClientHello). OpenSSL's s_server does both on command: each test drives it through its stdin
(the HTTP responses it sends, `r` to renegotiate, `k`/`K` for a KeyUpdate without/with a
request for one back) and reads on its stdout what it received (requests and uploads, byte
for byte) and, with -msg, every TLS message, so that the client's answers are seen to leave.

The matrix: each event (renegotiation under TLS 1.2, KeyUpdate not requesting and requesting
under TLS 1.3), at each moment (between two requests on a pooled connection, just as that
connection is reused, in the middle of a response body of each framing, in the middle of a
large upload), once and several times in
a row. Every case: bodies byte-exact, the connection reused when it should be, no hang, no
socket left open.

Then two servers whose TLS is not Python's, for what every https user meets: nginx (OpenSSL)
and gnutls-serv (GnuTLS), each with TLS 1.2 and 1.3 and each with AES-GCM and ChaCha20.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pathlib
import random
import re
import select
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, Tuple

import pytest

import lowhaio
import support

# openssl and gnutls-serv are installed by scripts/test (which .ci/run runs): without them
# these tests fail, not skip
pytestmark = pytest.mark.timeout(60)

# Every wait in these tests has this limit: a hang fails the test rather than stalling it
PATIENCE = 20.0

# Request and response bodies are made of these bytes only. s_server takes a read of its
# stdin that begins with Q, q, P or S, or that is one letter and a newline, as a command; no
# body may start a read with one. (Nor do they contain the characters of its -msg output.)
BODY_ALPHABET = b'0123456789abdefghijlmnotuvwxyzABDEFGHIJLMNOTUVWXYZ'


_TO_ALPHABET = bytes(BODY_ALPHABET[i % len(BODY_ALPHABET)] for i in range(256))


def body_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size).translate(_TO_ALPHABET)


# ---------------------------------------------------------------------------------------------
# openssl s_server, driven through its stdin
# ---------------------------------------------------------------------------------------------

# What s_server writes on its stdout besides the plaintext it received: -msg's record of each
# TLS message (a line, then its bytes in hex) and its own remarks
MSG_BLOCK = re.compile(rb'(?:<<<|>>>) [^\n]*\n(?:    [0-9a-f]{2}(?: [0-9a-f]{2})* *\n)*')
REMARKS = re.compile(rb'SSL_do_handshake -> -?\d+\n|Read BLOCK\n|Write BLOCK\n')


class SServer:
    """A TLS server run as a subprocess, its output read as it comes: `openssl s_server`
    (serving one connection at a time, driven through its stdin) or gnutls-serv."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = bytearray()
        self.port = 0
        self._grew = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read_output())

    async def _read_output(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            data = await stdout.read(262144)
            if not data:
                self._grew.set()
                return
            self.output += data
            self._grew.set()

    async def wait_for(self, pattern: bytes, count: int = 1) -> None:
        """Until `pattern` has appeared `count` times on the server's output."""
        async def appeared() -> None:
            while self.output.count(pattern) < count:
                if self.process.returncode is not None or self._reader.done():
                    raise AssertionError('s_server ended: %r' % (bytes(self.output[-2000:]),))
                self._grew.clear()
                await self._grew.wait()
        try:
            await asyncio.wait_for(appeared(), PATIENCE)
        except asyncio.TimeoutError:
            raise AssertionError('%r did not appear %d times in: %r' % (
                pattern, count, bytes(self.output[-3000:]))) from None

    async def wait_for_size(self, size: int) -> None:
        async def grown() -> None:
            while len(self.output) < size:
                self._grew.clear()
                await self._grew.wait()
        await asyncio.wait_for(grown(), PATIENCE)

    async def send(self, data: bytes) -> None:
        """Through s_server's stdin to the client (as TLS records of s_server's making)."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(data)
        await stdin.drain()

    async def command(self, letter: str) -> None:
        """One of s_server's commands: it must be a read of its own, so nothing else may
        be waiting in its stdin. Returns once s_server has acted on it."""
        done = self.output.count(b'SSL_do_handshake -> ')
        await self.send(letter.encode() + b'\n')
        await self.wait_for(b'SSL_do_handshake -> ', done + 1)

    @property
    def connections(self) -> int:
        return self.output.count(b'CIPHER is ')

    def received(self, message: bytes) -> int:
        """How many TLS handshake messages of this name the server received."""
        return len(re.findall(rb'<<< TLS [0-9.]+, Handshake \[length [0-9a-f]+\], '
                              + message + rb'\n', self.output))

    def plaintext(self) -> bytes:
        """What the server received and printed, without -msg's records and its remarks."""
        return REMARKS.sub(b'', MSG_BLOCK.sub(b'', bytes(self.output)))

    async def close_connection(self) -> None:
        """close_notify, then the TCP connection closed (s_server's `q`)."""
        done = self.output.count(b'CONNECTION CLOSED')
        await self.send(b'q\n')
        await self.wait_for(b'CONNECTION CLOSED', done + 1)


@contextlib.asynccontextmanager
async def s_server(version: str, tmp_path: pathlib.Path, *options: str
                   ) -> AsyncIterator[SServer]:
    cert = support.server_cert()
    pem = tmp_path / 'server.pem'
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    # stdbuf: its remarks unbuffered, so that they come in order with what it received
    process = await asyncio.create_subprocess_exec(
        'stdbuf', '-o0', 'openssl', 's_server', '-accept', '127.0.0.1:0', '-cert', str(pem),
        '-tls' + version.replace('.', '_'), '-msg', '-ign_eof', *options,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    server = SServer(process)
    try:
        await server.wait_for(b'ACCEPT 127.0.0.1:')
        # (the whole line: with some options s_server writes more lines before it)
        accept = re.compile(rb'ACCEPT 127\.0\.0\.1:(\d+)\n')
        await wait_until(lambda: accept.search(server.output) is not None)
        match = accept.search(server.output)
        assert match, server.output
        server.port = int(match.group(1))
        yield server
    finally:
        await stopped(server)


def pool(**options: object) -> contextlib.AbstractAsyncContextManager:
    return support.open_pool(get_ssl_context=support.client_ssl_context, **options)


# ---------------------------------------------------------------------------------------------
# The events, and what each must leave in the server's record
# ---------------------------------------------------------------------------------------------

# Event -> (TLS version, s_server's command, s_server's options)
EVENTS = {
    # The client resumes its session: an abbreviated handshake
    'renegotiation': ('1.2', 'r', ()),
    # No session to resume: a full handshake, and a certificate asked of the client, which
    # has none and answers with an empty one (s_server goes on without)
    'full renegotiation asking for a certificate': ('1.2', 'R', ('-no_cache', '-no_ticket')),
    'KeyUpdate': ('1.3', 'k', ()),
    'KeyUpdate requesting one': ('1.3', 'K', ()),
}


def start_s_server(event: str, tmp_path: pathlib.Path
                   ) -> contextlib.AbstractAsyncContextManager[SServer]:
    version, _, options = EVENTS[event]
    return s_server(version, tmp_path, *options)


async def cause(server: SServer, event: str, times: int = 1) -> None:
    """`times` such events in a row, each once the client has done its part of the last."""
    _, letter, _ = EVENTS[event]
    for time in range(1, times + 1):
        await server.command(letter)
        await wait_for_the_clients_part(server, event, time)


async def wait_for_the_clients_part(server: SServer, event: str, times: int) -> None:
    """Until the client has done its part of `times` such events (all it must do at once)."""
    if 'renegotiation' in event:
        # A ClientHello for the first handshake and one for each renegotiation
        await wait_until(lambda: server.received(b'ClientHello') == 1 + times
                         and server.received(b'Finished') == 1 + times)
    # A KeyUpdate that requests one is answered before the client's next record of data
    # (RFC 8446 4.6.3): OpenSSL sends it with the next write, not at once


async def wait_until(condition: Callable[[], bool], interval: float = 0.005) -> None:
    async def met() -> None:
        while not condition():
            await asyncio.sleep(interval)
    await asyncio.wait_for(met(), PATIENCE)


def assert_the_client_answered(server: SServer, event: str, times: int, *,
                               wrote_since: bool = True) -> None:
    """What the server received of the client's part in `times` such events on its first
    connection (each later one adds a handshake of its own); `wrote_since`: whether the
    client sent a request on that connection after them."""
    handshakes = server.connections
    if 'renegotiation' in event:
        assert server.received(b'ClientHello') == handshakes + times
        assert server.received(b'Finished') == handshakes + times
        if 'certificate' in event:
            # (empty: it has none), once only: s_server asks with SSL_VERIFY_CLIENT_ONCE
            assert server.received(b'Certificate') == 1
    elif event == 'KeyUpdate requesting one':
        # At least once before its next data (RFC 8446 4.6.3), and at most once per
        # request: OpenSSL answers with its next write, or when the next KeyUpdate comes
        assert (1 if wrote_since else 0) <= server.received(b'KeyUpdate') <= times
    else:
        # Not requested: the client must not answer (RFC 8446 4.6.3)
        assert server.received(b'KeyUpdate') == 0


def request_head(method: bytes, path: bytes) -> bytes:
    return method + b' ' + path + b' HTTP/1.1\r\n'



# ---------------------------------------------------------------------------------------------
# Between two requests, on a pooled connection
# ---------------------------------------------------------------------------------------------

HELLO = b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello'


async def get(request: object, url: str) -> bytes:
    # The request coroutine runs in this task (a deadline, not wait_for, which may make it a
    # task of its own): it takes a pooled connection before the loop runs again
    async with lowhaio.deadline(PATIENCE):
        _, _, body = await request(b'GET', url)  # type: ignore
        return b''.join([piece async for piece in body])


async def get_answered(request: object, server: SServer, path: bytes, response: bytes
                       ) -> bytes:
    """GET `path`, s_server answering with `response` once the request has arrived."""
    async def answer() -> None:
        await server.wait_for(request_head(b'GET', path), 1 + server.output.count(
            request_head(b'GET', path)))
        await server.send(response)
    answering = asyncio.ensure_future(answer())
    try:
        return await get(request, 'https://127.0.0.1:%d%s' % (server.port, path.decode()))
    finally:
        await asyncio.wait_for(answering, PATIENCE)


@pytest.mark.parametrize('times', [1, 3])
@pytest.mark.parametrize('event', list(EVENTS))
async def test_an_event_on_an_idle_pooled_connection_keeps_it_usable(
        event: str, times: int, tmp_path: pathlib.Path) -> None:
    sockets = support.open_sockets()
    async with start_s_server(event, tmp_path) as server:
        async with pool() as request:
            assert await get_answered(request, server, b'/1', HELLO) == b'hello'
            await cause(server, event, times)
            # Whatever the client is to read of the event, it reads while idle: let it
            await asyncio.sleep(0.2)
            assert await get_answered(request, server, b'/2', HELLO) == b'hello'
            assert server.connections == 1
            assert_the_client_answered(server, event, times)
    assert await support.wait_for_sockets(sockets) <= sockets


@pytest.mark.parametrize('times', [1, 3])
@pytest.mark.parametrize('event', list(EVENTS))
async def test_an_event_that_arrives_as_the_connection_is_reused_keeps_it_usable(
        event: str, times: int, tmp_path: pathlib.Path) -> None:
    # The event's record reaches the idle connection's socket just before the next request
    # takes the connection, with the loop not yet having read it: the check before reuse sees
    # something to read. A record of TLS's own is no reason to drop the connection (a close
    # or data would be: test_lowhaio_tls_layer). The loop is kept from reading the record by
    # blocking it from the command until the record is there; then the request takes the
    # connection before the loop runs again (see get)
    _, letter, _ = EVENTS[event]
    sockets = support.open_sockets()
    async with start_s_server(event, tmp_path) as server:
        async with pool() as request:
            assert await get_answered(request, server, b'/0', HELLO) == b'hello'
            client = support.fd_of_the_socket_connected_to(('127.0.0.1', server.port))
            for time in range(1, times + 1):
                stdin = server.process.stdin
                assert stdin is not None
                stdin.write(letter.encode() + b'\n')  # written at once: the pipe was empty
                readable, _, _ = select.select([client], [], [], PATIENCE)
                assert readable, 'the event did not reach the client'
                assert await get_answered(request, server, b'/%d' % time, HELLO) == b'hello'
                await wait_for_the_clients_part(server, event, time)
            assert server.connections == 1
            assert_the_client_answered(server, event, times)
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# In the middle of a response body
# ---------------------------------------------------------------------------------------------

FRAMINGS = ['content-length', 'chunked', 'close-delimited']
RESPONSE_BODY = body_bytes(200_000, 1)
BEFORE_THE_EVENT = 64_000
CHUNK = 16_000  # 3e80 in hex: no chunk-size line is one of s_server's commands


def chunked(data: bytes) -> bytes:
    return b''.join(b'%x\r\n%s\r\n' % (len(data[i:i + CHUNK]), data[i:i + CHUNK])
                    for i in range(0, len(data), CHUNK))


def response_in_two(framing: str, body: bytes, split: int) -> Tuple[bytes, bytes]:
    """The response to `body`, cut where `split` bytes of the body are in the first part."""
    if framing == 'content-length':
        head = b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % len(body)
        return head + body[:split], body[split:]
    if framing == 'chunked':
        head = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
        return head + chunked(body[:split]), chunked(body[split:]) + b'0\r\n\r\n'
    head = b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n'
    return head + body[:split], body[split:]


@pytest.mark.parametrize('times', [1, 3])
@pytest.mark.parametrize('framing', FRAMINGS)
@pytest.mark.parametrize('event', list(EVENTS))
async def test_an_event_in_the_middle_of_a_response_body_leaves_it_intact(
        event: str, framing: str, times: int, tmp_path: pathlib.Path) -> None:
    first, rest = response_in_two(framing, RESPONSE_BODY, BEFORE_THE_EVENT)
    sockets = support.open_sockets()
    async with start_s_server(event, tmp_path) as server:
        async with pool() as request:
            async def answer() -> None:
                await server.wait_for(request_head(b'GET', b'/body'))
                await server.send(first)
            answering = asyncio.ensure_future(answer())
            _, _, body = await asyncio.wait_for(
                request(b'GET', 'https://127.0.0.1:%d/body' % server.port), PATIENCE)
            await answering
            received = bytearray()

            async def read_body() -> None:
                async for piece in body:
                    received.extend(piece)
                    if len(received) == BEFORE_THE_EVENT:
                        # All the first part is in: nothing else is in s_server's stdin
                        await cause(server, event, times)
                        await server.send(rest)
                    if framing == 'close-delimited' and len(received) == len(RESPONSE_BODY):
                        await server.close_connection()
            await asyncio.wait_for(read_body(), PATIENCE)
            assert hashlib.sha256(received).hexdigest() == \
                hashlib.sha256(RESPONSE_BODY).hexdigest()

            assert await get_answered(request, server, b'/next', HELLO) == b'hello'
            assert server.connections == (2 if framing == 'close-delimited' else 1)
            assert_the_client_answered(server, event, times,
                                       wrote_since=framing != 'close-delimited')
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# In the middle of an upload
# ---------------------------------------------------------------------------------------------

UPLOAD = body_bytes(8 * 2 ** 20, 2)
UPLOAD_CHUNK = 65536
EVENT_AT_CHUNKS = (16, 48, 80)  # 1, 3 and 5 MiB into the upload: the client is writing
# The most of the caller's upload lowhaio may hold at once: two of its 64 KiB write buffer's
# worth and a chunk, with room to spare. (What the kernel holds is not counted.)
MOST_HELD = 1 * 2 ** 20


class Chunk(bytearray):
    """A piece of an upload whose lifetime is watched: alive while anything holds it."""


class Upload:
    """An upload in Chunks, that knows how many bytes of it are alive (held) at each yield."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.alive = 0
        self.most_alive = 0

    def chunk(self, start: int) -> Chunk:
        chunk = Chunk(self.data[start:start + UPLOAD_CHUNK])
        self.alive += len(chunk)
        weakref.finalize(chunk, self._freed, len(chunk))
        return chunk

    def _freed(self, size: int) -> None:
        self.alive -= size

    def note(self) -> None:
        self.most_alive = max(self.most_alive, self.alive)


def uploaded(server: SServer, path: bytes) -> bytes:
    """The body of the POST to `path` as the server received it."""
    plaintext = server.plaintext()
    start = plaintext.index(request_head(b'POST', path))
    body_start = plaintext.index(b'\r\n\r\n', start) + 4
    return plaintext[body_start:body_start + len(UPLOAD)]


async def post_upload(request: Any, server: SServer,
                      upload: Callable[[], AsyncIterator[Any]]) -> None:
    """POST `upload` to the server, which answers once it has received all of UPLOAD."""
    async def serve() -> None:
        await server.wait_for_size(len(UPLOAD))
        await wait_until(lambda: len(uploaded(server, b'/upload')) == len(UPLOAD), 0.05)
        await server.send(HELLO)

    serving = asyncio.ensure_future(serve())
    try:
        _, _, body = await asyncio.wait_for(request(
            b'POST', 'https://127.0.0.1:%d/upload' % server.port, body=upload,
            headers=((b'content-length', b'%d' % len(UPLOAD)),)), PATIENCE)
        assert b''.join([piece async for piece in body]) == b'hello'
    finally:
        await asyncio.wait_for(serving, PATIENCE)


def assert_uploaded_intact(server: SServer) -> None:
    assert hashlib.sha256(uploaded(server, b'/upload')).hexdigest() == \
        hashlib.sha256(UPLOAD).hexdigest()


@pytest.mark.parametrize('times', [1, 3])
@pytest.mark.parametrize('event', list(EVENTS))
async def test_an_event_in_the_middle_of_an_upload_leaves_it_intact(
        event: str, times: int, tmp_path: pathlib.Path) -> None:
    _, letter, _ = EVENTS[event]
    sockets = support.open_sockets()
    watched = Upload(UPLOAD)

    async with start_s_server(event, tmp_path) as server:
        async def upload() -> AsyncIterator[bytes]:
            for number, start in enumerate(range(0, len(UPLOAD), UPLOAD_CHUNK)):
                watched.note()
                if number in EVENT_AT_CHUNKS[:times]:
                    # Each event once the client has done its part of the last
                    done = EVENT_AT_CHUNKS.index(number)
                    await wait_for_the_clients_part(server, event, done)
                    await server.command(letter)
                yield watched.chunk(start)

        async with pool() as request:
            await post_upload(request, server, upload)
            assert_uploaded_intact(server)
            # Backpressure held throughout, renegotiations included
            assert watched.most_alive <= MOST_HELD
            assert await get_answered(request, server, b'/next', HELLO) == b'hello'
            assert server.connections == 1
            if event == 'KeyUpdate requesting one':
                # Each answered, since the client was writing when each came
                assert server.received(b'KeyUpdate') == times
            else:
                assert_the_client_answered(server, event, times)
    assert await support.wait_for_sockets(sockets) <= sockets



@pytest.mark.parametrize('event', [event for event in EVENTS if 'renegotiation' in event])
async def test_a_buffer_the_caller_refills_after_each_chunk_is_sent_as_it_was(
        event: str, tmp_path: pathlib.Path) -> None:
    # A generator may yield one bytearray, refilled once lowhaio has taken it (as a reader
    # of a file does with readinto). What a renegotiation makes lowhaio hold back must be
    # what the caller had yielded, not what the buffer holds later.
    _, letter, _ = EVENTS[event]
    async with start_s_server(event, tmp_path) as server:
        async def upload() -> AsyncIterator[bytearray]:
            buffer = bytearray(UPLOAD_CHUNK)
            for number, start in enumerate(range(0, len(UPLOAD), UPLOAD_CHUNK)):
                if number == EVENT_AT_CHUNKS[0]:
                    await server.command(letter)
                buffer[:] = UPLOAD[start:start + UPLOAD_CHUNK]
                yield buffer

        async with pool() as request:
            await post_upload(request, server, upload)
            await wait_for_the_clients_part(server, event, 1)
            assert_uploaded_intact(server)

# ---------------------------------------------------------------------------------------------
# nginx: each TLS version and AEAD, connections it closes, a large body read slowly
# ---------------------------------------------------------------------------------------------

# Server block name -> (TLS version, what pins the cipher)
NGINX_TLS = {
    '1.2 AES-GCM': ('TLSv1.2', 'ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256;'),
    '1.2 ChaCha20': ('TLSv1.2', 'ssl_ciphers ECDHE-ECDSA-CHACHA20-POLY1305;'),
    '1.3 AES-GCM': ('TLSv1.3', 'ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;'),
    '1.3 ChaCha20': ('TLSv1.3', 'ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;'),
}
NGINX_CIPHERS = {
    '1.2 AES-GCM': 'ECDHE-ECDSA-AES128-GCM-SHA256',
    '1.2 ChaCha20': 'ECDHE-ECDSA-CHACHA20-POLY1305',
    '1.3 AES-GCM': 'TLS_AES_256_GCM_SHA384',
    '1.3 ChaCha20': 'TLS_CHACHA20_POLY1305_SHA256',
}

_NGINX_SERVER = '''
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/server.pem;
        ssl_certificate_key {tmp}/server.pem;
        ssl_protocols {protocol};
        {cipher}
        root {root};
        # Which connection, which request on it, and the TLS the server chose
        location = /who {{
            default_type text/plain;
            return 200 "$connection $connection_requests $ssl_protocol $ssl_cipher";
        }}
    }}
'''

_NGINX_TLS_CONF = support.NGINX_PRELUDE + '''\
    # After its third response on a connection, nginx closes it (with close_notify)
    keepalive_requests 3;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 404; }}
    }}
{servers}
}}
'''


class TlsNginx(support.Nginx):
    """support.Nginx with a server block (a port of its own) for each of NGINX_TLS."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: Dict[str, int] = {}

    def _write_config(self) -> None:
        self.ports = {name: support._free_port() for name in NGINX_TLS}
        # The first is the one support.Nginx waits for (nginx binds every port before it
        # accepts on any)
        self.tls_port = self.ports['1.2 AES-GCM']
        servers = ''.join(_NGINX_SERVER.format(
            port=self.ports[name], tmp=self.tmp, root=self.root, protocol=protocol,
            cipher=cipher) for name, (protocol, cipher) in NGINX_TLS.items())
        (self.tmp / 'nginx.conf').write_text(_NGINX_TLS_CONF.format(
            user='user root;' if os.geteuid() == 0 else '', tmp=self.tmp, port=self.port,
            servers=servers))

    def tls_url_of(self, name: str, path: str) -> str:
        return 'https://127.0.0.1:%d%s' % (self.ports[name], path)


LARGE_FILE = body_bytes(6 * 2 ** 20, 3)


@pytest.fixture(scope='module')
def tls_nginx() -> Iterator[TlsNginx]:
    if support.nginx_binary() is None:
        pytest.fail('nginx is not installed; scripts/test installs it')
    with TlsNginx() as nginx:
        (nginx.root / 'large').write_bytes(LARGE_FILE)
        yield nginx


@pytest.mark.parametrize('tls', list(NGINX_TLS))
async def test_nginx_closing_after_its_third_response_costs_no_request(
        tls: str, tls_nginx: TlsNginx) -> None:
    sockets = support.open_sockets()
    async with pool() as request:
        answers = [(await get(request, tls_nginx.tls_url_of(tls, '/who'))).split()
                   for _ in range(7)]
    protocol, _ = NGINX_TLS[tls]
    assert {(answer[2], answer[3]) for answer in answers} == {
        (protocol.encode(), NGINX_CIPHERS[tls].encode())}
    # Three on each connection, each connection new after nginx closed the last
    assert [answer[1] for answer in answers] == [b'1', b'2', b'3', b'1', b'2', b'3', b'1']
    connections = [answer[0] for answer in answers]
    assert len(set(connections)) == 3
    assert connections[0] == connections[2] != connections[3] == connections[5] != connections[6]
    assert await support.wait_for_sockets(sockets) <= sockets


async def read_slowly(request: Callable[..., Awaitable], url: str) -> str:
    """The sha256 of the body at `url`, read with a pause after each piece: long enough for
    lowhaio to pause reading and for nginx to wait."""
    _, _, body = await request(b'GET', url)
    hashed = hashlib.sha256()
    async for piece in body:
        hashed.update(piece)
        await asyncio.sleep(0.005)
    return hashed.hexdigest()


@pytest.mark.parametrize('tls', list(NGINX_TLS))
async def test_nginx_a_large_body_read_slowly_arrives_whole(tls: str, tls_nginx: TlsNginx
                                                            ) -> None:
    sockets = support.open_sockets()
    async with pool() as request:
        for _ in range(2):  # the second on the same connection
            digest = await asyncio.wait_for(
                read_slowly(request, tls_nginx.tls_url_of(tls, '/large')), PATIENCE)
            assert digest == hashlib.sha256(LARGE_FILE).hexdigest()
        answer = (await get(request, tls_nginx.tls_url_of(tls, '/who'))).split()
        assert answer[1] == b'3'  # the two bodies and this on one connection
    assert await support.wait_for_sockets(sockets) <= sockets


# ---------------------------------------------------------------------------------------------
# gnutls-serv: a TLS stack that shares no code with OpenSSL
# ---------------------------------------------------------------------------------------------

# Name -> (GnuTLS priority string, how gnutls-serv describes the session)
GNUTLS = {
    '1.2 AES-GCM': ('NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM',
                    b'(TLS1.2-X.509)-(ECDHE-X25519)-(ECDSA-SHA256)-(AES-128-GCM)'),
    '1.2 ChaCha20': ('NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305',
                     b'(TLS1.2-X.509)-(ECDHE-X25519)-(ECDSA-SHA256)-(CHACHA20-POLY1305)'),
    '1.3 AES-GCM': ('NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM',
                    b'(TLS1.3-X.509)-(ECDHE-X25519)-(ECDSA-SECP256R1-SHA256)-(AES-256-GCM)'),
    '1.3 ChaCha20': ('NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305',
                     b'(TLS1.3-X.509)-(ECDHE-X25519)-(ECDSA-SECP256R1-SHA256)-'
                     b'(CHACHA20-POLY1305)'),
}
GNUTLS_BODY = body_bytes(3 * 2 ** 20, 4)


@contextlib.asynccontextmanager
async def gnutls_serv(priority: str, tmp_path: pathlib.Path) -> AsyncIterator[SServer]:
    """gnutls-serv answering each request with GNUTLS_BODY (HTTP/1.0: then it closes)."""
    cert = support.server_cert()
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / 'cert.pem'))
    cert.private_key_pem.write_to_path(str(tmp_path / 'key.pem'))
    (tmp_path / 'body').write_bytes(GNUTLS_BODY)
    server = await started_gnutls_serv(priority, tmp_path)
    try:
        yield server
    finally:
        await stopped(server)


async def started_gnutls_serv(priority: str, tmp_path: pathlib.Path) -> SServer:
    for _ in range(10):
        # It cannot bind port 0 and tell which it got: a port free a moment ago, else another
        port = support._free_port()
        process = await asyncio.create_subprocess_exec(
            'stdbuf', '-o0', 'gnutls-serv', '--http', '--httpdata', str(tmp_path / 'body'),
            '--x509certfile', str(tmp_path / 'cert.pem'),
            '--x509keyfile', str(tmp_path / 'key.pem'), '--priority', priority,
            '--port', str(port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        server = SServer(process)
        server.port = port
        try:
            await server.wait_for(b'IPv4 0.0.0.0 port %d...done' % port)
            return server
        except AssertionError:
            await stopped(server)
    raise AssertionError('gnutls-serv did not start')


async def stopped(server: SServer) -> None:
    if server.process.returncode is None:
        server.process.kill()
    await server.process.wait()
    server._reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server._reader


@pytest.mark.parametrize('tls', list(GNUTLS))
async def test_gnutls_bodies_arrive_whole_fast_or_read_slowly(tls: str, tmp_path: pathlib.Path
                                                              ) -> None:
    priority, description = GNUTLS[tls]
    expected = hashlib.sha256(GNUTLS_BODY).hexdigest()
    sockets = support.open_sockets()
    async with gnutls_serv(priority, tmp_path) as server, pool() as request:
        url = 'https://127.0.0.1:%d/' % server.port
        assert hashlib.sha256(await get(request, url)).hexdigest() == expected
        # HTTP/1.0 and closed by the server: a new connection
        assert await asyncio.wait_for(read_slowly(request, url), PATIENCE) == expected
        await server.wait_for(description, 2)
        assert server.output.count(b'Accepted connection') == 2
    assert await support.wait_for_sockets(sockets) <= sockets
