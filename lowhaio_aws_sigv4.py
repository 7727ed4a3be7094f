"""AWS Signature Version 4 signing of lowhaio requests, with the payload's SHA-256 signed.

    async def credentials():
        return access_key_id, secret_access_key, ()   # or session-token headers

    signed_request = signed(request, credentials=credentials, service='s3', region='eu-west-1')
    code, headers, body = await signed_request(b'PUT', url, body=body, headers=...)

`signed` returns a function with the same signature as `request`. Signatures are computed as
botocore's SigV4Auth (S3SigV4Auth for s3) computes them, which the tests check.

Hashing the payload means reading the body before sending it. By default the body is read once
and kept as the list of chunks it yielded, which are then sent from that one buffer (never
joined, so never held twice). With `replay_body=True`, nothing is kept: the body function is
called once to hash and again to send, so it must yield the same bytes every time it is called
(as one reading a file does).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Sequence,
    Tuple,
    Union,
)

from lowhaio import BodyFunction, BodyKwargs, Headers, Params, Request, Response

Credentials = Callable[[], Awaitable[Tuple[str, str, Headers]]]
Now = Callable[[], datetime.datetime]

ALGORITHM = 'AWS4-HMAC-SHA256'
UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD'
DEFAULT_PORTS: Dict[str, int] = {'http': 80, 'https': 443}
# Headers that proxies and the HTTP layer may add, change or drop; signing them would make a
# valid request fail. The same list as botocore's SIGNED_HEADERS_BLACKLIST.
UNSIGNED_HEADERS: FrozenSet[str] = frozenset((
    'baggage', 'connection', 'expect', 'keep-alive', 'proxy-authenticate', 'proxy-authorization',
    'te', 'traceparent', 'tracestate', 'trailer', 'transfer-encoding', 'upgrade', 'user-agent',
    'x-amzn-trace-id',
))
# Set by signing, so any the caller passed (e.g. from signing an earlier attempt) are replaced
SIGNING_HEADERS: FrozenSet[bytes] = frozenset((
    b'authorization', b'x-amz-date', b'x-amz-content-sha256'))
# Characters that are never percent-encoded in AWS canonical forms (RFC 3986 unreserved)
UNRESERVED = '-_.~'


async def empty_body(*_: Any, **__: Any) -> AsyncIterator[bytes]:
    return
    yield  # pylint: disable=unreachable


empty_async_iterator = empty_body  # the name in lowhaio-aws-sigv4 0.0.4


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def signed(request: Request, credentials: Credentials, service: str, region: str, *,
           now: Now = utc_now, replay_body: bool = False) -> Request:
    """Wrap `request` so that every request is signed with AWS SigV4, including the SHA-256
    of the payload.

    credentials: async function returning (access_key_id, secret_access_key, extra_headers),
        called for each request so that rotated credentials are picked up. extra_headers are
        added to the request and signed, e.g. ((b'x-amz-security-token', token),).
    now: the signing time (a timezone-aware or UTC-naive datetime); fixed in tests.
    replay_body: see the module's documentation.

    A content-length is added (as lowhaio-aws-sigv4 did) unless the caller passed one or a
    transfer-encoding.
    """

    async def signed_request(method: bytes, url: str, params: Params = (), headers: Headers = (),
                             body: BodyFunction = empty_body, body_args: Sequence[Any] = (),
                             body_kwargs: BodyKwargs = (), **kwargs: Any) -> Response:
        body_hash, length, body_to_send, body_args, body_kwargs = \
            await hashed(body, body_args, body_kwargs, replay_body)
        headers = tuple(headers)
        if not has_header(headers, (b'content-length', b'transfer-encoding')):
            headers += ((b'content-length', str(length).encode('ascii')),)
        url, signed_headers = await sign(credentials, service, region, now(), method, url,
                                         params, headers, body_hash)
        return await request(method, url, headers=signed_headers, body=body_to_send,
                             body_args=body_args, body_kwargs=body_kwargs, **kwargs)

    return signed_request


async def hashed(body: BodyFunction, body_args: Sequence[Any], body_kwargs: BodyKwargs,
                 replay_body: bool) -> Tuple[str, int, BodyFunction, Sequence[Any], BodyKwargs]:
    """The body's SHA-256 hex digest and length, and the body function (with its arguments)
    that sends the same bytes."""
    digest = hashlib.sha256()
    length = 0
    chunks: List[bytes] = []
    async for chunk in body(*body_args, **dict(body_kwargs)):
        digest.update(chunk)
        length += len(chunk)
        if not replay_body:
            chunks.append(chunk)

    if replay_body:
        return digest.hexdigest(), length, body, body_args, body_kwargs

    async def buffered_body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return digest.hexdigest(), length, buffered_body, (), ()


def has_header(headers: Headers, names: Iterable[bytes]) -> bool:
    names = frozenset(names)
    return any(key.lower() in names for key, _ in headers)


async def sign(credentials: Credentials, service: str, region: str, when: datetime.datetime,
               method: bytes, url: str, params: Params, headers: Headers, payload_hash: str,
               ) -> Tuple[str, Headers]:
    """The URL to request (with params moved into its query, in canonical form) and the
    headers to send: the caller's, the credentials' extra headers, host, x-amz-date,
    x-amz-content-sha256 (for s3, or when the payload is unsigned) and authorization."""
    access_key_id, secret_access_key, extra_headers = await credentials()
    url = url_with_canonical_query(url, params)
    timestamp = as_utc(when).strftime('%Y%m%dT%H%M%SZ')

    headers = tuple(
        (key, value) for key, value in tuple(headers) + tuple(extra_headers)
        if key.lower() not in SIGNING_HEADERS
    )
    if not has_header(headers, (b'host',)):
        # Sent explicitly, so that what is signed is exactly what goes on the wire
        headers = ((b'host', host_header(url).encode('idna')),) + headers
    headers += ((b'x-amz-date', timestamp.encode('ascii')),)
    if service == 's3' or payload_hash == UNSIGNED_PAYLOAD:
        headers += ((b'x-amz-content-sha256', payload_hash.encode('ascii')),)

    authorization = authorization_header(
        access_key_id, secret_access_key, service, region, timestamp,
        method.decode('ascii'), url, headers, payload_hash)
    return url, headers + ((b'authorization', authorization.encode('ascii')),)


def aws_sigv4_headers(access_key_id: str, secret_access_key: str, pre_auth_headers: Headers,
                      service: str, region: str, host: str, method: Union[str, bytes],
                      path: str, params: Params, body_hash: str, *,
                      now: Now = utc_now) -> Headers:
    """lowhaio-aws-sigv4 0.0.4's signing function, for code that calls it itself:
    authorization, x-amz-date and x-amz-content-sha256 (body_hash: the payload's SHA-256 in
    hex, or UNSIGNED-PAYLOAD), then pre_auth_headers, for a request whose host header will be
    `host` and whose URL has `path` and the query of `params`. All of them are signed, and
    host, which the caller's client sends. The path and query are signed in their canonical
    forms, which AWS compares with, whatever form the URL sent has."""
    timestamp = as_utc(now()).strftime('%Y%m%dT%H%M%SZ')
    url = url_with_canonical_query(urllib.parse.urlunsplit(('https', host, path, '', '')), params)
    signing_headers = ((b'x-amz-date', timestamp.encode('ascii')),
                       (b'x-amz-content-sha256', body_hash.encode('ascii')))
    authorization = authorization_header(
        access_key_id, secret_access_key, service, region, timestamp, as_text(method), url,
        tuple(pre_auth_headers) + ((b'host', host.encode('idna')),) + signing_headers,
        body_hash)
    return ((b'authorization', authorization.encode('ascii')),) + signing_headers + \
        tuple(pre_auth_headers)


def as_utc(when: datetime.datetime) -> datetime.datetime:
    return when if when.tzinfo is None else when.astimezone(datetime.timezone.utc)


def url_with_canonical_query(url: str, params: Params) -> str:
    """The URL with its path and query percent-encoded as AWS canonicalises them, and params
    appended to the query, so that what lowhaio sends is byte for byte what is signed (lowhaio
    leaves valid percent-escapes and unreserved characters as they are).

    Encoding the path here, rather than signing whatever form the caller used, matters for real
    AWS endpoints: they re-encode the path they receive before checking, so a signature over a
    raw '+', '!' or '(' would not match theirs."""
    parsed = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True) + [
        (as_text(key), as_text(value)) for key, value in params
    ]
    return urllib.parse.urlunsplit(parsed._replace(
        path=canonical_encoded_path(parsed.path), query=canonical_query(pairs), fragment=''))


def canonical_encoded_path(path: str) -> str:
    # Segment by segment, so that an encoded slash (%2F) stays part of its segment
    return '/'.join(
        urllib.parse.quote(urllib.parse.unquote_to_bytes(segment), safe=UNRESERVED)
        for segment in (path or '/').split('/')
    )


def as_text(value: Union[str, bytes]) -> str:
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def canonical_query(pairs: Iterable[Tuple[str, str]]) -> str:
    # Sorted by encoded key, then encoded value, as AWS specifies
    return '&'.join(f'{key}={value}' for key, value in sorted(
        (quote(key), quote(value)) for key, value in pairs
    ))


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe=UNRESERVED)


def host_header(url: str) -> str:
    """Host as botocore derives it: lowercase, the port only if not the default, and
    brackets around an IPv6 address."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ''
    if ':' in host:
        host = f'[{host}]'
    if parsed.port is not None and parsed.port != DEFAULT_PORTS.get(parsed.scheme):
        host = f'{host}:{parsed.port}'
    return host


