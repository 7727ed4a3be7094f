"""lowhaio_httpx: `httpx.AsyncClient(transport=LowhaioTransport())` behaves as httpx does, used
through httpx's public API only, against uvicorn (a Starlette app) and aiohttp.web, and against
scripted servers for every error httpx can raise."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import socket
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional

import h11
import httpx
import pytest
import support
from aiohttp import web
from asgi_servers import uvicorn_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from test_lowhaio_pool import assert_black_holed, black_hole

import lowhaio
from lowhaio_httpx import LowhaioTransport

SERVERS = ('uvicorn', 'aiohttp')
CHUNK = 65536
BIG = 8 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The same small application twice: Starlette under uvicorn, and aiohttp.web
# ---------------------------------------------------------------------------------------------

def describe(method: str, raw_path: str, headers: List[List[str]], body: bytes) -> Dict[str, Any]:
    return {'method': method, 'path': raw_path, 'headers': headers, 'length': len(body),
            'sha256': hashlib.sha256(body).hexdigest()}


GZIPPED = gzip.compress(b'decoded by httpx ' * 100)


def starlette_app() -> Starlette:
    async def echo(request: Request) -> Response:
        raw_path = request.scope['raw_path'].decode() + (
            '?' + request.scope['query_string'].decode() if request.scope['query_string'] else '')
        headers = [[k.decode('latin-1'), v.decode('latin-1')]
                   for k, v in request.scope['headers']]
        return JSONResponse(describe(request.method, raw_path, headers, await request.body()))

    async def many_bytes(request: Request) -> Response:
        size = int(request.path_params['size'])

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, size, CHUNK):
                yield b'x' * min(CHUNK, size - start)
        return StreamingResponse(chunks(), headers={'content-length': str(size)})

    async def peer(request: Request) -> Response:
        assert request.client is not None
        return JSONResponse({'port': request.client.port})

    async def status(request: Request) -> Response:
        return Response(b'status', status_code=int(request.path_params['code']))

    async def redirect(request: Request) -> Response:
        return RedirectResponse('/echo?redirected=1', status_code=302)

    async def set_cookie(request: Request) -> Response:
        response = Response(b'cookie set')
        response.set_cookie('flavour', 'ginger')
        return response

    async def gzipped(request: Request) -> Response:
        return Response(GZIPPED, headers={'content-encoding': 'gzip'})

    async def reason(request: Request) -> Response:
        return Response(b'', status_code=299)

    methods = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH']
    return Starlette(routes=[
        Route('/echo', echo, methods=methods),
        Route('/bytes/{size}', many_bytes),
        Route('/peer', peer),
        Route('/status/{code}', status, methods=methods),
        Route('/redirect', redirect, methods=methods),
        Route('/set-cookie', set_cookie),
        Route('/gzip', gzipped),
        Route('/unknown-status', reason),
    ])


def aiohttp_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        headers = [[k.lower(), v] for k, v in request.headers.items()]
        return web.json_response(describe(request.method, request.raw_path, headers,
                                          await request.read()))

    async def many_bytes(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info['size'])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        for start in range(0, size, CHUNK):
            await response.write(b'x' * min(CHUNK, size - start))
        await response.write_eof()
        return response

    async def peer(request: web.Request) -> web.Response:
        return web.json_response({'port': request.transport.get_extra_info('peername')[1]})

    async def status(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'status', status=int(request.match_info['code']))

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPFound('/echo?redirected=1')

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(body=b'cookie set')
        response.set_cookie('flavour', 'ginger')
        return response

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=GZIPPED, headers={'content-encoding': 'gzip'})

    async def reason(request: web.Request) -> web.Response:
        return web.Response(body=b'', status=299)

    app = web.Application(client_max_size=1024 ** 3)
    app.add_routes([
        web.route('*', '/echo', echo),
        web.get('/bytes/{size}', many_bytes),
        web.get('/peer', peer),
        web.route('*', '/status/{code}', status),
        web.route('*', '/redirect', redirect),
        web.get('/set-cookie', set_cookie),
        web.get('/gzip', gzipped),
        web.get('/unknown-status', reason),
    ])
    return app


@contextlib.asynccontextmanager
async def serving(kind: str) -> AsyncIterator[Callable[[str], str]]:
    """Start the application under `kind`; yield a function from path to URL."""
    if kind == 'uvicorn':
        async with uvicorn_server(starlette_app(), lifespan='off') as server:
            yield server.url
    else:
        async with support.web_server(aiohttp_app()) as server:
            yield server.url


def lowhaio_client(**kwargs: Any) -> httpx.AsyncClient:
    pool_options = kwargs.pop('pool_options', {})
    return httpx.AsyncClient(transport=LowhaioTransport(**pool_options), **kwargs)


async def chunks_of(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


# ---------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------

BODIES = {
    'none': None,
    'empty bytes': b'',
    'small bytes': b'hello',
    'large bytes': bytes(range(256)) * 4096,
}


@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('method', ['GET', 'POST', 'PUT'])
@pytest.mark.parametrize('body_kind', list(BODIES))
async def test_request_method_path_headers_and_bytes_body_arrive(
        server: str, method: str, body_kind: str) -> None:
    content = BODIES[body_kind]
    async with serving(server) as url, lowhaio_client() as client:
        response = await client.request(method, url('/echo?a=1&b=%C3%A9'), content=content,
                                        headers={'x-custom': 'value'})
    assert response.status_code == 200
    seen = response.json()
    assert seen['method'] == method
    assert seen['path'] == '/echo?a=1&b=%C3%A9'
    headers = dict(seen['headers'])
    assert headers['x-custom'] == 'value'
    assert headers['host'] == url('/').split('/')[2]
    assert seen['length'] == len(content or b'')
    assert seen['sha256'] == hashlib.sha256(content or b'').hexdigest()


@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('framing', ['content-length', 'chunked'])
@pytest.mark.parametrize('chunk_size', [1, CHUNK])
async def test_async_iterator_content_streams(server: str, framing: str, chunk_size: int) -> None:
    data = bytes(range(256)) * (64 if chunk_size > 1 else 1)
    headers = {'content-length': str(len(data))} if framing == 'content-length' else {}
    async with serving(server) as url, lowhaio_client() as client:
        response = await client.post(url('/echo'), content=chunks_of(data, chunk_size),
                                     headers=headers)
    seen = response.json()
    assert seen['sha256'] == hashlib.sha256(data).hexdigest()
    sent = dict(seen['headers'])
    if framing == 'chunked':
        assert sent['transfer-encoding'] == 'chunked' and 'content-length' not in sent
    else:
        assert sent['content-length'] == str(len(data)) and 'transfer-encoding' not in sent


@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('reader', ['aiter_bytes', 'aiter_raw', 'aread'])
async def test_response_streams(server: str, reader: str) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        async with client.stream('GET', url('/bytes/%d' % BIG)) as response:
            assert response.status_code == 200
            assert int(response.headers['content-length']) == BIG
            if reader == 'aread':
                pieces = [await response.aread()]
            else:
                pieces = [chunk async for chunk in getattr(response, reader)()]
    assert sum(map(len, pieces)) == BIG
    assert set(b''.join(pieces)) == {ord('x')}
    if reader != 'aread':
        assert len(pieces) > 1, 'the body arrived in pieces, as it was read'


@pytest.mark.parametrize('server', SERVERS)
async def test_reason_phrase_and_http_version_are_filled_in(server: str) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        ok = await client.get(url('/echo'))
        unknown = await client.get(url('/unknown-status'))
    assert ok.http_version == 'HTTP/1.1'
    assert ok.extensions['http_version'] == b'HTTP/1.1'
    assert ok.reason_phrase == 'OK' and ok.extensions['reason_phrase'] == b'OK'
    assert unknown.status_code == 299 and unknown.extensions['reason_phrase'] == b''


@pytest.mark.parametrize('status_line', [
    b'HTTP/1.1 200 Very Fine', b'HTTP/1.0 200 OK', b'HTTP/1.1 404 ', b'HTTP/1.1 418 I\'m a teapot',
    b'HTTP/1.0 503 Busy \t now',
])
@pytest.mark.parametrize('transport', ['lowhaio', 'httpx'])
async def test_the_status_line_is_reported_as_the_server_sent_it(
        transport: str, status_line: bytes) -> None:
    """The reason phrase and version that httpx reports are the server's, as with httpx's own
    transport: both transports are asked, and must agree."""
    async def handler(conn: support.Connection) -> None:
        await conn.read_request()
        conn.write(status_line + b'\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok')
        await conn.drain()
        conn.close()

    async with support.scripted_server(handler) as server:
        client = httpx.AsyncClient(transport=LowhaioTransport()) if transport == 'lowhaio' \
            else httpx.AsyncClient()
        async with client:
            response = await client.get(server.url('/'))
    version, code, reason = status_line.split(b' ', 2)
    assert response.status_code == int(code) and response.text == 'ok'
    assert response.http_version == version.decode()
    assert response.extensions['reason_phrase'] == reason.rstrip(b' \t')


@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('read_before_close', [0, 1, 3])
async def test_closing_a_response_early_closes_its_connection(
        server: str, read_before_close: int) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        first = (await client.get(url('/peer'))).json()['port']
        assert (await client.get(url('/peer'))).json()['port'] == first, 'reused when read'
        async with client.stream('GET', url('/bytes/%d' % BIG)) as response:
            stream = response.aiter_raw()
            for _ in range(read_before_close):
                await stream.__anext__()
            await response.aclose()
        after = (await client.get(url('/peer'))).json()['port']
    assert after != first, 'the half-read connection was closed, not pooled'


@pytest.mark.parametrize('server', SERVERS)
async def test_a_response_read_to_the_end_returns_its_connection(server: str) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        first = (await client.get(url('/peer'))).json()['port']
        async with client.stream('GET', url('/bytes/%d' % (1024 * 1024))) as response:
            await response.aread()
        assert (await client.get(url('/peer'))).json()['port'] == first


# ---------------------------------------------------------------------------------------------
# httpx features above the transport
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('method', ['GET', 'POST'])
async def test_redirects_are_followed(server: str, method: str) -> None:
    async with serving(server) as url, lowhaio_client(follow_redirects=True) as client:
        response = await client.request(method, url('/redirect'), content=b'x')
    assert [r.status_code for r in response.history] == [302]
    # httpx turns a POST into a GET on 302, as browsers do
    assert response.json()['method'] == 'GET'
    assert response.json()['path'] == '/echo?redirected=1'


@pytest.mark.parametrize('server', SERVERS)
async def test_redirects_are_not_followed_unless_asked(server: str) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        response = await client.get(url('/redirect'))
    assert response.status_code == 302 and response.next_request is not None


@pytest.mark.parametrize('server', SERVERS)
async def test_cookies_are_kept_and_sent(server: str) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        await client.get(url('/set-cookie'))
        sent = dict((await client.get(url('/echo'))).json()['headers'])
    assert client.cookies['flavour'] == 'ginger'
    assert sent['cookie'] == 'flavour=ginger'


@pytest.mark.parametrize('server', SERVERS)
async def test_auth_is_applied(server: str) -> None:
    async with serving(server) as url, lowhaio_client(auth=('user', 'pass')) as client:
        sent = dict((await client.get(url('/echo'))).json()['headers'])
    assert sent['authorization'] == 'Basic dXNlcjpwYXNz'


@pytest.mark.parametrize('server', SERVERS)
async def test_event_hooks_run(server: str) -> None:
    calls: List[str] = []

    async def on_request(request: httpx.Request) -> None:
        calls.append('request %s' % request.url.path)

    async def on_response(response: httpx.Response) -> None:
        calls.append('response %d' % response.status_code)

    hooks = {'request': [on_request], 'response': [on_response]}
    async with serving(server) as url, lowhaio_client(event_hooks=hooks) as client:
        await client.get(url('/status/204'))
    assert calls == ['request /status/204', 'response 204']


@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('code', [200, 404, 500])
async def test_raise_for_status(server: str, code: int) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        response = await client.get(url('/status/%d' % code))
    if code == 200:
        assert response.raise_for_status() is response
    else:
        with pytest.raises(httpx.HTTPStatusError) as raised:
            response.raise_for_status()
        assert raised.value.response.status_code == code


@pytest.mark.parametrize('server', SERVERS)
async def test_content_encoding_is_decoded(server: str) -> None:
    async with serving(server) as url, lowhaio_client() as client:
        response = await client.get(url('/gzip'))
        async with client.stream('GET', url('/gzip')) as streamed:
            raw = b''.join([chunk async for chunk in streamed.aiter_raw()])
    assert response.text == 'decoded by httpx ' * 100
    assert raw == GZIPPED


# ---------------------------------------------------------------------------------------------
# Timeouts, pools and closing
# ---------------------------------------------------------------------------------------------

def never_answers() -> Callable[[support.Connection], Awaitable[None]]:
    """Reads the request, then answers nothing until the client goes away."""
    async def handler(conn: support.Connection) -> None:
        await conn.read_request()
        await conn.read_until_eof()
    return handler


async def test_a_per_request_timeout_overrides_the_client_one() -> None:
    async with support.scripted_server(never_answers()) as server:
        async with lowhaio_client(timeout=30) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpx.ReadTimeout):
                await client.get(server.url(), timeout=httpx.Timeout(30, read=0.3))
            # The request extension is what carries the timeout to the transport
            request = client.build_request('GET', server.url(),
                                           extensions={'timeout': {'read': 0.3}})
            with pytest.raises(httpx.ReadTimeout):
                await client.send(request)
            assert loop.time() - started < 10


async def test_no_timeout_means_none() -> None:
    async def slow(conn: support.Connection) -> None:
        await conn.read_request()
        await asyncio.sleep(0.5)
        conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
        await conn.drain()

    async with support.scripted_server(slow) as server:
        async with lowhaio_client(timeout=None) as client:
            response = await client.get(server.url())
    assert response.text == 'ok'


@pytest.mark.parametrize('option', ['socket_timeout', 'connect_timeout', 'pool_timeout'])
def test_deadlines_httpx_sets_are_refused_as_pool_options(option: str) -> None:
    with pytest.raises(TypeError, match=option):
        LowhaioTransport(**{option: 1})


@pytest.mark.parametrize('server', SERVERS)
async def test_closing_the_client_closes_every_connection(server: str) -> None:
    async with serving(server) as url:
        baseline = support.open_fds()
        client = lowhaio_client()
        async with client:
            for timeout in (5, 6, 7):
                await client.get(url('/echo'), timeout=timeout)
            assert support.open_fds() >= baseline + 3
        assert await support.wait_for_fds(baseline) == baseline


async def test_pools_beyond_the_limit_are_closed() -> None:
    async with serving('aiohttp') as url:
        baseline = support.open_fds()
        async with lowhaio_client() as client:
            for timeout in range(1, 21):
                await client.get(url('/echo'), timeout=timeout)
            # Only the connections of the most recent pools stay open (each has a server end
            # in this process too)
            assert await support.wait_for_fds(baseline + 2 * 8) <= baseline + 2 * 8


async def test_a_response_outlives_the_closing_of_its_pool() -> None:
    async with serving('aiohttp') as url, lowhaio_client() as client:
        async with client.stream('GET', url('/bytes/%d' % BIG), timeout=1) as response:
            stream = response.aiter_raw()
            first = await stream.__anext__()
            for timeout in range(2, 11):  # its pool is the least recently used, and is closed
                await client.get(url('/echo'), timeout=timeout)
            rest = [chunk async for chunk in stream]
    assert len(first) + sum(map(len, rest)) == BIG


# ---------------------------------------------------------------------------------------------
# Errors: every lowhaio error becomes the httpx exception httpx's own transport would raise,
# with the lowhaio exception as its cause.
# ---------------------------------------------------------------------------------------------

def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def respond_with(raw: bytes, then: str = 'close') -> Callable[[support.Connection],
                                                               Awaitable[None]]:
    async def handler(conn: support.Connection) -> None:
        await conn.read_request()
        conn.write(raw)
        await conn.drain()
        if then == 'reset':
            conn.reset()
        elif then == 'hang':
            await conn.read_until_eof()
    return handler


async def huge_upload() -> AsyncIterator[bytes]:
    chunk = b'u' * CHUNK
    for _ in range(4096):  # 256 MiB, far beyond any socket buffer
        yield chunk


def never_reads() -> Callable[[support.Connection], Awaitable[None]]:
    async def handler(conn: support.Connection) -> None:
        await asyncio.sleep(60)
    return handler


def reads_head_then_resets() -> Callable[[support.Connection], Awaitable[None]]:
    async def handler(conn: support.Connection) -> None:
        await conn.read_head()
        await conn.read(CHUNK)
        conn.reset()
    return handler


Scenario = Callable[[httpx.AsyncClient], Awaitable[Any]]

# name: (scripted server handler or None, what the client does, expected httpx exception,
#        expected lowhaio exception)
RESPONSE_ERRORS = {
    'garbage status line': (respond_with(b'HTTTP/1.1 200 OK\r\n\r\n'),
                            httpx.RemoteProtocolError, lowhaio.HttpProtocolError),
    'bad content-length': (respond_with(b'HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello'),
                           httpx.RemoteProtocolError, lowhaio.HttpProtocolError),
    'head too long': (respond_with(b'HTTP/1.1 200 OK\r\nx: ' + b'a' * 200000 + b'\r\n\r\n'),
                      httpx.RemoteProtocolError, lowhaio.HttpHeaderTooLong),
    'closed before any byte': (respond_with(b''), httpx.RemoteProtocolError,
                               lowhaio.HttpConnectionClosedError),
    'reset before any byte': (respond_with(b'', then='reset'), httpx.ReadError,
                              lowhaio.HttpConnectionClosedError),
    'closed mid-head': (respond_with(b'HTTP/1.1 200 OK\r\ncontent-'), httpx.RemoteProtocolError,
                        lowhaio.HttpConnectionClosedError),
    'silent': (never_answers(), httpx.ReadTimeout, lowhaio.HttpTimeoutError),
}

BODY_ERRORS = {
    'closed mid-body': (respond_with(b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello'),
                        httpx.RemoteProtocolError, lowhaio.HttpConnectionClosedError),
    'reset mid-body': (respond_with(b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello',
                                    then='reset'),
                       httpx.ReadError, lowhaio.HttpConnectionClosedError),
    'bad chunk': (respond_with(b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
                               b'5\r\nhello\r\nzz\r\n'),
                  httpx.RemoteProtocolError, lowhaio.HttpProtocolError),
    'stalls mid-body': (respond_with(b'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello',
                                     then='hang'),
                        httpx.ReadTimeout, lowhaio.HttpTimeoutError),
}

TRANSPORTS = {
    'lowhaio': lambda: httpx.AsyncClient(transport=LowhaioTransport(), timeout=0.5),
    'httpx': lambda: httpx.AsyncClient(timeout=0.5),
}


def assert_mapped(raised: pytest.ExceptionInfo, expected: type, lowhaio_class: Optional[type],
                  transport: str) -> None:
    assert type(raised.value) is expected, repr(raised.value)
    if transport == 'lowhaio' and lowhaio_class is not None:
        assert isinstance(raised.value.__cause__, lowhaio_class), repr(raised.value.__cause__)
        assert raised.value.request is not None


@pytest.mark.parametrize('transport', list(TRANSPORTS))
@pytest.mark.parametrize('case', list(RESPONSE_ERRORS))
async def test_response_head_errors(transport: str, case: str) -> None:
    handler, expected, lowhaio_class = RESPONSE_ERRORS[case]
    async with support.scripted_server(handler) as server, TRANSPORTS[transport]() as client:
        with pytest.raises(httpx.TransportError) as raised:
            await client.get(server.url())
    assert_mapped(raised, expected, lowhaio_class, transport)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
@pytest.mark.parametrize('case', list(BODY_ERRORS))
async def test_response_body_errors(transport: str, case: str) -> None:
    handler, expected, lowhaio_class = BODY_ERRORS[case]
    async with support.scripted_server(handler) as server, TRANSPORTS[transport]() as client:
        async with client.stream('GET', server.url()) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.TransportError) as raised:
                await response.aread()
    assert_mapped(raised, expected, lowhaio_class, transport)


@pytest.mark.parametrize('status', [b'403 Forbidden', b'407 Proxy Authentication Required',
                                    b'502 Bad Gateway'])
@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_a_refused_connect_tunnel_is_a_proxy_error(transport: str, status: bytes) -> None:
    """A proxy (scripted) refuses the CONNECT for an https origin: httpx's own transport raises
    ProxyError, and so does lowhaio's, with HttpProxyError (carrying the status) as the cause."""
    seen: List[bytes] = []

    async def refusing_proxy(conn: support.Connection) -> None:
        seen.append(await conn.read_head())
        conn.write(b'HTTP/1.1 %s\r\ncontent-length: 7\r\n\r\nrefused' % status)
        await conn.drain()
        conn.close()

    async with support.scripted_server(refusing_proxy) as proxy:
        proxy_url = 'http://127.0.0.1:%d' % proxy.port
        client = httpx.AsyncClient(transport=LowhaioTransport(proxy=proxy_url), timeout=5) \
            if transport == 'lowhaio' else httpx.AsyncClient(proxy=proxy_url, timeout=5)
        async with client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.get('https://origin.test:8443/')
    assert_mapped(raised, httpx.ProxyError, lowhaio.HttpProxyError, transport)
    if transport == 'lowhaio':
        assert raised.value.__cause__.code == status[:3]
    assert seen and seen[0].startswith(b'CONNECT origin.test:8443 HTTP/1.1\r\n')


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_connection_refused_is_a_connect_error(transport: str) -> None:
    async with TRANSPORTS[transport]() as client:
        with pytest.raises(httpx.TransportError) as raised:
            await client.get('http://127.0.0.1:%d/' % refused_port())
    assert_mapped(raised, httpx.ConnectError, lowhaio.HttpConnectionError, transport)


