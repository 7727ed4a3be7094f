"""The test-support layer itself: if these fail, no other test's verdict can be trusted."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiodnsresolver
import aiohttp
import pytest
from aiohttp import web

from support import (
    client_ssl_context,
    dns_server,
    open_fds,
    responding,
    scripted_server,
    server_ssl_context,
    wait_for_fds,
    web_server,
)


async def raw_exchange(host: str, port: int, request: bytes, *,
                       ssl_context: ssl.SSLContext | None = None,
                       server_hostname: str | None = None) -> bytes:
    """Send `request` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl_context, server_hostname=server_hostname)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


def split_response(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b'\r\n\r\n')
    status_line, *header_lines = head.split(b'\r\n')
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b':') for line in header_lines)
    }
    return status_line, headers, body


def decode_chunked(body: bytes) -> bytes:
    decoded = b''
    while True:
        size_line, _, body = body.partition(b'\r\n')
        size = int(size_line.split(b';')[0], 16)
        if size == 0:
            return decoded
        decoded, body = decoded + body[:size], body[size + 2:]


# -- the event loops ----------------------------------------------------------------------------

async def test_runs_under_the_loop_named_in_its_id(request: pytest.FixtureRequest) -> None:
    loop_module = type(asyncio.get_running_loop()).__module__
    if request.node.name.endswith('[uvloop]'):
        assert loop_module.startswith('uvloop')
    else:
        assert request.node.name.endswith('[asyncio]')
        assert loop_module.startswith('asyncio')


# -- DNS ----------------------------------------------------------------------------------------

async def test_dns_server_answers_a_and_aaaa_records_via_aiodnsresolver() -> None:
    async with dns_server() as dns:
        dns.set('Both.Example.Test', ['127.0.0.5', '::1'])
        resolve, clear_cache = dns.get_dns_resolver()

        ipv4 = await resolve('both.example.test', aiodnsresolver.TYPES.A)
        ipv6 = await resolve('both.example.test', aiodnsresolver.TYPES.AAAA)

        assert [str(address) for address in ipv4] == ['127.0.0.5']
        assert [str(address) for address in ipv6] == ['::1']
        assert dns.queries == [('both.example.test', 'A'), ('both.example.test', 'AAAA')]
        assert not dns.errors
        await clear_cache()


async def test_dns_server_answers_nxdomain_for_unknown_and_removed_names() -> None:
    async with dns_server() as dns:
        resolve, clear_cache = dns.get_dns_resolver()
        with pytest.raises(aiodnsresolver.DnsRecordDoesNotExist):
            await resolve('unknown.example.test', aiodnsresolver.TYPES.A)

        dns.set('gone.example.test', ['127.0.0.6'])
        assert [str(a) for a in await resolve('gone.example.test', aiodnsresolver.TYPES.A)] \
            == ['127.0.0.6']
        dns.remove('gone.example.test')
        await clear_cache()
        with pytest.raises(aiodnsresolver.DnsRecordDoesNotExist):
            await resolve('gone.example.test', aiodnsresolver.TYPES.A)


async def test_dns_server_changes_are_seen_once_the_ttl_expires() -> None:
    async with dns_server() as dns:
        dns.set('moving.example.test', ['127.0.0.7'], ttl=1)
        resolve, clear_cache = dns.get_dns_resolver()
        first = await resolve('moving.example.test', aiodnsresolver.TYPES.A)

        dns.set('moving.example.test', ['127.0.0.8'], ttl=1)
        cached = await resolve('moving.example.test', aiodnsresolver.TYPES.A)
        await asyncio.sleep(1.1)
        fresh = await resolve('moving.example.test', aiodnsresolver.TYPES.A)

        assert [str(a) for a in first + cached + fresh] == ['127.0.0.7', '127.0.0.7', '127.0.0.8']
        await clear_cache()


async def test_dns_resolver_factory_passes_keyword_arguments_through() -> None:
    seen = []

    def get_logger_adapter(extra: dict) -> aiodnsresolver.ResolverLoggerAdapter:
        seen.append(extra)
        return aiodnsresolver.ResolverLoggerAdapter(
            logging.getLogger('test'), extra)

    async with dns_server() as dns:
        dns.set('logged.example.test', ['127.0.0.9'])
        resolve, _ = dns.get_dns_resolver(get_logger_adapter=get_logger_adapter)
        await resolve('logged.example.test', aiodnsresolver.TYPES.A)
    assert seen


# -- scripted TCP server ------------------------------------------------------------------------

