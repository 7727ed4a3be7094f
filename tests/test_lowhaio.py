"""lowhaio's core, as its users rely on it: the 0.0.89 API, keep-alive and DNS-aware pooling,
verified TLS, streaming both ways in bounded memory, cancellation, and errors that say whether
a retry is safe. Against real servers on loopback: aiohttp.web in-process, and nginx."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import resource
import socket
import sys
import threading
from typing import Any, AsyncIterator, Dict, List, Tuple

import pytest
from aiofastforward import FastForward
from aiohttp import web
from support import (
    client_ssl_context,
    dns_server,
    open_fds,
    scripted_server,
    server_ssl_context,
    wait_for_fds,
    web_server,
)

import lowhaio
from lowhaio import (
    HttpConnectionError,
    HttpDataError,
    HttpDnsError,
    HttpError,
    HttpInvalidRequestError,
    HttpTlsError,
    Pool,
    buffered,
    streamed,
)

MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Servers used throughout
# ---------------------------------------------------------------------------------------------

def recording_app(seen: List[web.Request]) -> web.Application:
    """Answers every request with a description of what arrived, and records the request."""
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(request)
        return web.json_response({
            'method': request.method,
            'path_qs': request.raw_path,
            'headers': [[key, value] for key, value in request.raw_headers and
                        [(k.decode('latin-1'), v.decode('latin-1'))
                         for k, v in request.raw_headers]],
            'body_md5': hashlib.md5(body).hexdigest(),
            'body_length': len(body),
            'peer_port': request.transport.get_extra_info('peername')[1],
        })
    app = web.Application()
    app.router.add_route('*', '/{tail:.*}', handler)
    return app


async def json_of(body: AsyncIterator[bytes]) -> dict:
    import json
    return json.loads(await buffered(body))


async def peer_ports(request, url: str, count: int) -> List[int]:
    """The client port each of `count` requests to a recording_app arrived from."""
    ports = []
    for _ in range(count):
        _, _, body = await request(b'GET', url)
        ports.append((await json_of(body))['peer_port'])
    return ports


@pytest.fixture
async def pool() -> AsyncIterator[Tuple]:
    request, close = Pool()
    yield request, close
    await close()


@pytest.fixture
async def tls_pool() -> AsyncIterator[Tuple]:
    request, close = Pool(get_ssl_context=client_ssl_context)
    yield request, close
    await close()


# ---------------------------------------------------------------------------------------------
# The request/response API of 0.0.89
# ---------------------------------------------------------------------------------------------

class TestResponses:

    async def test_code_headers_and_body(self, pool) -> None:
        request, _ = pool

        async def handler(_: web.Request) -> web.Response:
            return web.Response(status=201, body=b'created', headers={'X-Custom': 'Value One'})
        app = web.Application()
        app.router.add_get('/', handler)
        async with web_server(app) as server:
            code, headers, body = await request(b'GET', server.url('/'))
            assert code == b'201'
            assert (b'x-custom', b'Value One') in headers
            assert all(name == name.lower() for name, _ in headers)
            assert await buffered(body) == b'created'

    async def test_headers_keep_server_order_and_repeats(self, pool) -> None:
        request, _ = pool
        async with scripted_server(_respond_once(
                b'HTTP/1.1 200 OK\r\nB: 1\r\nA: 2\r\nSet-Cookie: x=1\r\nSet-Cookie: y=2\r\n'
                b'Content-Length: 0\r\n\r\n')) as server:
            _, headers, body = await request(b'GET', server.url('/'))
            await buffered(body)
        assert headers == ((b'b', b'1'), (b'a', b'2'), (b'set-cookie', b'x=1'),
                           (b'set-cookie', b'y=2'), (b'content-length', b'0'))

    async def test_head_response_has_no_body(self, pool, nginx) -> None:
        request, _ = pool
        (nginx.root / 'head.txt').write_bytes(b'abc' * 100)
        code, headers, body = await request(b'HEAD', nginx.url('/head.txt'))
        assert code == b'200'
        assert dict(headers)[b'content-length'] == b'300'
        assert await buffered(body) == b''
        # The connection is still usable: nothing of a body was left on it
        code, _, body = await request(b'GET', nginx.url('/head.txt'))
        assert await buffered(body) == b'abc' * 100

    async def test_chunked_and_content_length_bodies_from_nginx(self, pool, nginx) -> None:
        request, _ = pool
        content = os.urandom(300_000)
        (nginx.root / 'random.bin').write_bytes(content)
        _, headers, body = await request(b'GET', nginx.url('/random.bin'))
        assert dict(headers)[b'content-length'] == b'300000'
        assert await buffered(body) == content
        _, headers, body = await request(b'GET', nginx.url('/chunked/random.bin'))
        assert dict(headers)[b'transfer-encoding'] == b'chunked'
        assert await buffered(body) == content

    async def test_body_read_until_close(self, pool) -> None:
        request, _ = pool

        async def handler(conn) -> None:
            await conn.read_head()
            conn.write(b'HTTP/1.0 200 OK\r\n\r\n')
            await conn.write_slowly(b'until close', chunk_size=3, delay=0.01)
            conn.close()
        async with scripted_server(handler) as server:
            _, _, body = await request(b'GET', server.url('/'))
            assert await buffered(body) == b'until close'


def _respond_once(response: bytes):
    async def handler(conn) -> None:
        await conn.read_head()
        conn.write(response)
        await conn.drain()
        await conn.read_until_eof()
    return handler


class TestRequests:

    async def test_url_query_kept_and_params_appended_encoded(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            _, _, body = await request(b'GET', server.url('/a/b?x=1'),
                                       params=(('y', 'a b&c'), ('z', 'é')))
            assert (await json_of(body))['path_qs'] == '/a/b?x=1&y=a+b%26c&z=%C3%A9'
            _, _, body = await request(b'GET', server.url('/p'), params=(('k', 'v'),))
            assert (await json_of(body))['path_qs'] == '/p?k=v'

    async def test_empty_path_is_slash_and_encoded_path_is_not_encoded_twice(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            base = 'http://127.0.0.1:%d' % server.port
            _, _, body = await request(b'GET', base)
            assert (await json_of(body))['path_qs'] == '/'
            _, _, body = await request(b'GET', base + '/a%20b/c d/%E2%82%AC')
            assert (await json_of(body))['path_qs'] == '/a%20b/c%20d/%E2%82%AC'

    async def test_headers_sent_in_order_with_host_added(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            _, _, body = await request(b'GET', server.url('/'),
                                       headers=((b'x-b', b'2'), (b'X-A', b'1'), (b'x-b', b'3')))
            sent = (await json_of(body))['headers']
        assert sent == [['host', '127.0.0.1:%d' % server.port],
                        ['x-b', '2'], ['X-A', '1'], ['x-b', '3']]

    async def test_host_not_added_when_caller_gives_one_in_any_case(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            _, _, body = await request(b'GET', server.url('/'), headers=((b'HoSt', b'other'),))
            sent = (await json_of(body))['headers']
        assert sent == [['HoSt', 'other']]

    async def test_host_header_is_idna_encoded_and_omits_the_default_port(self) -> None:
        target = lowhaio.parse_target('https://bücher.example/')
        assert target.host_line == b'host: xn--bcher-kva.example\r\n'
        assert lowhaio.parse_target('http://example.com:80/').host_line == b'host: example.com\r\n'
        assert lowhaio.parse_target('http://example.com:81/').host_line == \
            b'host: example.com:81\r\n'

    async def test_body_function_called_with_args_and_replayable(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        calls = []

        async def body(prefix: bytes, *, times: int) -> AsyncIterator[bytes]:
            calls.append((prefix, times))
            for _ in range(times):
                yield prefix

        async with web_server(recording_app(seen)) as server:
            for _ in range(2):
                _, _, response = await request(
                    b'POST', server.url('/'), headers=((b'content-length', b'12'),),
                    body=body, body_args=(b'abc',), body_kwargs=(('times', 4),))
                description = await json_of(response)
                assert description['body_md5'] == hashlib.md5(b'abc' * 4).hexdigest()
        assert calls == [(b'abc', 4), (b'abc', 4)]

    async def test_streamed_and_buffered(self, pool) -> None:
        request, _ = pool

        async def echo(request_: web.Request) -> web.Response:
            return web.Response(body=await request_.read())
        app = web.Application()
        app.router.add_post('/', echo)
        async with web_server(app) as server:
            _, _, body = await request(b'POST', server.url('/'),
                                       headers=((b'content-length', b'5'),),
                                       body=streamed(b'hello'))
            assert await buffered(body) == b'hello'

    async def test_body_not_matching_content_length_is_refused(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            with pytest.raises(HttpDataError, match='longer'):
                await request(b'POST', server.url('/'), headers=((b'content-length', b'2'),),
                              body=streamed(b'hello'))
            with pytest.raises(HttpDataError, match='shorter'):
                await request(b'POST', server.url('/'), headers=((b'content-length', b'9'),),
                              body=streamed(b'hello'))
            # The pool is still good for the next request
            _, _, body = await request(b'GET', server.url('/'))
            assert (await json_of(body))['method'] == 'GET'


    @pytest.mark.parametrize('expect', [False, True], ids=['plain', 'expect-100-continue'])
    @pytest.mark.parametrize('chunks', [
        [b'hello'],
        [b'', b'hello'],
        [b'x' * 70000],
        [b'\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n'],
    ], ids=['small', 'after-an-empty-chunk', 'large', 'a-request'])
    async def test_a_body_without_content_length_or_transfer_encoding_is_refused(
            self, chunks, expect) -> None:
        # RFC 9112 §6.3: such a request's body is empty, and any byte sent after its head would
        # be read as the start of another request (a second request smuggled in a body)
        received: List[bytes] = []

        async def handler(conn) -> None:
            while True:
                data = await conn.read_some()
                if not data:
                    return
                received.append(data)
                if expect:
                    conn.write(b'HTTP/1.1 100 Continue\r\n\r\n')

        async def body():
            for chunk in chunks:
                yield chunk

        headers = ((b'expect', b'100-continue'),) if expect else ()
        async with scripted_server(handler) as server:
            request, close = Pool()
            try:
                for _ in range(3):
                    with pytest.raises(HttpInvalidRequestError, match='content-length or '
                                                                      'transfer-encoding'):
                        await request(b'POST', server.url('/'), headers=headers, body=body)
                await asyncio.sleep(0.05)
            finally:
                await close()
        # Not one byte of a body; and of the request, only its head if it had gone before:
        # to wait for the server's go-ahead, or with an empty first chunk (the head goes with
        # the first chunk, whatever its size)
        sent = b''.join(received)
        assert sent.count(b'\r\n\r\n') == (3 if expect or chunks[0] == b'' else 0)
        assert b'hello' not in sent and b'smuggled' not in sent and b'xxx' not in sent

    @pytest.mark.parametrize('chunks', [[], [b''], [b'', b'']], ids=['none', 'one-empty',
                                                                      'two-empty'])
    async def test_a_body_function_that_yields_no_bytes_needs_no_framing(self, chunks) -> None:
        async def body():
            for chunk in chunks:
                yield chunk

        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            request, close = Pool()
            try:
                for _ in range(2):
                    _, _, response = await request(b'POST', server.url('/'), body=body)
                    description = await json_of(response)
                    assert (description['method'], description['body_md5']) == \
                        ('POST', hashlib.md5(b'').hexdigest())
            finally:
                await close()


# ---------------------------------------------------------------------------------------------
# Bad input from the caller: a clear HttpError, before any connection is made
# ---------------------------------------------------------------------------------------------

class TestInvalidRequests:

    @pytest.mark.parametrize('method, url, headers, match', [
        (b'GET / HTTP/1.1\r\nX:', '/', (), 'Method'),
        (b'', '/', (), 'Method'),
        ('GET', '/', (), 'Method'),
        (b'GET', '/', ((b'x', b'a\r\nInjected: yes'),), 'CR, LF or NUL'),
        (b'GET', '/', ((b'x', b'a\x00'),), 'CR, LF or NUL'),
        (b'GET', '/', ((b'bad name', b'v'),), 'token'),
        (b'GET', '/', ((b'x:y', b'v'),), 'token'),
        (b'GET', '/', (('x', 'v'),), 'token'),
        (b'GET', '/', ((b'content-length', b'+5'),), 'content-length'),
        (b'POST', '/', ((b'content-length', b'5'),), 'no body'),
        (b'GET', 'ftp://127.0.0.1/', (), 'scheme'),
        (b'GET', 'http:///path', (), 'host'),
        (b'GET', 'http://127.0.0.1:99999/', (), 'Invalid URL'),
        (b'GET', 'http://127.0.0.1:port/', (), 'Invalid URL'),
        (b'GET', 'http://[::1/', (), 'Invalid URL'),
    ])
    async def test_rejected_before_connecting(self, method, url, headers, match) -> None:
        connections = []

        async def handler(conn) -> None:
            connections.append(conn)
        async with scripted_server(handler) as server:
            request, close = Pool()
            full_url = server.url(url) if url.startswith('/') else url
            with pytest.raises(HttpInvalidRequestError, match=match):
                await request(method, full_url, headers=headers)
            await close()
        assert connections == []

    async def test_invalid_request_error_is_an_http_error_and_a_value_error(self) -> None:
        assert issubclass(HttpInvalidRequestError, HttpError)
        assert issubclass(HttpInvalidRequestError, ValueError)
        assert not issubclass(HttpInvalidRequestError, HttpConnectionError)


# ---------------------------------------------------------------------------------------------
# Exceptions say whether a retry is safe
# ---------------------------------------------------------------------------------------------

class TestExceptions:

    def test_hierarchy(self) -> None:
        assert issubclass(lowhaio.HttpConnectionError, HttpError)
        for cls in (lowhaio.HttpDnsError, lowhaio.HttpTlsError, lowhaio.HttpPoolTimeoutError):
            assert issubclass(cls, HttpConnectionError)
        for cls in (lowhaio.HttpConnectionClosedError, lowhaio.HttpHeaderTooLong,
                    lowhaio.HttpProtocolError, lowhaio.HttpTimeoutError,
                    lowhaio.HttpConnectionClosedBeforeResponseError):
            assert issubclass(cls, HttpDataError)
        assert issubclass(lowhaio.HttpConnectionClosedBeforeResponseError,
                          lowhaio.HttpConnectionClosedError)

    async def test_refused_connection_is_a_connection_error_with_cause(self, pool) -> None:
        request, _ = pool
        sock = socket.socket()
        sock.bind(('127.0.0.1', 0))  # bound but not listening: connecting is refused
        try:
            with pytest.raises(HttpConnectionError) as caught:
                await request(b'GET', 'http://127.0.0.1:%d/' % sock.getsockname()[1])
        finally:
            sock.close()
        assert isinstance(caught.value.__cause__, OSError)

    async def test_unknown_host_is_a_dns_error_with_cause(self) -> None:
        async with dns_server() as dns:
            request, close = Pool(get_dns_resolver=dns.get_dns_resolver)
            with pytest.raises(HttpDnsError) as caught:
                await request(b'GET', 'http://nowhere.test/')
            await close()
        assert caught.value.__cause__ is not None

    async def test_timeout_waiting_for_head_is_a_data_error_caused_by_timeout(self) -> None:
        async def silent(conn) -> None:
            await conn.read_head()
            await conn.read_until_eof()
        async with scripted_server(silent) as server:
            request, close = Pool(socket_timeout=0.2)
            with pytest.raises(HttpDataError) as caught:
                await request(b'GET', server.url('/'))
            await close()
        assert isinstance(caught.value.__cause__, asyncio.TimeoutError)

    async def test_caller_cancellation_propagates_untouched(self) -> None:
        async def silent(conn) -> None:
            await conn.read_head()
            await conn.read_until_eof()
        async with scripted_server(silent) as server:
            request, close = Pool()
            task = asyncio.ensure_future(request(b'GET', server.url('/')))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await close()

    async def test_exceptions_from_the_body_function_are_data_errors(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []

        async def failing_body() -> AsyncIterator[bytes]:
            yield b'a'
            raise RuntimeError('source broke')
        async with web_server(recording_app(seen)) as server:
            with pytest.raises(HttpDataError) as caught:
                await request(b'POST', server.url('/'), headers=((b'content-length', b'2'),),
                              body=failing_body)
        assert isinstance(caught.value.__cause__, RuntimeError)

    async def test_base_exceptions_from_the_body_function_propagate_untouched(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []

        class Stop(BaseException):
            pass

        async def stopping_body() -> AsyncIterator[bytes]:
            yield b'a'
            raise Stop()
        async with web_server(recording_app(seen)) as server:
            with pytest.raises(Stop):
                await request(b'POST', server.url('/'), headers=((b'content-length', b'2'),),
                              body=stopping_body)


# ---------------------------------------------------------------------------------------------
# Keep-alive
# ---------------------------------------------------------------------------------------------

class TestKeepAlive:

    async def test_connection_reused_after_body_read_to_the_end(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            ports = await peer_ports(request, server.url('/'), 3)
        assert len(set(ports)) == 1

    async def test_nginx_serves_many_requests_on_one_connection(self, pool, nginx) -> None:
        request, _ = pool
        (nginx.root / 'small').write_bytes(b'x' * 100)
        for _ in range(200):
            code, _, body = await request(b'GET', nginx.url('/small'))
            assert code == b'200'
            assert await buffered(body) == b'x' * 100
        assert request.status()[('http', '127.0.0.1', nginx.port)] == \
            {'idle': 1, 'in_use': 0, 'waiting': 0}

    async def test_connection_close_from_the_server_is_honoured(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []

        async def handler(request_: web.Request) -> web.Response:
            seen.append(request_.transport.get_extra_info('peername')[1])
            return web.Response(body=b'bye', headers={'Connection': 'close'})
        app = web.Application()
        app.router.add_get('/', handler)
        async with web_server(app) as server:
            for _ in range(2):
                _, _, body = await request(b'GET', server.url('/'))
                assert await buffered(body) == b'bye'
        assert len(set(seen)) == 2

    async def test_http_1_0_response_without_keep_alive_is_not_reused(self, pool) -> None:
        request, _ = pool
        connections = []

        async def handler(conn) -> None:
            connections.append(conn)
            await conn.read_head()
            conn.write(b'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok')
            await conn.drain()
            await conn.read_until_eof()
        async with scripted_server(handler) as server:
            for _ in range(2):
                _, _, body = await request(b'GET', server.url('/'))
                assert await buffered(body) == b'ok'
        assert len(connections) == 2

    async def test_idle_connection_closed_after_keep_alive_timeout(self) -> None:
        request, close = Pool(keep_alive_timeout=0.2)
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            _, _, body = await request(b'GET', server.url('/'))
            first_port = (await json_of(body))['peer_port']
            key = ('http', '127.0.0.1', server.port)
            assert request.status()[key]['idle'] == 1
            await asyncio.sleep(0.5)
            assert request.status()[key]['idle'] == 0
            _, _, body = await request(b'GET', server.url('/'))
            second_port = (await json_of(body))['peer_port']
        await close()
        assert first_port != second_port

    async def test_keep_alive_timeout_zero_never_pools(self) -> None:
        request, close = Pool(keep_alive_timeout=0)
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            ports = await peer_ports(request, server.url('/'), 2)
            assert request.status()[('http', '127.0.0.1', server.port)]['idle'] == 0
        await close()
        assert ports[0] != ports[1]


# ---------------------------------------------------------------------------------------------
# DNS-aware pooling
# ---------------------------------------------------------------------------------------------

class TestDnsAwarePooling:

    async def test_pool_moves_to_the_new_address_when_the_record_changes(self) -> None:
        served_by: List[str] = []

        def app_for(address: str) -> web.Application:
            async def handler(_: web.Request) -> web.Response:
                served_by.append(address)
                return web.Response(body=address.encode())
            app = web.Application()
            app.router.add_get('/', handler)
            return app

        async with dns_server() as dns:
            async with web_server(app_for('127.0.0.2'), host='127.0.0.2') as first:
                async with _web_server_on_port(app_for('127.0.0.3'), '127.0.0.3',
                                               first.port) as _:
                    dns.set('service.test', ['127.0.0.2'], ttl=1)
                    request, close = Pool(get_dns_resolver=dns.get_dns_resolver)
                    url = 'http://service.test:%d/' % first.port
                    for _ in range(2):
                        _, _, body = await request(b'GET', url)
                        assert await buffered(body) == b'127.0.0.2'
                    dns.set('service.test', ['127.0.0.3'], ttl=1)
                    await asyncio.sleep(1.2)
                    _, _, body = await request(b'GET', url)
                    assert await buffered(body) == b'127.0.0.3'
                    await close()
        assert served_by == ['127.0.0.2', '127.0.0.2', '127.0.0.3']

    async def test_ip_literals_are_never_sent_to_dns(self) -> None:
        seen: List[web.Request] = []
        async with dns_server() as dns, web_server(recording_app(seen)) as server:
            request, close = Pool(get_dns_resolver=dns.get_dns_resolver)
            _, _, body = await request(b'GET', server.url('/'))
            await buffered(body)
            await close()
            assert dns.queries == []

    async def test_trailing_dot_host_name(self) -> None:
        seen: List[web.Request] = []
        async with dns_server() as dns, web_server(recording_app(seen)) as server:
            dns.set('dotted.test', ['127.0.0.1'])
            request, close = Pool(get_dns_resolver=dns.get_dns_resolver)
            code, _, body = await request(b'GET', 'http://dotted.test.:%d/' % server.port)
            description = await json_of(body)
            await close()
        assert code == b'200'
        assert ['host', 'dotted.test.:%d' % server.port] in description['headers']


class _web_server_on_port:
    """An aiohttp server on a given address and port (for two addresses sharing one port)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._cm = web_server(app, host=host, port=port)

    async def __aenter__(self):
        try:
            return await self._cm.__aenter__()
        except OSError as exception:  # the port is taken on that address: rare, but not a bug
            pytest.skip('port %s taken on the second address: %s' % (self._cm, exception))

    async def __aexit__(self, *args):
        return await self._cm.__aexit__(*args)


