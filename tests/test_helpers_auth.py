"""lowhaio_auth: Basic, Bearer and Digest against real aiohttp.web servers. The Digest server
here checks every response per RFC 7616 with its own code (hashlib, nothing from the module);
httpx and aiohttp are run against the same servers; and credentials are followed through
redirects to other hosts (127.0.0.2) and other ports, where they must never arrive."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Sequence, Set, Tuple

import aiohttp
import httpx
import pytest
from aiohttp import web
from support import web_server

from lowhaio import HttpInvalidRequestError, Pool, buffered
from lowhaio_auth import (
    HASHES,
    DigestChallenge,
    OriginLock,
    basic,
    bearer,
    digest,
    digest_response,
    username_param,
)
from lowhaio_redirect import redirectable

USERNAME, PASSWORD = 'Mufasa', 'Circle of Life'


@pytest.fixture
async def pool():
    request, close = Pool()
    yield request
    await close()


async def counting_body(calls: List[int]):
    """A body function that records each call: replaying the body means calling it again."""
    calls.append(1)
    yield b'first part, '
    yield b'second part'

BODY = b'first part, second part'


# ---------------------------------------------------------------------------------------------
# The Digest server: RFC 7616 checked by the test's own code
# ---------------------------------------------------------------------------------------------

SERVER_HASHES = {
    'MD5': lambda data: hashlib.md5(data).hexdigest(),
    'SHA-256': lambda data: hashlib.sha256(data).hexdigest(),
    'SHA-512-256': lambda data: hashlib.new('sha512_256', data).hexdigest(),
}


class DigestServer:
    """Challenges with the given algorithms (most preferred first), and accepts a response only
    if every part is right: known nonce, unused nonce count, the request-target as uri, qop,
    opaque, algorithm, and the response hash from the password. A nonce answered `expire_after`
    times becomes stale."""

    def __init__(self, algorithms: Sequence[str] = ('SHA-256',), *, qop: Optional[str] = 'auth',
                 userhash: bool = False, expire_after: int = 1000, next_nonce: bool = False,
                 realm: str = 'lowhaio@example.org', password: str = PASSWORD) -> None:
        self.algorithms = algorithms
        self.qop = qop
        self.userhash = userhash
        self.expire_after = expire_after
        self.next_nonce = next_nonce
        self.realm = realm
        self.password = password
        self.opaque = os.urandom(8).hex()
        self.nonce_counts: Dict[str, Set[int]] = {}
        self.log: List[Tuple[str, Optional[Dict[str, str]], bytes, str]] = []

    def new_nonce(self) -> str:
        nonce = base64.b64encode(os.urandom(18)).decode()
        self.nonce_counts[nonce] = set()
        return nonce

    def challenge(self, stale: bool = False) -> web.Response:
        response = web.Response(status=401, text='who are you?')
        nonce = self.new_nonce()
        for algorithm in self.algorithms:
            params = [f'realm="{self.realm}"', f'nonce="{nonce}"', f'algorithm={algorithm}',
                      f'opaque="{self.opaque}"']
            if self.qop:
                params.append(f'qop="{self.qop}"')
            if stale:
                params.append('stale=true')
            if self.userhash:
                params.append('userhash=true')
            response.headers.add('WWW-Authenticate', 'Digest ' + ', '.join(params))
        return response

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        authorization = request.headers.get('Authorization')
        params = parse_authorization(authorization)
        verdict = self.verdict(request.method, request.raw_path, params)
        self.log.append((request.method, params, body, verdict))
        if verdict == 'stale':
            return self.challenge(stale=True)
        if verdict != 'ok':
            return self.challenge()
        response = web.Response(text=f'hello {request.method} {len(body)}')
        if self.next_nonce:
            response.headers['Authentication-Info'] = f'nextnonce="{self.new_nonce()}"'
        return response

    def verdict(self, method: str, raw_path: str, params: Optional[Dict[str, str]]) -> str:
        if params is None:
            return 'no credentials'
        algorithm = params.get('algorithm', 'MD5')
        base = algorithm[:-5] if algorithm.endswith('-sess') else algorithm
        if algorithm not in self.algorithms:
            return 'algorithm not offered'
        hash_ = SERVER_HASHES[base]
        username = hash_(f'{USERNAME}:{self.realm}'.encode()) if self.userhash else USERNAME
        if params.get('username') != username or params.get('realm') != self.realm or \
                params.get('opaque') != self.opaque or params.get('uri') != raw_path:
            return 'wrong fields'
        nonce = params.get('nonce', '')
        if nonce not in self.nonce_counts:
            return 'unknown nonce'
        a1 = hash_(f'{USERNAME}:{self.realm}:{self.password}'.encode())
        if algorithm.endswith('-sess'):
            a1 = hash_(f'{a1}:{nonce}:{params["cnonce"]}'.encode())
        a2 = hash_(f'{method}:{raw_path}'.encode())
        if self.qop:
            if params.get('qop') != 'auth' or len(params.get('nc', '')) != 8:
                return 'wrong qop'
            nc = int(params['nc'], 16)
            if nc in self.nonce_counts[nonce]:
                return 'nonce count reused'
            expected = hash_(f'{a1}:{nonce}:{params["nc"]}:{params["cnonce"]}:auth:{a2}'
                             .encode())
        else:
            nc = len(self.nonce_counts[nonce]) + 1
            expected = hash_(f'{a1}:{nonce}:{a2}'.encode())
        if params.get('response') != expected:
            return 'wrong response'
        if len(self.nonce_counts[nonce]) >= self.expire_after:
            return 'stale'
        self.nonce_counts[nonce].add(nc)
        return 'ok'

    def verdicts(self) -> List[str]:
        return [verdict for _, _, _, verdict in self.log]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route('*', '/{tail:.*}', self.handle)
        return app


def parse_authorization(value: Optional[str]) -> Optional[Dict[str, str]]:
    if value is None or not value.startswith('Digest '):
        return None
    params = {}
    for item in urllib.request.parse_http_list(value[7:]):
        name, _, param = item.partition('=')
        param = param.strip()
        if param.startswith('"'):
            param = param[1:-1]  # parse_http_list has already taken out the backslashes
        params[name.strip()] = param
    if 'username*' in params:
        params['username'] = urllib.parse.unquote(params.pop('username*')[len("UTF-8''"):])
    return params


# ---------------------------------------------------------------------------------------------
# RFC 7616's own examples
# ---------------------------------------------------------------------------------------------

RFC_3_9_1 = dict(realm='http-auth@example.org',
                 nonce='7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v',
                 opaque='FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS')


@pytest.mark.parametrize('algorithm, response', [
    ('MD5', '8ca523f5e9506fed4657c9700eebdbec'),
    ('SHA-256', '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1'),
])
def test_rfc_7616_section_3_9_1(algorithm, response):
    challenge = DigestChallenge(RFC_3_9_1['realm'], RFC_3_9_1['nonce'], algorithm,
                                HASHES[algorithm], False, 'auth', RFC_3_9_1['opaque'], False)
    assert digest_response(challenge, 'Mufasa', 'Circle of Life', 'GET', '/dir/index.html', 1,
                           'f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ') == response


def test_rfc_7616_section_3_9_2_userhash_with_erratum_4897():
    """The RFC's printed username hash and response are not those of its inputs (erratum
    4897); these are the corrected values."""
    challenge = DigestChallenge('api@example.org', '5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK',
                                'SHA-512-256', HASHES['SHA-512-256'], False, 'auth',
                                'HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS', True)
    username = 'J\u00e4s\u00f8n Doe'
    assert username_param(challenge, username) == \
        'username="793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"'
    assert digest_response(challenge, username, 'Secret, or not?', 'GET', '/doe.json', 1,
                           'NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v') == \
        '3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5'
    # Without userhash, a name that is not ASCII goes as username* (RFC 8187)
    assert username_param(challenge._replace(userhash=False), username) == \
        "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe"


# ---------------------------------------------------------------------------------------------
# Digest against the server
# ---------------------------------------------------------------------------------------------

ALGORITHMS = ['MD5', 'MD5-sess', 'SHA-256', 'SHA-256-sess', 'SHA-512-256', 'SHA-512-256-sess']


@pytest.mark.parametrize('method, with_body', [('GET', False), ('POST', True), ('PUT', True)])
@pytest.mark.parametrize('algorithm', ALGORITHMS)
async def test_each_algorithm_accepted_and_the_body_replayed(pool, algorithm, method, with_body):
    server = DigestServer((algorithm,))
    calls: List[int] = []
    kwargs = dict(body=counting_body, body_args=(calls,),
                  headers=((b'content-length', b'%d' % len(BODY)),)) if with_body else {}
    async with web_server(server.app()) as web_:
        code, _, body = await digest(pool, USERNAME, PASSWORD)(
            method.encode(), web_.url('/dir/index.html?a=b c'), params=(('q', 'x/y'),),
            **kwargs)
        assert (code, await buffered(body)) == \
            (b'200', b'hello %s %d' % (method.encode(), len(BODY) if with_body else 0))
    assert server.verdicts() == ['no credentials', 'ok']
    assert [logged_body for _, _, logged_body, _ in server.log] == [BODY if with_body else b''] * 2
    assert len(calls) == (2 if with_body else 0)


async def test_the_challenge_is_reused_with_the_nonce_count_going_up(pool):
    server = DigestServer()
    async with web_server(server.app()) as web_:
        digest_request = digest(pool, USERNAME, PASSWORD)
        for path in ('/a', '/b', '/c?d=e', '/f'):
            code, _, body = await digest_request(b'GET', web_.url(path))
            assert (code, await buffered(body)) == (b'200', b'hello GET 0')
    assert server.verdicts() == ['no credentials', 'ok', 'ok', 'ok', 'ok']
    authorized = [params for _, params, _, _ in server.log[1:]]
    assert [params['nc'] for params in authorized] == ['00000001', '00000002', '00000003',
                                                        '00000004']
    assert len({params['nonce'] for params in authorized}) == 1
    assert len({params['cnonce'] for params in authorized}) == 4


async def test_a_stale_nonce_is_renewed_without_failing_the_request(pool):
    server = DigestServer(expire_after=2)
    calls: List[int] = []
    async with web_server(server.app()) as web_:
        digest_request = digest(pool, USERNAME, PASSWORD)
        for _ in range(5):
            code, _, body = await digest_request(
                b'POST', web_.url('/'), body=counting_body, body_args=(calls,),
                headers=((b'content-length', b'%d' % len(BODY)),))
            assert (code, await buffered(body)) == (b'200', b'hello POST %d' % len(BODY))
    assert server.verdicts() == ['no credentials', 'ok', 'ok', 'stale', 'ok', 'ok', 'stale',
                                 'ok']
    # The new nonce's count starts again at 1
    assert [params['nc'] for _, params, _, _ in server.log[1:]] == \
        ['00000001', '00000002', '00000003', '00000001', '00000002', '00000003', '00000001']
    assert len(calls) == 8


async def test_a_nextnonce_in_authentication_info_is_used_next(pool):
    server = DigestServer(next_nonce=True)
    async with web_server(server.app()) as web_:
        digest_request = digest(pool, USERNAME, PASSWORD)
        for _ in range(3):
            code, _, body = await digest_request(b'GET', web_.url('/'))
            assert (code, await buffered(body)) == (b'200', b'hello GET 0')
    assert server.verdicts() == ['no credentials', 'ok', 'ok', 'ok']
    authorized = [params for _, params, _, _ in server.log[1:]]
    assert len({params['nonce'] for params in authorized}) == 3
    assert [params['nc'] for params in authorized] == ['00000001'] * 3


async def test_concurrent_requests_never_reuse_a_nonce_count(pool):
    server = DigestServer()
    async with web_server(server.app()) as web_:
        digest_request = digest(pool, USERNAME, PASSWORD)
        code, _, body = await digest_request(b'GET', web_.url('/'))
        await buffered(body)

        async def get() -> bytes:
            code, _, body = await digest_request(b'GET', web_.url('/'))
            await buffered(body)
            return code

        assert await asyncio.gather(*(get() for _ in range(30))) == [b'200'] * 30
    assert server.verdicts() == ['no credentials'] + ['ok'] * 31


async def test_a_wrong_password_returns_the_second_401(pool):
    server = DigestServer(password='something else')
    async with web_server(server.app()) as web_:
        digest_request = digest(pool, USERNAME, PASSWORD)
        for _ in range(2):
            code, headers, body = await digest_request(b'GET', web_.url('/'))
            assert (code, await buffered(body)) == (b'401', b'who are you?')
    # One retry per request, never a loop
    assert server.verdicts() == ['no credentials', 'wrong response', 'wrong response',
                                 'wrong response']


@pytest.mark.parametrize('offered, used', [
    (('SHA-256', 'MD5'), 'SHA-256'),
    (('MD5', 'SHA-256'), 'MD5'),
    (('SHA-512-256-sess', 'MD5'), 'SHA-512-256-sess'),
])
async def test_the_first_supported_challenge_is_used(pool, offered, used):
    server = DigestServer(offered)
    async with web_server(server.app()) as web_:
        code, _, body = await digest(pool, USERNAME, PASSWORD)(b'GET', web_.url('/'))
        assert (code, await buffered(body)) == (b'200', b'hello GET 0')
    assert server.log[-1][1]['algorithm'] == used


async def test_userhash_and_rfc_2069_servers(pool):
    for server in (DigestServer(userhash=True), DigestServer(qop=None)):
        async with web_server(server.app()) as web_:
            digest_request = digest(pool, USERNAME, PASSWORD)
            for _ in range(2):
                code, _, body = await digest_request(b'GET', web_.url('/x'))
                assert (code, await buffered(body)) == (b'200', b'hello GET 0')
        assert server.verdicts() == ['no credentials', 'ok', 'ok']


# ---------------------------------------------------------------------------------------------
# Malformed and unanswerable challenges: the 401 comes back as it is, after one request
# ---------------------------------------------------------------------------------------------

UNANSWERABLE = [
    'Basic realm="x"',
    'Digest',
    'Digest realm',
    'Digest realm="unterminated, nonce="n"',
    'Digest nonce="n", qop="auth"',
    'Digest realm="r", qop="auth"',
    'Digest realm="r", nonce="", qop="auth"',
    'Digest realm="r", nonce="n", qop="auth", algorithm=SHA-1024',
    'Digest realm="r", nonce="n", qop="auth-int"',
    'Digest realm="r", nonce="n", algorithm=MD5-sess',
    'Digest realm="r", realm="s", nonce="n", qop="auth"',
    'Digest realm="r", nonce="n", nonce="m", qop="auth"',
    'Digest realm=r nonce=n',
    '"',
    ',,,,',
    '=',
    'Digest =, =, realm="r"',
    'Digest realm="' + 'r' * 6000 + '", nonce=',
    'Newauth realm="r", nonce="n", qop="auth", algorithm=MD5',
]


@pytest.mark.parametrize('www_authenticate', UNANSWERABLE)
async def test_an_unanswerable_challenge_returns_the_401_as_it_is(pool, www_authenticate):
    seen: List[Optional[str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get('Authorization'))
        return web.Response(status=401, text='denied',
                            headers={'WWW-Authenticate': www_authenticate})

    app = web.Application()
    app.router.add_get('/', handler)
    async with web_server(app) as web_:
        code, headers, body = await digest(pool, USERNAME, PASSWORD)(b'GET', web_.url('/'))
        assert (code, await buffered(body)) == (b'401', b'denied')
        assert dict(headers)[b'www-authenticate'] == www_authenticate.encode()
    assert seen == [None]


async def test_a_challenge_among_others_and_with_odd_but_valid_syntax_is_answered(pool):
    """Several challenges in one header, parameters with spaces around '=', escaped quotes,
    a realm with a comma, and a realm in UTF-8 (hashed as the bytes received)."""
    server = DigestServer(realm='caf\u00e9, "quoted" \\ realm')
    nonce = server.new_nonce()
    realm_quoted = server.realm.replace('\\', '\\\\').replace('"', '\\"')

    async def handler(request: web.Request) -> web.Response:
        if request.headers.get('Authorization'):
            return await server.handle(request)
        response = web.Response(status=401)
        response.headers.add('WWW-Authenticate', 'Newauth realm="apps", type=1, '
                             'title="Login to \\"apps\\"", Basic realm="simple"')
        response.headers.add('WWW-Authenticate', f'Digest realm = "{realm_quoted}" , '
                             f'nonce="{nonce}", qop="auth,auth-int", algorithm = SHA-256, '
                             f'opaque="{server.opaque}"')
        return response

    app = web.Application()
    app.router.add_get('/', handler)
    async with web_server(app) as web_:
        code, _, body = await digest(pool, USERNAME, PASSWORD)(b'GET', web_.url('/'))
        assert (code, await buffered(body)) == (b'200', b'hello GET 0')
    assert server.verdicts() == ['ok']


# ---------------------------------------------------------------------------------------------
# httpx and aiohttp against the same server
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('algorithm', ['MD5', 'MD5-sess', 'SHA-256', 'SHA-256-sess'])
async def test_accepted_where_httpx_and_aiohttp_are(pool, algorithm):
    """The server accepts all three clients' answers to the same challenges; SHA-512-256 is
    lowhaio's alone (neither httpx nor aiohttp offers it)."""
    server = DigestServer((algorithm,))
    async with web_server(server.app()) as web_:
        url = web_.url('/path?x=1')
        code, _, body = await digest(pool, USERNAME, PASSWORD)(b'GET', url)
        await buffered(body)
        async with httpx.AsyncClient(auth=httpx.DigestAuth(USERNAME, PASSWORD)) as client:
            httpx_code = (await client.get(url)).status_code
        async with aiohttp.ClientSession(
                middlewares=(aiohttp.DigestAuthMiddleware(USERNAME, PASSWORD),)) as session:
            async with session.get(url) as response:
                aiohttp_code = response.status
    assert (code, httpx_code, aiohttp_code) == (b'200', 200, 200)
    assert server.verdicts() == ['no credentials', 'ok'] * 3