async def test_scripted_server_sends_exact_bytes_and_records_requests() -> None:
    response = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi'
    async with scripted_server(responding(response, then='close')) as server:
        request = b'POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc'
        received = await raw_exchange(server.host, server.port, request)

    assert received == response
    assert server.requests == [request]
    assert server.connections == 1
    assert not server.errors
    assert not server.unanswered


async def test_scripted_server_speaks_tls_when_asked() -> None:
    response = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi'
    async with scripted_server(responding(response, then='close'), tls=True) as server:
        request = b'GET / HTTP/1.1\r\nhost: a\r\n\r\n'
        received = await raw_exchange(server.host, server.port, request,
                                      ssl_context=client_ssl_context())
    assert (received, server.requests, server.url('/x')) == \
        (response, [request], 'https://127.0.0.1:%d/x' % server.port)
    assert not server.errors


async def test_scripted_server_reads_chunked_request_bodies_with_their_framing() -> None:
    request = (b'POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n'
               b'3\r\nabc\r\n0\r\n\r\n')
    async with scripted_server(responding(b'HTTP/1.1 204 No Content\r\n\r\n', then='close')) \
            as server:
        await raw_exchange(server.host, server.port, request)
    assert server.requests == [request]
    assert not server.errors


async def test_scripted_server_resets_connections() -> None:
    async with scripted_server(responding(b'partial', then='reset')) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b'GET / HTTP/1.1\r\n\r\n')
        with pytest.raises(ConnectionResetError):
            # The bytes written before the reset may or may not arrive; the reset must
            while await reader.read(65536):
                pass
        writer.close()
    assert not server.errors


async def test_scripted_server_closes_with_fin_after_the_handler_returns() -> None:
    async def handler(conn):
        head = await conn.read_head()
        conn.write(b'got ' + head.split(b' ')[1])

    async with scripted_server(handler) as server:
        received = await raw_exchange(server.host, server.port, b'GET /p HTTP/1.1\r\n\r\n')
    assert received == b'got /p'  # read() returning means FIN, not RST


async def test_scripted_server_keeps_connections_and_shares_responses_across_them() -> None:
    async with scripted_server(responding(b'one', b'two', b'three')) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b'GET /1 HTTP/1.1\r\n\r\n')
        assert await reader.readexactly(3) == b'one'
        writer.write(b'GET /2 HTTP/1.1\r\n\r\n')
        assert await reader.readexactly(3) == b'two'
        other = await raw_exchange(server.host, server.port, b'GET /3 HTTP/1.1\r\n\r\n'
                                   b'GET /4 HTTP/1.1\r\n\r\n')
        writer.close()
    assert other == b'three'
    assert server.connections == 2
    assert server.unanswered == [b'GET /4 HTTP/1.1\r\n\r\n']


async def test_scripted_server_reads_until_the_client_closes_its_side() -> None:
    async def handler(conn):
        data = await conn.read_until_eof()
        assert conn.at_eof()
        conn.write(b'%d bytes' % len(data))

    async with scripted_server(handler) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b'x' * 100_000)
        writer.write_eof()
        assert await reader.read() == b'100000 bytes'
        writer.close()
    assert not server.errors


async def test_scripted_server_records_handler_errors() -> None:
    async def handler(conn):
        raise ValueError('a bug in the script')

    async with scripted_server(handler) as server:
        await raw_exchange(server.host, server.port, b'')
    assert [str(error) for error in server.errors] == ['a bug in the script']


async def test_scripted_server_writes_slowly() -> None:
    async def handler(conn):
        await conn.write_slowly(b'abcd', chunk_size=2, delay=0.05)

    async with scripted_server(handler) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        pieces = []
        while True:
            piece = await reader.read(65536)
            if not piece:
                break
            pieces.append(piece)
        writer.close()
    assert pieces == [b'ab', b'cd']


# -- aiohttp.web server -------------------------------------------------------------------------

def hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b'hello ' + request.path.encode())

    app = web.Application()
    app.router.add_get('/{tail:.*}', hello)
    return app


async def test_web_server_with_tls_is_verified_by_the_client_context() -> None:
    async with web_server(hello_app(), tls=True) as server:
        assert server.url('/a') == f'https://127.0.0.1:{server.port}/a'
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url('/a'), ssl=client_ssl_context()) as response:
                assert await response.read() == b'hello /a'

            # The same server is not trusted without the test CA
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(server.url('/a'), ssl=ssl.create_default_context())