# ---------------------------------------------------------------------------------------------
# TLS: verified by default
# ---------------------------------------------------------------------------------------------

class TestTls:

    async def test_verified_https(self, tls_pool) -> None:
        request, _ = tls_pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen), tls=True) as server:
            code, _, body = await request(b'GET', server.url('/'))
            assert code == b'200'
            await buffered(body)

    async def test_untrusted_certificate_is_refused_by_default(self, pool) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen), tls=True) as server:
            with pytest.raises(HttpTlsError) as caught:
                await request(b'GET', server.url('/'))
        assert isinstance(caught.value.__cause__, Exception)
        assert seen == []

    async def test_host_name_is_checked(self) -> None:
        seen: List[web.Request] = []
        async with dns_server() as dns, web_server(recording_app(seen), tls=True) as server:
            dns.set('other.test', ['127.0.0.1'])
            request, close = Pool(get_ssl_context=client_ssl_context,
                                  get_dns_resolver=dns.get_dns_resolver)
            with pytest.raises(HttpTlsError):
                await request(b'GET', server.url_for('other.test', '/'))
            await close()
        assert seen == []

    async def test_sni_host_name_via_dns(self) -> None:
        seen: List[web.Request] = []
        async with dns_server() as dns, \
                web_server(recording_app(seen), tls=True, hostnames=['secure.test']) as server:
            dns.set('secure.test', ['127.0.0.1'])
            request, close = Pool(get_ssl_context=client_ssl_context,
                                  get_dns_resolver=dns.get_dns_resolver)
            code, _, body = await request(b'GET', server.url_for('secure.test', '/'))
            await buffered(body)
            await close()
        assert code == b'200'

    async def test_client_certificates(self) -> None:
        seen: List[web.Request] = []
        context = server_ssl_context(require_client_cert=True)
        async with web_server(recording_app(seen), tls=True, ssl_context=context) as server:
            request, close = Pool(get_ssl_context=lambda: client_ssl_context(with_client_cert=True))
            code, _, body = await request(b'GET', server.url('/'))
            await buffered(body)
            await close()
            assert code == b'200'

            request, close = Pool(get_ssl_context=client_ssl_context)
            with pytest.raises(HttpError):
                _, _, body = await request(b'GET', server.url('/'))
                await buffered(body)
            await close()

    async def test_nginx_over_tls_with_reuse(self, tls_pool, nginx) -> None:
        request, _ = tls_pool
        (nginx.root / 'tls.txt').write_bytes(b'secret' * 1000)
        for _ in range(5):
            _, _, body = await request(b'GET', nginx.tls_url('/tls.txt'))
            assert await buffered(body) == b'secret' * 1000
        assert request.status()[('https', '127.0.0.1', nginx.tls_port)]['idle'] == 1


