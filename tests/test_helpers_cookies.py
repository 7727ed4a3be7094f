"""lowhaio_cookies: cookies kept and sent by http.cookiejar's rules, against real servers, with
host names from a real DNS server; the jar compared with httpx's (the same stdlib rules) and the
cookies sent compared with aiohttp's."""

from __future__ import annotations

import asyncio
import gzip
import http.cookiejar
import pathlib
import time
import urllib.parse
import warnings
from typing import Dict, List, Sequence, Tuple

import aiohttp
import httpx
import pytest
from aiohttp import web
from support import client_ssl_context, dns_server, responding, scripted_server, web_server

from lowhaio import Pool, buffered
from lowhaio_cookies import cookies, new_policy
from lowhaio_decompress import decompressed
from lowhaio_redirect import redirectable

NAMES = ('example.test', 'www.example.test', 'a.www.example.test', 'other.test',
         'www.example.co.uk', 'example.co.uk')


def cookie_app(received: List[Tuple[str, str]]) -> web.Application:
    """Any path: each `c` query value becomes a Set-Cookie line, `to` a 302 Location; the
    answer is the Cookie header received, which is also recorded with the path."""
    async def handler(request: web.Request) -> web.Response:
        cookie = request.headers.get('Cookie', '')
        received.append((request.path, cookie))
        response = web.Response(text=cookie, status=302 if 'to' in request.query else 200)
        for line in request.query.getall('c', []):
            response.headers.add('Set-Cookie', line)
        if 'to' in request.query:
            response.headers['Location'] = request.query['to']
        return response
    app = web.Application()
    app.router.add_route('*', '/{tail:.*}', handler)
    return app


class Site:
    """One server, reachable under every name in NAMES through the DNS server."""

    def __init__(self, server, received: List[Tuple[str, str]]) -> None:
        self.server = server
        self.received = received

    def url(self, name: str, path: str, *cookie_lines: str, to: str = '') -> str:
        query = '&'.join([f'c={quote(line)}' for line in cookie_lines] +
                         ([f'to={quote(to)}'] if to else []))
        return self.server.url_for(name, path) + (f'?{query}' if query else '')


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe='')


@pytest.fixture
async def site():
    received: List[Tuple[str, str]] = []
    async with dns_server() as dns, web_server(cookie_app(received)) as server:
        for name in NAMES:
            dns.set(name, ['127.0.0.1'])
        request, close = Pool(get_dns_resolver=dns.get_dns_resolver)
        yield Site(server, received), request
        await close()


async def sent(request, url: str) -> str:
    """The Cookie header the server received for this request."""
    code, _, body = await request(b'GET', url)
    assert code in (b'200', b'302')
    return (await buffered(body)).decode()


def jar_contents(jar: http.cookiejar.CookieJar) -> List[Tuple[str, str, str, str, bool, bool]]:
    return sorted((c.name, c.value or '', c.domain, c.path, c.secure, c.expires is None)
                  for c in jar)


# ---------------------------------------------------------------------------------------------
# Rules: domain, path, host-only, refusals
# ---------------------------------------------------------------------------------------------

