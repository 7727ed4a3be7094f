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
under TLS 1.3), at each moment (between two requests on a pooled connection, in the middle of
a response body of each framing, in the middle of a large upload), once and several times in
a row. Every case: bodies byte-exact, the connection reused when it should be, no hang, no
socket left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pathlib
import random
import re
import shutil
from typing import AsyncIterator, List, Optional, Tuple

import pytest

import support

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which('openssl') is None and not os.environ.get('CI'),
                       reason='openssl is not installed (scripts/test installs it)'),
]

# Every wait in these tests has this limit: a hang fails the test rather than stalling it
PATIENCE = 20.0

# Request and response bodies are made of these bytes only. s_server takes a read of its
# stdin that begins with Q, q, P or S, or that is one letter and a newline, as a command; no
# body may start a read with one. (Nor do they contain the characters of its -msg output.)
BODY_ALPHABET = b'0123456789abdefghijlmnotuvwxyzABDEFGHIJLMNOTUVWXYZ'


def body_bytes(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choices(BODY_ALPHABET, k=size))


# ---------------------------------------------------------------------------------------------
# openssl s_server, driven through its stdin
# ---------------------------------------------------------------------------------------------

# What s_server writes on its stdout besides the plaintext it received: -msg's record of each
# TLS message (a line, then its bytes in hex) and its own remarks
MSG_BLOCK = re.compile(rb'(?:<<<|>>>) [^\n]*\n(?:    [0-9a-f]{2}(?: [0-9a-f]{2})* *\n)*')
REMARKS = re.compile(rb'SSL_do_handshake -> -?\d+\n|Read BLOCK\n|Write BLOCK\n')


class SServer:
    """One `openssl s_server` on 127.0.0.1 pinned to one TLS version, serving one
    connection at a time."""

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
async def s_server(version: str, tmp_path: pathlib.Path) -> AsyncIterator[SServer]:
    cert = support.server_cert()
    pem = tmp_path / 'server.pem'
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    # stdbuf: its remarks unbuffered, so that they come in order with what it received
    process = await asyncio.create_subprocess_exec(
        'stdbuf', '-o0', 'openssl', 's_server', '-accept', '127.0.0.1:0', '-cert', str(pem),
        '-tls' + version.replace('.', '_'), '-msg', '-ign_eof',
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    server = SServer(process)
    try:
        await server.wait_for(b'ACCEPT 127.0.0.1:')
        await server.wait_for(b'\n', 2)
        match = re.search(rb'ACCEPT 127\.0\.0\.1:(\d+)\n', server.output)
        assert match, server.output
        server.port = int(match.group(1))
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        server._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server._reader


def pool(**options: object) -> contextlib.AbstractAsyncContextManager:
    return support.open_pool(get_ssl_context=support.client_ssl_context, **options)


# ---------------------------------------------------------------------------------------------
# The events, and what each must leave in the server's record
# ---------------------------------------------------------------------------------------------

# Event -> (TLS version, s_server's command)
EVENTS = {
    'renegotiation': ('1.2', 'r'),
    'KeyUpdate': ('1.3', 'k'),
    'KeyUpdate requesting one': ('1.3', 'K'),
}


async def cause(server: SServer, event: str, times: int = 1) -> None:
    """`times` such events in a row, each once the client has done its part of the last."""
    _, letter = EVENTS[event]
    for time in range(1, times + 1):
        await server.command(letter)
        await wait_for_the_clients_part(server, event, time)


async def wait_for_the_clients_part(server: SServer, event: str, times: int) -> None:
    """Until the client has done its part of `times` such events (all it must do at once)."""
    if event == 'renegotiation':
        # A ClientHello for the first handshake and one for each renegotiation
        await wait_until(lambda: server.received(b'ClientHello') == 1 + times
                         and server.received(b'Finished') == 1 + times)
    # A KeyUpdate that requests one is answered before the client's next record of data
    # (RFC 8446 4.6.3): OpenSSL sends it with the next write, not at once


async def wait_until(condition: 'object') -> None:
    async def met() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)
    await asyncio.wait_for(met(), PATIENCE)


def assert_the_client_answered(server: SServer, event: str, times: int) -> None:
    if event == 'renegotiation':
        assert server.received(b'ClientHello') == 1 + times
        assert server.received(b'Finished') == 1 + times
    elif event == 'KeyUpdate requesting one':
        # Once before its next data, however many requests came before it
        assert 1 <= server.received(b'KeyUpdate') <= times
    else:
        # Not requested: the client must not answer (RFC 8446 4.6.3)
        assert server.received(b'KeyUpdate') == 0


def request_head(method: bytes, path: bytes) -> bytes:
    return method + b' ' + path + b' HTTP/1.1\r\n'


async def response_head_sent(server: SServer, path: bytes) -> None:
    await server.wait_for(request_head(b'GET', path) + b'host: ', 1)
    await server.wait_for(b'\r\n\r\n', 1)


# ---------------------------------------------------------------------------------------------
# Between two requests, on a pooled connection
# ---------------------------------------------------------------------------------------------

HELLO = b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello'


async def get(request: object, url: str) -> bytes:
    _, _, body = await asyncio.wait_for(request(b'GET', url), PATIENCE)  # type: ignore
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
    version, _ = EVENTS[event]
    sockets = support.open_sockets()
    async with s_server(version, tmp_path) as server:
        async with pool() as request:
            assert await get_answered(request, server, b'/1', HELLO) == b'hello'
            await cause(server, event, times)
            # Whatever the client is to read of the event, it reads while idle: let it
            await asyncio.sleep(0.2)
            assert await get_answered(request, server, b'/2', HELLO) == b'hello'
            assert server.connections == 1
            assert_the_client_answered(server, event, times)
    assert await support.wait_for_sockets(sockets) <= sockets
