"""One benchmark measurement: one client running one workload, in this process.

The harness (harness.py) starts this as `taskset -c 1 python clients.py SPEC_JSON OUT_JSON`, so
every client+workload pair gets a fresh interpreter: no client warms caches or the allocator for
another.

Every client is wrapped in the same tiny adapter (`get`, `get_stream`, `post`, `close`), so each
pays the same single extra coroutine call per request. Inside the adapter each client is used the
way its own documentation recommends for speed: one session/pool reused for everything,
connection limits raised above the workload's concurrency, bodies read fully for small responses
and streamed for download.

Every response is checked: status 200, and the body length the server is known to send. A wrong
answer raises, and the harness reports the run as an error.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import ssl
import sys
import time
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
)
from urllib.parse import urlsplit


class WrongResult(Exception):
    pass


def check_status(status: int, url: str) -> None:
    if status != 200:
        raise WrongResult(f'status {status} from {url}')


def ssl_context_trusting(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def upload_chunks(size: int, chunk_size: int) -> Callable[[], AsyncIterator[bytes]]:
    """An async generator function yielding `size` bytes in chunks (a client may replay it)."""
    chunk = b'\x00' * chunk_size

    async def gen() -> AsyncIterator[bytes]:
        left = size
        while left >= chunk_size:
            left -= chunk_size
            yield chunk
        if left:
            yield chunk[:left]

    def sync_gen() -> Iterator[bytes]:
        left = size
        while left >= chunk_size:
            left -= chunk_size
            yield chunk
        if left:
            yield chunk[:left]

    # The same chunks from a plain generator, for a client whose async-generator bodies are broken
    gen.sync = sync_gen  # type: ignore[attr-defined]
    return gen


# -------------------------------------------------------------------------------------------------
# Adapters. Each returns an object with:
#   get(url) -> int                    GET, whole body read, returns its length
#   get_stream(url) -> int             GET, body streamed and discarded, returns its length
#   post(url, size, gen_fn) -> bytes   POST of `size` bytes from gen_fn(), content-length; the body
#   get_decoded(url) -> int            GET, accepting gzip, the body decoded as it streams and
#                                      discarded, returns the decoded length (lowhaio, aiohttp
#                                      and httpx only)
#   close()
# -------------------------------------------------------------------------------------------------


class _LowhaioApi:
    """The calls of lowhaio's API, shared by this lowhaio and 0.0.89: `request` and
    `close_pool` come from a Pool."""

    request: Callable[..., Any]
    close_pool: Callable[[], Any]
    buffered: Callable[[Any], Awaitable[bytes]]  # the module's: its whole-body read

    async def get(self, url: str) -> int:
        # `await buffered(body)`: lowhaio's way to read a whole body, as `await resp.read()` is
        # aiohttp's
        code, _, body = await self.request(b'GET', url)
        data = await self.buffered(body)
        check_status(int(code), url)
        return len(data)

    async def get_stream(self, url: str) -> int:
        code, _, body = await self.request(b'GET', url)
        n = 0
        async for chunk in body:
            n += len(chunk)
        check_status(int(code), url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        headers = ((b'content-length', b'%d' % size),)
        code, _, body = await self.request(b'POST', url, headers=headers, body=gen_fn)
        data = await self.buffered(body)
        check_status(int(code), url)
        return data

    async def close(self) -> None:
        await self.close_pool()


class LowhaioClient(_LowhaioApi):
    PROXIES = True
    pool_options: Dict[str, object] = {}

    def __init__(self, ctx: ssl.SSLContext, ca_file: str,
                 proxy: Optional[str] = None) -> None:
        import lowhaio
        import lowhaio_decompress

        options = dict(self.pool_options)
        if proxy is not None:
            options['proxy'] = proxy
        self.request, self.close_pool = lowhaio.Pool(get_ssl_context=lambda: ctx, **options)
        self.buffered = lowhaio.buffered
        self.decompressed_request = lowhaio_decompress.decompressed(self.request)
        if proxy is not None:
            # tinyproxy closes each connection just after a response, unannounced, so the next
            # request can race that close; aiohttp then retries once by itself, and lowhaio with
            # lowhaio_retry, the same way: once, at once, only for that error
            import lowhaio_retry

            self.request = lowhaio_retry.retry(
                self.request, ((lowhaio.HttpConnectionClosedBeforeResponseError, (0,)),)
            )

    async def get_decoded(self, url: str) -> int:
        code, _, body = await self.decompressed_request(b'GET', url)
        n = 0
        async for chunk in body:
            n += len(chunk)
        check_status(int(code), url)
        return n


class LowhaioRecv16kClient(LowhaioClient):
    """lowhaio with body pieces capped at 16 KiB (`recv_bufsize=16384`, 0.0.89's default):
    what the cap costs next to the default, where pieces come as the transport delivers them."""

    pool_options = {'recv_bufsize': 16384}


# lowhaio 0.0.89, the last release before this rewrite, from PyPI: prepare.sh unpacks its wheel
# beside the benchmark's virtualenv, never installing it, so it cannot shadow the lowhaio under test
LOWHAIO_0_0_89 = os.path.join(os.path.dirname(os.path.abspath(__file__)), '.venv',
                              'lowhaio-0.0.89', 'lowhaio.py')


class Lowhaio0089Client(_LowhaioApi):
    """lowhaio 0.0.89: plain sockets and `sock.send` straight from the caller's chunk, no
    transports. Loaded under a name of its own from the unpacked wheel."""

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        import importlib.util

        spec = importlib.util.spec_from_file_location('lowhaio_0_0_89', LOWHAIO_0_0_89)
        if spec is None or spec.loader is None:
            raise SystemExit(f'lowhaio 0.0.89 not found at {LOWHAIO_0_0_89}: run prepare.sh')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.request, self.close_pool = module.Pool(get_ssl_context=lambda: ctx)
        self.buffered = module.buffered


class AiohttpClient:
    PROXIES = True

    def __init__(self, ctx: ssl.SSLContext, ca_file: str,
                 proxy: Optional[str] = None) -> None:
        import aiohttp

        options = {} if proxy is None else {'proxy': proxy}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=128, ssl=ctx), **options
        )

    async def get(self, url: str) -> int:
        async with self.session.get(url) as resp:
            data = await resp.read()
            check_status(resp.status, url)
            return len(data)

    async def get_stream(self, url: str) -> int:
        n = 0
        async with self.session.get(url) as resp:
            async for chunk in resp.content.iter_any():
                n += len(chunk)
            check_status(resp.status, url)
        return n

    # aiohttp decodes gzip while streaming by default (auto_decompress), and accepts gzip
    get_decoded = get_stream

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        headers = {'content-length': str(size)}
        async with self.session.post(url, data=gen_fn(), headers=headers) as resp:
            data = await resp.read()
            check_status(resp.status, url)
            return data

    async def close(self) -> None:
        await self.session.close()


class HttpxClient:
    PROXIES = True

    def __init__(self, ctx: ssl.SSLContext, ca_file: str,
                 proxy: Optional[str] = None) -> None:
        import httpx

        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        self.client = httpx.AsyncClient(
            verify=ctx, limits=limits, timeout=httpx.Timeout(60.0), proxy=proxy
        )
        self.proxied = proxy is not None

    async def get(self, url: str) -> int:
        try:
            resp = await self.client.get(url)
        except Exception as error:
            # tinyproxy's unannounced closes (see LowhaioClient): retried once, as aiohttp and
            # lowhaio do. httpx raises RemoteProtocolError for them, as for nothing else here.
            if not self.proxied or type(error).__name__ != 'RemoteProtocolError':
                raise
            resp = await self.client.get(url)
        check_status(resp.status_code, url)
        return len(resp.content)

    async def get_stream(self, url: str) -> int:
        n = 0
        async with self.client.stream('GET', url) as resp:
            async for chunk in resp.aiter_raw():
                n += len(chunk)
            check_status(resp.status_code, url)
        return n

    async def get_decoded(self, url: str) -> int:
        n = 0
        async with self.client.stream('GET', url) as resp:
            async for chunk in resp.aiter_bytes():  # decoded, unlike aiter_raw
                n += len(chunk)
            check_status(resp.status_code, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        resp = await self.client.post(url, content=gen_fn(), headers={'content-length': str(size)})
        check_status(resp.status_code, url)
        return resp.content

    async def close(self) -> None:
        await self.client.aclose()


class HttpxLowhaioClient(HttpxClient):
    """httpx's API over lowhaio_httpx.LowhaioTransport: the same calls as `httpx`, one line
    different. Connection limits are lowhaio's (none by default), the CA goes to the pool."""

    def __init__(self, ctx: ssl.SSLContext, ca_file: str,
                 proxy: Optional[str] = None) -> None:
        import httpx
        from lowhaio_httpx import LowhaioTransport

        options = {} if proxy is None else {'proxy': proxy}
        transport = LowhaioTransport(get_ssl_context=lambda: ctx, **options)
        self.client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0))
        self.proxied = proxy is not None