# (set from, Set-Cookie line, request to, sent?)
MATCHING = [
    # host-only: no Domain attribute, only that exact host
    ('www.example.test', '/', 'k=v', 'www.example.test', '/', True),
    ('www.example.test', '/', 'k=v', 'a.www.example.test', '/', False),
    ('www.example.test', '/', 'k=v', 'example.test', '/', False),
    # a Domain attribute: that domain and below
    ('www.example.test', '/', 'k=v; Domain=example.test', 'a.www.example.test', '/', True),
    ('www.example.test', '/', 'k=v; Domain=.example.test', 'example.test', '/', True),
    ('www.example.test', '/', 'k=v; Domain=example.test', 'other.test', '/', False),
    # refused: a Domain the setting host is not in, or a public-suffix-like one
    ('www.example.test', '/', 'k=v; Domain=other.test', 'other.test', '/', False),
    ('www.example.test', '/', 'k=v; Domain=a.www.example.test', 'a.www.example.test', '/',
     False),
    ('www.example.test', '/', 'k=v; Domain=test', 'other.test', '/', False),
    ('www.example.co.uk', '/', 'k=v; Domain=co.uk', 'example.co.uk', '/', False),
    ('www.example.co.uk', '/', 'k=v; Domain=example.co.uk', 'example.co.uk', '/', True),
    # paths: the Path attribute and below, by segment; the default is the directory set from
    ('example.test', '/', 'k=v; Path=/a', 'example.test', '/a', True),
    ('example.test', '/', 'k=v; Path=/a', 'example.test', '/a/b', True),
    ('example.test', '/', 'k=v; Path=/a', 'example.test', '/', False),
    ('example.test', '/', 'k=v; Path=/a', 'example.test', '/ab', False),
    ('example.test', '/a/b/c', 'k=v', 'example.test', '/a/b/d', True),
    ('example.test', '/a/b/c', 'k=v', 'example.test', '/a/x', False),
    # IP literals: host-only only
    ('127.0.0.1', '/', 'k=v', '127.0.0.1', '/', True),
]


@pytest.mark.parametrize('from_host, from_path, line, to_host, to_path, is_sent', MATCHING)
async def test_domain_and_path_rules(site, from_host, from_path, line, to_host, to_path,
                                     is_sent):
    site_, request = site
    cookie_request = cookies(request)
    await sent(cookie_request, site_.url(from_host, from_path, line))
    assert await sent(cookie_request, site_.url(to_host, to_path)) == ('k=v' if is_sent else '')


async def test_more_specific_paths_first_and_every_match_sent(site):
    site_, request = site
    cookie_request = cookies(request)
    await sent(cookie_request, site_.url('example.test', '/', 'a=1; Path=/', 'b=2; Path=/x/y',
                                         'c=3; Path=/x'))
    assert await sent(cookie_request, site_.url('example.test', '/x/y/z')) == 'b=2; c=3; a=1'


async def test_a_later_set_cookie_replaces_and_max_age_0_deletes(site):
    site_, request = site
    cookie_request = cookies(request)
    await sent(cookie_request, site_.url('example.test', '/', 'k=1', 'j=1'))
    await sent(cookie_request, site_.url('example.test', '/', 'k=2'))
    assert await sent(cookie_request, site_.url('example.test', '/')) == 'k=2; j=1'
    await sent(cookie_request, site_.url('example.test', '/', 'k=x; Max-Age=0',
                                         'j=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT'))
    assert await sent(cookie_request, site_.url('example.test', '/')) == ''
    assert list(cookie_request.jar) == []


async def test_cookies_expire_by_max_age_and_expires(site):
    site_, request = site
    cookie_request = cookies(request)
    # Expires has whole seconds: 3 s from now is between 2 and 3 s away
    in_three_seconds = time.strftime('%a, %d %b %Y %H:%M:%S GMT',
                                     time.gmtime(time.time() + 3))
    await sent(cookie_request, site_.url(
        'example.test', '/', 'age=1; Max-Age=2', f'date=1; Expires={in_three_seconds}',
        'session=s'))
    assert await sent(cookie_request, site_.url('example.test', '/')) == \
        'age=1; date=1; session=s'
    await asyncio.sleep(3.2)
    assert await sent(cookie_request, site_.url('example.test', '/')) == 'session=s'


async def test_secure_cookies_only_over_https():
    """Set over https on one port; sent to https on another port of the same host (cookies
    are not port-specific, RFC 6265 section 8.5) but never over http."""
    received: List[Tuple[str, str]] = []
    app = cookie_app(received)
    request, close = Pool(get_ssl_context=client_ssl_context)
    try:
        async with web_server(app, tls=True) as tls1, web_server(app, tls=True) as tls2, \
                web_server(app) as plain:
            cookie_request = cookies(request)
            await sent(cookie_request, tls1.url('/?c=s%3D1%3B%20Secure&c=p%3D2'))
            assert await sent(cookie_request, tls2.url('/')) == 's=1; p=2'
            assert await sent(cookie_request, plain.url('/')) == 'p=2'
    finally:
        await close()