async def test_an_unknown_host_is_a_connect_error() -> None:
    async with support.dns_server() as dns:
        transport = LowhaioTransport(get_dns_resolver=dns.get_dns_resolver)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError) as raised:
                await client.get('http://nowhere.lowhaio.test/')
    assert isinstance(raised.value.__cause__, lowhaio.HttpDnsError)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_an_untrusted_certificate_is_a_connect_error(transport: str) -> None:
    # The server's certificate is from the tests' own CA, which neither client trusts
    async with support.web_server(aiohttp_app(), tls=True) as server:
        async with TRANSPORTS[transport]() as client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.get(server.url('/echo'))
    assert_mapped(raised, httpx.ConnectError, lowhaio.HttpTlsError, transport)


async def test_a_trusted_certificate_works() -> None:
    context = support.client_ssl_context()
    async with support.web_server(aiohttp_app(), tls=True) as server:
        transport = LowhaioTransport(get_ssl_context=lambda: context)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(server.url('/echo'))
    assert response.status_code == 200 and response.url.scheme == 'https'


@pytest.mark.parametrize('transport', list(TRANSPORTS))
@pytest.mark.parametrize('attempt', range(3))
async def test_connect_timeout(transport: str, attempt: int) -> None:
    port = refused_port()
    with black_hole('127.0.0.1', port):
        assert_black_holed('127.0.0.1', port)
        async with TRANSPORTS[transport]() as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.TransportError) as raised:
                await client.get('http://127.0.0.1:%d/' % port,
                                 timeout=httpx.Timeout(30, connect=0.3))
            elapsed = asyncio.get_running_loop().time() - started
    assert_mapped(raised, httpx.ConnectTimeout, lowhaio.HttpConnectionError, transport)
    assert 0.25 < elapsed < 10


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(transport: str) -> None:
    async with support.scripted_server(never_answers()) as server:
        async with TRANSPORTS[transport]() as client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.get('https://127.0.0.1:%d/' % server.port,
                                 timeout=httpx.Timeout(30, connect=0.3))
    assert_mapped(raised, httpx.ConnectTimeout, lowhaio.HttpTlsError, transport)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_a_server_that_stops_reading_is_a_write_timeout(transport: str) -> None:
    async with support.scripted_server(never_reads()) as server:
        async with TRANSPORTS[transport]() as client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.post(server.url(), content=huge_upload(),
                                  timeout=httpx.Timeout(30, write=0.3, read=0.3))
    assert_mapped(raised, httpx.WriteTimeout, lowhaio.HttpTimeoutError, transport)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_a_reset_while_uploading_is_a_write_error(transport: str) -> None:
    async with support.scripted_server(reads_head_then_resets()) as server:
        async with TRANSPORTS[transport]() as client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.post(server.url(), content=huge_upload())
    # httpx's own transport tries to read a response after a failed write, and reports the
    # read's failure; lowhaio reports the write that failed
    expected = {'lowhaio': httpx.WriteError, 'httpx': httpx.ReadError}[transport]
    assert_mapped(raised, expected, lowhaio.HttpDataError, transport)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_no_free_connection_in_time_is_a_pool_timeout(transport: str) -> None:
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(30, pool=0.2)
    clients = {
        'lowhaio': lambda: httpx.AsyncClient(
            transport=LowhaioTransport(max_connections_per_host=1), timeout=timeout),
        'httpx': lambda: httpx.AsyncClient(limits=limits, timeout=timeout),
    }
    async with serving('aiohttp') as url, clients[transport]() as client:
        async with client.stream('GET', url('/bytes/%d' % BIG)):
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.TransportError) as raised:
                await client.get(url('/echo'))
            assert asyncio.get_running_loop().time() - started >= 0.15
    assert_mapped(raised, httpx.PoolTimeout, lowhaio.HttpPoolTimeoutError, transport)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
