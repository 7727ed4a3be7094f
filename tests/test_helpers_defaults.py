"""lowhaio_defaults: a base URL resolved as RFC 3986 says, default headers the caller can
override, default params appended; and where it goes among the other helpers."""

from __future__ import annotations

import json
from typing import Any, Dict

import aiohttp
import pytest
from aiohttp import web
from support import web_server

from lowhaio import HttpInvalidRequestError, Pool, buffered
from lowhaio_defaults import with_defaults
from lowhaio_redirect import redirectable


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


def echo_app() -> web.Application:
    """Answers every request with what arrived: raw path and query, and the headers."""
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({
            'target': request.raw_path,
            'headers': [[name.lower(), value] for name, value in request.headers.items()],
        })
    app = web.Application()
    app.router.add_route('*', '/{tail:.*}', handler)
    return app


async def fetch(request, *args: Any, **kwargs: Any) -> Dict[str, Any]:
    code, _, body = await request(*args, **kwargs)
    assert code == b'200'
    return json.loads(await buffered(body))


@pytest.fixture
async def echo():
    async with web_server(echo_app()) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Base URL: RFC 3986 section 5.4's examples, all of them that stay on the same host
# ---------------------------------------------------------------------------------------------

# Base http://a/b/c/d;p?q from section 5.4; the host part is the test server's
RFC_3986_EXAMPLES = [
    ('g', '/b/c/g'), ('./g', '/b/c/g'), ('g/', '/b/c/g/'), ('/g', '/g'),
    ('?y', '/b/c/d;p?y'), ('g?y', '/b/c/g?y'), ('#s', '/b/c/d;p?q'), ('g#s', '/b/c/g'),
    ('g?y#s', '/b/c/g?y'), (';x', '/b/c/;x'), ('g;x', '/b/c/g;x'), ('g;x?y#s', '/b/c/g;x?y'),
    ('', '/b/c/d;p?q'), ('.', '/b/c/'), ('./', '/b/c/'), ('..', '/b/'), ('../', '/b/'),
    ('../g', '/b/g'), ('../..', '/'), ('../../', '/'), ('../../g', '/g'),
    # Abnormal examples (5.4.2)
    ('../../../g', '/g'), ('../../../../g', '/g'), ('/./g', '/g'), ('/../g', '/g'),
    ('g.', '/b/c/g.'), ('.g', '/b/c/.g'), ('g..', '/b/c/g..'), ('..g', '/b/c/..g'),
    ('./../g', '/b/g'), ('./g/.', '/b/c/g/'), ('g/./h', '/b/c/g/h'), ('g/../h', '/b/c/h'),
    ('g;x=1/./y', '/b/c/g;x=1/y'), ('g;x=1/../y', '/b/c/y'), ('g?y/./x', '/b/c/g?y/./x'),
    ('g?y/../x', '/b/c/g?y/../x'), ('g#s/./x', '/b/c/g'), ('g#s/../x', '/b/c/g'),
]


@pytest.mark.parametrize('reference, target', RFC_3986_EXAMPLES,
                         ids=[repr(reference) for reference, _ in RFC_3986_EXAMPLES])
async def test_references_resolve_as_rfc_3986_section_5_4_says(request_, echo, reference,
                                                               target):
    api = with_defaults(request_, base_url=echo.url('/b/c/d;p?q'))
    assert (await fetch(api, b'GET', reference))['target'] == target


@pytest.mark.parametrize('base_path, reference, target', [
    ('/v1/', 'users', '/v1/users'),
    ('/v1/', 'users/7?x=1', '/v1/users/7?x=1'),
    ('/v1/', '/users', '/users'),
    ('/v1', 'users', '/users'),          # no trailing slash: the last segment is replaced
    ('/v1', '', '/v1'),
    ('', 'users', '/users'),
])
async def test_the_trailing_slash_rule_agrees_with_aiohttp(request_, echo, base_path, reference,
                                                           target):
    api = with_defaults(request_, base_url=echo.url(base_path))
    assert (await fetch(api, b'GET', reference))['target'] == target
    # aiohttp's base_url joins by RFC 3986 too, but only takes a path ending in '/' (httpx
    # appends to the base path instead)
    if not echo.url(base_path).endswith('/'):
        with pytest.raises(ValueError, match='trailing'):
            aiohttp.ClientSession(base_url=echo.url(base_path))
        return
    async with aiohttp.ClientSession(base_url=echo.url(base_path)) as session:
        async with session.get(reference) as response:
            assert (await response.json())['target'] == target


