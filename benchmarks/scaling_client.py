"""One client running one scaling curve, point by point, in this process (see scaling.py).

Started as `taskset -c 1 python scaling_client.py SPEC_JSON OUT_JSON`. Each point is warmed up,
then measured with time.process_time (client CPU, all threads) or tracemalloc (memory), and every
response is checked (status 200, exact body length; uploads: the byte count the sink echoes).
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
import tracemalloc
from typing import Any, Awaitable, Callable, Dict, List, Sequence, Tuple

from clients import (
    AiohttpClient,
    FloorClient,
    WrongResult,
    check_status,
    ssl_context_trusting,
    upload_chunks,
)

Headers = Sequence[Tuple[str, str]]


class ScalingLowhaio:
    def __init__(self, ca_file: str) -> None:
        import lowhaio

        ctx = ssl_context_trusting(ca_file)
        # 100 added response headers plus nginx's own are above the default limit of 100
        # Timeouts raised: 10,000 requests held in flight wait longer than the default 10 s
        # socket_timeout while the others connect (aiohttp's default is 5 minutes in all)
        self.request, self.close = lowhaio.Pool(
            get_ssl_context=lambda: ctx,
            max_header_count=300,
            socket_timeout=300,
            response_head_timeout=300,
        )
        # lowhaio takes bytes pairs: converted once per headers object, as a caller would keep them
        self.as_bytes: Dict[int, Tuple[Tuple[bytes, bytes], ...]] = {}

    async def get(self, url: str, headers: Headers = ()) -> int:
        encoded = self.as_bytes.get(id(headers))
        if encoded is None:
            encoded = tuple((k.encode(), v.encode()) for k, v in headers)
            self.as_bytes[id(headers)] = encoded
        code, _, body = await self.request(b'GET', url, headers=encoded)
        n = 0
        async for chunk in body:
            n += len(chunk)
        check_status(int(code), url)
        return n

    # lowhaio's body is always an iterator: get streams already. The same function, not a
    # coroutine awaiting it: a frame more to pass through each time the task resumes (each
    # read of a download) cost ~1,000 instructions per read that the floor does not pay.
    get_stream = get

    async def post(self, url: str, size: int, gen_fn: Callable) -> bytes:
        code, _, body = await self.request(
            b'POST', url, headers=((b'content-length', b'%d' % size),), body=gen_fn
        )
        data = b''.join([chunk async for chunk in body])
        check_status(int(code), url)
        return data


class ScalingAiohttp(AiohttpClient):
    def __init__(self, ca_file: str) -> None:
        import aiohttp

        ctx = ssl_context_trusting(ca_file)
        # no connection limit: the curves go to 10,000 connections
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=ctx)
        self.session = aiohttp.ClientSession(connector=connector)

    async def get(self, url: str, headers: Headers = ()) -> int:  # type: ignore[override]
        async with self.session.get(url, headers=list(headers)) as resp:
            data = await resp.read()
            check_status(resp.status, url)
            return len(data)


class ScalingFloor(FloorClient):
    """The floor, with request headers built into its pre-built request bytes (once per URL)."""

    def __init__(self, ca_file: str) -> None:
        super().__init__(ssl_context_trusting(ca_file), ca_file)
        self.with_headers: Dict[Tuple[str, Tuple], bytes] = {}

    async def get(self, url: str, headers: Headers = ()) -> int:  # type: ignore[override]
        key, request, _ = self.target(url)
        if headers:
            try:
                request = self.with_headers[(url, tuple(headers))]
            except KeyError:
                extra = b''.join(b'%s: %s\r\n' % (k.encode(), v.encode()) for k, v in headers)
                request = self.with_headers[(url, tuple(headers))] = request[:-2] + extra + b'\r\n'
        conn = await self.acquire(key)
        status, body = await conn.collected(request)
        self.free[key].append(conn)
        check_status(status, url)
        return len(body)


CLIENTS = {'lowhaio': ScalingLowhaio, 'aiohttp': ScalingAiohttp, 'floor': ScalingFloor}


async def checked_get(client: Any, url: str, expected: int, headers: Headers = ()) -> None:
    length = await client.get(url, headers)
    if length != expected:
        raise WrongResult(f'body of {length} bytes from {url}, expected {expected}')


async def checked_stream(client: Any, url: str, expected: int) -> None:
    """The body streamed and discarded, never held whole (the floor's and aiohttp's `get`
    collect it)."""
    length = await client.get_stream(url)
    if length != expected:
        raise WrongResult(f'streamed {length} bytes from {url}, expected {expected}')


async def concurrently(concurrency: int, n: int, one: Callable[[], Awaitable[None]]) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


PROFILE = False


def cpu_of(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[float]]:
    async def timed() -> float:
        gc.collect()
        profiler = None
        if PROFILE:
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time: waits are not the client's
            profiler.enable()
        cpu0 = time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: every thread of the process
        await fn()
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
            print_profile(profiler)
        return cpu

    return timed


def print_profile(profiler: Any) -> None:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats('tottime').print_stats(25)
    print(out.getvalue())


# --- one function per curve: (client, spec, x) -> the measured value at x


async def point_concurrency(client: Any, spec: dict, c: int) -> float:
    # 16 requests per task at least: starting and ending the c worker tasks is then a small share
    url, n = spec['url'], max(spec['n'], 16 * c)

    async def one() -> None:
        await checked_get(client, url, 100)

    await concurrently(c, 2 * c, one)  # warm-up: opens the c connections
    return await cpu_of(lambda: concurrently(c, n, one))() / n * 1e6


async def point_hosts(client: Any, spec: dict, hosts: int) -> float:
    urls = spec['host_urls'][:hosts]
    n = max(spec['n'], 2 * hosts)
    for url in urls:  # warm-up: one connection per host
        await checked_get(client, url, 100)

    async def run() -> None:
        for i in range(n):
            await checked_get(client, urls[i % hosts], 100)

    return await cpu_of(run)() / n * 1e6


async def point_response_headers(client: Any, spec: dict, count: int) -> float:
    url, n = spec['headers_url'] % count, spec['n']
    for _ in range(20):
        await checked_get(client, url, 100)

    async def run() -> None:
        for _ in range(n):
            await checked_get(client, url, 100)

    return await cpu_of(run)() / n * 1e6


async def point_request_headers(client: Any, spec: dict, count: int) -> float:
    url, n = spec['url'], spec['n']
    headers = [(f'x-bench-{i}', f'value-{i}-{"v" * 20}') for i in range(count)]
    for _ in range(20):
        await checked_get(client, url, 100, headers)

    async def run() -> None:
        for _ in range(n):
            await checked_get(client, url, 100, headers)

    return await cpu_of(run)() / n * 1e6


def requests_for(spec: dict, size: int) -> int:
    return max(1, min(spec['max_requests'], spec['bytes_per_point'] // size))


async def point_download(client: Any, spec: dict, size: int) -> float:
    url, n = spec['size_url'] % size, requests_for(spec, size)
    # The warm-up opens the connection and reads the file once, into the server's page cache. A
    # first read has nginx fill the cache as it sends (a sparse file's pages zeroed), so it sends
    # more slowly and the client wakes more often for less: +0.02-0.07 CPU s/GB measured. The
    # floor, first to ask, paid that, for all of its one request at 1 GiB.
    await checked_stream(client, url, size)

    async def run() -> None:
        for _ in range(n):
            await checked_stream(client, url, size)

    return await cpu_of(run)() / (n * size / 1e9)


async def point_upload(client: Any, spec: dict, size: int) -> float:
    url, n = spec['upload_url'], requests_for(spec, size)
    gen_fn = upload_chunks(size, min(size, 64 * 1024))
    await client.post(url, 0, upload_chunks(0, 1))

    async def run() -> None:
        for _ in range(n):
            got = await client.post(url, size, gen_fn)
            if got != b'%d' % size:
                raise WrongResult(f'sink received {got[:50]!r} bytes, expected {size}')

    return await cpu_of(run)() / (n * size / 1e9)


async def point_chunk_size(client: Any, spec: dict, chunk: int) -> float:
    url, size = spec['chunked_url'] % chunk, spec['chunked_len']
    n = requests_for(spec, size)
    await checked_stream(client, url, size)

    async def run() -> None:
        for _ in range(n):
            await checked_stream(client, url, size)

    return await cpu_of(run)() / (n * size / 1e9)


async def point_idle_memory(client: Any, spec: dict, conns: int) -> float:
    """Bytes (tracemalloc) per pooled connection left idle after `conns` concurrent requests."""
    url = spec['url']
    await checked_get(client, url, 100)  # imports and first-use caches happen before the baseline
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    await asyncio.gather(*(checked_get(client, url, 100) for _ in range(conns)))
    gc.collect()
    return (tracemalloc.get_traced_memory()[0] - before) / conns


async def point_inflight_memory(client: Any, spec: dict, count: int) -> float:
    """Bytes (tracemalloc) per request waiting for its response, each on its own connection."""
    hold = spec['hold_url']
    await checked_get(client, hold + '/release', 2)  # warm-up: first-use caches
    reader, writer = await asyncio.open_connection('127.0.0.1', spec['hold_port'])

    async def control(path: bytes) -> bytes:
        writer.write(b'GET %s HTTP/1.1\r\nhost: x\r\n\r\n' % path)
        head = await reader.readuntil(b'\r\n\r\n')
        length = int(head.lower().split(b'content-length: ')[1].split(b'\r\n')[0])
        return await reader.readexactly(length)

    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.ensure_future(checked_get(client, hold + '/hold', 2)) for _ in range(count)]
    while int(await control(b'/count')) < count:
        await asyncio.sleep(0.02)
    gc.collect()
    during = tracemalloc.get_traced_memory()[0]
    await control(b'/release')
    await asyncio.gather(*tasks)
    writer.close()
    return (during - before) / count


CURVES = {
    'concurrency': point_concurrency,
    'hosts': point_hosts,
    'response-headers': point_response_headers,
    'request-headers': point_request_headers,
    'download-size': point_download,
    'upload-size': point_upload,
    'chunk-size': point_chunk_size,
    'idle-memory': point_idle_memory,
    'inflight-memory': point_inflight_memory,
}


async def run_curve(spec: dict) -> List[float]:
    point = CURVES[spec['curve']]
    traced = spec['curve'].endswith('memory')
    client = CLIENTS[spec['client']](spec['ca_file'])
    if traced:
        tracemalloc.start()
    values = []
    try:
        for x in spec['points']:
            if PROFILE:
                print(f"\n## cProfile of {spec['client']} on {spec['curve']} at {x:,}, "
                      'top 25 by tottime')
            values.append(await point(client, spec, x))
    finally:
        await client.close()
    return values


def main() -> None:
    global PROFILE
    spec = json.loads(sys.argv[1])
    PROFILE = spec.get('profile', False)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # up to 10,000 connections
    try:
        result: Dict[str, Any] = {'ok': True, 'values': asyncio.run(run_curve(spec))}
    except BaseException as exc:
        import traceback

        result = {'ok': False, 'error': f'{type(exc).__name__}: {exc}',
                  'traceback': traceback.format_exc()}
    with open(sys.argv[2], 'w') as file:
        json.dump(result, file)


if __name__ == '__main__':
    main()
