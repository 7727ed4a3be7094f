"""Pool(proxy=...): HTTP forwarding, CONNECT tunnels, https:// proxies and SOCKS5, against real
proxy servers (tinyproxy, squid with Basic authentication and a TLS port, microsocks with and
without a password) started once for the session, and scripted proxies for hostile replies.

Origins are aiohttp.web servers over http and https, on 127.0.0.1 and ::1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import logging
import resource
import ssl
from typing import AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from aiohttp import web

import support
from conftest import IN_CI
from lowhaio import (
    HttpConnectionError,
    HttpError,
    HttpInvalidRequestError,
    HttpProtocolError,
    HttpProxyError,
    HttpTlsError,
    Pool,
    buffered,
    get_nonblocking_sock,
    streamed,
)
from lowhaio_proxy import from_environment

MIB = 1024 * 1024
USER, PASSWORD = 'proxy-user', 'proxy-secret'
SECRETS = (PASSWORD, base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode())


# ---------------------------------------------------------------------------------------------
# The proxy servers: each started once for the session
# ---------------------------------------------------------------------------------------------

def _started(server_class: type, *args: str) -> Iterator[support.ProxyServer]:
    if support.proxy_binary(server_class.NAME) is None:
        if IN_CI:
            pytest.fail(f'{server_class.NAME} is not installed; scripts/test installs it')
        pytest.skip(f'{server_class.NAME} is not installed (scripts/test installs it)')
    with server_class(*args) as server:
        yield server


@pytest.fixture(scope='session')
def tinyproxy() -> Iterator[support.ProxyServer]:
    yield from _started(support.Tinyproxy)


@pytest.fixture(scope='session')
def squid() -> Iterator[support.Squid]:
    yield from _started(support.Squid, USER, PASSWORD)  # type: ignore[misc]


@pytest.fixture(scope='session')
def microsocks() -> Iterator[support.ProxyServer]:
    yield from _started(support.Microsocks)


@pytest.fixture(scope='session')
def microsocks_auth() -> Iterator[support.ProxyServer]:
    yield from _started(support.Microsocks, USER, PASSWORD)


# Every kind of proxy: its name in test ids, and how to get its URL from the servers
PROXY_KINDS: Dict[str, Callable[[Dict[str, support.ProxyServer]], str]] = {
    'http': lambda s: s['tinyproxy'].url,
    'http-auth': lambda s: s['squid'].url,
    'https-auth': lambda s: s['squid'].tls_url,  # type: ignore[attr-defined]
    'socks5': lambda s: s['microsocks'].url,
    'socks5h': lambda s: s['microsocks'].url_with(scheme='socks5h'),
    'socks5-auth': lambda s: s['microsocks_auth'].url,
    'socks5h-auth': lambda s: s['microsocks_auth'].url_with(USER, PASSWORD, scheme='socks5h'),
}


@pytest.fixture
def servers(tinyproxy: support.ProxyServer, squid: support.Squid,
            microsocks: support.ProxyServer,
            microsocks_auth: support.ProxyServer) -> Dict[str, support.ProxyServer]:
    return {'tinyproxy': tinyproxy, 'squid': squid, 'microsocks': microsocks,
            'microsocks_auth': microsocks_auth}


# ---------------------------------------------------------------------------------------------
# Origins
# ---------------------------------------------------------------------------------------------

async def echo(request: web.Request) -> web.Response:
    """What the origin received: method, target, headers, and the address it was reached on."""
    assert request.transport is not None
    return web.json_response({
        'server': request.transport.get_extra_info('sockname')[0],
        'method': request.method, 'path_qs': request.path_qs,
        'headers': {name.lower(): value for name, value in request.headers.items()},
    })


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info['size'])
    response = web.StreamResponse(headers={'content-length': str(size)})
    await response.prepare(request)
    chunk = b'd' * 65536
    for start in range(0, size, len(chunk)):
        await response.write(chunk[:size - start])
    return response


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    total = 0
    while True:
        data = await request.content.readany()
        if not data:
            break
        digest.update(data)
        total += len(data)
    return web.Response(text=f'{total} {digest.hexdigest()}')


def origin_app() -> web.Application:
    app = web.Application(client_max_size=1024 * MIB)
    app.router.add_route('*', '/echo', echo)
    app.router.add_get('/download/{size}', download)
    app.router.add_post('/upload', upload)
    return app


@contextlib.asynccontextmanager
async def origin(scheme: str, host: str = '127.0.0.1') -> AsyncIterator[support.WebServer]:
    async with support.web_server(origin_app(), host=host, tls=scheme == 'https') as server:
        yield server


@contextlib.asynccontextmanager
async def pool(proxy: object, **options: object) -> AsyncIterator:
    request, close = Pool(proxy=proxy, get_ssl_context=support.client_ssl_context, **options)
    try:
        yield request
    finally:
        await close()


def counting_sockets() -> Tuple[Callable, List[object]]:
    """A get_sock for Pool, and the list of the sockets it made: one per connection opened."""
    made: List[object] = []

    def get_sock(family: int):
        sock = get_nonblocking_sock(family)
        made.append(sock)
        return sock
    return get_sock, made


async def get_json(request, url: str, **kwargs: object) -> Dict:
    code, _, body = await request(b'GET', url, **kwargs)
    assert code == b'200'
    return json.loads(await buffered(body))


def rss_mib() -> float:
    with open('/proc/self/statm') as file:
        return int(file.read().split()[1]) * resource.getpagesize() / MIB


async def read_socks_request(conn: support.Connection) -> bytes:
    """The client's SOCKS5 connect request, whole (RFC 1928 §4)."""
    header = await conn.read(4)
    if header[3] == 3:
        length = await conn.read(1)
        return header + length + await conn.read(length[0] + 2)
    return header + await conn.read({1: 4, 4: 16}[header[3]] + 2)