# ---------------------------------------------------------------------------------------------
# The jar: given, inspected, saved, and the caller's own cookie header
# ---------------------------------------------------------------------------------------------

async def test_the_jar_is_the_callers_and_is_saved_and_loaded(site, tmp_path: pathlib.Path):
    site_, request = site
    jar = http.cookiejar.MozillaCookieJar(str(tmp_path / 'cookies.txt'), policy=new_policy())
    cookie_request = cookies(request, jar)
    assert cookie_request.jar is jar
    await sent(cookie_request, site_.url('www.example.test', '/', 'k=v; Max-Age=3600',
                                         'd=1; Domain=example.test; Path=/p; Max-Age=3600'))
    jar.save()

    loaded = http.cookiejar.MozillaCookieJar(str(tmp_path / 'cookies.txt'), policy=new_policy())
    loaded.load()
    assert jar_contents(loaded) == jar_contents(jar)
    assert sorted(c.name for c in loaded) == ['d', 'k']
    other_request = cookies(request, loaded)
    assert await sent(other_request, site_.url('www.example.test', '/p')) == 'd=1; k=v'
    assert await sent(other_request, site_.url('a.www.example.test', '/p')) == 'd=1'


async def test_a_cookie_header_from_the_caller_is_sent_as_it_is(site):
    site_, request = site
    cookie_request = cookies(request)
    await sent(cookie_request, site_.url('example.test', '/', 'k=v'))
    code, _, body = await cookie_request(b'GET', site_.url('example.test', '/'),
                                         headers=((b'Cookie', b'mine=1'),))
    assert await buffered(body) == b'mine=1'


async def test_one_jar_shared_by_concurrent_requests(site):
    site_, request = site
    cookie_request = cookies(request)
    await asyncio.gather(*(
        sent(cookie_request, site_.url('example.test', '/', f'k{i}={i}')) for i in range(20)))
    assert sorted(c.name for c in cookie_request.jar) == sorted(f'k{i}' for i in range(20))


# ---------------------------------------------------------------------------------------------
# Hostile and malformed Set-Cookie lines
# ---------------------------------------------------------------------------------------------

MALFORMED = [
    b'',
    b';',
    b'=',
    b'=v',
    b'novalue',
    b'k=v; Expires=Mon, 99 Foo 9999 99:99:99 GMT',
    b'k=v; Expires=',
    b'k=v; Max-Age',
    b'k=v; Max-Age=abc',
    b'k=v; Max-Age=99999999999999999999999999',
    b'k=v; Max-Age=-99999999999999999999999999',
    b'k=v; Domain=',
    b'k=v; Domain=..',
    b'k=v; Domain=.',
    b'k=v; Path=',
    b'k=v; Path=relative',
    b'k="unterminated',
    b'k=v; Version=x',
    b'k=\xff\xfe; Path=/\xe9',
    b'k=' + b'v' * 8000,
    b'a=1, b=2',
    b'k=v;;;;; Secure; Secure; HttpOnly=1; SameSite=Nonsense',
]