@pytest.mark.parametrize('url', ['ftp://127.0.0.1/', 'file:///etc/passwd', '/relative'])
async def test_a_scheme_other_than_http_is_unsupported(transport: str, url: str) -> None:
    async with TRANSPORTS[transport]() as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(url)


@pytest.mark.parametrize('transport', list(TRANSPORTS))
@pytest.mark.parametrize('case', ['header value with a newline', 'method with a space',
                                  'body longer than content-length',
                                  'body shorter than content-length'])
async def test_bad_requests_are_local_protocol_errors(transport: str, case: str) -> None:
    async with support.scripted_server(respond_with(
            b'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n')) as server:
        async with TRANSPORTS[transport]() as client:
            with pytest.raises(Exception) as raised:
                if case == 'header value with a newline':
                    await client.get(server.url(), headers={'x': 'a\r\nx-injected: 1'})
                elif case == 'method with a space':
                    await client.request('GE T', server.url())
                else:
                    length = '3' if case == 'body longer than content-length' else '30'
                    await client.post(server.url(), content=chunks_of(b'0123456789'),
                                      headers={'content-length': length})
    if transport == 'httpx' and case.startswith('body'):
        # httpx's own transport lets h11's exception out, unmapped
        assert type(raised.value) is h11.LocalProtocolError
    else:
        assert_mapped(raised, httpx.LocalProtocolError, lowhaio.HttpError, transport)
    assert server.requests == [] or case.startswith('body'), 'nothing malformed was sent'