def authorization_header(access_key_id: str, secret_access_key: str, service: str, region: str,
                         timestamp: str, method: str, url: str, headers: Headers,
                         payload_hash: str) -> str:
    date = timestamp[:8]
    scope = f'{date}/{region}/{service}/aws4_request'
    canonical_headers, signed_header_names = canonical_headers_and_names(headers)
    parsed = urllib.parse.urlsplit(url)
    canonical_request = '\n'.join((
        method.upper(),
        canonical_path(parsed.path, service),
        parsed.query,
        canonical_headers,
        signed_header_names,
        payload_hash,
    ))
    string_to_sign = '\n'.join((
        ALGORITHM, timestamp, scope,
        hashlib.sha256(canonical_request.encode('utf-8')).hexdigest(),
    ))
    key = signing_key(secret_access_key, date, region, service)
    signature = hmac.new(key, string_to_sign.encode('utf-8'), hashlib.sha256).hexdigest()
    return (f'{ALGORITHM} Credential={access_key_id}/{scope}, '
            f'SignedHeaders={signed_header_names}, Signature={signature}')


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    key = f'AWS4{secret_access_key}'.encode()
    for part in (date, region, service, 'aws4_request'):
        key = hmac.new(key, part.encode('utf-8'), hashlib.sha256).digest()
    return key