def assert_no_connection(request) -> None:
    """Nothing pooled, nothing in use: a failed set-up left no connection behind."""
    assert all(counts == {'idle': 0, 'in_use': 0, 'waiting': 0}
               for counts in request.status().values())


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def error_texts(exception: BaseException) -> str:
    """The messages and reprs of an exception and its whole cause chain."""
    texts = []
    current: Optional[BaseException] = exception
    while current is not None:
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return '\n'.join(texts)


# ---------------------------------------------------------------------------------------------
# Every kind of proxy, to every kind of origin
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('origin_host', ['127.0.0.1', '::1'])
@pytest.mark.parametrize('origin_scheme', ['http', 'https'])
@pytest.mark.parametrize('kind', list(PROXY_KINDS))
async def test_requests_reach_the_origin_through_every_kind_of_proxy(
        servers, kind: str, origin_scheme: str, origin_host: str) -> None:
    proxy_url = PROXY_KINDS[kind](servers)
    forwarding = kind.startswith('http') and origin_scheme == 'http'
    # tinyproxy closes each connection after forwarding a response, without the "connection:
    # close" that RFC 9112 §9.6 asks for, so reusing it would race with that close: ask for
    # the close instead
    closes = kind == 'http' and forwarding
    headers = ((b'connection', b'close'),) if closes else ()
    get_sock, sockets = counting_sockets()
    async with origin(origin_scheme, origin_host) as server, \
            pool(proxy_url, get_sock=get_sock) as request:
        seen = [await get_json(request, server.url('/echo?a=1'), params=(('b', 'x y'),),
                               headers=headers)
                for _ in range(3)]

        assert [s['path_qs'] for s in seen] == ['/echo?a=1&b=x+y'] * 3
        host = server.url('/').split('//')[1].rstrip('/')
        assert all(s['headers']['host'] == host for s in seen)
        # The proxy's credentials are for the proxy: never inside a tunnel, and squid removes
        # them from what it forwards
        assert all('proxy-authorization' not in s['headers'] for s in seen)

        # One connection served all three, pooled under the proxy's label (no password)
        assert len(sockets) == (3 if closes else 1)
        status = request.status()
        assert list(status.values()) == [{'idle': 0 if closes else 1, 'in_use': 0, 'waiting': 0}]
        (key,) = status
        label = proxy_url.replace(PASSWORD, '***')
        if forwarding:
            assert key == ('http', '*', 0, label)
        else:
            assert key == (origin_scheme, origin_host, server.port, label)
        assert_no_secret(repr(status))


@pytest.mark.parametrize('kind', ['http-auth', 'https-auth'])
async def test_forwarding_shares_connections_across_origins_and_tunnels_do_not(
        servers, kind: str) -> None:
    get_sock, sockets = counting_sockets()
    async with origin('http') as plain_a, origin('http', '::1') as plain_b, \
            origin('https') as tls_a, origin('https', '::1') as tls_b, \
            pool(PROXY_KINDS[kind](servers), get_sock=get_sock) as request:
        for server in (plain_a, plain_b, plain_a, plain_b):
            await get_json(request, server.url('/echo'))
        status = request.status()
        assert list(status.values()) == [{'idle': 1, 'in_use': 0, 'waiting': 0}]
        assert len(sockets) == 1
        for server in (tls_a, tls_b, tls_a):
            await get_json(request, server.url('/echo'))
        assert len(sockets) == 3
        status = request.status()
        assert len(status) == 3
        assert {key[:3] for key in status} == {
            ('http', '*', 0), ('https', '127.0.0.1', tls_a.port), ('https', '::1', tls_b.port)}


async def test_the_forwarded_request_line_is_absolute_and_carries_the_credentials() -> None:
    heads: List[bytes] = []

    async def forwarding_proxy(conn: support.Connection) -> None:
        while True:
            head = await conn.read_head()
            if not head:
                return
            heads.append(head)
            conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')

    async with support.scripted_server(forwarding_proxy) as proxy_server:
        proxy_url = f'http://{USER}:{PASSWORD}@127.0.0.1:{proxy_server.port}'
        async with pool(proxy_url) as request:
            for url, headers in [('http://example.test/a?b=1', ()),
                                 ('http://[::1]:8080/p', ()),
                                 ('http://example.test:81/', ((b'host', b'custom.test'),))]:
                code, _, body = await request(b'GET', url, headers=headers)
                assert (code, await buffered(body)) == (b'200', b'ok')
    authorization = b'proxy-authorization: Basic ' + SECRETS[1].encode() + b'\r\n'
    assert heads == [
        b'GET http://example.test/a?b=1 HTTP/1.1\r\n' + authorization +
        b'host: example.test\r\n\r\n',
        b'GET http://[::1]:8080/p HTTP/1.1\r\n' + authorization + b'host: [::1]:8080\r\n\r\n',
        b'GET http://example.test:81/ HTTP/1.1\r\n' + authorization + b'host: custom.test\r\n\r\n',
    ]
    assert proxy_server.connections == 1


async def test_a_tunnel_is_asked_for_with_connect_and_the_credentials_only() -> None:
    async with origin('https') as server:
        heads: List[bytes] = []

        async def tunnelling_proxy(conn: support.Connection) -> None:
            heads.append(await conn.read_head())
            conn.write(b'HTTP/1.1 200 Connection established\r\n\r\n')
            await conn.relay_to(server.host, server.port)

        async with support.scripted_server(tunnelling_proxy) as proxy_server:
            proxy_url = f'http://{USER}:{PASSWORD}@127.0.0.1:{proxy_server.port}'
            async with pool(proxy_url) as request:
                seen = await get_json(request, server.url('/echo'))
                assert 'proxy-authorization' not in seen['headers']
                await get_json(request, f'https://localhost:{server.port}/echo')
    assert heads == [
        b'CONNECT 127.0.0.1:%d HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n'
        b'proxy-authorization: Basic %s\r\n\r\n' % (server.port, server.port, SECRETS[1].encode()),
        b'CONNECT localhost:%d HTTP/1.1\r\nhost: localhost:%d\r\n'
        b'proxy-authorization: Basic %s\r\n\r\n' % (server.port, server.port, SECRETS[1].encode()),
    ]