# ---------------------------------------------------------------------------------------------
# Streaming in bounded memory
# ---------------------------------------------------------------------------------------------

def rss_mib() -> float:
    """Resident memory now (not the peak: an earlier test may have set that higher)."""
    with open('/proc/self/statm') as file:
        return int(file.read().split()[1]) * resource.getpagesize() / MIB


class TestStreaming:

    async def test_1_gib_download_streams_in_bounded_memory(self, pool, nginx) -> None:
        request, _ = pool
        path = nginx.root / 'big.bin'
        with open(path, 'wb') as file:
            file.truncate(1024 * MIB)
        gc.collect()
        before = rss_mib()
        peak = before
        received = 0
        _, _, body = await request(b'GET', nginx.url('/big.bin'))
        async for chunk in body:
            received += len(chunk)
            if received % (16 * MIB) < len(chunk):
                peak = max(peak, rss_mib())
        assert received == 1024 * MIB
        assert peak - before < 32
        path.unlink()

    async def test_1_gib_upload_streams_in_bounded_memory(self, pool) -> None:
        request, _ = pool
        chunk = b'u' * (64 * 1024)
        size = 1024 * MIB

        async def counting(request_: web.Request) -> web.Response:
            total = 0
            while True:
                data = await request_.content.readany()
                if not data:
                    break
                total += len(data)
            return web.Response(body=b'%d' % total)
        app = web.Application(client_max_size=2 * size)
        app.router.add_post('/', counting)

        peak = 0.0

        async def body() -> AsyncIterator[bytes]:
            nonlocal peak
            for i in range(size // len(chunk)):
                if i % 256 == 0:
                    peak = max(peak, rss_mib())
                yield chunk

        async with web_server(app) as server:
            gc.collect()
            before = rss_mib()
            _, _, response = await request(
                b'POST', server.url('/'), headers=((b'content-length', b'%d' % size),), body=body)
            assert await buffered(response) == b'%d' % size
        assert peak - before < 32

    async def test_upload_to_nginx_round_trips(self, pool, nginx) -> None:
        request, _ = pool
        content = os.urandom(5 * MIB)

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(content), 100_000):
                yield content[start:start + 100_000]
        code, _, response = await request(
            b'PUT', nginx.url('/dav/upload.bin'),
            headers=((b'content-length', b'%d' % len(content)),), body=body)
        await buffered(response)
        assert code in (b'201', b'204')
        _, _, response = await request(b'GET', nginx.url('/dav/upload.bin'))
        assert await buffered(response) == content


