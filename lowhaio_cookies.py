"""A cookie jar for lowhaio, with the standard library's `http.cookiejar` doing the rules.

    cookie_request = cookies(request)
    code, headers, body = await cookie_request(b'GET', url)
    cookie_request.jar   # the http.cookiejar.CookieJar

`cookies` returns a function with the same signature as `request`. Before each request, the
cookies of the jar that match its URL are added as a `cookie` header; after it, the response's
`Set-Cookie` lines are stored. Domain and path matching, `Secure`, `Max-Age` and `Expires`,
host-only cookies and refused domains are all `http.cookiejar`'s: this module only presents
lowhaio's requests and responses to it in the shape it reads.
"""

from __future__ import annotations

import http.cookiejar
import urllib.parse
import warnings
from typing import Any, Dict, List, Optional, Tuple

from lowhaio import Headers, Params, Request, Response
from lowhaio_redirect import redirect_observers


def text(value: bytes) -> str:
    # Header bytes are not always UTF-8; latin-1 gets any byte back out unchanged, and is
    # what http.client and httpx hand http.cookiejar
    return value.decode('latin-1')


def wire(value: str) -> bytes:
    try:
        return value.encode('latin-1')
    except UnicodeEncodeError:
        # Only a cookie put in the jar by hand can get here
        return value.encode('utf-8')


class CookieRequest:
    """A lowhaio request as http.cookiejar reads one: the parts of urllib.request.Request it
    uses. The cookie header the jar adds is kept in `added`."""

    def __init__(self, url: str, headers: Headers) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.full_url: str = url
        self.type: str = parsed.scheme.lower()
        self.host: str = parsed.netloc.rpartition('@')[2].lower()
        self.origin_req_host: str = (parsed.hostname or '').lower()
        # Every request is one the user asked for: redirects are followed by the user's
        # choice of redirectable, so none is the "unverifiable" third-party kind
        self.unverifiable = False
        self.headers: Dict[str, str] = {text(key).lower(): text(value)
                                        for key, value in headers}
        self.added: Dict[str, str] = {}

    def get_full_url(self) -> str:
        return self.full_url

    def get_host(self) -> str:
        return self.host

    def get_type(self) -> str:
        return self.type

    def get_origin_req_host(self) -> str:
        return self.origin_req_host

    def is_unverifiable(self) -> bool:
        return self.unverifiable

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers

    def get_header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.headers.get(name.lower(), default)

    def header_items(self) -> List[Tuple[str, str]]:
        return list(self.headers.items())

    def add_unredirected_header(self, name: str, value: str) -> None:
        self.added[name.lower()] = value


class CookieResponse:
    """A lowhaio response as http.cookiejar reads one: info().get_all(name)."""

    def __init__(self, headers: Headers) -> None:
        self.headers: Headers = headers

    def info(self) -> CookieResponse:
        return self

    def get_all(self, name: str, default: Optional[List[str]] = None) -> Optional[List[str]]:
        wanted = name.lower().encode('ascii')
        values = [text(value) for key, value in self.headers if key == wanted]
        return values or default


def with_jar_cookies(jar: http.cookiejar.CookieJar, url: str, headers: Headers) -> Headers:
    cookie_request = CookieRequest(url, headers)
    # http.cookiejar reads a urllib Request (and response) only through the methods these
    # stand-ins define
    jar.add_cookie_header(cookie_request)  # type: ignore[arg-type]
    return headers + tuple((wire(name), wire(value))
                           for name, value in cookie_request.added.items())


def store_cookies(jar: http.cookiejar.CookieJar, url: str, request_headers: Headers,
                  response_headers: Headers) -> None:
    """Each Set-Cookie line on its own: http.cookiejar drops every cookie of a response when
    one line trips it up (it warns 'http.cookiejar bug!'), and a malformed line should cost
    only itself."""
    cookie_request = CookieRequest(url, request_headers)
    for key, value in response_headers:
        if key in (b'set-cookie', b'set-cookie2'):
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', UserWarning)
                jar.extract_cookies(CookieResponse(((key, value),)),  # type: ignore[arg-type]
                                    cookie_request)  # type: ignore[arg-type]


class CookieHops:
    """The hops of one request through a redirectable stacked inside `cookies`: each redirect
    response's cookies are stored, and the next request is sent the jar's cookies for its URL
    in place of those for the previous one."""

    def __init__(self, jar: http.cookiejar.CookieJar, url: str, headers: Headers) -> None:
        self.jar: http.cookiejar.CookieJar = jar
        self.url: str = url
        self.callers_cookie: bool = any(key.lower() == b'cookie' for key, _ in headers)
        self.sent: Headers = headers if self.callers_cookie else \
            with_jar_cookies(jar, url, headers)

    def next_hop(self, url: str, response_headers: Headers, next_url: str,
                 headers: Headers) -> Headers:
        store_cookies(self.jar, url, self.sent, response_headers)
        self.url = next_url
        if not self.callers_cookie:
            # redirectable kept the previous URL's cookies (same origin) or dropped them
            headers = with_jar_cookies(
                self.jar, next_url,
                tuple((key, value) for key, value in headers if key.lower() != b'cookie'))
        self.sent = headers
        return headers


def new_policy() -> http.cookiejar.DefaultCookiePolicy:
    """http.cookiejar's policy with its two stricter options on: a cookie set without a Domain
    attribute goes only to the host that set it (RFC 6265 section 5.3 step 6, "host-only"),
    where the default would send it to every subdomain too; and a Domain like co.uk (a
    two-letter country code under a generic second level) is refused."""
    return http.cookiejar.DefaultCookiePolicy(
        strict_domain=True,
        strict_ns_domain=http.cookiejar.DefaultCookiePolicy.DomainStrictNonDomain)


def new_jar() -> http.cookiejar.CookieJar:
    return http.cookiejar.CookieJar(new_policy())


def cookies(request: Request, jar: Optional[http.cookiejar.CookieJar] = None) -> Request:
    """Wrap `request` so that cookies are kept in `jar` and sent where they belong.

    jar: an http.cookiejar.CookieJar (or FileCookieJar, or one with its own policy); when not
        given, `new_jar()`: a CookieJar that keeps host-only cookies to their host. It is also
        the `jar` attribute of the returned function.

    A `cookie` header given by the caller is sent as it is, without the jar's cookies, as
    http.cookiejar does for urllib. Stacked inside or outside `redirectable`, every hop stores
    its Set-Cookie and is sent the cookies for its own URL.
    """
    cookie_jar = new_jar() if jar is None else jar

    async def cookies_request(method: bytes, url: str, params: Params = (), headers: Headers = (),
                              **kwargs: Any) -> Response:
        # Matching uses scheme, host and path, which params do not change
        headers = tuple(headers)
        hops = CookieHops(cookie_jar, url, headers)
        # A redirectable inside reports each hop (see lowhaio_redirect.redirect_observers)
        token = redirect_observers.set(redirect_observers.get() + (hops,))
        try:
            code, response_headers, body = await request(
                method, url, params=params, headers=hops.sent, **kwargs)
        finally:
            redirect_observers.reset(token)
        store_cookies(cookie_jar, hops.url, hops.sent, response_headers)
        return code, response_headers, body

    cookies_request.jar = cookie_jar  # type: ignore[attr-defined]
    return cookies_request