@pytest.mark.parametrize('line', MALFORMED, ids=[repr(m[:30]) for m in MALFORMED])
async def test_a_malformed_set_cookie_costs_only_itself(line):
    """No exception and no warning; the well-formed cookie of the same response is kept; and
    whatever the jar made of the line, it is what httpx's jar (also http.cookiejar) made."""
    head = (b'HTTP/1.1 200 OK\r\nset-cookie: good=1\r\nset-cookie: ' + line +
            b'\r\ncontent-length: 2\r\n\r\nok')
    async with scripted_server(responding(head, head)) as server:
        request, close = Pool()
        try:
            cookie_request = cookies(request)
            code, headers, body = await cookie_request(b'GET', server.url('/'))
            assert (code, await buffered(body)) == (b'200', b'ok')
        finally:
            await close()
        async with httpx.AsyncClient() as client:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', UserWarning)  # http.cookiejar's, via httpx
                await client.get(server.url('/'))
    assert ('good', '1') in [(c.name, c.value) for c in cookie_request.jar]
    ours, theirs = jar_contents(cookie_request.jar), jar_contents(client.cookies.jar)
    # Where http.cookiejar trips on a line, httpx loses all the response's cookies
    assert ours == theirs or (theirs == [] and len(ours) == 1)


async def test_a_line_the_stdlib_trips_on_does_not_lose_the_others(recwarn):
    """http.cookiejar drops every cookie of a response when one line raises inside it (and
    warns 'http.cookiejar bug!'); here only that line is lost, silently."""
    head = (b'HTTP/1.1 200 OK\r\nset-cookie: good=1\r\n'
            b'set-cookie: k=v; Expires=Mon, 99 Foo 9999 99:99:99 GMT\r\n'
            b'set-cookie: also=2\r\ncontent-length: 0\r\n\r\n')
    async with scripted_server(responding(head)) as server:
        request, close = Pool()
        try:
            cookie_request = cookies(request)
            _, _, body = await cookie_request(b'GET', server.url('/'))
            await buffered(body)
        finally:
            await close()
    assert sorted(c.name for c in cookie_request.jar) == ['also', 'good']
    assert not [w for w in recwarn if 'cookiejar' in str(w.message)]


# ---------------------------------------------------------------------------------------------
# The same as httpx and aiohttp
# ---------------------------------------------------------------------------------------------

SCENARIO: Sequence[Tuple[str, Sequence[str]]] = (
    ('/login', ('session=abc; Path=/; HttpOnly', 'theme=dark; Max-Age=3600',
                'scoped=1; Path=/app')),
    ('/app/page', ('last=page; Path=/app',)),
    ('/logout', ('theme=; Max-Age=0',)),
)
FOLLOW_UPS = ('/', '/app', '/app/x', '/other')


async def test_jar_and_cookies_sent_agree_with_httpx_and_aiohttp():
    received: List[Tuple[str, str]] = []
    async with web_server(cookie_app(received)) as server:
        def url(path: str, lines: Sequence[str] = ()) -> str:
            query = '&'.join(f'c={quote(line)}' for line in lines)
            return server.url_for('localhost', path) + (f'?{query}' if query else '')

        async def run(get) -> Dict[str, str]:
            for path, lines in SCENARIO:
                await get(url(path, lines))
            return {path: await get(url(path)) for path in FOLLOW_UPS}

        request, close = Pool()
        cookie_request = cookies(request)
        try:
            ours = await run(lambda u: sent(cookie_request, u))
        finally:
            await close()
        async with httpx.AsyncClient() as client:
            httpx_sent = await run(lambda u: httpx_text(client, u))
        async with aiohttp.ClientSession() as session:
            aiohttp_sent = await run(lambda u: aiohttp_text(session, u))

    assert ours == httpx_sent
    assert jar_contents(cookie_request.jar) == jar_contents(client.cookies.jar)
    # aiohttp orders cookies its own way; the set sent is the same
    assert {path: sorted(value.split('; ')) for path, value in ours.items()} == \
        {path: sorted(value.split('; ')) for path, value in aiohttp_sent.items()}
    assert ours['/app/x'] == 'scoped=1; last=page; session=abc'


async def httpx_text(client: httpx.AsyncClient, url: str) -> str:
    return (await client.get(url, follow_redirects=False)).text


async def aiohttp_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, allow_redirects=False) as response:
        return await response.text()