# ---------------------------------------------------------------------------------------------
# Basic and Bearer
# ---------------------------------------------------------------------------------------------

def recording_app(seen: List[Tuple[str, Optional[str], bytes]], valid: Sequence[str] = (),
                  redirect_to: Optional[str] = None) -> web.Application:
    """Records (path, Authorization, body). Answers 401 unless the Authorization is in `valid`
    (any is fine when `valid` is empty); /redirect answers 302 to `redirect_to`."""
    async def handler(request: web.Request) -> web.Response:
        authorization = request.headers.get('Authorization')
        seen.append((request.path, authorization, await request.read()))
        if request.path == '/redirect' and redirect_to:
            return web.Response(status=302, headers={'Location': redirect_to})
        if valid and authorization not in valid:
            return web.Response(status=401, text='no', headers={'WWW-Authenticate': 'Bearer'})
        return web.Response(text=f'ok {authorization}')
    app = web.Application()
    app.router.add_route('*', '/{tail:.*}', handler)
    return app


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # aiohttp's auth= is on its way out
@pytest.mark.parametrize('username, password', [
    ('Aladdin', 'open sesame'),
    ('user', ''),
    ('', 'password'),
    ('us\u00e9r', 'p\u00e4ss:word with colon'),
])
async def test_basic_sends_what_httpx_and_aiohttp_send(pool, username, password):
    seen: List[Tuple[str, Optional[str], bytes]] = []
    async with web_server(recording_app(seen)) as web_:
        code, _, body = await basic(pool, username, password)(b'GET', web_.url('/'))
        await buffered(body)
        async with httpx.AsyncClient(auth=(username, password)) as client:
            await client.get(web_.url('/'))
        async with aiohttp.ClientSession() as session:
            async with session.get(web_.url('/'), auth=aiohttp.BasicAuth(
                    username, password, encoding='utf-8')) as response:
                await response.read()
    expected = 'Basic ' + base64.b64encode(f'{username}:{password}'.encode()).decode()
    assert [authorization for _, authorization, _ in seen] == [expected] * 3