async def test_a_method_that_is_not_ascii_is_a_local_protocol_error() -> None:
    # (httpx's own transport raises a TypeError here)
    async with lowhaio_client() as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.request('G\u00c9T', 'http://127.0.0.1:%d/' % refused_port())


class ContentFailed(Exception):
    pass


@pytest.mark.parametrize('transport', list(TRANSPORTS))
@pytest.mark.parametrize('fail_after', [0, 1, 5])
async def test_the_callers_own_content_error_propagates_unchanged(
        transport: str, fail_after: int) -> None:
    async def failing() -> AsyncIterator[bytes]:
        for _ in range(fail_after):
            yield b'x' * 100
        raise ContentFailed('from the caller')

    async with support.scripted_server(never_answers()) as server:
        async with TRANSPORTS[transport]() as client:
            with pytest.raises(ContentFailed, match='from the caller'):
                await client.post(server.url(), content=failing())


@pytest.mark.parametrize('transport', list(TRANSPORTS))
async def test_a_one_shot_content_iterator_cannot_be_replayed(transport: str) -> None:
    async with serving('aiohttp') as url, TRANSPORTS[transport]() as client:
        # A 307 resends the body: an iterator already consumed cannot be sent again
        redirecting = client.build_request('POST', url('/echo'), content=chunks_of(b'abc'))
        await client.send(redirecting)
        with pytest.raises(httpx.StreamConsumed):
            await client.send(redirecting)


def test_without_a_running_asyncio_loop_the_error_says_asyncio_only() -> None:
    """As under trio, where httpx runs a transport with no asyncio loop: the coroutine driven
    by hand, outside any loop."""
    transport = LowhaioTransport()
    request = httpx.Request('GET', 'http://127.0.0.1:9/')
    coroutine = transport.handle_async_request(request)
    with pytest.raises(RuntimeError, match='asyncio only'):
        coroutine.send(None)
    coroutine.close()