# ---------------------------------------------------------------------------------------------
# Cancellation at any point closes the socket
# ---------------------------------------------------------------------------------------------

class TestCancellation:

    @pytest.mark.parametrize('stage', ['connect', 'tls', 'send', 'wait', 'body'])
    async def test_cancelled_at_each_stage_leaks_nothing(self, stage) -> None:
        release = asyncio.Event()

        async def handler(conn) -> None:
            if stage in ('tls',):
                await release.wait()  # accept, never answer the handshake
                return
            await conn.read_head()
            if stage == 'send':
                await release.wait()  # never read the body: the client's writes block
                return
            if stage == 'wait':
                await release.wait()
                return
            conn.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial')
            await conn.drain()
            await release.wait()

        async with scripted_server(handler) as server:
            listener = None
            url = server.url('/')
            if stage == 'connect':
                # A listener whose backlog is full: further connection attempts hang
                listener, url, fillers = _full_backlog_listener()
            elif stage == 'tls':
                url = url.replace('http://', 'https://')
            baseline = open_fds()
            request, close = Pool(get_ssl_context=client_ssl_context)

            async def run() -> None:
                body = streamed(b'x' * (64 * MIB)) if stage == 'send' else \
                    lowhaio.empty_async_iterator
                headers = ((b'content-length', b'%d' % (64 * MIB)),) if stage == 'send' else ()
                _, _, response = await request(b'POST' if stage == 'send' else b'GET', url,
                                               headers=headers, body=body)
                async for _ in response:
                    pass
            task = asyncio.ensure_future(run())
            await asyncio.sleep(0.3)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert all(status['in_use'] == 0 and status['idle'] == 0
                       for status in request.status().values())
            await close()
            release.set()
            assert await wait_for_fds(baseline) <= baseline
            if listener is not None:
                for sock in fillers:
                    sock.close()
                listener.close()