def test_a_basic_username_with_a_colon_is_refused():
    async def never(*_, **__):
        raise AssertionError('nothing is sent')
    with pytest.raises(HttpInvalidRequestError):
        basic(never, 'user:name', 'password')


async def test_bearer_with_a_str_token_is_not_retried(pool):
    seen: List[Tuple[str, Optional[str], bytes]] = []
    async with web_server(recording_app(seen, valid=('Bearer good',))) as web_:
        for token, expected in (('good', b'200'), ('bad', b'401')):
            code, _, body = await bearer(pool, token)(b'GET', web_.url('/'))
            await buffered(body)
            assert code == expected
    assert [authorization for _, authorization, _ in seen] == ['Bearer good', 'Bearer bad']


@pytest.mark.parametrize('tokens, valid, code, calls', [
    (['t1', 't2'], ['Bearer t1'], b'200', 1),          # accepted at once
    (['old', 'new'], ['Bearer new'], b'200', 2),       # refreshed after the 401
    (['old', 'older'], ['Bearer new'], b'401', 2),     # still refused: only one retry
])
async def test_bearer_token_function_refreshed_once_on_401_with_the_body_replayed(
        pool, tokens, valid, code, calls):
    seen: List[Tuple[str, Optional[str], bytes]] = []
    issued: List[str] = []
    body_calls: List[int] = []

    async def token() -> str:
        issued.append(tokens[len(issued)])
        return issued[-1]

    async with web_server(recording_app(seen, valid=valid)) as web_:
        got, _, body = await bearer(pool, token)(
            b'POST', web_.url('/'), body=counting_body, body_args=(body_calls,),
            headers=((b'content-length', b'%d' % len(BODY)),))
        await buffered(body)
    assert got == code
    assert issued == tokens[:calls]
    assert seen == [('/', f'Bearer {t}', BODY) for t in tokens[:calls]]
    assert len(body_calls) == calls