# ---------------------------------------------------------------------------------------------
# With redirects, and with decompressed
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('order', ['cookies inside', 'cookies outside'])
async def test_each_hop_stores_and_gets_its_own_cookies_inside_or_outside_redirectable(
        site, order):
    site_, request = site
    stacked = redirectable(cookies(request)) if order == 'cookies inside' else \
        cookies(redirectable(request))
    jar = stacked.jar if order == 'cookies outside' else None
    final = site_.url('other.test', '/end', 'last=z')
    middle = site_.url('www.example.test', '/middle', 'hop=2', to=final)
    start = site_.url('www.example.test', '/start', 'first=1', 'wide=w; Domain=example.test',
                      to=middle)
    assert await sent(stacked, start) == ''
    assert site_.received == [
        ('/start', ''),
        ('/middle', 'first=1; wide=w'),   # the 302's Set-Cookie, sent on the redirected request
        ('/end', ''),                     # another domain: none of them
    ]
    if jar is not None:
        # Each response's cookies are filed under the URL that answered, the last one too
        assert sorted((c.domain, c.name) for c in jar) == [
            ('.example.test', 'wide'), ('other.test', 'last'),
            ('www.example.test', 'first'), ('www.example.test', 'hop')]


async def test_outside_redirectable_a_same_origin_hop_gets_the_cookies_for_its_path(site):
    """redirectable keeps the cookie header on a same-origin hop; the jar's cookies for the
    new path replace it, and a hop to another origin gets that origin's cookies only."""
    site_, request = site
    stacked = cookies(redirectable(request))
    await sent(stacked, site_.url('www.example.test', '/', 'k=v'))
    await sent(stacked, site_.url('www.example.test', '/app/x', 'scoped=1; Path=/app'))
    await sent(stacked, site_.url('other.test', '/', 'theirs=1'))
    site_.received.clear()
    other_origin = site_.url('other.test', '/elsewhere')
    app_path = site_.url('www.example.test', '/app/page', to=other_origin)
    await sent(stacked, site_.url('www.example.test', '/a', to=app_path))
    assert site_.received == [
        ('/a', 'k=v'), ('/app/page', 'scoped=1; k=v'), ('/elsewhere', 'theirs=1'),
    ]


async def test_a_callers_own_cookie_header_is_left_alone_through_redirects(site):
    site_, request = site
    stacked = cookies(redirectable(request))
    await sent(stacked, site_.url('www.example.test', '/', 'k=v'))
    site_.received.clear()
    same_origin = site_.url('www.example.test', '/next')
    code, _, body = await stacked(b'GET', site_.url('www.example.test', '/a', to=same_origin),
                                  headers=((b'cookie', b'mine=1'),))
    await buffered(body)
    assert site_.received == [('/a', 'mine=1'), ('/next', 'mine=1')]


async def test_cookies_redirectable_decompressed_together(site):
    site_, request = site
    received: List[str] = []

    async def gzip_page(request_: web.Request) -> web.Response:
        received.append(request_.headers.get('Cookie', ''))
        response = web.Response(body=gzip.compress(b'page ' * 1000),
                                headers={'content-encoding': 'gzip'})
        response.headers.add('Set-Cookie', 'seen=yes')
        return response

    async def start(request_: web.Request) -> web.Response:
        return web.Response(status=302, headers={'Location': '/page', 'Set-Cookie': 'hop=1'})

    app = web.Application()
    app.router.add_get('/start', start)
    app.router.add_get('/page', gzip_page)
    async with web_server(app) as server:
        for stacked in (redirectable(cookies(decompressed(request))),
                        cookies(redirectable(decompressed(request)))):
            code, headers, body = await stacked(b'GET', server.url('/start'))
            assert (code, await buffered(body)) == (b'200', b'page ' * 1000)
    # Inside or outside redirectable, the 302's cookie reaches /page
    assert received == ['hop=1', 'hop=1']