def _full_backlog_listener():
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(sock)
    return listener, 'http://127.0.0.1:%d/' % listener.getsockname()[1], fillers


class TestAbandonedBodies:

    async def test_aclose_before_the_end_closes_the_connection(self, pool, nginx) -> None:
        request, _ = pool
        with open(nginx.root / 'large.bin', 'wb') as file:
            file.truncate(64 * MIB)
        _, _, body = await request(b'GET', nginx.url('/large.bin'))
        first = await body.__anext__()
        assert first
        await body.aclose()
        key = ('http', '127.0.0.1', nginx.port)
        assert request.status()[key] == {'idle': 0, 'in_use': 0, 'waiting': 0}
        (nginx.root / 'small.txt').write_bytes(b'small')
        _, _, body = await request(b'GET', nginx.url('/small.txt'))
        assert await buffered(body) == b'small'

    async def test_dropped_body_closes_the_connection(self, pool, nginx) -> None:
        request, _ = pool
        with open(nginx.root / 'large2.bin', 'wb') as file:
            file.truncate(64 * MIB)
        _, _, body = await request(b'GET', nginx.url('/large2.bin'))
        await body.__anext__()
        del body
        gc.collect()
        key = ('http', '127.0.0.1', nginx.port)
        assert request.status()[key] == {'idle': 0, 'in_use': 0, 'waiting': 0}