@pytest.mark.parametrize('token', ['', 'with space', 'line\r\nx-injected: 1', 'caf\u00e9'])
async def test_a_malformed_bearer_token_is_refused_before_sending(pool, token):
    async def token_function() -> str:
        return token
    for given in (token, token_function):
        with pytest.raises(HttpInvalidRequestError):
            await bearer(pool, given)(b'GET', 'http://127.0.0.1:1/')


@pytest.mark.parametrize('wrap', ['basic', 'bearer', 'digest'])
async def test_a_callers_own_authorization_header_is_sent_as_it_is(pool, wrap):
    seen: List[Tuple[str, Optional[str], bytes]] = []
    async with web_server(recording_app(seen, valid=('Bearer mine',))) as web_:
        wrapped = {'basic': lambda: basic(pool, 'u', 'p'), 'bearer': lambda: bearer(pool, 'x'),
                   'digest': lambda: digest(pool, 'u', 'p')}[wrap]()
        code, _, body = await wrapped(b'GET', web_.url('/'),
                                      headers=((b'Authorization', b'Bearer mine'),))
        await buffered(body)
    assert seen == [('/', 'Bearer mine', b'')]


# ---------------------------------------------------------------------------------------------
# Credentials stay with their origin
# ---------------------------------------------------------------------------------------------