def canonical_headers_and_names(headers: Headers) -> Tuple[str, str]:
    """Each signed header once, values of repeated headers joined by commas in the order
    sent, whitespace runs collapsed; a trailing newline ends the block."""
    values: Dict[str, List[str]] = {}
    for key, value in headers:
        name = key.decode('ascii').strip().lower()
        if name not in UNSIGNED_HEADERS:
            values.setdefault(name, []).append(' '.join(value.decode('utf-8').split()))
    names = sorted(values)
    block = ''.join(f'{name}:{",".join(values[name])}\n' for name in names)
    return block, ';'.join(names)


def canonical_path(path: str, service: str) -> str:
    """S3 signs the path as sent. Every other service signs it with dot segments and empty
    segments removed, and percent-encoded again: the already-encoded path is encoded a second
    time, as AWS's documentation specifies."""
    if service == 's3':
        return path
    return urllib.parse.quote(remove_dot_segments(path), safe='/~')


def remove_dot_segments(path: str) -> str:
    if not path:
        return '/'
    segments: List[str] = []
    for segment in path.split('/'):
        if segment == '..':
            if segments:
                segments.pop()
        elif segment and segment != '.':
            segments.append(segment)
    leading = '/' if path.startswith('/') else ''
    trailing = '/' if path.endswith('/') and segments else ''
    return leading + '/'.join(segments) + trailing
