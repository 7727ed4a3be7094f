"""A streaming reverse proxy as an ASGI application, on one lowhaio pool.

    app = reverse_proxy('http://127.0.0.1:8080')      # serve with uvicorn, hypercorn, ...

Bodies stream both ways with backpressure: a chunk is read from one side only once the other
side has taken the previous one, so memory stays bounded however large the bodies are.
The standard library and lowhaio are all it needs: no ASGI framework is imported.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import (
    Any,
    Dict,
    AsyncIterator,
    Awaitable,
    Callable,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Tuple,
)

from lowhaio import (
    Close,
    HttpError,
    HttpPoolTimeoutError,
    HttpTimeoutError,
    Pool,
    Request,
    empty_async_iterator,
)
from lowhaio_chunked import chunked

__all__ = ['reverse_proxy', 'ReverseProxy', 'HOP_BY_HOP', 'UpstreamBodyError']

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
HeaderList = List[Tuple[bytes, bytes]]

# RFC 9110 §7.6.1: meaningful for one connection only, so never forwarded; plus the fields the
# `connection` header lists. `expect` too: the ASGI server has answered any 100-continue already.
HOP_BY_HOP: FrozenSet[bytes] = frozenset((
    b'connection', b'keep-alive', b'proxy-connection', b'te', b'transfer-encoding',
    b'upgrade', b'trailer',
))
REQUEST_ONLY_HOP = frozenset((b'expect',))
FORWARDED_STYLES = ('x-forwarded', 'forwarded', 'both', 'none')
# RFC 7239 §4: a value that is not a token must be a quoted-string
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                         b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ')
# What may stay as it is in a path rebuilt from its decoded form (RFC 3986 pchar and "/")
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class UpstreamBodyError(Exception):
    """The upstream failed after the response had started: the proxy ends the client's
    connection abruptly (the ASGI server sees this exception) rather than cleanly, so the client
    cannot take a cut-short body for a whole one. The lowhaio error is the cause."""


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


def reverse_proxy(upstream: str, *, forwarded: str = 'x-forwarded', preserve_host: bool = False,
                  pool_options: Optional[Mapping[str, Any]] = None) -> 'ReverseProxy':
    """An ASGI application that forwards every HTTP request to `upstream`.

    `upstream` is a base URL, `http://host:port` or `https://host/prefix`: the request's path
    (after the ASGI `root_path`, where it is mounted) and query are appended to it.
    `forwarded`: which headers tell the upstream about the client: `'x-forwarded'`
    (X-Forwarded-For, -Proto, -Host), `'forwarded'` (RFC 7239), `'both'` or `'none'`.
    `preserve_host`: send the client's `host` header rather than the upstream's.
    `pool_options`: keyword arguments for the shared `lowhaio.Pool` (timeouts, TLS, limits).
    """
    return ReverseProxy(upstream, forwarded=forwarded, preserve_host=preserve_host,
                        pool_options=pool_options or {})


class ReverseProxy:
    """The application `reverse_proxy` returns. One `lowhaio.Pool` serves every request. It is
    made at the ASGI lifespan startup (or by the first request, under a server or framework that
    does not pass lifespan events on) and closed at lifespan shutdown, or by `aclose()`."""

    def __init__(self, upstream: str, *, forwarded: str, preserve_host: bool,
                 pool_options: Mapping[str, Any]) -> None:
        if forwarded not in FORWARDED_STYLES:
            raise ValueError('forwarded must be one of %s, not %r'
                             % (', '.join(FORWARDED_STYLES), forwarded))
        self.upstream: Upstream = parse_upstream(upstream)
        self.forwarded: str = forwarded
        self.preserve_host: bool = preserve_host
        self.pool_options: Dict[str, Any] = dict(pool_options)
        self._pool: Optional[Tuple[Request, Close]] = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope['type'] == 'http':
            await self._proxy(scope, receive, send)
        elif scope['type'] == 'lifespan':
            await self._lifespan(receive, send)
        elif scope['type'] == 'websocket':
            # Upgrades are hop-by-hop and lowhaio speaks HTTP/1.1 only: refuse the handshake
            await send({'type': 'websocket.close', 'code': 1003})

    async def aclose(self) -> None:
        """Close the pool: idle connections now, those in use when their response ends."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool[1]()

    def _request(self) -> Request:
        if self._pool is None:
            self._pool = Pool(**self.pool_options)
        return self._pool[0]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message['type'] == 'lifespan.startup':
                self._request()
                await send({'type': 'lifespan.startup.complete'})
            elif message['type'] == 'lifespan.shutdown':
                await self.aclose()
                await send({'type': 'lifespan.shutdown.complete'})
                return

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_body = RequestBody(receive)
        # The exchange with the upstream runs beside a watch for the client going away, which
        # ends it at once: waiting for an upstream that has nothing to send would never notice.
        exchange = asyncio.ensure_future(self._exchange(scope, request_body, send))
        watch = asyncio.ensure_future(request_body.until_disconnected())
        try:
            await asyncio.wait((exchange, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exchange, watch):
                task.cancel()
            # Cancelling the exchange closes its upstream connection: never pooled half-read
            await asyncio.gather(exchange, watch, return_exceptions=True)
        if not exchange.cancelled() and exchange.exception() is not None:
            raise exchange.exception()  # type: ignore[misc]

    async def _exchange(self, scope: Scope, request_body: 'RequestBody', send: Send) -> None:
        headers = self._upstream_headers(scope)
        has_body, chunked_body = await request_body.framing(headers)
        if chunked_body:
            headers.append((b'transfer-encoding', b'chunked'))
        body = request_body.chunks if has_body else empty_async_iterator
        try:
            code, response_headers, response_body = await self._request()(
                scope['method'].encode('ascii'), self._upstream_url(scope),
                headers=tuple(headers), body=chunked(body) if chunked_body else body)
        except HttpError as exception:
            if isinstance(exception.__cause__, ClientDisconnected):
                return  # nobody to answer
            await send_error(send, gateway_status(exception))
            return
        try:
            await send({'type': 'http.response.start', 'status': int(code),
                        'headers': end_to_end(response_headers)})
            async for chunk in response_body:
                await send({'type': 'http.response.body', 'body': chunk, 'more_body': True})
            await send({'type': 'http.response.body', 'body': b'', 'more_body': False})
        except HttpError as exception:
            raise UpstreamBodyError('The upstream failed mid-response: %s' % (exception,)) \
                from exception
        except OSError:
            return  # the client went away while we were sending to it
        finally:
            await response_body.aclose()  # a no-op once read to the end

    def _upstream_url(self, scope: Scope) -> str:
        query = scope.get('query_string', b'')
        return self.upstream.base + request_path(scope) + (
            '?' + query.decode('latin-1') if query else '')

    def _upstream_headers(self, scope: Scope) -> HeaderList:
        client_headers: HeaderList = [(name.lower(), value) for name, value in scope['headers']]
        headers = [(name, value) for name, value in end_to_end(client_headers)
                   if name not in REQUEST_ONLY_HOP and
                   (self.preserve_host or name != b'host')]
        host = next((value for name, value in client_headers if name == b'host'), None)
        if self.forwarded in ('x-forwarded', 'both'):
            headers = add_x_forwarded(headers, scope, host)
        if self.forwarded in ('forwarded', 'both'):
            headers = add_forwarded(headers, scope, host)
        return headers


class Upstream:
    def __init__(self, scheme: str, base: str) -> None:
        self.scheme: str = scheme
        self.base: str = base  # scheme://authority/prefix, without a trailing slash


def parse_upstream(upstream: str) -> Upstream:
    parts = urllib.parse.urlsplit(upstream)
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise ValueError('upstream must be an http:// or https:// URL, not %r' % (upstream,))
    if parts.query or parts.fragment:
        raise ValueError('upstream may not have a query or fragment: %r' % (upstream,))
    return Upstream(parts.scheme, '%s://%s%s' % (parts.scheme, parts.netloc,
                                                 parts.path.rstrip('/')))


def request_path(scope: Scope) -> str:
    """The request's path below where the proxy is mounted, as it came on the wire when the
    server gives it (`raw_path`), so that escapes such as %2F reach the upstream unchanged."""
    root_path: str = scope.get('root_path', '')
    raw_path = scope.get('raw_path')
    path: str
    if raw_path is not None:
        path = raw_path.decode('latin-1')
        encoded_root = urllib.parse.quote(root_path, safe=_PATH_SAFE)
        if encoded_root and path.startswith(encoded_root):
            path = path[len(encoded_root):]
    else:
        path = scope['path']
        if root_path and path.startswith(root_path):
            path = path[len(root_path):]
        path = urllib.parse.quote(path, safe=_PATH_SAFE)
    return path if path.startswith('/') else '/' + path


def end_to_end(headers: Iterable[Tuple[bytes, bytes]]) -> HeaderList:
    """`headers` without the hop-by-hop ones (RFC 9110 §7.6.1), including any the
    `connection` header names. Names are expected lowercased, as ASGI and lowhaio give them."""
    headers = list(headers)
    dropped = set(HOP_BY_HOP)
    for name, value in headers:
        if name == b'connection':
            dropped.update(option.strip().lower() for option in value.split(b','))
        elif name == b'transfer-encoding':
            # RFC 9112 §6.3: transfer-encoding overrides content-length, which then says
            # nothing about the body. Passed on, it would frame the re-framed body wrongly.
            dropped.add(b'content-length')
    return [(name, value) for name, value in headers if name not in dropped]


def client_address(scope: Scope) -> Optional[str]:
    client = scope.get('client')
    return None if not client else str(client[0])


def add_x_forwarded(headers: HeaderList, scope: Scope, host: Optional[bytes]) -> HeaderList:
    """X-Forwarded-For gets the client's address appended (earlier proxies' entries are kept);
    X-Forwarded-Proto and -Host are set to what this proxy saw, replacing the client's."""
    previous = [value for name, value in headers if name == b'x-forwarded-for']
    kept = [(name, value) for name, value in headers
            if name not in (b'x-forwarded-for', b'x-forwarded-proto', b'x-forwarded-host')]
    address = (client_address(scope) or 'unknown').encode('latin-1')
    kept.append((b'x-forwarded-for', b', '.join(previous + [address])))
    kept.append((b'x-forwarded-proto', scope.get('scheme', 'http').encode('latin-1')))
    if host is not None:
        kept.append((b'x-forwarded-host', host))
    return kept


def add_forwarded(headers: HeaderList, scope: Scope, host: Optional[bytes]) -> HeaderList:
    """RFC 7239: this hop's element is appended to the Forwarded list the request came with."""
    previous = [value for name, value in headers if name == b'forwarded']
    kept = [(name, value) for name, value in headers if name != b'forwarded']
    address = client_address(scope)
    if address is None:
        node = b'unknown'
    elif ':' in address:  # §6: an IPv6 address is bracketed, and so must be quoted
        node = forwarded_value(b'[' + address.encode('latin-1') + b']')
    else:
        node = forwarded_value(address.encode('latin-1'))
    pairs = [b'for=' + node, b'proto=' + forwarded_value(
        scope.get('scheme', 'http').encode('latin-1'))]
    if host is not None:
        pairs.append(b'host=' + forwarded_value(host))
    kept.append((b'forwarded', b', '.join(previous + [b';'.join(pairs)])))
    return kept


def forwarded_value(value: bytes) -> bytes:
    if value and all(byte in _TOKEN_CHARS for byte in value):
        return value
    return b'"' + value.replace(b'\\', b'\\\\').replace(b'"', b'\\"') + b'"'


def gateway_status(exception: HttpError) -> int:
    """504 when the upstream (or a free connection to it) did not come in time, else 502."""
    if isinstance(exception, (HttpTimeoutError, HttpPoolTimeoutError)) or \
            is_timeout(exception.__cause__):
        return 504
    return 502


def is_timeout(cause: Optional[BaseException]) -> bool:
    # asyncio's TLS handshake timeout is a ConnectionAbortedError, with this message, on both
    # the default loop and uvloop
    return isinstance(cause, asyncio.TimeoutError) or (
        isinstance(cause, ConnectionAbortedError) and 'handshake is taking longer' in str(cause))


REASONS = {502: b'Bad Gateway', 504: b'Gateway Timeout'}


async def send_error(send: Send, status: int) -> None:
    body = REASONS[status] + b'\n'
    await send({'type': 'http.response.start', 'status': status, 'headers': [
        (b'content-type', b'text/plain; charset=utf-8'),
        (b'content-length', b'%d' % len(body)),
    ]})
    await send({'type': 'http.response.body', 'body': body, 'more_body': False})


class RequestBody:
    """The client's request body, read from ASGI `receive` only as fast as the upstream takes
    it. It can be iterated once: the proxy never replays a request."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._first: Optional[Message] = None
        self._finished = asyncio.Event()
        self._disconnected = False

    async def framing(self, headers: HeaderList) -> Tuple[bool, bool]:
        """(has a body, must be sent chunked). With a content-length the body is forwarded with
        it. Without one, the first message tells: an empty final one means no body; anything
        else (a chunked upload, or HTTP/2 without a length) is sent on chunked."""
        if any(name == b'content-length' for name, _ in headers):
            return True, False
        self._first = message = await self._receive()
        if message['type'] == 'http.disconnect':
            self._disconnected = True
            return True, True  # the body function raises ClientDisconnected
        if not message.get('body') and not message.get('more_body'):
            self._finished.set()
            return False, False
        return True, True

    async def chunks(self, *_: Any, **__: Any) -> AsyncIterator[bytes]:
        while True:
            if self._first is not None:
                message, self._first = self._first, None
            elif self._disconnected:
                raise ClientDisconnected('The client went away during its request body')
            else:
                message = await self._receive()
            if message['type'] == 'http.disconnect':
                self._finished.set()
                self._disconnected = True
                raise ClientDisconnected('The client went away during its request body')
            body = message.get('body', b'')
            if body:
                yield body
            if not message.get('more_body', False):
                self._finished.set()
                return

    async def until_disconnected(self) -> None:
        """Returns when the client has gone away. Listens only once the request body has been
        read: until then, `chunks` is the one receiving."""
        await self._finished.wait()
        while not self._disconnected:
            message = await self._receive()
            if message['type'] == 'http.disconnect':
                self._disconnected = True