def wrapped_with(scheme: str, request):
    async def token() -> str:
        return 'token'
    return {'basic': lambda: basic(request, USERNAME, PASSWORD),
            'bearer': lambda: bearer(request, token),
            'digest': lambda: digest(request, USERNAME, PASSWORD)}[scheme]()


@pytest.mark.parametrize('first_url, other_url, same', [
    ('http://h/x', 'http://h:80/y', True),
    ('http://h/x', 'http://H./y?z', True),
    ('http://h/x', 'https://h:80/x', False),
    ('http://h/x', 'http://h:8080/x', False),
    ('http://h/x', 'http://g/x', False),
    ('http://[::1]/x', 'http://[0:0::1]:80/x', False),  # spelled differently: not the same
])
def test_an_origin_is_scheme_host_and_port(first_url, other_url, same):
    lock = OriginLock()
    assert lock.allows(first_url)
    assert lock.allows(other_url) is same


@pytest.mark.parametrize('other', ['another host', 'another port'])
@pytest.mark.parametrize('order', ['redirectable(auth)', 'auth(redirectable)'])
@pytest.mark.parametrize('scheme', ['basic', 'bearer', 'digest'])
async def test_credentials_never_follow_a_redirect_to_another_origin(pool, scheme, order,
                                                                      other):
    """The first server accepts the credentials then redirects; the second one challenges
    (Digest) and must never see an Authorization header, in either stacking."""
    second = DigestServer()
    host = '127.0.0.2' if other == 'another host' else '127.0.0.1'
    async with web_server(second.app(), host=host) as second_web:
        first = DigestServer()
        seen: List[Optional[str]] = []

        async def first_handler(request: web.Request) -> web.Response:
            seen.append(request.headers.get('Authorization'))
            if scheme == 'digest':
                response = await first.handle(request)
                if response.status == 401:
                    return response
            return web.Response(status=302, headers={'Location': second_web.url('/secret')})

        app = web.Application()
        app.router.add_get('/start', first_handler)
        async with web_server(app) as first_web:
            wrapped = redirectable(wrapped_with(scheme, pool)) if order == 'redirectable(auth)' \
                else wrapped_with(scheme, redirectable(pool))
            code, _, body = await wrapped(b'GET', first_web.url('/start'))
            await buffered(body)
            assert code == b'401'
    assert second.log and all(params is None for _, params, _, _ in second.log)
    assert seen[-1] is not None  # the first origin did get the credentials