# ---------------------------------------------------------------------------------------------
# The 0.0.89 hooks, timeout() and logging
# ---------------------------------------------------------------------------------------------

class TestCompatibility:

    async def test_custom_send_header_and_send_body_hooks_are_honoured(self) -> None:
        seen: List[web.Request] = []
        hook_calls = []

        async def send_header(logger, loop, sock, socket_timeout, http_version, method,
                              parsed_url, params, headers):
            hook_calls.append(('header', method, parsed_url.path))
            await lowhaio.send_all(loop, sock, socket_timeout,
                                   b'%s %s %s\r\nhost: x\r\nx-hooked: yes\r\n'
                                   b'content-length: 4\r\n\r\n'
                                   % (method, parsed_url.path.encode(), http_version))

        async def send_body(logger, loop, sock, socket_timeout, body, body_args, body_kwargs):
            hook_calls.append(('body',))
            await lowhaio.send_all(loop, sock, socket_timeout, b'body')

        async with web_server(recording_app(seen)) as server:
            request, close = Pool(send_header=send_header, send_body=send_body,
                                  sock_pre_message=lowhaio.set_tcp_cork,
                                  sock_post_message=lowhaio.unset_tcp_cork)
            _, _, body = await request(b'POST', server.url('/hooked'))
            description = await json_of(body)
            await close()
        assert hook_calls == [('header', b'POST', '/hooked'), ('body',)]
        assert ['x-hooked', 'yes'] in description['headers']
        assert description['body_md5'] == hashlib.md5(b'body').hexdigest()

    async def test_get_sock_without_arguments(self) -> None:
        made = []

        def get_sock() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            made.append(sock)
            return sock
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            request, close = Pool(get_sock=get_sock)
            code, _, body = await request(b'GET', server.url('/'))
            await buffered(body)
            await close()
        assert code == b'200'
        assert len(made) == 1

    async def test_timeout_context_manager(self) -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(asyncio.TimeoutError):
            with lowhaio.timeout(loop, 0.05):
                await asyncio.sleep(1)
        if sys.version_info >= (3, 11):
            assert asyncio.current_task().cancelling() == 0
        with lowhaio.timeout(loop, 0.2) as reset:
            for _ in range(3):
                await asyncio.sleep(0.1)
                reset()

    async def test_debug_logging_on_the_lowhaio_logger(self, pool, caplog) -> None:
        request, _ = pool
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            with caplog.at_level(logging.DEBUG, logger='lowhaio'):
                _, _, body = await request(b'GET', server.url('/logged'))
                await buffered(body)
        assert any(record.name == 'lowhaio' and 'connection' in record.getMessage().lower()
                   for record in caplog.records)

    @pytest.mark.parametrize('given_to', ['pool', 'request'])
    async def test_a_logger_adapter_of_ones_own_logs_at_its_own_level(self, given_to,
                                                                      caplog) -> None:
        # As in 0.0.89: get_logger_adapter, given to Pool or to one request, makes each
        # request's logger from its method and URL, and that logger's level decides, not the
        # level of the 'lowhaio' logger
        made: List[Dict[str, Any]] = []

        def get_logger_adapter(extra: Dict[str, Any]) -> logging.LoggerAdapter:
            made.append(extra)
            return logging.LoggerAdapter(logging.getLogger('myapp.http'), extra)

        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            with caplog.at_level(logging.WARNING, logger='lowhaio'), \
                    caplog.at_level(logging.DEBUG, logger='myapp.http'):
                request, close = Pool(**({'get_logger_adapter': get_logger_adapter}
                                         if given_to == 'pool' else {}))
                kwargs = {'get_logger_adapter': get_logger_adapter} \
                    if given_to == 'request' else {}
                try:
                    for _ in range(2):
                        _, _, body = await request(b'GET', server.url('/mine'), **kwargs)
                        await buffered(body)
                finally:
                    await close()
        per_request = [extra for extra in made if extra]
        assert per_request == [{'lowhaio_method': 'GET', 'lowhaio_url': server.url('/mine')}] * 2
        messages = [record.getMessage() for record in caplog.records
                    if record.name == 'myapp.http' and ' connection to ' in record.getMessage()]
        assert messages == ['New connection to 127.0.0.1', 'Reusing connection to 127.0.0.1']
        assert not [record for record in caplog.records if record.name == 'lowhaio']

    # 0.0.89's own tests drive time with aiofastforward: a fake clock, entered before the pool
    # is made (or, in users' tests, after), that runs every timer due as soon as the test moves
    # it on, and moves to each timer's deadline, cancelled or not. So no timer may be armed that
    # a real run would not need (a connect timer for a loopback connect that needs no wait
    # moved that clock 10 seconds on before the request was even sent, and the request never
    # timed out), and the pool must read the clock in place at each use. These run
    # on asyncio's own loop, as 0.0.89's tests did: under uvloop, aiofastforward recurses
    # (uvloop's call_at calls the call_later it has replaced).
    @pytest.mark.parametrize('pool_made', ['inside', 'before, with a connection pooled'])
    @pytest.mark.parametrize('host', ['127.0.0.1', 'localhost'])
    def test_under_a_fake_clock_an_unanswered_request_times_out_after_socket_timeout(
            self, host: str, pool_made: str) -> None:
        async def never_answers(_: web.Request) -> web.Response:
            await asyncio.Future()
            raise AssertionError('unreachable')

        async def answers(_: web.Request) -> web.Response:
            return web.Response(body=b'ok')

        async def scenario() -> Tuple[List[float], BaseException]:
            app = web.Application()
            app.router.add_get('/never', never_answers)
            app.router.add_get('/ok', answers)
            ended_at: List[float] = []  # on the fake clock
            loop = asyncio.get_running_loop()
            async with web_server(app) as server:
                if pool_made != 'inside':
                    request, close = Pool()  # socket_timeout=10
                    _, _, body = await request(b'GET', f'http://{host}:{server.port}/ok')
                    assert await buffered(body) == b'ok'
                with FastForward(loop) as forward:
                    if pool_made == 'inside':
                        request, close = Pool()

                    async def timed_request() -> Any:
                        try:
                            return await request(b'GET', f'http://{host}:{server.port}/never')
                        finally:
                            ended_at.append(loop.time())
                    pending = asyncio.ensure_future(timed_request())
                    # forward() waits until the fake clock has reached 10: for ever if no timer
                    # of lowhaio's is on it. Bounded in real time (a thread's: the loop's own
                    # call_later now runs on the fake clock), so that the test fails instead.
                    moved_on = asyncio.ensure_future(forward(10))
                    give_up = threading.Timer(
                        5, loop.call_soon_threadsafe, (moved_on.cancel,))
                    give_up.start()
                    try:
                        await moved_on
                    finally:
                        give_up.cancel()
                try:
                    # Real time from here: without the timeout at 10, this would wait forever
                    with pytest.raises(HttpDataError) as raised:
                        await asyncio.wait_for(pending, 5)
                finally:
                    await close()
            return ended_at, raised.value

        ended_at, error = asyncio.run(scenario())
        assert ended_at == [10.0]
        assert isinstance(error.__cause__, asyncio.TimeoutError)

    @pytest.mark.parametrize('host', ['127.0.0.1', 'localhost'])
    def test_under_a_fake_clock_an_idle_connection_ends_after_keep_alive_timeout(
            self, host: str) -> None:
        async def scenario() -> List[int]:
            seen: List[web.Request] = []
            async with web_server(recording_app(seen)) as server:
                url = f'http://{host}:{server.port}/'
                with FastForward(asyncio.get_running_loop()) as forward:
                    request, close = Pool()  # keep_alive_timeout=15
                    try:
                        ports = await peer_ports(request, url, 1)
                        await forward(14)
                        ports += await peer_ports(request, url, 1)
                        await forward(15)
                        ports += await peer_ports(request, url, 2)
                    finally:
                        await close()
            return ports

        ports = asyncio.run(scenario())
        assert ports[0] == ports[1] != ports[2] == ports[3]

    async def test_no_task_is_created_per_request(self, nginx) -> None:
        loop = asyncio.get_running_loop()
        created = []
        original = loop.get_task_factory()

        def counting_factory(loop_, coro, **kwargs):
            created.append(coro)
            task = asyncio.Task(coro, loop=loop_, **kwargs) if original is None else \
                original(loop_, coro, **kwargs)
            return task
        (nginx.root / 'tasks.txt').write_bytes(b'ok')
        request, close = Pool()
        loop.set_task_factory(counting_factory)
        try:
            for _ in range(20):
                _, _, body = await request(b'GET', nginx.url('/tasks.txt'))
                assert await buffered(body) == b'ok'
        finally:
            loop.set_task_factory(original)
        await close()
        assert created == []


# ---------------------------------------------------------------------------------------------
# Closing the pool
# ---------------------------------------------------------------------------------------------

class TestClose:

    async def test_close_closes_idle_connections_and_frees_descriptors(self) -> None:
        seen: List[web.Request] = []
        async with web_server(recording_app(seen)) as server:
            baseline = open_fds()
            request, close = Pool()
            for _ in range(3):
                responses = await asyncio.gather(*(request(b'GET', server.url('/'))
                                                   for _ in range(5)))
                for _, _, body in responses:
                    await buffered(body)
            assert request.status()[('http', '127.0.0.1', server.port)]['idle'] == 5
            await close()
            assert request.status() == {}
            assert await wait_for_fds(baseline) <= baseline