async def test_an_absolute_url_is_used_as_it_is(request_, echo):
    async with web_server(echo_app()) as other:
        api = with_defaults(request_, base_url=echo.url('/v1/'))
        assert (await fetch(api, b'GET', other.url('/elsewhere')))['target'] == '/elsewhere'


async def test_without_base_url_urls_pass_through(request_, echo):
    api = with_defaults(request_, headers=((b'x-default', b'1'),))
    assert (await fetch(api, b'GET', echo.url('/p?q=1')))['target'] == '/p?q=1'


@pytest.mark.parametrize('base_url', ['/v1/', 'v1', 'ftp://h/', 'http:///path', '', 'http:/x'])
def test_a_base_url_that_is_not_absolute_http_is_refused_at_once(base_url):
    with pytest.raises(HttpInvalidRequestError, match='base_url'):
        with_defaults(None, base_url=base_url)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('caller_headers, expected', [
    ((), [['x-api-key', 'default'], ['accept', 'application/json']]),
    (((b'x-other', b'c'),), [['x-api-key', 'default'], ['accept', 'application/json'],
                             ['x-other', 'c']]),
    (((b'X-API-KEY', b'mine'),), [['accept', 'application/json'], ['x-api-key', 'mine']]),
    (((b'accept', b'text/plain'), (b'x-api-key', b'mine')),
     [['accept', 'text/plain'], ['x-api-key', 'mine']]),
    # A name the caller repeats keeps every one of the caller's values, and no default
    (((b'accept', b'a'), (b'Accept', b'b')), [['x-api-key', 'default'], ['accept', 'a'],
                                              ['accept', 'b']]),
])
async def test_default_headers_unless_the_caller_gives_the_name(request_, echo, caller_headers,
                                                                expected):
    api = with_defaults(request_, headers=((b'x-api-key', b'default'),
                                           (b'Accept', b'application/json')))
    received = (await fetch(api, b'GET', echo.url('/'), headers=caller_headers))['headers']
    assert [pair for pair in received
            if pair[0] in ('x-api-key', 'accept', 'x-other')] == expected


async def test_default_host_header_replaces_lowhaios_own(request_, echo):
    api = with_defaults(request_, headers=((b'host', b'api.example'),))
    received = (await fetch(api, b'GET', echo.url('/')))['headers']
    assert [value for name, value in received if name == 'host'] == ['api.example']


# ---------------------------------------------------------------------------------------------
# Params
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('url_query, caller_params, target', [
    ('', (), '/p?format=json&v=2'),
    ('', (('page', '3'),), '/p?page=3&format=json&v=2'),
    ('', (('format', 'xml'),), '/p?format=xml&v=2'),
    ('?v=1', (), '/p?v=1&format=json'),
    ('?v=1', (('format', 'csv'), ('format', 'tsv')), '/p?v=1&format=csv&format=tsv'),
    ('?a=%20b', (('c', 'd e'),), '/p?a=%20b&c=d+e&format=json&v=2'),
])
async def test_default_params_are_appended_unless_the_caller_gives_the_name(
        request_, echo, url_query, caller_params, target):
    api = with_defaults(request_, base_url=echo.url('/'),
                        params=(('format', 'json'), ('v', '2')))
    assert (await fetch(api, b'GET', 'p' + url_query, params=caller_params))['target'] == target


async def test_params_and_headers_can_be_any_iterable_of_pairs(request_, echo):
    api = with_defaults(request_, base_url=echo.url('/'), headers=iter([(b'x-a', b'1')]),
                        params=iter([('k', 'v')]))
    for _ in range(2):  # consumed once when wrapping, used for every call
        result = await fetch(api, b'GET', 'p', params=[('n', '1')], headers=[(b'x-b', b'2')])
        assert result['target'] == '/p?n=1&k=v'
        assert ['x-a', '1'] in result['headers'] and ['x-b', '2'] in result['headers']