@pytest.mark.parametrize('scheme', ['basic', 'bearer', 'digest'])
async def test_credentials_stay_with_the_first_origin_used(pool, scheme):
    first, second = DigestServer(), DigestServer()
    async with web_server(first.app()) as first_web, \
            web_server(second.app(), host='127.0.0.2') as second_web:
        wrapped = wrapped_with(scheme, pool)
        for url in (first_web.url('/1'), second_web.url('/2'), first_web.url('/3')):
            code, _, body = await wrapped(b'GET', url)
            await buffered(body)
    assert any(params is not None or scheme != 'digest' for _, params, _, _ in first.log)
    assert [params for _, params, _, _ in second.log] == [None]
    assert second.verdicts() == ['no credentials']


async def test_same_origin_redirects_keep_the_credentials(pool):
    seen: List[Tuple[str, Optional[str], bytes]] = []
    async with web_server(recording_app(seen, redirect_to='/final')) as web_:
        for wrapped in (redirectable(basic(pool, 'u', 'p')), basic(redirectable(pool), 'u', 'p')):
            code, _, body = await wrapped(b'GET', web_.url('/redirect'))
            assert (code, await buffered(body)) == (b'200', b'ok Basic dTpw')
    assert [(path, authorization) for path, authorization, _ in seen] == \
        [('/redirect', 'Basic dTpw'), ('/final', 'Basic dTpw')] * 2
