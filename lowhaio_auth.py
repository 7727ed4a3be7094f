"""HTTP authentication for lowhaio: Basic, Bearer and Digest.

    auth_request = basic(request, 'user', 'password')
    auth_request = bearer(request, 'token')        # or an async function returning a token
    auth_request = digest(request, 'user', 'password')
    code, headers, body = await auth_request(b'GET', url)

Each returns a function with the same signature as `request`. Credentials go only to the origin
(scheme, host, port) of the first request made through that function: a request to any other
origin, a redirect hop included when stacked inside `redirectable`, is sent without them. A
caller's own `authorization` header is sent as it is, and then nothing is added or retried.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import urllib.parse
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from lowhaio import (
    Headers,
    HttpInvalidRequestError,
    Params,
    Request,
    Response,
    ResponseBody,
    parse_target,
)

Origin = Tuple[str, str, int]
Token = Union[str, Callable[[], Awaitable[str]]]

# A 401's body is read to its end before the retry, so its connection can be reused, but only
# up to this much: a larger one is cheaper to abandon along with its connection
MAX_DRAINED_BYTES = 65536


class OriginLock:
    """The origin the credentials belong to: the one of the first request."""

    def __init__(self) -> None:
        self.origin: Optional[Origin] = None

    def allows(self, url: str) -> bool:
        origin = parse_target(url).key
        if self.origin is None:
            self.origin = origin
        return origin == self.origin


def has_authorization(headers: Headers) -> bool:
    return any(key.lower() == b'authorization' for key, _ in headers)


async def discard(body: ResponseBody) -> None:
    num_bytes = 0
    async for chunk in body:
        num_bytes += len(chunk)
        if num_bytes > MAX_DRAINED_BYTES:
            await body.aclose()
            return


# ---------------------------------------------------------------------------------------------
# Basic (RFC 7617)
# ---------------------------------------------------------------------------------------------

def basic_credentials(username: str, password: str) -> bytes:
    if ':' in username:
        # RFC 7617 section 2: the user-id cannot contain a colon, since the colon ends it
        raise HttpInvalidRequestError('A Basic username cannot contain ":"')
    # RFC 7617 section 2.1: UTF-8 is the charset servers can announce and clients use
    return b'Basic ' + base64.b64encode(f'{username}:{password}'.encode('utf-8'))


def basic(request: Request, username: str, password: str) -> Request:
    """Wrap `request` so that it sends `authorization: Basic ...` with every request to the
    origin of the first one. The credentials are sent without waiting for a challenge, as
    aiohttp and httpx do; use https, since they are only base64-encoded."""
    credentials = basic_credentials(username, password)
    lock = OriginLock()

    async def basic_request(method: bytes, url: str, params: Params = (), headers: Headers = (),
                            **kwargs: Any) -> Response:
        headers = tuple(headers)
        if lock.allows(url) and not has_authorization(headers):
            headers += ((b'authorization', credentials),)
        return await request(method, url, params=params, headers=headers, **kwargs)

    return basic_request


# ---------------------------------------------------------------------------------------------
# Bearer (RFC 6750)
# ---------------------------------------------------------------------------------------------

async def current_token(token: Token) -> bytes:
    value = token if isinstance(token, str) else await token()
    if not isinstance(value, str) or not value or \
            any(ord(char) <= 0x20 or ord(char) > 0x7E for char in value):
        raise HttpInvalidRequestError(
            'A bearer token must be a non-empty str of visible ASCII characters')
    return b'Bearer ' + value.encode('ascii')


def bearer(request: Request, token: Token) -> Request:
    """Wrap `request` so that it sends `authorization: Bearer <token>` to the origin of the
    first request.

    token: a str, or an async function returning one. The function is called before every
        request (so it decides how long to cache a token), and once more after a 401, when the
        request is made again, once, with the body function called again for the body.
    """
    lock = OriginLock()

    async def bearer_request(method: bytes, url: str, params: Params = (), headers: Headers = (),
                             **kwargs: Any) -> Response:
        headers = tuple(headers)
        if not lock.allows(url) or has_authorization(headers):
            return await request(method, url, params=params, headers=headers, **kwargs)

        async def attempt() -> Response:
            authorization = ((b'authorization', await current_token(token)),)
            return await request(method, url, params=params, headers=headers + authorization,
                                 **kwargs)

        code, response_headers, body = await attempt()
        if code != b'401' or isinstance(token, str):
            return code, response_headers, body
        await discard(body)
        return await attempt()

    return bearer_request


# ---------------------------------------------------------------------------------------------
# Digest (RFC 7616)
# ---------------------------------------------------------------------------------------------

def sha512_256(data: bytes) -> str:
    return hashlib.new('sha512_256', data).hexdigest()


def hash_functions() -> Dict[str, Callable[[bytes], str]]:
    functions: Dict[str, Callable[[bytes], str]] = {
        'MD5': lambda data: hashlib.md5(data).hexdigest(),
        'SHA-256': lambda data: hashlib.sha256(data).hexdigest(),
    }
    # From OpenSSL, which has it from 1.1.1 on: without it the algorithm is not offered
    try:
        sha512_256(b'')
        functions['SHA-512-256'] = sha512_256
    except ValueError:
        pass
    return functions


HASHES: Dict[str, Callable[[bytes], str]] = hash_functions()
# RFC 9110 section 11.6.1: challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ], and a
# header value is a comma-separated list of challenges, whose parameters are separated by
# commas too. Each element of the list is one of these, up to the next comma
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
QUOTED_STRING = r'"(?:[^"\\]|\\.)*"'
TOKEN68 = r'[A-Za-z0-9\-._~+/]+=*'
ELEMENT_RE: re.Pattern[str] = re.compile(
    rf'(?:(?P<name>{TOKEN})[ \t]*=[ \t]*(?P<value>{TOKEN}|{QUOTED_STRING})'
    rf'|(?P<scheme>{TOKEN})(?:[ ]+(?:(?P<first_name>{TOKEN})[ \t]*=[ \t]*'
    rf'(?P<first_value>{TOKEN}|{QUOTED_STRING})|{TOKEN68}))?)[ \t]*(?:,|\Z)')
SEPARATORS_RE: re.Pattern[str] = re.compile(r'[ \t,]*')


class Challenge(NamedTuple):
    scheme: str
    params: Dict[str, str]


def unquoted(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r'\\(.)', r'\1', value[1:-1], flags=re.DOTALL)
    return value


def add_param(challenge: Challenge, name: str, value: str) -> None:
    name = name.lower()
    # A repeated parameter makes the challenge ambiguous: marked, so it is not used
    challenge.params[name] = '\0' if name in challenge.params else unquoted(value)


def challenges(values: List[str]) -> Iterator[Challenge]:
    """The challenges of WWW-Authenticate values, in order. Where a value stops parsing, the
    challenge it stops in is dropped, and the rest of that value with it; a token68
    challenge has no parameters here."""
    for value in values:
        current: Optional[Challenge] = None
        position = 0
        while True:
            position = SEPARATORS_RE.match(value, position).end()  # type: ignore[union-attr]
            if position == len(value):
                break
            element = ELEMENT_RE.match(value, position)
            if element is None:
                current = None
                break
            position = element.end()
            if element.group('scheme'):
                if current is not None:
                    yield current
                current = Challenge(element.group('scheme').lower(), {})
                if element.group('first_name'):
                    add_param(current, element.group('first_name'), element.group('first_value'))
            elif current is not None:
                add_param(current, element.group('name'), element.group('value'))
        if current is not None:
            yield current


class DigestChallenge(NamedTuple):
    realm: str
    nonce: str
    algorithm: str  # as the server wrote it, e.g. 'SHA-256-sess'
    hash: Callable[[bytes], str]
    session: bool
    qop: Optional[str]  # 'auth', or None for an RFC 2069 server that offers no qop
    opaque: Optional[str]
    userhash: bool


def digest_challenge(challenge: Challenge) -> Optional[DigestChallenge]:
    """The challenge if it is a Digest one this module can answer, else None."""
    params = challenge.params
    if challenge.scheme != 'digest' or '\0' in params.values():
        return None
    realm, nonce = params.get('realm'), params.get('nonce')
    algorithm = params.get('algorithm', 'MD5')
    base, session = (algorithm[:-5], True) if algorithm.lower().endswith('-sess') else \
        (algorithm, False)
    hash_function = next((function for name, function in HASHES.items()
                          if name.lower() == base.lower()), None)
    if realm is None or not nonce or hash_function is None:
        return None
    qop: Optional[str] = None
    if 'qop' in params:
        offered = [option.strip().lower() for option in params['qop'].split(',')]
        if 'auth' not in offered:
            return None  # auth-int would need the body hashed before sending it
        qop = 'auth'
    elif session:
        return None  # RFC 2069 had no -sess, nor the cnonce it needs
    return DigestChallenge(realm, nonce, algorithm, hash_function, session, qop,
                           params.get('opaque'), params.get('userhash', '').lower() == 'true')


def text(value: bytes) -> str:
    # Header bytes need not be UTF-8; surrogateescape gives any byte back unchanged in wire(),
    # so a realm or nonce is hashed and echoed exactly as received
    return value.decode('utf-8', 'surrogateescape')


def wire(value: str) -> bytes:
    return value.encode('utf-8', 'surrogateescape')


def header_values(headers: Headers, name: bytes) -> List[str]:
    return [text(value) for key, value in headers if key == name]


def first_digest_challenge(headers: Headers) -> Optional[DigestChallenge]:
    """RFC 7616 section 3.7: the server lists its challenges most preferred first, and the
    client uses the first it supports."""
    for challenge in challenges(header_values(headers, b'www-authenticate')):
        usable = digest_challenge(challenge)
        if usable is not None:
            return usable
    return None


def digest_response(challenge: DigestChallenge, username: str, password: str, method: str,
                    uri: str, nc: int, cnonce: str) -> str:
    """The response value of RFC 7616 section 3.4.1."""
    def hash_(*parts: str) -> str:
        # RFC 7616 section 4: username and password in UTF-8 (charset=UTF-8 is the only
        # value defined, and what servers expect without it nowadays)
        return challenge.hash(wire(':'.join(parts)))

    a1 = hash_(username, challenge.realm, password)
    if challenge.session:
        a1 = hash_(a1, challenge.nonce, cnonce)
    a2 = hash_(method, uri)
    if challenge.qop is None:
        return hash_(a1, challenge.nonce, a2)
    return hash_(a1, challenge.nonce, '%08x' % nc, cnonce, challenge.qop, a2)


def quoted(value: str) -> str:
    return '"' + value.replace('\\', '\\\\').replace('"', '\\"') + '"'


def username_param(challenge: DigestChallenge, username: str) -> str:
    if challenge.userhash:
        # RFC 7616 section 3.4.4
        return 'username=' + quoted(challenge.hash(wire(f'{username}:{challenge.realm}')))
    if username.isascii() and username.isprintable():
        return 'username=' + quoted(username)
    # RFC 7616 section 3.4.4: a name that cannot be a quoted-string goes in RFC 8187 form
    return "username*=UTF-8''" + urllib.parse.quote(username, safe='')


def digest_authorization(challenge: DigestChallenge, username: str, password: str,
                         method: bytes, uri: str, nc: int, cnonce: str) -> bytes:
    # latin-1 never fails: a method that is not a token is refused by lowhaio itself
    response = digest_response(challenge, username, password, method.decode('latin-1'), uri,
                               nc, cnonce)
    params = [username_param(challenge, username), 'realm=' + quoted(challenge.realm),
              'uri=' + quoted(uri), 'algorithm=' + challenge.algorithm,
              'nonce=' + quoted(challenge.nonce)]
    if challenge.qop is not None:
        params += ['nc=%08x' % nc, 'cnonce=' + quoted(cnonce), 'qop=' + challenge.qop]
    params.append('response=' + quoted(response))
    if challenge.opaque is not None:
        params.append('opaque=' + quoted(challenge.opaque))
    if challenge.userhash:
        params.append('userhash=true')
    return b'Digest ' + wire(', '.join(params))


def request_target(url: str, params: Params) -> str:
    """The request-target lowhaio sends for this URL and params: what the uri parameter must
    be, byte for byte, for the server to accept the response."""
    target = parse_target(url)
    path = target.path_and_query.decode('ascii')
    try:
        query = urllib.parse.urlencode(tuple(params), doseq=True)
    except (TypeError, ValueError, UnicodeError) as exception:
        raise HttpInvalidRequestError(f'Invalid params: {params!r}') from exception
    if query:
        path += ('&' if target.has_query else '?') + query
    return path


class NonceCounter:
    """The current challenge of the origin and how many times its nonce was used."""

    def __init__(self) -> None:
        self.challenge: Optional[DigestChallenge] = None
        self.count = 0

    def use(self, challenge: DigestChallenge) -> None:
        if self.challenge is None or challenge.nonce != self.challenge.nonce:
            self.count = 0
        self.challenge = challenge

    def next(self) -> Tuple[DigestChallenge, int]:
        assert self.challenge is not None
        self.count += 1
        return self.challenge, self.count

    def next_nonce(self, headers: Headers) -> None:
        """RFC 7616 section 3.5: Authentication-Info can give the nonce to use next."""
        values = header_values(headers, b'authentication-info')
        params = next(challenges(['Digest ' + value for value in values]), None)
        nextnonce = params.params.get('nextnonce') if params else None
        if self.challenge is not None and nextnonce and nextnonce != '\0':
            self.use(self.challenge._replace(nonce=nextnonce))


def digest(request: Request, username: str, password: str) -> Request:
    """Wrap `request` so that it answers Digest challenges (RFC 7616) from the origin of the
    first request.

    MD5, SHA-256 and SHA-512-256, each also -sess; qop=auth (or no qop, for RFC 2069
    servers). The first request goes without credentials; a 401 with a Digest challenge is
    answered by making the request again, once, calling the body function again for the body.
    Later requests to the origin answer the last challenge straight away, counting up the nonce
    count, until the server asks again (a 401, with stale=true when only the nonce had
    expired). A 401 that cannot be answered (no Digest challenge, only qop=auth-int, an unknown
    algorithm, a malformed header) is returned as it is.
    """
    lock = OriginLock()
    nonces = NonceCounter()

    async def digest_request(method: bytes, url: str, params: Params = (), headers: Headers = (),
                             **kwargs: Any) -> Response:
        headers = tuple(headers)
        if not lock.allows(url) or has_authorization(headers):
            return await request(method, url, params=params, headers=headers, **kwargs)
        uri = request_target(url, params)

        async def attempt(authorized: bool) -> Response:
            authorization: Headers = ()
            if authorized:
                challenge, nc = nonces.next()
                cnonce = os.urandom(16).hex()
                authorization = ((b'authorization', digest_authorization(
                    challenge, username, password, method, uri, nc, cnonce)),)
            return await request(method, url, params=params, headers=headers + authorization,
                                 **kwargs)

        code, response_headers, body = await attempt(authorized=nonces.challenge is not None)
        challenge = first_digest_challenge(response_headers) if code == b'401' else None
        if challenge is None:
            nonces.next_nonce(response_headers)
            return code, response_headers, body
        nonces.use(challenge)
        await discard(body)
        code, response_headers, body = await attempt(authorized=True)
        nonces.next_nonce(response_headers)
        return code, response_headers, body

    return digest_request