class AiosonicClient:
    PROXIES = False

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        import aiosonic
        from aiosonic.pools import PoolConfig

        # max_conn_requests=None: like the others, reuse a keep-alive connection without limit
        pool = PoolConfig(size=128, max_conn_requests=None)
        connector = aiosonic.TCPConnector(pool_configs={':default': pool})
        self.client = aiosonic.HTTPClient(connector=connector)
        self.ctx = ctx

    def ssl_for(self, url: str) -> Optional[ssl.SSLContext]:
        # aiosonic wraps any connection given an ssl context in TLS, even for http:// URLs
        return self.ctx if url.startswith('https:') else None

    async def get(self, url: str) -> int:
        resp = await self.client.get(url, ssl=self.ssl_for(url))
        data = await resp.content()
        check_status(resp.status_code, url)
        return len(data)

    async def get_stream(self, url: str) -> int:
        n = 0
        async with self.client.stream('GET', url, ssl=self.ssl_for(url)) as resp:
            async for chunk in resp.read_chunks():
                n += len(chunk)
            check_status(resp.status_code, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        # aiosonic always sends an iterator body chunked (it would add transfer-encoding next to
        # a content-length we gave), so it gets no content-length: the sink reads chunked too.
        resp = await self.client.post(url, data=gen_fn(), ssl=self.ssl_for(url))
        data = await resp.content()
        check_status(resp.status_code, url)
        return data

    async def close(self) -> None:
        await self.client.aclose()


# --- Clients with native cores. Their I/O runs on threads of their own (a Tokio runtime, libcurl's
# event loop driven from asyncio, or urllib3-future's sockets), so CPU is measured as the whole
# process's: time.process_time() is CLOCK_PROCESS_CPUTIME_ID, the sum over all threads.


class PyreqwestClient:
    """pyreqwest (Rust reqwest/hyper on a Tokio runtime), HTTP/1.1 only, trusting the CA."""

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        from pyreqwest.client import ClientBuilder

        with open(ca_file, 'rb') as file:
            ca_pem = file.read()
        self.client = (
            ClientBuilder().http1_only().add_root_certificate_pem(ca_pem).build()
        )

    async def get(self, url: str) -> int:
        resp = await self.client.get(url).build().send()
        data = await resp.bytes()
        check_status(resp.status, url)
        return len(data)

    async def get_stream(self, url: str) -> int:
        n = 0
        async with self.client.get(url).build_streamed() as resp:
            reader = resp.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                n += len(chunk)
            check_status(resp.status, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        request = (
            self.client.post(url)
            .header('content-length', str(size))
            .body_stream(gen_fn())
            .build()
        )
        resp = await request.send()
        data = bytes(await resp.bytes())
        check_status(resp.status, url)
        return data

    async def close(self) -> None:
        await self.client.close()


class RnetClient:
    """rnet (Rust, a reqwest fork on Tokio), HTTP/1.1 only, trusting the CA by path."""

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        import pathlib

        import rnet

        self.client = rnet.Client(
            http1_only=True, verify=pathlib.Path(ca_file), pool_max_idle_per_host=128
        )

    async def get(self, url: str) -> int:
        resp = await self.client.get(url)
        async with resp:
            data = await resp.bytes()
            check_status(resp.status, url)
        return len(data)

    async def get_stream(self, url: str) -> int:
        n = 0
        resp = await self.client.get(url)
        async with resp:
            async with resp.stream() as streamer:
                async for chunk in streamer:
                    n += len(chunk)
            check_status(resp.status, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        # rnet 2.4.2 stops reading an async-generator body after 720,896 bytes (11 chunks of
        # 64 KiB), and sends the truncated body as if complete when no content-length is given;
        # from a plain generator it sends every byte. So it gets the same chunks from one.
        resp = await self.client.post(
            url,
            headers={'content-length': str(size)},
            body=gen_fn.sync(),  # type: ignore[attr-defined]
        )
        async with resp:
            data = await resp.bytes()
            check_status(resp.status, url)
        return data

    async def close(self) -> None:
        pass  # rnet has no close: its pool goes with the client


class CurlCffiClient:
    """curl_cffi's AsyncSession (libcurl's multi interface driven by the asyncio loop), HTTP/1.1."""

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        from curl_cffi import CurlHttpVersion
        from curl_cffi.requests import AsyncSession

        self.session = AsyncSession(
            verify=ca_file, http_version=CurlHttpVersion.V1_1, max_clients=128
        )

    async def get(self, url: str) -> int:
        resp = await self.session.get(url)
        check_status(resp.status_code, url)
        return len(resp.content)

    async def get_stream(self, url: str) -> int:
        n = 0
        async with self.session.stream('GET', url) as resp:
            async for chunk in resp.aiter_content():
                n += len(chunk)
            check_status(resp.status_code, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        resp = await self.session.post(
            url, content=gen_fn(), headers={'content-length': str(size)}
        )
        check_status(resp.status_code, url)
        return resp.content

    async def close(self) -> None:
        await self.session.close()


class NiquestsClient:
    """niquests' AsyncSession (urllib3-future underneath), HTTP/2 and HTTP/3 turned off."""

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        import niquests

        self.session = niquests.AsyncSession(
            disable_http2=True, disable_http3=True, pool_connections=128, pool_maxsize=128
        )
        # Given per request: niquests 3.21.2's AsyncSession ignores its `verify` attribute (it
        # verified against the system store when that was set)
        self.verify = ca_file

    async def get(self, url: str) -> int:
        resp = await self.session.get(url, verify=self.verify)
        check_status(resp.status_code, url)
        return len(resp.content)

    async def get_stream(self, url: str) -> int:
        n = 0
        resp = await self.session.get(url, stream=True, verify=self.verify)
        async for chunk in await resp.iter_raw(1 << 16):
            n += len(chunk)
        check_status(resp.status_code, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        resp = await self.session.post(
            url, data=gen_fn(), headers={'content-length': str(size)}, verify=self.verify
        )
        check_status(resp.status_code, url)
        return resp.content

    async def close(self) -> None:
        await self.session.close()


# --- The floor: the least an asyncio HTTP/1.1 client can do per request ------------------------


class FloorConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, parsed by hand with content-length or chunked framing.

    A response's head is parsed just enough: status code, content-length / transfer-encoding. The
    body is either collected whole (`collected`) or handed over chunk by chunk as it arrives
    (`streamed`), with reading paused while more than STREAM_HIGH bytes wait for the consumer.
    """

    STREAM_HIGH = 1 << 20

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.loop = asyncio.get_running_loop()
        self.head_buf = b''
        self.in_head = True
        self.status = 0
        self.remaining = 0  # content-length bytes still to come
        self.chunked = False
        self.chunk_buf = b''  # unparsed chunked framing bytes
        self.chunk_left = 0  # data bytes left in the current chunk
        self.streaming = False
        self.parts: List[bytes] = []
        self.head_done: Optional[asyncio.Future] = None  # streamed: resolved with the status
        self.body_done: Optional[asyncio.Future] = None  # collected: with (status, body)
        self.stream_queue: Deque[bytes] = collections.deque()
        self.stream_queued = 0
        self.stream_ended = False
        self.stream_waiter: Optional[asyncio.Future] = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: Optional[asyncio.Future] = None
        self.lost: Optional[BaseException] = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if getattr(transport, 'max_size', 0) > 128 * 1024 - 256:
            # As lowhaio does: asyncio's socket transport reads into a fresh bytes object of
            # max_size, and at its 256 KiB glibc maps each one from the kernel (two page faults
            # a response). A floor is the least any client can do, and any client can do this.
            transport.max_size = 128 * 1024 - 256  # type: ignore[attr-defined]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = exc or ConnectionError('connection closed')
        for fut in (self.head_done, self.body_done, self.stream_waiter, self.drain_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(self.lost)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            self.head_buf += data
            end = self.head_buf.find(b'\r\n\r\n')
            if end == -1:
                return
            data = self.head_buf[end + 4 :]
            self.parse_head(self.head_buf[:end])
            self.head_buf = b''
            if self.streaming:
                self.head_done.set_result(self.status)  # type: ignore[union-attr]
        if self.chunked:
            self.chunked_received(data)
        else:
            self.body_received(data)

    # -- parsing

    def parse_head(self, head: bytes) -> None:
        self.in_head = False
        self.status = int(head[9:12])
        lower = head.lower()
        pos = lower.find(b'\r\ncontent-length:')
        if pos != -1:
            self.chunked = False
            stop = lower.find(b'\r\n', pos + 17)
            self.remaining = int(lower[pos + 17 : stop if stop != -1 else len(lower)])
        elif b'\r\ntransfer-encoding: chunked' in lower:
            self.chunked = True
            self.chunk_buf = b''
            self.chunk_left = 0
        else:
            raise WrongResult('floor client needs content-length or chunked framing')

    def body_received(self, data: bytes) -> None:
        if len(data) > self.remaining:
            raise WrongResult('more bytes than content-length')
        self.remaining -= len(data)
        if data:
            self.deliver(data)
        if self.remaining == 0:
            self.finish()

    def chunked_received(self, data: bytes) -> None:
        buf = self.chunk_buf + data if self.chunk_buf else data
        pos = 0
        end = len(buf)
        while pos < end:
            if self.chunk_left:
                take = min(self.chunk_left, end - pos)
                self.deliver(buf[pos : pos + take])
                self.chunk_left -= take
                pos += take
                continue
            # between chunks: CRLF after data (if any), then "size[;ext]\r\n"
            line_end = buf.find(b'\r\n', pos)
            if line_end == -1:
                break
            if line_end == pos:  # the CRLF closing the previous chunk's data
                pos += 2
                continue
            size = int(buf[pos:line_end].split(b';', 1)[0], 16)
            if size == 0:
                # last chunk: no trailers from our server, so the response ends with one more CRLF
                if buf.find(b'\r\n', line_end + 2) == -1:
                    break
                self.chunk_buf = b''
                self.finish()
                return
            self.chunk_left = size
            pos = line_end + 2
        self.chunk_buf = buf[pos:]

    def deliver(self, data: bytes) -> None:
        if not self.streaming:
            self.parts.append(data)
            return
        self.stream_queue.append(data)
        self.stream_queued += len(data)
        if self.stream_queued > self.STREAM_HIGH and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        if self.stream_waiter is not None and not self.stream_waiter.done():
            self.stream_waiter.set_result(None)

    def finish(self) -> None:
        self.in_head = True
        if self.streaming:
            self.stream_ended = True
            if self.stream_waiter is not None and not self.stream_waiter.done():
                self.stream_waiter.set_result(None)
        else:
            parts, self.parts = self.parts, []
            self.body_done.set_result((self.status, b''.join(parts)))  # type: ignore[union-attr]

    # -- requests

    def check_alive(self) -> None:
        if self.lost is not None:
            raise self.lost

    async def collected(self, request: bytes) -> Tuple[int, bytes]:
        self.check_alive()
        self.streaming = False
        self.body_done = self.loop.create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return await self.body_done

    async def streamed(self, request: bytes) -> Tuple[int, AsyncIterator[bytes]]:
        self.check_alive()
        self.streaming = True
        self.stream_ended = False
        self.head_done = self.loop.create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return await self.head_done, self.stream_body()

    async def stream_body(self) -> AsyncIterator[bytes]:
        queue = self.stream_queue
        while True:
            while queue:
                chunk = queue.popleft()
                self.stream_queued -= len(chunk)
                yield chunk
            if self.stream_ended:
                return
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            self.stream_waiter = self.loop.create_future()
            await self.stream_waiter

    async def upload(
        self, head: bytes, gen_fn: Callable[[], AsyncIterator[bytes]]
    ) -> Tuple[int, bytes]:
        self.check_alive()
        self.streaming = False
        self.body_done = self.loop.create_future()
        write = self.transport.write  # type: ignore[union-attr]
        write(head)
        async for chunk in gen_fn():
            write(chunk)
            if self.writing_paused:
                self.drain_waiter = self.loop.create_future()
                await self.drain_waiter
        return await self.body_done


class FloorClient:
    """Pre-built request bytes per URL, and a free list of connections per host: a task takes a free
    connection or opens one, so 64 concurrent tasks end up with one connection each."""

    PROXIES = False

    def __init__(self, ctx: ssl.SSLContext, ca_file: str) -> None:
        self.ctx = ctx
        self.targets: Dict[str, Tuple[Tuple[str, int, bool], bytes, bytes]] = {}
        self.free: Dict[Tuple[str, int, bool], List[FloorConnection]] = collections.defaultdict(
            list
        )
        self.all: List[FloorConnection] = []

    def target(self, url: str) -> Tuple[Tuple[str, int, bool], bytes, bytes]:
        try:
            return self.targets[url]
        except KeyError:
            parts = urlsplit(url)
            tls = parts.scheme == 'https'
            host = parts.hostname or ''
            key = (host, parts.port or (443 if tls else 80), tls)
            path = (parts.path or '/') + ('?' + parts.query if parts.query else '')
            host_header = parts.netloc.encode()
            get = b'GET %s HTTP/1.1\r\nhost: %s\r\n\r\n' % (path.encode(), host_header)
            post = b'POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: ' % (
                path.encode(),
                host_header,
            )
            self.targets[url] = (key, get, post)
            return self.targets[url]

    async def acquire(self, key: Tuple[str, int, bool]) -> FloorConnection:
        free = self.free[key]
        while free:
            conn = free.pop()
            if conn.lost is None:
                return conn
        _, conn = await asyncio.get_running_loop().create_connection(
            FloorConnection, key[0], key[1], ssl=self.ctx if key[2] else None
        )
        self.all.append(conn)
        return conn

    async def get(self, url: str) -> int:
        key, request, _ = self.target(url)
        conn = await self.acquire(key)
        status, body = await conn.collected(request)
        self.free[key].append(conn)
        check_status(status, url)
        return len(body)

    async def get_stream(self, url: str) -> int:
        key, request, _ = self.target(url)
        conn = await self.acquire(key)
        status, body = await conn.streamed(request)
        n = 0
        async for chunk in body:
            n += len(chunk)
        self.free[key].append(conn)
        check_status(status, url)
        return n

    async def post(self, url: str, size: int, gen_fn: Callable[[], AsyncIterator[bytes]]) -> bytes:
        key, _, post = self.target(url)
        conn = await self.acquire(key)
        status, body = await conn.upload(post + b'%d\r\n\r\n' % size, gen_fn)
        self.free[key].append(conn)
        check_status(status, url)
        return body

    async def close(self) -> None:
        for conn in self.all:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)


CLIENTS: Dict[str, Callable[[ssl.SSLContext, str], object]] = {
    'lowhaio': LowhaioClient,
    'lowhaio-recv16k': LowhaioRecv16kClient,
    'lowhaio-0.0.89': Lowhaio0089Client,
    'aiohttp': AiohttpClient,
    'httpx': HttpxClient,
    'httpx-lowhaio': HttpxLowhaioClient,
    'aiosonic': AiosonicClient,
    'floor': FloorClient,
    'pyreqwest': PyreqwestClient,
    'rnet': RnetClient,
    'curl_cffi': CurlCffiClient,
    'niquests': NiquestsClient,
}


def client_factory(name: str) -> Tuple[Callable[[ssl.SSLContext, str], object], bool]:
    """'NAME' or 'NAME-uvloop' -> (adapter class, whether to run on uvloop)."""
    on_uvloop = name.endswith('-uvloop')
    base = name[: -len('-uvloop')] if on_uvloop else name
    if base not in CLIENTS:
        raise SystemExit(
            f'unknown client {name!r}; known: {sorted(CLIENTS)}, each also as NAME-uvloop'
        )
    return CLIENTS[base], on_uvloop


# -------------------------------------------------------------------------------------------------
# Workloads. Each does `spec['n']` requests (after a short warm-up that opens the connections) and
# returns the number of response body bytes, checked request by request.
# -------------------------------------------------------------------------------------------------


async def run_concurrently(
    concurrency: int, n: int, deadline: float, one: Callable[[], Awaitable[None]]
) -> None:
    left = n
    perf_counter = time.perf_counter

    async def worker() -> None:
        nonlocal left
        while left > 0 and perf_counter() < deadline:
            left -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def small_requests(
    client, spec: dict, n: int, max_seconds: float = float('inf')
) -> Tuple[int, int]:
    """Up to n requests, fewer if max_seconds run out first: a slow client can't stall a run."""
    url, expected = spec['url'], spec['expected_len']
    get = client.get
    total = 0
    done = 0
    perf_counter = time.perf_counter
    deadline = perf_counter() + max_seconds

    async def one() -> None:
        nonlocal total, done
        length = await get(url)
        if length != expected:
            raise WrongResult(f'body of {length} bytes from {url}, expected {expected}')
        total += length
        done += 1

    if spec['concurrency'] == 1:
        for _ in range(n):
            if perf_counter() > deadline:
                break
            await one()
    else:
        await run_concurrently(spec['concurrency'], n, deadline, one)
    return done, total


async def measured_small(client, spec: dict) -> Tuple[int, int]:
    return await small_requests(client, spec, spec['n'], spec['max_seconds'])


async def warm_small(client, spec: dict) -> None:
    await small_requests(client, spec, spec['warmup'])


async def download(client, spec: dict) -> Tuple[int, int]:
    total = 0
    for _ in range(spec['n']):
        length = await client.get_stream(spec['url'])
        if length != spec['expected_len']:
            raise WrongResult(f"downloaded {length} bytes, expected {spec['expected_len']}")
        total += length
    return spec['n'], total


async def gzip_download(client, spec: dict) -> Tuple[int, int]:
    total = 0
    for _ in range(spec['n']):
        length = await client.get_decoded(spec['url'])
        if length != spec['expected_len']:
            raise WrongResult(f"decoded {length} bytes, expected {spec['expected_len']}")
        total += length
    return spec['n'], total


async def warm_other(client, spec: dict) -> None:
    # Opens the connection the measured request will reuse, so only the transfer is timed
    length = await client.get(spec['warm_url'])
    if length != spec['warm_expected_len']:
        raise WrongResult(f'warm-up body of {length} bytes')


async def upload(client, spec: dict) -> Tuple[int, int]:
    size = spec['size']
    gen_fn = upload_chunks(size, spec['chunk_size'])
    for _ in range(spec['n']):
        body = await client.post(spec['url'], size, gen_fn)
        if body != b'%d' % size:
            raise WrongResult(f'server received {body[:100]!r} bytes, expected {size}')
    return spec['n'], size * spec['n']  # bytes sent, as acknowledged by the server


WORKLOADS = {
    'small': (warm_small, measured_small),
    'download': (warm_other, download),
    'upload': (warm_other, upload),
    'gzip': (warm_other, gzip_download),
}


def status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (Linux), e.g. VmHWM (peak RSS) or VmRSS."""
    with open('/proc/self/status') as file:
        for line in file:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'no {field} in /proc/self/status')


def reset_peak_rss() -> None:
    """Start the peak-RSS high-water mark (VmHWM) afresh from the current RSS.

    Not getrusage's ru_maxrss: Linux keeps it across exec, so a child starts with the peak of the
    process that forked it (the harness), and every client would show the same ~40 MiB.
    Writing 5 to clear_refs resets VmHWM (Linux >= 4.0)."""
    with open('/proc/self/clear_refs', 'w') as file:
        file.write('5')


async def measure(spec: dict, profile: bool) -> dict:
    adapter, _ = client_factory(spec['client'])
    ctx = ssl_context_trusting(spec['ca_file'])
    options = {'proxy': spec['proxy']} if 'proxy' in spec else {}
    client = adapter(ctx, spec['ca_file'], **options)
    warm, work = WORKLOADS[spec['kind']]
    try:
        await warm(client, spec)
        gc.collect()
        rss_before = status_kb('VmRSS')
        reset_peak_rss()
        profiler = None
        if profile:
            import cProfile

            # CPU time, not wall time: waiting in epoll for the server is not the client's cost
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        requests, nbytes = await work(client, spec)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        peak_kb = status_kb('VmHWM')  # the peak since reset_peak_rss: the measured part's
        if profiler is not None:
            profiler.disable()
            print_profile(profiler)
    finally:
        await client.close()
    return {
        'ok': True,
        'requests': requests,
        'bytes': nbytes,
        'wall_s': wall,
        'cpu_s': cpu,
        'maxrss_kb': peak_kb,
        'rss_before_kb': rss_before,
    }


def print_profile(profiler) -> None:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats('tottime').print_stats(40)
    print(out.getvalue())


def main() -> None:
    spec = json.loads(sys.argv[1])
    out_path = sys.argv[2]
    profile = '--profile' in sys.argv[3:]
    _, on_uvloop = client_factory(spec['client'])
    try:
        if on_uvloop:
            import uvloop

            result = uvloop.run(measure(spec, profile))
        else:
            result = asyncio.run(measure(spec, profile))
    except BaseException as exc:
        import traceback

        result = {
            'ok': False,
            'error': f'{type(exc).__name__}: {exc}',
            'traceback': traceback.format_exc(),
        }
    with open(out_path, 'w') as file:
        json.dump(result, file)


if __name__ == '__main__':
    main()