@pytest.mark.parametrize('kind', ['http', 'https-auth', 'socks5', 'socks5h'])
async def test_tls_to_the_origin_sends_its_name_and_checks_its_certificate(servers,
                                                                          kind: str) -> None:
    names: List[Optional[str]] = []
    context = support.server_ssl_context()
    context.sni_callback = lambda _sock, name, _context: names.append(name)  # type: ignore
    other_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    support.ca.issue_cert('other.test').configure_cert(other_context)
    async with support.web_server(origin_app(), tls=True, ssl_context=context) as good, \
            support.web_server(origin_app(), tls=True, ssl_context=other_context) as bad, \
            pool(PROXY_KINDS[kind](servers)) as request:
        await get_json(request, f'https://localhost:{good.port}/echo')
        assert names == ['localhost']
        with pytest.raises(HttpTlsError) as raised:
            await request(b'GET', f'https://localhost:{bad.port}/echo')
        assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)


async def test_an_https_proxy_is_verified_as_itself(squid: support.Squid) -> None:
    # The proxy's certificate is checked against the proxy's name, with the pool's context
    async with origin('http') as server:
        async with pool(squid.tls_url.replace('127.0.0.1', 'localhost')) as request:
            await get_json(request, server.url('/echo'))
        request, close = Pool(proxy=squid.tls_url)  # the system's CAs: not our test CA
        try:
            with pytest.raises(HttpTlsError, match='TLS handshake with the proxy') as raised:
                await request(b'GET', server.url('/echo'))
            assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
            assert_no_secret(error_texts(raised.value))
        finally:
            await close()


# ---------------------------------------------------------------------------------------------
# Large bodies both ways, in bounded memory
# ---------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def tls_front(port: int) -> AsyncIterator[str]:
    """An https:// proxy: TLS (certificate from support.ca) in front of the proxy on `port`.

    For large uploads: squid 5.7's own TLS port (GnuTLS) drops some uploads of tens of MiB,
    curl's as well as ours. Yields the URL with squid's credentials."""
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = support.Connection(support.ScriptedServer('127.0.0.1'), reader, writer)
        try:
            await conn.relay_to('127.0.0.1', port)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            conn.close()

    server = await asyncio.start_server(on_connection, '127.0.0.1', 0,
                                        ssl=support.server_ssl_context())
    try:
        yield f'https://{USER}:{PASSWORD}@127.0.0.1:{server.sockets[0].getsockname()[1]}'
    finally:
        server.close()

STREAM_SIZE = 32 * MIB


