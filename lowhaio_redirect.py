"""Following HTTP redirects for lowhaio.

    redirectable_request = redirectable(request)
    code, headers, body = await redirectable_request(b'GET', url)

`redirectable` returns a function with the same signature as `request`.
"""

from __future__ import annotations

import contextvars
import urllib.parse
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Optional,
    Sequence,
    Tuple,
)

from lowhaio import (  # buffered and empty_async_iterator: lowhaio-redirect 0.0.1 had them
    BodyFunction,
    BodyKwargs,
    Headers,
    HttpError,
    Params,
    Request,
    Response,
    ResponseBody,
    buffered as buffered,
    empty_async_iterator as empty_async_iterator,
)

# What the next request is made of: method, body function, body_args, body_kwargs, headers
NextRequest = Tuple[bytes, BodyFunction, Any, Any, Headers]
TransformRequest = Callable[[bytes, BodyFunction, Any, Any, Headers], NextRequest]
# Given the method of the request that was redirected, how to make the next request
RedirectRule = Callable[[bytes], TransformRequest]
# Given the headers of the request that was redirected, its host and the host redirected to,
# the headers of the next request
TransformHeaders = Callable[[Headers, Optional[str], Optional[str]], Headers]

DEFAULT_PORTS: Dict[str, int] = {'http': 80, 'https': 443}
CREDENTIAL_HEADERS: FrozenSet[bytes] = frozenset((
    b'authorization', b'cookie', b'proxy-authorization'))
CREDENTIAL_AND_HOST_HEADERS: FrozenSet[bytes] = CREDENTIAL_HEADERS | {b'host'}
BODY_HEADERS: FrozenSet[bytes] = frozenset((
    b'content-length', b'transfer-encoding', b'content-type'))
# A redirect response's body is read to its end so the connection can be reused, but only
# up to this much: a larger one is cheaper to abandon along with its connection
MAX_DRAINED_BYTES = 65536


class HttpTooManyRedirects(HttpError):
    pass


# Wrappers stacked outside redirectable that need to see each hop (a cookie jar: a 302's
# Set-Cookie, and the cookies for the URL redirected to) put an observer here for the duration
# of their call. For each redirect followed, redirectable calls
# `observer.next_hop(url, response_headers, next_url, headers)`: the redirect response and the
# headers of the next request, which it returns, changed or not.
redirect_observers: contextvars.ContextVar[Tuple[Any, ...]] = contextvars.ContextVar(
    'lowhaio_redirect_observers', default=())


async def empty_body(*_: Any, **__: Any) -> AsyncIterator[bytes]:
    return
    yield  # pylint: disable=unreachable


def unchanged(method: bytes, body: BodyFunction, body_args: Sequence[Any],
              body_kwargs: BodyKwargs, headers: Headers) -> NextRequest:
    return method, body, body_args, body_kwargs, headers


def get(_: bytes, __: BodyFunction, ___: Sequence[Any], ____: BodyKwargs, headers: Headers
        ) -> NextRequest:
    """A GET without a body, and so without the headers that describe one."""
    return b'GET', empty_body, (), (), without_headers(headers, BODY_HEADERS)


def get_if_post(method: bytes) -> TransformRequest:
    # RFC 9110 15.4.2/15.4.3 allow changing POST to GET on 301/302, and all clients do
    return get if method.upper() == b'POST' else unchanged


def get_unless_get_or_head(method: bytes) -> TransformRequest:
    # RFC 9110 15.4.4: 303 means "see the result with a GET", whatever the method
    return unchanged if method.upper() in (b'GET', b'HEAD') else get


def always_unchanged(_: bytes) -> TransformRequest:
    return unchanged


DEFAULT_REDIRECTS: Sequence[Tuple[bytes, RedirectRule]] = (
    (b'301', get_if_post),
    (b'302', get_if_post),
    (b'303', get_unless_get_or_head),
    (b'307', always_unchanged),
    (b'308', always_unchanged),
)
default_redirects = DEFAULT_REDIRECTS  # the name in lowhaio-redirect 0.0.1


def origin(url: str) -> Tuple[str, Optional[str], Optional[int]]:
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    return scheme, parsed.hostname, parsed.port or DEFAULT_PORTS.get(scheme)


def without_headers(headers: Headers, names: Iterable[bytes]) -> Headers:
    names = frozenset(names)
    return tuple((key, value) for key, value in headers if key.lower() not in names)


def unchanged_headers(request_headers: Headers, _: Optional[str], __: Optional[str]) -> Headers:
    return request_headers


def strip_authorization_if_different_host(request_headers: Headers, request_host: Optional[str],
                                          redirect_host: Optional[str]) -> Headers:
    """lowhaio-redirect 0.0.1's default, for code that passes it explicitly. Credentials are
    now stripped on any change of origin before transform_headers is called, so it is no
    longer needed."""
    return \
        request_headers if request_host == redirect_host else \
        without_headers(request_headers, (b'authorization',))