async def test_web_server_certificate_covers_extra_hostnames_only_when_asked() -> None:
    async with web_server(hello_app(), tls=True, hostnames=('extra.test',)) as server:
        received = await raw_exchange(
            '127.0.0.1', server.port, b'GET /x HTTP/1.1\r\nhost: extra.test\r\n'
            b'connection: close\r\n\r\n',
            ssl_context=client_ssl_context(), server_hostname='extra.test')
        assert received.endswith(b'hello /x')
        with pytest.raises(ssl.SSLCertVerificationError):
            await raw_exchange('127.0.0.1', server.port, b'', ssl_context=client_ssl_context(),
                               server_hostname='other.test')


async def test_web_server_on_ipv6_loopback_brackets_the_url() -> None:
    async with web_server(hello_app(), host='::1') as server:
        assert server.url('/v6') == f'http://[::1]:{server.port}/v6'
        assert server.url_for('name.test', 'p') == f'http://name.test:{server.port}/p'
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url('/v6')) as response:
                assert await response.read() == b'hello /v6'


async def test_mutual_tls_needs_the_client_certificate() -> None:
    async with web_server(hello_app(), tls=True,
                          ssl_context=server_ssl_context(require_client_cert=True)) as server:
        request = b'GET /m HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n'
        received = await raw_exchange('127.0.0.1', server.port, request,
                                      ssl_context=client_ssl_context(with_client_cert=True),
                                      server_hostname='localhost')
        assert received.endswith(b'hello /m')
        try:
            # With TLS 1.3 the client learns of the rejection only once it reads
            received = await raw_exchange('127.0.0.1', server.port, request,
                                          ssl_context=client_ssl_context(),
                                          server_hostname='localhost')
        except (ssl.SSLError, ConnectionError):
            received = b''
        assert received == b''


# -- file descriptors ---------------------------------------------------------------------------

async def test_wait_for_fds_sees_sockets_close() -> None:
    async with scripted_server(responding()) as server:
        # Counted once a server listens: uvloop (libuv) then reserves a descriptor for itself
        before = open_fds()
        _, writer = await asyncio.open_connection(server.host, server.port)
        assert open_fds() > before
        writer.close()
        assert await wait_for_fds(before) == before


# -- nginx --------------------------------------------------------------------------------------

async def test_nginx_serves_a_file_with_content_length(nginx) -> None:
    (nginx.root / 'plain.txt').write_bytes(b'x' * 1000)
    received = await raw_exchange(
        nginx.host, nginx.port,
        b'GET /plain.txt HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n')
    status, headers, body = split_response(received)
    assert status == b'HTTP/1.1 200 OK'
    assert headers[b'content-length'] == b'1000'
    assert body == b'x' * 1000


async def test_nginx_serves_the_file_chunked_under_chunked(nginx) -> None:
    content = bytes(range(256)) * 400
    (nginx.root / 'big.bin').write_bytes(content)
    received = await raw_exchange(
        nginx.host, nginx.port,
        b'GET /chunked/big.bin HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n')
    status, headers, body = split_response(received)
    assert status == b'HTTP/1.1 200 OK'
    assert headers[b'transfer-encoding'] == b'chunked'
    assert b'content-length' not in headers
    assert decode_chunked(body) == content


async def test_nginx_keeps_connections_alive_and_speaks_tls(nginx) -> None:
    (nginx.root / 'a.txt').write_bytes(b'A')
    reader, writer = await asyncio.open_connection(
        nginx.host, nginx.tls_port, ssl=client_ssl_context(), server_hostname='localhost')
    for _ in range(3):
        writer.write(b'GET /a.txt HTTP/1.1\r\nhost: localhost\r\n\r\n')
        head = await reader.readuntil(b'\r\n\r\n')
        assert b'content-length: 1' in head.lower()
        assert await reader.readexactly(1) == b'A'
    writer.close()
    assert nginx.tls_url('/a.txt') == f'https://127.0.0.1:{nginx.tls_port}/a.txt'


async def test_nginx_stores_put_bodies_and_describes_requests(nginx) -> None:
    put = await raw_exchange(
        nginx.host, nginx.port,
        b'PUT /dav/stored.txt HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n'
        b'connection: close\r\n\r\nhello')
    assert split_response(put)[0] in (b'HTTP/1.1 201 Created', b'HTTP/1.1 204 No Content')
    got = await raw_exchange(
        nginx.host, nginx.port,
        b'GET /dav/stored.txt HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n')
    assert split_response(got)[2] == b'hello'

    echo = await raw_exchange(
        nginx.host, nginx.port,
        b'POST /echo?q=1 HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n'
        b'connection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n')
    assert split_response(echo)[2] == \
        b'POST /echo?q=1 content-length= transfer-encoding=chunked\n'


def test_open_fds_counts_this_process() -> None:
    assert open_fds() > 2
