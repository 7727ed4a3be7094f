"""An httpx transport that sends requests through lowhaio.

    client = httpx.AsyncClient(transport=LowhaioTransport())

Everything httpx does above its transport (redirects, cookies, auth, event hooks, decoding,
`raise_for_status`) keeps working; the connections, DNS, TLS and HTTP/1.1 parsing are lowhaio's.
Keyword arguments are `lowhaio.Pool` options, except the three deadlines httpx's own `timeout=`
controls (see `LowhaioTransport`).
"""

from __future__ import annotations

import asyncio
import http
from collections import OrderedDict
from typing import Any, AsyncIterator, Dict, Optional, Tuple, Type

from lowhaio import (
    BodyFunction,
    Close,
    Headers,
    HttpConnectionClosedError,
    HttpConnectionError,
    HttpDataError,
    HttpError,
    HttpHeaderTooLong,
    HttpInvalidRequestError,
    HttpPoolTimeoutError,
    HttpProtocolError,
    HttpProxyError,
    HttpTimeoutError,
    ResponseHeaders,
    Pool,
    Request,
    ResponseBody,
    empty_async_iterator,
    streamed,
)
from lowhaio_chunked import chunked

try:
    import httpx
except ImportError as exception:  # pragma: no cover - depends on the installation
    raise ImportError('lowhaio_httpx needs httpx: pip install "lowhaio[httpx]"') from exception

__all__ = ['LowhaioTransport']

# httpx's timeout per phase: connect, read, write, pool; None means no limit
Timeouts = Tuple[Optional[float], Optional[float], Optional[float], Optional[float]]

# lowhaio's deadlines are numbers: httpx's "no limit" becomes one that never comes (~31 years)
NO_LIMIT = 1e9
# The Pool options that httpx's timeouts set, and so may not be given to the transport
TIMEOUT_OPTIONS = frozenset(('connect_timeout', 'socket_timeout', 'pool_timeout'))
# A client rarely uses more than one or two timeout settings; past this many the least recently
# used pool is closed, so that computed per-request timeouts cannot grow the pools without bound
MAX_POOLS = 8
SCHEMES = frozenset(('http', 'https'))


class LowhaioTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` over lowhaio pools.

    `pool_options` are `lowhaio.Pool` keyword arguments (`get_ssl_context`,
    `max_connections_per_host`, `keep_alive_timeout`, `get_dns_resolver`, ...). The deadlines
    come from httpx's timeouts instead: `connect` is `connect_timeout`, `pool` is
    `pool_timeout`, and `read` and `write` share `socket_timeout` (the smaller of the two, since
    lowhaio has one limit for any wait on the socket). `response_head_timeout`, a total limit
    httpx has no equivalent of, is off unless given.

    Each distinct timeout setting gets its own `Pool`, made on first use; `aclose()` closes
    them all.
    """

    def __init__(self, **pool_options: Any) -> None:
        given = TIMEOUT_OPTIONS.intersection(pool_options)
        if given:
            raise TypeError('%s: set with httpx timeouts (httpx.Timeout, or the request '
                            'extension "timeout"), not as Pool options' % ', '.join(sorted(given)))
        self._pool_options = dict(pool_options)
        self._pool_options.setdefault('response_head_timeout', NO_LIMIT)
        self._pools: OrderedDict[Timeouts, Tuple[Request, Close]] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = lowhaio_url(request.url)
        method = request_method(request)
        timeouts = request_timeouts(request)
        lowhaio_request = await self._request_for(timeouts)
        sending = SendingState()
        headers = tuple(request.headers.raw)
        try:
            code, response_headers, body = await lowhaio_request(
                method, url, headers=headers,
                body=body_function(request, headers, sending))
        except HttpError as exception:
            if sending.failure is not None and exception.__cause__ is sending.failure:
                # The caller's own content stream failed: that error is theirs, as in httpx
                raise sending.failure from None
            raise httpx_error(exception, request, sending.in_progress) from exception
        status = int(code)
        # What the status line said, where lowhaio (not a wrapper that rebuilt the headers)
        # returned them; else what an HTTP/1.1 server usually says
        said = response_headers if isinstance(response_headers, ResponseHeaders) else None
        return httpx.Response(
            status, headers=response_headers, stream=ResponseStream(body, request),
            extensions={
                'http_version': b'HTTP/1.1' if said is None else said.http_version,
                'reason_phrase': reason_phrase(status) if said is None else said.reason,
            })

    async def aclose(self) -> None:
        """Close every pool: idle connections now, those in use when their response ends."""
        pools, self._pools = self._pools, OrderedDict()
        for _, close in pools.values():
            await close()

    async def _request_for(self, timeouts: Timeouts) -> Request:
        pool = self._pools.get(timeouts)
        if pool is not None:
            self._pools.move_to_end(timeouts)
            return pool[0]
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Under trio, say so rather than fail deep inside Pool
            raise RuntimeError('LowhaioTransport runs on asyncio only: no asyncio event loop '
                               'is running (under trio, use httpx\'s own transport)') from None
        if len(self._pools) >= MAX_POOLS:
            _, (_, close) = self._pools.popitem(last=False)
            await close()
        pool = self._pools[timeouts] = Pool(**self._pool_options, **pool_deadlines(timeouts))
        return pool[0]


def request_timeouts(request: httpx.Request) -> Timeouts:
    timeout = request.extensions.get('timeout', {})
    return (timeout.get('connect'), timeout.get('read'), timeout.get('write'),
            timeout.get('pool'))


def pool_deadlines(timeouts: Timeouts) -> Dict[str, Any]:
    connect, read, write, pool = timeouts
    # One limit for any wait on the socket: never longer than httpx allows either phase
    limits = [limit for limit in (read, write) if limit is not None]
    socket_timeout = min(limits) if limits else NO_LIMIT
    return {
        'connect_timeout': NO_LIMIT if connect is None else connect,
        'socket_timeout': socket_timeout,
        'pool_timeout': pool,
    }


def lowhaio_url(url: httpx.URL) -> str:
    """The URL as lowhaio takes it: httpx has already percent-encoded it and IDNA-encoded the
    host. Credentials in it are left out; httpx sends them as an authorization header."""
    if url.scheme not in SCHEMES:
        raise httpx.UnsupportedProtocol(
            'Request URL has an unsupported protocol %r' % (url.scheme + '://',))
    if not url.raw_host:
        raise httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' "
                                        'protocol, or a host')
    return '%s://%s%s' % (url.scheme, url.netloc.decode('ascii'),
                          url.raw_path.decode('ascii'))


def request_method(request: httpx.Request) -> bytes:
    try:
        return request.method.encode('ascii')
    except UnicodeEncodeError as exception:
        raise httpx.LocalProtocolError('Method must be a token: %r' % (request.method,),
                                       request=request) from exception


def reason_phrase(status: int) -> bytes:
    # The standard phrase, for headers that do not carry the one the server sent
    try:
        return http.HTTPStatus(status).phrase.encode('ascii')
    except ValueError:
        return b''


class SendingState:
    """Whether the request body is being sent, and how the caller's content stream failed, if
    it did: what tells a write timeout from a read timeout, and the caller's error from ours."""

    __slots__ = ('in_progress', 'failure')

    def __init__(self) -> None:
        self.in_progress = False
        self.failure: Optional[BaseException] = None


def body_function(request: httpx.Request, headers: Headers,
                  sending: SendingState) -> BodyFunction:
    """The request's content as a lowhaio body function.

    Content given as bytes can be sent any number of times. Content given as an iterator can
    be iterated once: a second call raises `httpx.StreamConsumed`, as httpx's own transport
    would.
    """
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        content = b''.join(stream)  # bytes in memory: one piece, so no copy is made
        if not content:
            return empty_async_iterator
        source: BodyFunction = streamed(content)
    else:
        async def source(*_: Any, **__: Any) -> AsyncIterator[bytes]:
            async for chunk in stream:  # type: ignore[union-attr]
                yield chunk
    if any(name.lower() == b'transfer-encoding' and b'chunked' in value.lower()
           for name, value in headers):
        source = chunked(source)

    async def body(*_: Any, **__: Any) -> AsyncIterator[bytes]:
        sending.in_progress = True
        chunks = source()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exception:
                sending.failure = exception
                raise
            yield chunk
        # Only once every chunk was written and drained: lowhaio asks for the next one then
        sending.in_progress = False

    return body


class ResponseStream(httpx.AsyncByteStream):
    """A lowhaio response body as httpx's response stream, its errors mapped to httpx's.
    `aclose()` before the end closes the connection, which is never pooled half-read."""

    def __init__(self, body: ResponseBody, request: httpx.Request) -> None:
        self._body = body
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._body:
                yield chunk
        except HttpError as exception:
            raise httpx_error(exception, self._request, sending=False) from exception

    async def aclose(self) -> None:
        await self._body.aclose()


def httpx_error(exception: HttpError, request: httpx.Request,
                sending: bool) -> httpx.TransportError:
    """The httpx exception for a lowhaio one (see the table in README.md). `sending`: whether
    the request body was still being written when it happened."""
    return httpx_error_class(exception, sending)(str(exception), request=request)


def httpx_error_class(exception: HttpError, sending: bool) -> Type[httpx.TransportError]:
    cause = exception.__cause__
    if isinstance(exception, HttpPoolTimeoutError):
        return httpx.PoolTimeout
    if isinstance(exception, HttpProxyError) and not is_timeout(cause):
        return httpx.ProxyError  # the proxy refused the tunnel, or broke its handshake
    if isinstance(exception, HttpConnectionError):  # DNS, connecting and TLS included
        return httpx.ConnectTimeout if is_timeout(cause) else httpx.ConnectError
    if isinstance(exception, HttpInvalidRequestError):
        return httpx.LocalProtocolError
    if isinstance(exception, HttpTimeoutError):
        return httpx.WriteTimeout if sending else httpx.ReadTimeout
    if isinstance(exception, (HttpProtocolError, HttpHeaderTooLong)):
        return httpx.RemoteProtocolError
    if isinstance(exception, HttpConnectionClosedError):
        if sending:
            return httpx.WriteError
        # A clean close mid-response is the server breaking the protocol; a reset is an I/O error
        return httpx.ReadError if isinstance(cause, OSError) else httpx.RemoteProtocolError
    if type(exception) is HttpDataError and cause is None:
        # lowhaio raises it bare only when the body does not match its content-length
        return httpx.LocalProtocolError
    if isinstance(exception, HttpDataError):
        return httpx.WriteError if sending else httpx.ReadError
    return httpx.TransportError  # pragma: no cover - every lowhaio error is one of the above


def is_timeout(cause: Optional[BaseException]) -> bool:
    # asyncio's TLS handshake timeout is a ConnectionAbortedError, with this message, on both
    # the default loop and uvloop
    return isinstance(cause, asyncio.TimeoutError) or (
        isinstance(cause, ConnectionAbortedError) and 'handshake is taking longer' in str(cause))
