"""A base URL, default headers and default query parameters for lowhaio requests.

    api_request = with_defaults(request, base_url='https://api.example.com/v1/',
                                headers=((b'authorization', b'Bearer ...'),),
                                params=(('format', 'json'),))
    code, headers, body = await api_request(b'GET', 'users')   # .../v1/users?format=json

`with_defaults` returns a function with the same signature as `request`. Put it outermost, over
`redirectable`, so that default credentials are stripped like any others when a redirect leaves
the origin.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Iterable, Optional, Tuple

from lowhaio import Headers, HttpInvalidRequestError, Request, Response

Params = Tuple[Tuple[str, str], ...]


def with_defaults(request: Request, base_url: Optional[str] = None,
                  headers: Iterable[Tuple[bytes, bytes]] = (),
                  params: Iterable[Tuple[str, str]] = ()) -> Request:
    """Wrap `request` so that every call gets these defaults.

    base_url: an absolute http or https URL; each call's URL is resolved against it as a
        browser resolves a link (RFC 3986 section 5). With 'https://h/v1/', 'users' gives
        'https://h/v1/users', '/users' gives 'https://h/users', and an absolute URL is used as
        it is. Without the trailing slash, 'https://h/v1' and 'users' give 'https://h/users'.
    headers: (name, value) bytes pairs sent before the caller's, except those whose name the
        caller also gives (in any letter case): the caller's value replaces the default.
    params: (name, value) pairs appended after the caller's params, except those whose name the
        caller gives, in `params` or in the URL's query string.
    """
    default_headers = tuple(headers)
    default_params = tuple(params)
    if base_url is not None:
        check_base_url(base_url)

    async def request_with_defaults(method: bytes, url: str, params: Iterable[Tuple[str, str]] = (),
                                    headers: Iterable[Tuple[bytes, bytes]] = (),
                                    **kwargs: Any) -> Response:
        absolute_url = url if base_url is None else urllib.parse.urljoin(base_url, url)
        headers, params = tuple(headers), tuple(params)
        return await request(
            method, absolute_url,
            params=params + params_not_given(default_params, params, absolute_url),
            headers=headers_not_given(default_headers, headers) + headers,
            **kwargs)

    return request_with_defaults


def check_base_url(base_url: str) -> None:
    # Resolving against a relative base gives relative URLs, which fail only at request time
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme.lower() not in ('http', 'https') or not parsed.netloc:
        raise HttpInvalidRequestError(
            f'base_url must be an absolute http or https URL, not {base_url!r}')


def headers_not_given(defaults: Headers, given: Headers) -> Headers:
    given_names = {name.lower() for name, _ in given}
    return tuple((name, value) for name, value in defaults if name.lower() not in given_names)


def params_not_given(defaults: Params, given: Params, url: str) -> Params:
    query = urllib.parse.urlsplit(url).query
    given_names = {name for name, _ in given} | {
        name for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    return tuple((name, value) for name, value in defaults if name not in given_names)