@pytest.mark.parametrize('kind, origin_scheme', [
    ('http-auth', 'http'), ('http', 'https'), ('https', 'http'), ('https', 'https'),
    ('socks5-auth', 'https'), ('socks5h', 'http'),
])
async def test_large_bodies_stream_both_ways_in_bounded_memory(
        servers, kind: str, origin_scheme: str) -> None:
    chunk = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(STREAM_SIZE // len(chunk)):
        expected.update(chunk)
    peak = 0.0

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        for i in range(STREAM_SIZE // len(chunk)):
            if i % 64 == 0:
                peak = max(peak, rss_mib())
            yield chunk

    async with contextlib.AsyncExitStack() as stack:
        proxy_url = await stack.enter_async_context(tls_front(servers['squid'].port)) \
            if kind == 'https' else PROXY_KINDS[kind](servers)
        server = await stack.enter_async_context(origin(origin_scheme))
        request = await stack.enter_async_context(pool(proxy_url))
        gc.collect()
        before = peak = rss_mib()
        # The proxy's own log, should it end the upload: once (CI, Python 3.12, uvloop, squid)
        # the connection to squid broke mid-upload, and nothing said why
        proxy = servers[{'http': 'tinyproxy', 'socks5-auth': 'microsocks_auth',
                         'socks5h': 'microsocks'}.get(kind, 'squid')]
        try:
            code, _, response = await request(
                b'POST', server.url('/upload'),
                headers=((b'content-length', b'%d' % STREAM_SIZE),), body=body)
            answer = await buffered(response)
        except HttpError as error:
            raise AssertionError('the upload failed (%r); the proxy\'s log:\n%s'
                                 % (error, proxy.log()[-4000:])) from error
        assert (code, answer) == \
            (b'200', b'%d %s' % (STREAM_SIZE, expected.hexdigest().encode())), proxy.log()[-4000:]

        received = 0
        code, _, response = await request(b'GET', server.url(f'/download/{STREAM_SIZE}'))
        async for data in response:
            received += len(data)
            if received % (4 * MIB) < len(data):
                peak = max(peak, rss_mib())
        assert (code, received) == (b'200', STREAM_SIZE)
        assert peak - before < 16, 'a body was held in memory'
        assert list(request.status().values()) == [{'idle': 1, 'in_use': 0, 'waiting': 0}]


# ---------------------------------------------------------------------------------------------
# Refusals by real proxies: clear errors, nothing sent, no secret in them
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('credentials', [(USER, 'wrong-password'), ('nobody', PASSWORD), None])
@pytest.mark.parametrize('scheme', ['http', 'https'])
async def test_squid_refuses_a_tunnel_with_407_without_the_right_password(
        squid: support.Squid, credentials: Optional[Tuple[str, str]], scheme: str) -> None:
    proxy_url = squid.url_with(*credentials) if credentials else squid.url_with()
    async with origin('https') as server:
        for proxy in (proxy_url, proxy_url.replace('http://', 'https://').replace(
                f':{squid.port}', f':{squid.tls_port}')):
            async with pool(proxy if scheme == 'https' else proxy_url) as request:
                for _ in range(2):  # the refused tunnel was closed, not pooled
                    with pytest.raises(HttpProxyError) as raised:
                        await request(b'GET', server.url('/echo'))
                    assert isinstance(raised.value, HttpConnectionError)
                    assert raised.value.code == b'407'
                    assert '407' in str(raised.value)
                    assert 'wrong-password' not in error_texts(raised.value)
                    assert_no_secret(error_texts(raised.value))
                assert_no_connection(request)


@pytest.mark.parametrize('credentials', [(USER, 'wrong-password'), None])
async def test_a_forwarded_request_gets_the_proxys_407_as_its_response(
        squid: support.Squid, credentials: Optional[Tuple[str, str]]) -> None:
    # Forwarding sends the request itself to the proxy: the 407 is its response, as in every
    # other client, with the proxy's challenge
    async with origin('http') as server, \
            pool(squid.url_with(*credentials) if credentials else squid.url_with()) as request:
        code, headers, body = await request(b'GET', server.url('/echo'))
        await buffered(body)
        assert code == b'407'
        assert dict(headers)[b'proxy-authenticate'].startswith(b'Basic')


@pytest.mark.parametrize('kind', ['http', 'http-auth', 'socks5', 'socks5h-auth'])
async def test_an_origin_that_refuses_is_the_proxys_error(servers, kind: str) -> None:
    async with origin('https') as server:
        closed_port = server.port
    async with pool(PROXY_KINDS[kind](servers)) as request:
        with pytest.raises(HttpProxyError) as raised:
            await request(b'GET', f'https://127.0.0.1:{closed_port}/')
        if kind.startswith('socks'):
            assert raised.value.code is None
            assert raised.value.socks_reply is not None and raised.value.socks_reply != 0
        else:
            assert raised.value.code in (b'500', b'502', b'503')
        assert_no_connection(request)


@pytest.mark.parametrize('credentials', [(USER, 'wrong-password'), None])
@pytest.mark.parametrize('scheme', ['socks5', 'socks5h'])
async def test_socks_refuses_without_the_right_password(
        microsocks_auth: support.ProxyServer, credentials: Optional[Tuple[str, str]],
        scheme: str) -> None:
    args = credentials or (None, None)
    async with origin('http') as server, \
            pool(microsocks_auth.url_with(*args, scheme=scheme)) as request:
        with pytest.raises(HttpProxyError,
                           match='rejected the username' if credentials else 'none of') as raised:
            await request(b'GET', server.url('/echo'))
        assert 'wrong-password' not in error_texts(raised.value)


async def test_a_proxy_that_is_not_listening_is_a_connection_error() -> None:
    async with support.scripted_server(support.responding()) as closed:
        port = closed.port
    for scheme in ('http', 'https', 'socks5', 'socks5h'):
        async with pool(f'{scheme}://{USER}:{PASSWORD}@127.0.0.1:{port}') as request:
            with pytest.raises(HttpConnectionError, match='proxy') as raised:
                await request(b'GET', 'https://127.0.0.1:8443/')
            assert not isinstance(raised.value, HttpProxyError)
            assert_no_secret(error_texts(raised.value))


# ---------------------------------------------------------------------------------------------
# Hostile and broken proxies, scripted byte by byte
# ---------------------------------------------------------------------------------------------

CONNECT_REPLIES = {
    'garbage instead of a status line': (b'SSH-2.0-OpenSSH\r\n\r\n', HttpProtocolError, None),
    'HTTP/2 status line': (b'HTTP/2 200\r\n\r\n', HttpProtocolError, None),
    'bare LF': (b'HTTP/1.1 200 OK\nx: y\r\n\r\n', HttpProtocolError, None),
    'obs-fold': (b'HTTP/1.1 200 OK\r\nx: y\r\n z\r\n\r\n', HttpProtocolError, None),
    'a head without end': (b'HTTP/1.1 200 OK\r\n' + b'x: y\r\n' * 10000, HttpError, None),
    '200 with a body': (b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello', None, None),
    '200 then garbage': (b'HTTP/1.1 200 OK\r\n\r\n\x00\x01garbage', None, None),
    '407 with a body': (b'HTTP/1.1 407 Proxy Authentication Required\r\n'
                        b'proxy-authenticate: Basic realm="x"\r\ncontent-length: 4\r\n\r\nnope',
                        None, b'407'),
    '403 chunked': (b'HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n'
                    b'4\r\nnope\r\n0\r\n\r\n', None, b'403'),
    '502 until close': (b'HTTP/1.1 502 Bad Gateway\r\n\r\n' + b'x' * 1000, None, b'502'),
    '502 with a huge body': (b'HTTP/1.1 502 Bad Gateway\r\ncontent-length: 100000000\r\n\r\n' +
                             b'x' * (1024 * 1024), None, b'502'),
    '100 then 407': (b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 407 No\r\ncontent-length: 0\r\n\r\n',
                     None, b'407'),
    'HTTP/1.0 503': (b'HTTP/1.0 503 Service Unavailable\r\n\r\n', None, b'503'),
}


@pytest.mark.parametrize('then', ['close', 'keep open'])
@pytest.mark.parametrize('how', ['whole', 'byte by byte'])
@pytest.mark.parametrize('case', list(CONNECT_REPLIES))
async def test_a_hostile_connect_reply_is_a_clear_proxy_error(case: str, how: str,
                                                              then: str) -> None:
    reply, cause, code = CONNECT_REPLIES[case]
    if how == 'byte by byte' and len(reply) > 2000:
        return  # the same bytes, only slower

    async def proxy(conn: support.Connection) -> None:
        await conn.read_head()
        if how == 'whole':
            conn.write(reply)
            await conn.drain()
        else:
            await conn.write_slowly(reply, chunk_size=7, delay=0.001)
        if then == 'keep open':
            # Until the client closes: it must, having refused the reply
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(conn.read_until_eof(), 5)

    baseline = support.open_fds()
    async with support.scripted_server(proxy) as proxy_server:
        listening = support.open_fds()
        proxy_url = f'http://{USER}:{PASSWORD}@127.0.0.1:{proxy_server.port}'
        async with pool(proxy_url, connect_timeout=3) as request:
            with pytest.raises(HttpProxyError) as raised:
                await request(b'GET', 'https://origin.test/')
            assert raised.value.code == code
            if cause is not None:
                assert isinstance(raised.value.__cause__, cause)
            elif code is None:
                assert 'before the TLS handshake' in str(raised.value)
            assert_no_secret(error_texts(raised.value))
            assert_no_connection(request)
        assert await support.wait_for_fds(listening) == listening
    assert support.open_fds() <= baseline + 1


@pytest.mark.parametrize('sent, message, code', [
    (b'', 'closed the connection during the CONNECT response head', None),
    (b'HTTP/1.1 20', 'closed the connection during the CONNECT response head', None),
    (b'HTTP/1.1 200 OK\r\nx: y\r\n', 'closed the connection during the CONNECT', None),
    (b'HTTP/1.1 407 No\r\ncontent-length: 10\r\n\r\nabc', 'refused to CONNECT', b'407'),
], ids=['nothing', 'part of the status line', 'part of the head', 'part of a 407 body'])
@pytest.mark.parametrize('how', ['FIN', 'RST'])
async def test_a_proxy_closing_mid_connect_is_a_clear_proxy_error(
        sent: bytes, message: str, code: Optional[bytes], how: str) -> None:
    async def proxy(conn: support.Connection) -> None:
        await conn.read_head()
        conn.write(sent)
        await conn.drain()
        conn.close() if how == 'FIN' else conn.reset()

    async with support.scripted_server(proxy) as proxy_server:
        async with pool(f'http://127.0.0.1:{proxy_server.port}', connect_timeout=5) as request:
            for _ in range(5):  # timing-dependent: the close may come with the bytes or after
                with pytest.raises(HttpProxyError, match=message) as raised:
                    await request(b'GET', 'https://origin.test/')
                assert raised.value.code == code
            assert_no_connection(request)


# SOCKS5 replies: (after the greeting, after the connect request) or a handshake cut short
SOCKS_REPLIES = {
    'greeting reply version 4': (b'\x04\x00', None, 'version 4'),
    'no acceptable method': (b'\x05\xff', None, 'none of the offered'),
    'password asked without one': (b'\x05\x02', None, 'none of the offered'),
    'unknown method': (b'\x05\x80', None, 'none of the offered'),
    'connect reply version 4': (b'\x05\x00', b'\x04\x00\x00\x01' + bytes(6), 'version 4'),
    'general failure': (b'\x05\x00', b'\x05\x01\x00\x01' + bytes(6), 'general SOCKS'),
    'not allowed': (b'\x05\x00', b'\x05\x02\x00\x01' + bytes(6), 'not allowed'),
    'refused': (b'\x05\x00', b'\x05\x05\x00\x01' + bytes(6), 'connection refused'),
    'unknown reply': (b'\x05\x00', b'\x05\x42\x00\x01' + bytes(6), 'unknown reply code 66'),
    'reserved byte set': (b'\x05\x00', b'\x05\x00\x01\x01' + bytes(6), 'malformed'),
    'bad address type': (b'\x05\x00', b'\x05\x00\x00\x09' + bytes(6), 'malformed'),
    'close after greeting': (b'', None, 'closed the connection'),
    'close mid-greeting reply': (b'\x05', None, 'closed the connection'),
    'close mid-connect reply': (b'\x05\x00', b'\x05\x00\x00\x04' + bytes(7),
                                'closed the connection'),
    'close mid-bound name': (b'\x05\x00', b'\x05\x00\x00\x03\x20abc', 'closed the connection'),
}


@pytest.mark.parametrize('origin_url', ['http://origin.test/', 'https://[::1]:8443/'])
@pytest.mark.parametrize('case', list(SOCKS_REPLIES))
async def test_a_hostile_socks_reply_is_a_clear_proxy_error(case: str, origin_url: str) -> None:
    greeting_reply, connect_reply, message = SOCKS_REPLIES[case]

    async def proxy(conn: support.Connection) -> None:
        greeting = await conn.read(2)
        await conn.read(greeting[1])
        conn.write(greeting_reply)
        if connect_reply is not None:
            header = await conn.read(4)
            length = {1: 4, 4: 16}.get(header[3]) or (await conn.read(1))[0]
            await conn.read(length + 2)
            conn.write(connect_reply)
        await conn.drain()

    async with support.scripted_server(proxy) as proxy_server:
        async with pool(f'socks5h://127.0.0.1:{proxy_server.port}') as request:
            with pytest.raises(HttpProxyError, match=message) as raised:
                await request(b'GET', origin_url)
            assert raised.value.code is None
            assert_no_connection(request)
        assert proxy_server.errors == []


@pytest.mark.parametrize('address_type', ['IPv4', 'IPv6', 'name'])
async def test_bytes_after_a_socks_reply_belong_to_the_tunnel(address_type: str) -> None:
    bound = {'IPv4': b'\x01' + bytes(4), 'IPv6': b'\x04' + bytes(16),
             'name': b'\x03\x09proxy.lan'}[address_type]
    requests: List[bytes] = []

    async def proxy(conn: support.Connection) -> None:
        greeting = await conn.read(2)
        await conn.read(greeting[1])
        conn.write(b'\x05\x00')
        requests.append(await read_socks_request(conn))
        # The reply and the origin's response in one write, before the request arrives
        conn.write(b'\x05\x00\x00' + bound + b'\x1f\x90' +
                   b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi')
        await conn.read_head()

    async with support.scripted_server(proxy) as proxy_server:
        async with pool(f'socks5h://127.0.0.1:{proxy_server.port}') as request:
            code, _, body = await request(b'GET', 'http://origin.test:8080/')
            assert (code, await buffered(body)) == (b'200', b'hi')
    assert requests == [b'\x05\x01\x00\x03\x0borigin.test\x1f\x90']


async def test_socks5_sends_addresses_and_socks5h_sends_names() -> None:
    requests: List[bytes] = []

    async def proxy(conn: support.Connection) -> None:
        greeting = await conn.read(2)
        await conn.read(greeting[1])
        conn.write(b'\x05\x00')
        requests.append(await read_socks_request(conn))
        conn.write(b'\x05\x00\x00\x01' + bytes(6) + b'HTTP/1.1 204 No Content\r\n\r\n')
        await conn.read_head()

    async with support.scripted_server(proxy) as proxy_server:
        for scheme in ('socks5', 'socks5h'):
            async with pool(f'{scheme}://127.0.0.1:{proxy_server.port}') as request:
                for url in ('http://localhost:80/', 'http://10.1.2.3:81/', 'http://[fd00::1]/'):
                    code, _, body = await request(b'GET', url)
                    assert code == b'204'
    # socks5://: localhost resolved here (to 127.0.0.1 or ::1), IP literals as they are
    assert requests[0] in (b'\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50',
                           b'\x05\x01\x00\x04' + bytes(15) + b'\x01\x00\x50')
    assert requests[1:] == [
        b'\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x51',
        b'\x05\x01\x00\x04\xfd' + bytes(14) + b'\x01\x00\x50',
        # socks5h://: names for the proxy to resolve
        b'\x05\x01\x00\x03\x09localhost\x00\x50',
        b'\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x51',
        b'\x05\x01\x00\x04\xfd' + bytes(14) + b'\x01\x00\x50',
    ]


async def test_socks5_tries_the_origins_next_address_when_one_is_unreachable(
        microsocks: support.ProxyServer) -> None:
    # localhost is ::1 then 127.0.0.1; the origin listens on 127.0.0.1 only
    async with origin('http') as server, pool(microsocks.url) as request:
        seen = await get_json(request, f'http://localhost:{server.port}/echo')
        assert seen['path_qs'] == '/echo'


@pytest.mark.parametrize('scheme', ['http', 'socks5', 'socks5h'])
async def test_a_proxy_on_an_ipv6_address(scheme: str) -> None:
    async with origin('https') as server:
        async def proxy(conn: support.Connection) -> None:
            if scheme == 'http':
                await conn.read_head()
                conn.write(b'HTTP/1.1 200 Connection established\r\n\r\n')
            else:
                greeting = await conn.read(2)
                await conn.read(greeting[1])
                conn.write(b'\x05\x00')
                await read_socks_request(conn)
                conn.write(b'\x05\x00\x00\x04' + bytes(18))
            await conn.relay_to(server.host, server.port)

        async with support.scripted_server(proxy, host='::1') as proxy_server:
            proxy_url = f'{scheme}://{USER}:{PASSWORD}@[::1]:{proxy_server.port}'
            async with pool(proxy_url) as request:
                await get_json(request, server.url('/echo'))
                assert set(request.status()) == {
                    ('https', '127.0.0.1', server.port,
                     f'{scheme}://{USER}:***@[::1]:{proxy_server.port}')}


@pytest.mark.parametrize('stall', ['CONNECT reply', 'origin TLS', 'SOCKS greeting',
                                   'SOCKS connect reply', 'proxy TLS'])
async def test_connect_timeout_covers_the_proxy_handshake_and_the_origin_tls(stall: str) -> None:
    async def proxy(conn: support.Connection) -> None:
        if stall == 'origin TLS':
            await conn.read_head()
            conn.write(b'HTTP/1.1 200 OK\r\n\r\n')
        elif stall == 'SOCKS connect reply':
            await conn.read(3)
            conn.write(b'\x05\x00')
        await asyncio.sleep(10)

    scheme = {'CONNECT reply': 'http', 'origin TLS': 'http', 'proxy TLS': 'https'}.get(
        stall, 'socks5h')
    async with support.scripted_server(proxy) as proxy_server:
        async with pool(f'{scheme}://127.0.0.1:{proxy_server.port}',
                        connect_timeout=0.5) as request:
            started = asyncio.get_running_loop().time()
            with pytest.raises(HttpConnectionError):
                await request(b'GET', 'https://origin.test/')
            elapsed = asyncio.get_running_loop().time() - started
            assert 0.4 < elapsed < 4
            assert_no_connection(request)


# ---------------------------------------------------------------------------------------------
# Pool guarantees through a proxy: stale connections, cancellation, descriptors, DNS
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['http', 'socks5'])
async def test_a_tunnel_the_proxy_closed_while_idle_is_replaced(kind: str) -> None:
    async with origin('http') as server:
        async def closing_proxy(conn: support.Connection) -> None:
            if kind == 'http':
                head = await conn.read_head()
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(head.replace(b'http://%s:%d' % (server.host.encode(), server.port),
                                          b''))
                await writer.drain()
                conn.write(await reader.readuntil(b'\r\n\r\n') + await reader.read(10000))
            else:
                greeting = await conn.read(2)
                await conn.read(greeting[1])
                conn.write(b'\x05\x00')
                await conn.read(10)
                conn.write(b'\x05\x00\x00\x01' + bytes(6))
                head = await conn.read_head()
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(head)
                await writer.drain()
                conn.write(await reader.readuntil(b'\r\n\r\n') + await reader.read(10000))
            writer.close()
            await conn.drain()
            await asyncio.sleep(0.05)
            conn.close()  # the proxy drops the connection once idle

        async with support.scripted_server(closing_proxy) as proxy_server:
            async with pool(f'{kind}://127.0.0.1:{proxy_server.port}') as request:
                for _ in range(3):
                    await get_json(request, server.url('/echo'))
                    await asyncio.sleep(0.2)
            assert proxy_server.connections == 3
            assert proxy_server.errors == []


@pytest.mark.parametrize('kind', ['http', 'https-auth', 'socks5h-auth'])
async def test_cancelling_at_any_moment_leaks_nothing(servers, kind: str) -> None:
    loop = asyncio.get_running_loop()
    async with origin('https') as server, pool(PROXY_KINDS[kind](servers)) as request:
        await get_json(request, server.url('/echo'))  # timing of a whole request
        baseline = support.open_fds()
        started = loop.time()
        await get_json(request, server.url('/echo'))
        whole = loop.time() - started
        cancelled = 0
        for attempt in range(20):
            # Each attempt opens a new tunnel ("connection: close" ends the last one) and is
            # cancelled at another moment: proxy connect, handshake, origin TLS, response
            task = asyncio.ensure_future(
                request(b'GET', server.url('/echo'), headers=((b'connection', b'close'),)))
            await asyncio.sleep(whole * 4 * attempt / 20)
            if not task.done():
                task.cancel()
                cancelled += 1
            with contextlib.suppress(asyncio.CancelledError):
                _, _, body = await task
                await buffered(body)
            assert all(counts['in_use'] == 0 for counts in request.status().values())
        assert cancelled > 0
    assert await support.wait_for_fds(baseline) <= baseline


async def test_request_status_counts_connections_in_use_through_a_proxy(
        tinyproxy: support.ProxyServer) -> None:
    async with origin('https') as server, pool(tinyproxy.url) as request:
        _, _, body = await request(b'GET', server.url('/download/1048576'))
        key = ('https', '127.0.0.1', server.port, tinyproxy.url)
        assert request.status() == {key: {'idle': 0, 'in_use': 1, 'waiting': 0}}
        assert len(await buffered(body)) == MIB
        assert request.status() == {key: {'idle': 1, 'in_use': 0, 'waiting': 0}}


async def test_happy_eyeballs_to_a_proxy_by_name(tinyproxy: support.ProxyServer) -> None:
    # localhost resolves to ::1 first, where nothing listens; 127.0.0.1 is tried next
    async with origin('https') as server, \
            pool(tinyproxy.url_with(host='localhost'), happy_eyeballs_delay=5) as request:
        started = asyncio.get_running_loop().time()
        await get_json(request, server.url('/echo'))
        assert asyncio.get_running_loop().time() - started < 4


@contextlib.asynccontextmanager
async def socks_relays_on(hosts: Tuple[str, ...]) -> AsyncIterator[Tuple[int, Dict[str, int]]]:
    """SOCKS5 proxies (no authentication, relaying for real) on one port of each of `hosts`:
    the port, and how many connections each host's proxy took."""
    counts = {host: 0 for host in hosts}

    def relay_for(host: str) -> Callable:
        async def handler(conn: support.Connection) -> None:
            counts[host] += 1
            greeting = await conn.read(2)
            await conn.read(greeting[1])
            conn.write(b'\x05\x00')
            header = await conn.read(4)
            length = {1: 4, 4: 16}.get(header[3]) or (await conn.read(1))[0]
            address = await conn.read(length + 2)
            target = '.'.join(str(b) for b in address[:4]) if header[3] == 1 else \
                address[:-2].decode()
            conn.write(b'\x05\x00\x00\x01' + bytes(6))
            await conn.relay_to(target, int.from_bytes(address[-2:], 'big'))
        return handler

    for _attempt in range(10):
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(
                support.scripted_server(relay_for(hosts[0]), host=hosts[0]))
            try:
                for host in hosts[1:]:
                    server = await asyncio.start_server(
                        lambda r, w, h=host: _serve_scripted(relay_for(h), r, w),
                        host, first.port)
                    stack.push_async_callback(server.wait_closed)
                    stack.callback(server.close)
            except OSError:
                continue
            yield first.port, counts
            return
    raise RuntimeError('no port free on all of %s' % (hosts,))


async def _serve_scripted(handler: Callable, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
    server = support.ScriptedServer(writer.get_extra_info('sockname')[0])
    conn = support.Connection(server, reader, writer)
    try:
        await handler(conn)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        conn.close()


async def test_connections_follow_the_proxys_dns_answer() -> None:
    async with support.dns_server(ttl=1) as dns, origin('http') as server, \
            socks_relays_on(('127.0.0.2', '127.0.0.3')) as (port, counts):
        dns.set('proxy.test', ['127.0.0.2'])
        async with pool(f'socks5h://proxy.test:{port}',
                        get_dns_resolver=dns.get_dns_resolver) as request:
            for _ in range(3):
                await get_json(request, server.url('/echo'))
            assert counts == {'127.0.0.2': 1, '127.0.0.3': 0}
            dns.set('proxy.test', ['127.0.0.3'])
            await asyncio.sleep(1.2)
            await get_json(request, server.url('/echo'))
            assert counts == {'127.0.0.2': 1, '127.0.0.3': 1}
            assert list(request.status().values()) == [{'idle': 1, 'in_use': 0, 'waiting': 0}]


async def test_socks5_connections_follow_the_origins_dns_answer(
        microsocks: support.ProxyServer) -> None:
    async with support.dns_server(ttl=1) as dns, \
            support.web_server(origin_app(), host='127.0.0.2') as first:
        async with support.web_server(origin_app(), host='127.0.0.3', port=first.port):
            dns.set('origin.test', ['127.0.0.2'])
            dns.set('proxy.test', ['127.0.0.1'])
            url = f'http://origin.test:{first.port}/echo'
            get_sock, sockets = counting_sockets()
            async with pool(microsocks.url_with(host='proxy.test'), get_sock=get_sock,
                            get_dns_resolver=dns.get_dns_resolver) as request:
                served = [(await get_json(request, url))['server'] for _ in range(2)]
                assert (served, len(sockets)) == (['127.0.0.2'] * 2, 1)
                dns.set('origin.test', ['127.0.0.3'])
                await asyncio.sleep(1.2)
                assert (await get_json(request, url))['server'] == '127.0.0.3'
                # The connection to the old address was dropped for one to the new
                assert len(sockets) == 2
                assert list(request.status().values()) == \
                    [{'idle': 1, 'in_use': 0, 'waiting': 0}]


# ---------------------------------------------------------------------------------------------
# Choosing the proxy, and credentials that never leak
# ---------------------------------------------------------------------------------------------

async def test_a_function_chooses_a_proxy_per_origin(servers) -> None:
    asked: List[Tuple[str, str, int]] = []

    def choose(scheme: str, host: str, port: int) -> Optional[str]:
        asked.append((scheme, host, port))
        return None if host == '::1' else servers['microsocks'].url

    async with origin('http') as v4, origin('http', '::1') as v6, pool(choose) as request:
        await get_json(request, v4.url('/echo'))
        await get_json(request, v6.url('/echo'))
        await get_json(request, v4.url('/echo'))
        assert set(request.status()) == {
            ('http', '127.0.0.1', v4.port, servers['microsocks'].url),
            ('http', '::1', v6.port),
        }
    assert asked == [('http', '127.0.0.1', v4.port), ('http', '::1', v6.port),
                     ('http', '127.0.0.1', v4.port)]


async def test_from_environment_drives_a_pool(servers) -> None:
    async with origin('http') as plain, origin('https') as tls:
        proxy = from_environment({'http_proxy': servers['tinyproxy'].url,
                                  'HTTPS_PROXY': servers['microsocks'].url,
                                  'no_proxy': f'[::1],127.0.0.1:{tls.port}'})
        async with pool(proxy) as request:
            await get_json(request, plain.url('/echo'))
            await get_json(request, tls.url('/echo'))
            assert set(request.status()) == {('http', '*', 0, servers['tinyproxy'].url),
                                             ('https', '127.0.0.1', tls.port)}


@pytest.mark.parametrize('url, message', [
    ('ftp://u:proxy-secret@127.0.0.1:21', 'scheme'),
    ('http://u:proxy-secret@127.0.0.1:99999', 'Invalid proxy URL'),
    ('http://u:proxy-secret@127.0.0.1:x', 'Invalid proxy URL'),
    ('http://u:proxy-secret@[::1', 'Invalid proxy URL'),
    ('http://u:proxy-secret@/', 'no valid host'),
    ('http://u:proxy-secret@127.0.0.1/path', 'path'),
    ('http://u:proxy-secret@127.0.0.1:0', 'port 0'),
    ('socks5://u:@127.0.0.1', '1 to 255 bytes'),
    ('socks5h://u:' + 'p' * 256 + '@127.0.0.1', '1 to 255 bytes'),
    ('u:proxy-secret@127.0.0.1:3128', 'scheme'),
    ('//u:proxy-secret@127.0.0.1:3128', 'scheme'),
])
async def test_an_invalid_proxy_url_is_refused_without_showing_the_password(
        url: str, message: str) -> None:
    with pytest.raises(HttpInvalidRequestError, match=message) as raised:
        Pool(proxy=url)
    assert 'proxy-secret' not in error_texts(raised.value)
    assert 'p' * 256 not in error_texts(raised.value)

    # The same from a function: raised by the request, before connecting
    async with pool(lambda *_: url) as request:
        with pytest.raises(HttpInvalidRequestError, match=message) as raised:
            await request(b'GET', 'http://origin.test/')
        assert 'proxy-secret' not in error_texts(raised.value)


async def test_a_proxy_of_another_type_is_refused() -> None:
    with pytest.raises(HttpInvalidRequestError, match='proxy must be'):
        Pool(proxy=8080)


async def test_credentials_are_percent_decoded(microsocks_auth: support.ProxyServer) -> None:
    # microsocks_auth's user and password have no special characters: a percent-encoded
    # form of them must work, and a wrong decoding would not
    encoded_user = ''.join('%%%02X' % byte for byte in USER.encode())
    async with origin('http') as server, \
            pool(f'socks5://{encoded_user}:{PASSWORD}@127.0.0.1:{microsocks_auth.port}') \
            as request:
        await get_json(request, server.url('/echo'))


async def test_credentials_never_reach_the_logs(servers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with origin('http') as plain, origin('https') as tls:
        for kind in ('http-auth', 'socks5h-auth'):
            async with pool(PROXY_KINDS[kind](servers)) as request:
                await get_json(request, plain.url('/echo'))
                await get_json(request, tls.url('/echo'))
    assert 'Connecting' in caplog.text
    assert_no_secret(caplog.text)


async def test_the_no_proxy_path_is_unchanged() -> None:
    # proxy=None, the default, connects directly, keyed by (scheme, host, port) as before
    async with origin('http') as server, pool(None) as request:
        await get_json(request, server.url('/echo'))
        assert set(request.status()) == {('http', '127.0.0.1', server.port)}


async def test_a_send_header_hook_cannot_be_forwarded() -> None:
    async def send_header(*args: object) -> None:
        raise AssertionError('not reached')

    request, close = Pool(proxy='http://127.0.0.1:9', send_header=send_header)
    try:
        with pytest.raises(HttpInvalidRequestError, match='send_header'):
            await request(b'GET', 'http://origin.test/', body=streamed(b''))
    finally:
        await close()
