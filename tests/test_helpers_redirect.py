"""lowhaio_redirect: following redirects as RFC 9110 and RFC 3986 say, against real servers."""

from __future__ import annotations

import asyncio
import hashlib
from typing import List, Tuple

import pytest
from aiohttp import web
import support
from support import web_server

import lowhaio
import lowhaio_redirect
from lowhaio import HttpError, Pool, buffered, streamed
from lowhaio_redirect import (
    HttpTooManyRedirects,
    get,
    origin,
    redirectable,
    resolve_location,
    strip_authorization_if_different_host,
    unchanged,
)


class Seen:
    """What a server received: method, path with query, headers, body, client address."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str, dict, bytes, tuple]] = []

    async def record(self, request: web.Request) -> None:
        self.requests.append((
            request.method, request.raw_path, request.headers.copy(), await request.read(),
            request.transport.get_extra_info('peername'),
        ))

    @property
    def last(self):
        return self.requests[-1]


def redirect_to(location: str, status: int = 301, seen: Seen = None, body: bytes = b''):
    async def handler(request: web.Request) -> web.Response:
        if seen is not None:
            await seen.record(request)
        else:
            await request.read()
        return web.Response(status=status, headers={'location': location}, body=body)
    return handler


def respond(body: bytes, seen: Seen = None):
    async def handler(request: web.Request) -> web.Response:
        if seen is not None:
            await seen.record(request)
        return web.Response(body=body)
    return handler


def app_with(*routes: Tuple[str, str, object]) -> web.Application:
    app = web.Application()
    app.add_routes([web.route(method, path, handler) for method, path, handler in routes])
    return app


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


# ---------------------------------------------------------------------------------------------
# Location resolution (RFC 3986 section 5.4 reference examples)
# ---------------------------------------------------------------------------------------------

RFC_3986_BASE = 'http://a/b/c/d;p?q'


@pytest.mark.parametrize('reference, target', [
    ('g', 'http://a/b/c/g'),
    ('./g', 'http://a/b/c/g'),
    ('g/', 'http://a/b/c/g/'),
    ('/g', 'http://a/g'),
    ('//g', 'http://g'),
    ('?y', 'http://a/b/c/d;p?y'),
    ('g?y', 'http://a/b/c/g?y'),
    ('#s', 'http://a/b/c/d;p?q'),       # fragment resolved, then dropped: never sent
    ('g#s', 'http://a/b/c/g'),
    (';x', 'http://a/b/c/;x'),
    ('', 'http://a/b/c/d;p?q'),
    ('.', 'http://a/b/c/'),
    ('..', 'http://a/b/'),
    ('../g', 'http://a/b/g'),
    ('../..', 'http://a/'),
    ('../../g', 'http://a/g'),
    ('../../../g', 'http://a/g'),       # abnormal: more .. than segments
    ('/./g', 'http://a/g'),
    ('g.', 'http://a/b/c/g.'),
    ('g;x=1/../y', 'http://a/b/c/y'),
    ('https://other:8443/p?x=1', 'https://other:8443/p?x=1'),
])
def test_location_resolved_per_rfc_3986(reference, target):
    assert resolve_location(RFC_3986_BASE, reference.encode()) == target


@pytest.mark.parametrize('url_a, url_b, same', [
    ('http://h/x', 'http://h:80/y', True),
    ('https://h/x', 'https://H:443/y', True),
    ('http://h/x', 'https://h/x', False),
    ('http://h/x', 'http://h:8080/x', False),
    ('http://h/x', 'http://g/x', False),
])
def test_origin_normalises_default_ports_and_case(url_a, url_b, same):
    assert (origin(url_a) == origin(url_b)) is same


def test_0_0_1_default_header_transform_still_importable():
    headers = ((b'Authorization', b'a'), (b'x-other', b'o'))
    assert strip_authorization_if_different_host(headers, 'h', 'h') == headers
    assert strip_authorization_if_different_host(headers, 'h', 'g') == ((b'x-other', b'o'),)


# ---------------------------------------------------------------------------------------------
# Following redirects against real servers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('location, path', [
    ('c', '/a/c'),
    ('../x', '/x'),
    ('?q=1', '/a/b?q=1'),
    ('/a/d?e=f', '/a/d?e=f'),
])
async def test_relative_locations_resolved_against_current_url(request_, location, path):
    seen = Seen()

    async def target(request: web.Request) -> web.Response:
        await seen.record(request)
        return web.Response(body=b'target')

    async def start(request: web.Request) -> web.Response:
        if request.query:  # the '?q=1' case comes back to this route
            return await target(request)
        return web.Response(status=302, headers={'location': location})

    app = app_with(('GET', '/a/b', start), ('GET', '/a/c', target), ('GET', '/x', target),
                   ('GET', '/a/d', target))
    async with web_server(app) as server:
        code, _, body = await redirectable(request_)(b'GET', server.url('/a/b'))
        assert (code, await buffered(body)) == (b'200', b'target')
    assert seen.last[1] == path


@pytest.mark.parametrize('location', [
    '/caf%C3%A9%20menu?q=a%26b',            # already percent-encoded: sent as it is
    '/café menu?q=a%26b',                   # raw UTF-8 in the header: encoded by lowhaio
])
async def test_location_path_and_query_reach_the_server_intact(request_, location):
    seen = Seen()

    async def start(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={'location': location})

    async def target(request: web.Request) -> web.Response:
        await seen.record(request)
        return web.Response(body=request.path.encode() + b' ' + request.query['q'].encode())

    app = app_with(('GET', '/start', start), ('GET', '/café menu', target))
    async with web_server(app) as server:
        code, _, body = await redirectable(request_)(b'GET', server.url('/start'))
        assert (code, await buffered(body)) == (b'200', '/café menu a&b'.encode())
    assert seen.last[1] == '/caf%C3%A9%20menu?q=a%26b'


async def test_scheme_relative_and_absolute_locations_reach_other_servers(request_):
    seen = Seen()
    async with web_server(app_with(('GET', '/p', respond(b'other', seen)))) as other:
        scheme_relative = '//' + other.url('/p').split('://', 1)[1]
        app = app_with(('GET', '/scheme-relative', redirect_to(scheme_relative)),
                       ('GET', '/absolute', redirect_to(other.url('/p'))))
        async with web_server(app) as server:
            for path in ('/scheme-relative', '/absolute'):
                code, _, body = await redirectable(request_)(b'GET', server.url(path))
                assert (code, await buffered(body)) == (b'200', b'other')
    assert len(seen.requests) == 2


@pytest.mark.parametrize('status', [301, 302])
async def test_post_becomes_get_without_body_on_301_302(request_, status):
    seen = Seen()
    app = app_with(('POST', '/a', redirect_to('/b', status)), ('GET', '/b', respond(b'b', seen)))
    async with web_server(app) as server:
        code, _, body = await redirectable(request_)(
            b'POST', server.url('/a'), body=streamed(b'abc'),
            headers=((b'content-length', b'3'), (b'content-type', b'text/plain'),
                     (b'x-kept', b'yes')))
        assert (code, await buffered(body)) == (b'200', b'b')
    method, _, headers, received, _ = seen.last
    assert (method, received) == ('GET', b'')
    assert 'Content-Length' not in headers and 'Content-Type' not in headers
    assert headers['X-Kept'] == 'yes'


@pytest.mark.parametrize('status', [301, 302])
async def test_put_keeps_method_and_body_on_301_302(request_, status):
    seen = Seen()
    app = app_with(('PUT', '/a', redirect_to('/b', status)), ('PUT', '/b', respond(b'b', seen)))
    async with web_server(app) as server:
        code, _, body = await redirectable(request_)(
            b'PUT', server.url('/a'), body=streamed(b'abc'), headers=((b'content-length', b'3'),))
        assert (code, await buffered(body)) == (b'200', b'b')
    assert (seen.last[0], seen.last[3]) == ('PUT', b'abc')


@pytest.mark.parametrize('method, expected_method', [
    (b'POST', 'GET'), (b'PUT', 'GET'), (b'DELETE', 'GET'), (b'GET', 'GET'), (b'HEAD', 'HEAD'),
])
async def test_303_turns_all_but_get_and_head_into_get(request_, method, expected_method):
    seen = Seen()
    app = app_with(('*', '/a', redirect_to('/b', 303)), ('*', '/b', respond(b'', seen)))
    async with web_server(app) as server:
        has_body = method in (b'POST', b'PUT', b'DELETE')
        code, _, body = await redirectable(request_)(
            method, server.url('/a'), body=streamed(b'abc') if has_body else streamed(b''),
            headers=((b'content-length', b'3' if has_body else b'0'),))
        await buffered(body)
    assert code == b'200'
    assert seen.last[0] == expected_method
    if expected_method == 'GET' and has_body:
        assert seen.last[3] == b'' and 'Content-Length' not in seen.last[2]


@pytest.mark.parametrize('status', [307, 308])
async def test_307_308_resend_method_and_body_by_calling_body_again(request_, status):
    seen = Seen()
    calls = []

    async def body(prefix, *, suffix):
        calls.append((prefix, suffix))
        yield prefix
        yield suffix

    app = app_with(('POST', '/a', redirect_to('/b', status)),
                   ('POST', '/b', redirect_to('/c', status)),
                   ('POST', '/c', respond(b'c', seen)))
    async with web_server(app) as server:
        code, _, response = await redirectable(request_)(
            b'POST', server.url('/a'), body=body, body_args=(b'ab',),
            body_kwargs=(('suffix', b'cd'),), headers=((b'content-length', b'4'),))
        assert (code, await buffered(response)) == (b'200', b'c')
    assert (seen.last[0], seen.last[3]) == ('POST', b'abcd')
    assert calls == [(b'ab', b'cd')] * 3


@pytest.mark.parametrize('change', ['port', 'host', 'none'])
async def test_credentials_dropped_when_origin_changes(request_, change):
    seen = Seen()
    host = '127.0.0.2' if change == 'host' else '127.0.0.1'
    async with web_server(app_with(('GET', '/b', respond(b'', seen))), host=host) as target:
        location = '/b' if change == 'none' else target.url('/b')
        app = app_with(('GET', '/a', redirect_to(location)), ('GET', '/b', respond(b'', seen)))
        async with web_server(app) as server:
            _, _, body = await redirectable(request_)(
                b'GET', server.url('/a'),
                headers=((b'authorization', b'secret'), (b'cookie', b'c=1'),
                         (b'proxy-authorization', b'p'), (b'x-other', b'kept')))
            await buffered(body)
    headers = seen.last[2]
    assert headers['X-Other'] == 'kept'
    kept = change == 'none'
    for name in ('Authorization', 'Cookie', 'Proxy-Authorization'):
        assert (name in headers) is kept


@pytest.mark.parametrize('change', ['port', 'host', 'none'])
@pytest.mark.parametrize('strip_credentials', [True, False])
async def test_a_host_header_set_goes_only_to_its_origin(request_, change, strip_credentials):
    seen = Seen()
    host = '127.0.0.2' if change == 'host' else '127.0.0.1'
    async with web_server(app_with(('GET', '/b', respond(b'', seen))), host=host) as target:
        location = '/b' if change == 'none' else target.url('/b')
        app = app_with(('GET', '/a', redirect_to(location, seen=seen)),
                       ('GET', '/b', respond(b'', seen)))
        async with web_server(app) as server:
            _, _, body = await redirectable(
                request_, strip_credentials_on_origin_change=strip_credentials)(
                b'GET', server.url('/a'), headers=((b'host', b'vhost.example'),))
            await buffered(body)
        target_authority = target.url('/').split('/')[2]
    assert [request[2]['Host'] for request in seen.requests] == \
        ['vhost.example', 'vhost.example' if change == 'none' else target_authority]


async def test_redirect_response_body_drained_so_connection_reused(request_):
    seen = Seen()
    app = app_with(('GET', '/a', redirect_to('/b', seen=seen, body=b'moved' * 100)),
                   ('GET', '/b', respond(b'b', seen)))
    async with web_server(app) as server:
        _, _, body = await redirectable(request_)(b'GET', server.url('/a'))
        await buffered(body)
    redirect_peer, target_peer = seen.requests[0][4], seen.requests[1][4]
    assert redirect_peer == target_peer


async def test_large_redirect_body_abandoned_and_redirect_still_followed(request_):
    seen = Seen()
    app = app_with(('GET', '/a', redirect_to('/b', seen=seen, body=b'x' * 1_000_000)),
                   ('GET', '/b', respond(b'b', seen)))
    async with web_server(app) as server:
        code, _, body = await redirectable(request_)(b'GET', server.url('/a'))
        assert (code, await buffered(body)) == (b'200', b'b')
    # Abandoning the body closed its connection, so the next request needed a new one
    assert seen.requests[0][4] != seen.requests[1][4]


async def test_3xx_without_location_returned_as_is(request_):
    async def no_location(_: web.Request) -> web.Response:
        return web.Response(status=300, body=b'choices')

    async def moved_without_location(_: web.Request) -> web.Response:
        return web.Response(status=301, body=b'nowhere')

    app = app_with(('GET', '/300', no_location), ('GET', '/301', moved_without_location))
    async with web_server(app) as server:
        for path, expected in (('/300', (b'300', b'choices')), ('/301', (b'301', b'nowhere'))):
            code, _, body = await redirectable(request_)(b'GET', server.url(path))
            assert (code, await buffered(body)) == expected


async def test_too_many_redirects_raises_after_max_redirects(request_):
    def chain(length):
        return [('GET', f'/{i}', redirect_to(f'/{i + 1}')) for i in range(length)] + [
            ('GET', f'/{length}', respond(b'end'))]

    async with web_server(app_with(*chain(3))) as server:
        code, _, body = await redirectable(request_, max_redirects=3)(b'GET', server.url('/0'))
        assert (code, await buffered(body)) == (b'200', b'end')
    async with web_server(app_with(*chain(4))) as server:
        with pytest.raises(HttpTooManyRedirects) as raised:
            await redirectable(request_, max_redirects=3)(b'GET', server.url('/0'))
    assert isinstance(raised.value, HttpError)


async def test_redirect_loop_raises(request_):
    app = app_with(('GET', '/a', redirect_to('/b')), ('GET', '/b', redirect_to('/a')))
    async with web_server(app) as server:
        with pytest.raises(HttpTooManyRedirects):
            await redirectable(request_)(b'GET', server.url('/a'))


async def test_params_sent_with_first_request_only(request_):
    seen = Seen()
    app = app_with(('GET', '/a', redirect_to('/b', seen=seen)), ('GET', '/b', respond(b'', seen)))
    async with web_server(app) as server:
        _, _, body = await redirectable(request_)(
            b'GET', server.url('/a'), params=(('x', '1'),))
        await buffered(body)
    assert [request[1] for request in seen.requests] == ['/a?x=1', '/b']


async def test_empty_location_resolves_against_url_with_params(request_):
    seen = Seen()

    async def start(request: web.Request) -> web.Response:
        await seen.record(request)
        if len(seen.requests) == 1:
            return web.Response(status=302, headers={'location': '?page=2'})
        return web.Response(body=b'done')

    async with web_server(app_with(('GET', '/list', start))) as server:
        _, _, body = await redirectable(request_)(
            b'GET', server.url('/list'), params=(('page', '1'),))
        assert await buffered(body) == b'done'
    assert [request[1] for request in seen.requests] == ['/list?page=1', '/list?page=2']


async def test_only_listed_codes_are_followed(request_):
    app = app_with(('GET', '/a', redirect_to('/b', 302)), ('GET', '/b', respond(b'b')))
    async with web_server(app) as server:
        only_301 = redirectable(request_, redirects=((b'301', lambda method: unchanged),))
        code, headers, body = await only_301(b'GET', server.url('/a'))
        await buffered(body)
    assert code == b'302'
    assert (b'location', b'/b') in headers


async def test_custom_transform_headers_called_with_headers_and_both_hosts(request_):
    seen = Seen()
    calls = []

    def transform(request_headers, request_host, redirect_host):
        calls.append((dict(request_headers), request_host, redirect_host))
        return request_headers + ((b'x-hop', str(len(calls)).encode()),)

    async with web_server(app_with(('GET', '/b', respond(b'', seen))), host='127.0.0.2') as other:
        app = app_with(('GET', '/a', redirect_to(other.url('/b'))))
        async with web_server(app) as server:
            _, _, body = await redirectable(request_, transform_headers=transform)(
                b'GET', server.url('/a'), headers=((b'authorization', b'secret'),
                                                   (b'x-mine', b'1')))
            await buffered(body)
    # Credentials were already stripped for the new origin when transform_headers ran
    assert calls == [({b'x-mine': b'1'}, '127.0.0.1', '127.0.0.2')]
    assert seen.last[2]['X-Hop'] == '1' and 'Authorization' not in seen.last[2]


async def test_credentials_kept_across_origins_when_asked(request_):
    seen = Seen()
    async with web_server(app_with(('GET', '/b', respond(b'', seen)))) as other:
        app = app_with(('GET', '/a', redirect_to(other.url('/b'))))
        async with web_server(app) as server:
            _, _, body = await redirectable(request_, strip_credentials_on_origin_change=False)(
                b'GET', server.url('/a'), headers=((b'authorization', b'secret'),))
            await buffered(body)
    assert seen.last[2]['Authorization'] == 'secret'


def test_names_of_0_0_1_are_there():
    assert lowhaio_redirect.buffered is lowhaio.buffered
    assert lowhaio_redirect.empty_async_iterator is lowhaio.empty_async_iterator
    assert lowhaio_redirect.default_redirects is lowhaio_redirect.DEFAULT_REDIRECTS


async def test_rules_written_for_0_0_1_work(request_):
    """A rule gets the method and returns a transform of (method, body, body_args,
    body_kwargs, headers), exactly as in lowhaio-redirect 0.0.1."""
    seen = Seen()

    def put_instead(method, body, body_args, body_kwargs, headers):
        return b'PUT', body, body_args, body_kwargs, headers

    app = app_with(('POST', '/a', redirect_to('/b', 302)), ('PUT', '/b', respond(b'', seen)),
                   ('POST', '/c', redirect_to('/d', 307)), ('GET', '/d', respond(b'', seen)))
    async with web_server(app) as server:
        custom = redirectable(request_, redirects=(
            (b'302', lambda method: put_instead if method == b'POST' else unchanged),
            (b'307', lambda method: get),
        ))
        for path in ('/a', '/c'):
            _, _, body = await custom(b'POST', server.url(path), body=streamed(b'abc'),
                                      headers=((b'content-length', b'3'),))
            await buffered(body)
    assert [(method, received) for method, _, _, received, _ in seen.requests] == [
        ('PUT', b'abc'), ('GET', b'')]


async def test_head_redirect_with_content_length_but_no_body_does_not_hang(request_):
    seen = Seen()
    # aiohttp answers HEAD with the content-length the GET body would have, and no body
    app = app_with(('HEAD', '/a', redirect_to('/b', 301, body=b'moved' * 100)),
                   ('HEAD', '/b', respond(b'final' * 10, seen)))
    async with web_server(app) as server:
        code, headers, body = await redirectable(request_)(b'HEAD', server.url('/a'))
        assert (code, await buffered(body)) == (b'200', b'')
    assert dict(headers)[b'content-length'] == b'50'
    assert seen.last[0] == 'HEAD'


@pytest.mark.parametrize('status', [b'307', b'308'])
async def test_a_redirect_while_the_body_is_sent_sends_it_whole_to_the_new_location(status):
    # The server redirects as soon as it has the head, and reads no more of that body: the
    # upload stops there (lowhaio returns the answer), and the body, made again, goes whole to
    # the new location
    size = 32 * 1024 * 1024
    chunk = bytes(range(256)) * 256  # 64 KiB
    received = []

    async def handler(conn):
        head = await conn.read_head()
        if head.startswith(b'POST /upload '):
            await conn.read(1000)
            conn.write(b'HTTP/1.1 %s Moved\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n'
                       % status)
            await asyncio.sleep(60)  # reads nothing more, and the client goes first
            return
        digest, left = hashlib.sha256(), size
        while left:
            data = await conn.read_some(min(left, 65536))
            digest.update(data)
            left -= len(data)
        received.append(digest.hexdigest())
        conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstored')
        await conn.drain()

    async def body():
        for _ in range(size // len(chunk)):
            yield chunk

    async with support.scripted_server(handler) as server, \
            support.open_pool(socket_timeout=10) as request:
        code, _, response = await redirectable(request)(
            b'POST', server.url('/upload'), body=body,
            headers=((b'content-length', b'%d' % size),))
        assert (code, await buffered(response)) == (b'200', b'stored')
    assert received == [hashlib.sha256(chunk * (size // len(chunk))).hexdigest()]