def redirectable(request: Request,
                 redirects: Sequence[Tuple[bytes, RedirectRule]] = DEFAULT_REDIRECTS,
                 max_redirects: int = 20,
                 transform_headers: TransformHeaders = unchanged_headers,
                 *,
                 strip_credentials_on_origin_change: bool = True,
                 ) -> Request:
    """Wrap `request` so that it follows redirects.

    redirects: pairs of (response code, rule); codes not listed are not followed. A rule is
        called with the method of the request that was redirected and returns a function
        that, given (method, body, body_args, body_kwargs, headers), returns the same five
        things for the next request (as in lowhaio-redirect 0.0.1). The default turns POST into
        GET on 301 and 302, anything but GET and HEAD into GET on 303 (dropping the body and
        its content-length, transfer-encoding and content-type headers), and keeps method and
        body on 307 and 308, calling the body function again to resend the body.
    max_redirects: after following this many redirects, another one raises
        HttpTooManyRedirects.
    transform_headers: called as transform_headers(headers, request_host, redirect_host) for
        each redirect, returning the headers of the next request; by default they are kept.
    strip_credentials_on_origin_change: authorization, cookie and proxy-authorization are
        dropped, before transform_headers is called, when the scheme, host or port changes.
        A host header is dropped then in any case: the next request's comes from its URL.

    `params` are sent with the first request only: a Location is a full URL reference, so it
    already carries whatever query string the server wants.
    """
    rules = dict(redirects)

    async def redirectable_request(method: bytes, url: str, params: Params = (),
                                   headers: Headers = (), body: BodyFunction = empty_body,
                                   body_args: Sequence[Any] = (), body_kwargs: BodyKwargs = (),
                                   **kwargs: Any) -> Response:
        headers = tuple(headers)
        for redirect_count in range(max_redirects + 1):
            result = await request(
                method, url, params=params, headers=headers,
                body=body, body_args=body_args, body_kwargs=body_kwargs, **kwargs)
            if not is_response(result):
                return result  # a wrapped function that returns something else: not ours
            code, response_headers, response_body = result

            location = header_value(response_headers, b'location')
            if code not in rules or location is None:
                return result

            await discard(response_body)
            if redirect_count == max_redirects:
                raise HttpTooManyRedirects(
                    f'More than {max_redirects} redirects, last from {url}')

            next_url = resolve_location(url_with_params(url, params), location)
            if origin(url) != origin(next_url):
                # A host the caller set names the origin it was set for: the next one is named
                # by its URL, as when no host was given
                headers = without_headers(
                    headers, CREDENTIAL_AND_HOST_HEADERS if strip_credentials_on_origin_change
                    else (b'host',))
            headers = tuple(transform_headers(
                headers, urllib.parse.urlsplit(url).hostname,
                urllib.parse.urlsplit(next_url).hostname))
            method, body, body_args, body_kwargs, headers = rules[code](method)(
                method, body, body_args, body_kwargs, headers)
            for observer in redirect_observers.get():
                headers = tuple(observer.next_hop(url, response_headers, next_url, headers))
            url, params = next_url, ()

        raise AssertionError('unreachable')  # pragma: no cover

    return redirectable_request


def is_response(result: Any) -> bool:
    """Whether a wrapped function returned (code, headers, body), as lowhaio request does
    (the body may have been read already, into bytes), so that it may be a redirect."""
    return isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], bytes) \
        and isinstance(result[1], (tuple, list))


def header_value(headers: Headers, name: bytes) -> Optional[bytes]:
    return next((value for key, value in headers if key.lower() == name), None)


async def discard(body: ResponseBody) -> None:
    """Free the redirect response's connection: reading to the end returns it to the pool,
    abandoning a large body closes it instead of reading it all."""
    if not hasattr(body, '__aiter__'):
        return  # read already by the wrapped function: nothing holds a connection
    num_bytes = 0
    async for chunk in body:
        num_bytes += len(chunk)
        if num_bytes > MAX_DRAINED_BYTES:
            await body.aclose()
            return


def url_with_params(url: str, params: Params) -> str:
    """The URL that the request was actually made to, for resolving a relative Location
    such as '?page=2' or '' against."""
    params = tuple(params)
    if not params:
        return url
    parsed = urllib.parse.urlsplit(url)
    # Encoded as lowhaio encodes params, so this is the URL the request really went to
    encoded = urllib.parse.urlencode(params, doseq=True)
    query = f'{parsed.query}&{encoded}' if parsed.query else encoded
    return urllib.parse.urlunsplit(parsed._replace(query=query))


def decoded_location(location: bytes) -> str:
    """Location is ASCII, percent-encoded, when servers follow RFC 3986; some send raw UTF-8
    (which browsers accept), and anything else is kept byte for byte via latin-1. lowhaio
    percent-encodes what needs it and leaves existing %XX escapes alone."""
    try:
        return location.decode('utf-8')
    except UnicodeDecodeError:
        return location.decode('latin-1')


def resolve_location(base_url: str, location: bytes) -> str:
    """The absolute URL a Location header refers to, resolved per RFC 3986 section 5 (which
    urljoin implements since Python 3.5), without the fragment, which is never sent."""
    resolved = urllib.parse.urljoin(base_url, decoded_location(location).strip())
    return urllib.parse.urldefrag(resolved)[0]