# ---------------------------------------------------------------------------------------------
# With redirectable
# ---------------------------------------------------------------------------------------------

def redirecting_app(location_for_other) -> web.Application:
    async def start(request: web.Request) -> web.Response:
        raise web.HTTPFound(location_for_other())

    async def relative(request: web.Request) -> web.Response:
        raise web.HTTPFound('../landing?from=relative')

    app = echo_app()
    app.router.add_get('/v1/to-other', start)
    app.router.add_get('/v1/deep/relative', relative)
    return app


async def test_outside_redirectable_default_credentials_stop_at_the_origin(request_, echo):
    async with web_server(redirecting_app(lambda: echo.url('/landing'))) as origin:
        api = with_defaults(redirectable(request_), base_url=origin.url('/v1/'),
                            headers=((b'authorization', b'Bearer secret'),))
        result = await fetch(api, b'GET', 'to-other')
    assert result['target'] == '/landing'
    assert 'authorization' not in [name for name, _ in result['headers']]


async def test_inside_redirectable_defaults_are_added_to_every_hop(request_, echo):
    # Why the README says to put with_defaults outermost: inside, it re-adds its headers
    # after redirectable has stripped them for another origin
    async with web_server(redirecting_app(lambda: echo.url('/landing'))) as origin:
        api = redirectable(with_defaults(request_, base_url=origin.url('/v1/'),
                                         headers=((b'authorization', b'Bearer secret'),)))
        result = await fetch(api, b'GET', 'to-other')
    assert ['authorization', 'Bearer secret'] in result['headers']


@pytest.mark.parametrize('order, target', [
    # redirectable sends params with the first request only: the Location has its own query
    ('defaults-outside', '/v1/landing?from=relative'),
    # inside, with_defaults sees each hop as a new call and adds its params again
    ('defaults-inside', '/v1/landing?from=relative&k=v'),
])
async def test_relative_redirects_resolve_against_the_base_in_either_order(request_, order,
                                                                           target):
    async with web_server(redirecting_app(lambda: '/unused')) as origin:
        def wrap(request):
            return with_defaults(request, base_url=origin.url('/v1/'), params=(('k', 'v'),))
        api = wrap(redirectable(request_)) if order == 'defaults-outside' else \
            redirectable(wrap(request_))
        result = await fetch(api, b'GET', 'deep/relative')
    assert result['target'] == target


# ---------------------------------------------------------------------------------------------
# Hostile or odd input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('base_path, reference, target', [
    # The base's query and fragment are not inherited by a reference with a path (RFC 3986)
    ('/v1/?key=secret#frag', 'users', '/v1/users'),
    ('/v1/?key=secret', '', '/v1/?key=secret'),
    # Characters that must be percent-encoded are, once; existing escapes are kept
    ('/v1/', 'a b/%41?q=1 2', '/v1/a%20b/%41?q=1%202'),
    ('/v1/', 'ü', '/v1/%C3%BC'),
])
async def test_odd_references_resolve_and_are_encoded_once(request_, echo, base_path, reference,
                                                           target):
    api = with_defaults(request_, base_url=echo.url(base_path))
    assert (await fetch(api, b'GET', reference))['target'] == target


@pytest.mark.parametrize('defaults, call', [
    ({'headers': ((b'x-bad', b'a\r\nx-injected: 1'),)}, {}),
    ({'headers': ((b'bad name', b'v'),)}, {}),
    ({}, {'headers': ((b'x-bad', b'\x00'),)}),
])
async def test_malformed_default_headers_are_refused_before_sending(request_, echo, defaults,
                                                                   call):
    api = with_defaults(request_, base_url=echo.url('/'), **defaults)
    with pytest.raises(HttpInvalidRequestError):
        await api(b'GET', 'p', **call)
    assert request_.status() == {}  # no connection was even opened
