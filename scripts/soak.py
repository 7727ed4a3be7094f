"""Soak: one lowhaio Pool driving a long mix of requests, checking every byte, watching resources.

Run through scripts/soak. The servers run in a child process (so that what is measured here is
the client alone): aiohttp.web over http and https on 127.0.0.1 and 127.0.0.2 (the same port on
both, so that DNS answers can move between them), a raw server whose bodies end at close, and
the tests' dnslib DNS server answering four names with a 1 s TTL and answers that change every
1.5 s. The child restarts its aiohttp server every --restart-every seconds. nginx runs as a
second child (tests/support.py's Nginx) for content-length, chunked and https downloads, and is
stopped (SIGTERM, its fast shutdown: open connections dropped) and started again on the same
ports every --nginx-restart-every seconds.

Each request is checked: downloads byte for byte against the data the servers were given,
uploads by the SHA-256 the server computed. A request may also fail, but only with an HttpError
(e.g. while the server restarts), or be cancelled or abandoned on purpose. Resources are sampled
as it runs; the pass rule is that nothing is wrong and each resource is flat over the second
half of the run (its least-squares drift there is within the noise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import pathlib
import random
import resource
import socket
import ssl
import sys
import time
import tracemalloc
from typing import Any, AsyncIterator, Callable, Dict, List, Tuple, Union

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / 'tests')]

import aiodnsresolver  # noqa: E402

import lowhaio  # noqa: E402
import support  # noqa: E402

BLOB = random.Random(14).randbytes(4 * 1024 * 1024 + 4096)
BIG = 3 * 1024 * 1024
NAMES = ['a.soak.test', 'b.soak.test', 'c.soak.test', 'd.soak.test']
ADDRESSES = [['127.0.0.1'], ['127.0.0.2'], ['127.0.0.1', '127.0.0.2']]
PAGE = 65536
KEEP_ALIVE_TIMEOUT = 5
BUFFERED_UP_TO = 100_000  # bodies up to this are read with lowhaio.buffered, as most users do


def blob(offset: int, size: int) -> bytes:
    return BLOB[offset:offset + size]


def view(offset: int, size: int) -> memoryview:
    """Part of the data without a copy: for the 3 MiB bodies, whose copies held by the checker
    itself would move RSS by as much as its floor."""
    return memoryview(BLOB)[offset:offset + size]


# ---------------------------------------------------------------------------------------------
# The server process
# ---------------------------------------------------------------------------------------------

async def serve(restart_every: float, cert_path: str) -> None:
    import logging

    from aiohttp import web

    # Requests cancelled or abandoned on purpose make aiohttp log errors: expected here
    logging.getLogger('aiohttp').setLevel(logging.CRITICAL)

    async def content_length(request: web.Request) -> web.Response:
        offset, size = int(request.query['o']), int(request.query['n'])
        response = web.Response(body=blob(offset, size))
        if 'close' in request.query:
            response.force_close()
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        offset, size = int(request.query['o']), int(request.query['n'])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, size, PAGE):
            await response.write(blob(offset + start, min(PAGE, size - start)))
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        digest, length = hashlib.sha256(), 0
        async for data in request.content.iter_any():
            digest.update(data)
            length += len(data)
        return web.Response(text='%d %s' % (length, digest.hexdigest()))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get('/cl', content_length)
    app.router.add_get('/chunked', chunked)
    app.router.add_post('/upload', upload)

    def listening_socket(host: str, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    def ports_free_on_both() -> Tuple[int, int]:
        while True:
            ports = []
            try:
                for _ in range(2):
                    probe = listening_socket('127.0.0.1', 0)
                    port = probe.getsockname()[1]
                    listening_socket('127.0.0.2', port).close()
                    probe.close()
                    ports.append(port)
                return ports[0], ports[1]
            except OSError:
                continue

    http_port, https_port = ports_free_on_both()
    # The certificate comes from the parent: its CA is the one the client trusts
    tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_context.load_cert_chain(cert_path)

    async def start_aiohttp() -> web.AppRunner:
        runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        for host in ('127.0.0.1', '127.0.0.2'):
            await web.SockSite(runner, listening_socket(host, http_port)).start()
            await web.SockSite(runner, listening_socket(host, https_port),
                               ssl_context=tls_context).start()
        return runner

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b'\r\n\r\n')
            target = head.split(b' ')[1].decode()
            query = dict(part.split('=') for part in target.split('?')[1].split('&'))
            writer.write(b'HTTP/1.1 200 OK\r\n\r\n' + blob(int(query['o']), int(query['n'])))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    raw_server = await asyncio.start_server(until_close, '127.0.0.1', 0)
    async with support.dns_server(ttl=1) as dns:
        runner = await start_aiohttp()
        print(json.dumps({'http': http_port, 'https': https_port, 'dns': dns.port,
                          'until_close': raw_server.sockets[0].getsockname()[1]}), flush=True)
        answers = random.Random(1)
        next_restart = time.monotonic() + restart_every
        restarts = 0
        while True:
            for name in NAMES:
                dns.set(name, answers.choice(ADDRESSES))
            await asyncio.sleep(1.5)
            if restart_every and time.monotonic() > next_restart:
                await runner.cleanup()
                runner = await start_aiohttp()
                restarts += 1
                next_restart = time.monotonic() + restart_every
                print(json.dumps({'restarts': restarts}), flush=True)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

class Servers:
    def __init__(self, ports: Dict[str, int], nginx: support.Nginx) -> None:
        self.ports = ports
        self.nginx = nginx

    def get_dns_resolver(self, **kwargs: Any) -> Tuple[Callable, Callable]:
        async def nameservers(_: object, __: object) -> AsyncIterator[
                Tuple[float, Tuple[str, int]]]:
            for _attempt in range(5):
                yield (0.5, ('127.0.0.1', self.ports['dns']))
        return aiodnsresolver.Resolver(get_nameservers=nameservers, **kwargs)


class Tally:
    def __init__(self) -> None:
        self.done = 0
        self.counts: Dict[str, int] = {}
        self.failures: List[str] = []

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


async def stream(data: Union[bytes, memoryview]) -> AsyncIterator[bytes]:
    for start in range(0, len(data), PAGE):
        yield bytes(data[start:start + PAGE])


async def read_and_compare(body: AsyncIterator[bytes],
                           expected: Union[bytes, memoryview]) -> Tuple[bool, int]:
    """(whether the body is the expected bytes, its length), read to its end. Large bodies are
    compared chunk by chunk as they arrive, not joined: a joined copy of each 3 MiB body, next
    to its chunks and the expected bytes, made the soak's RSS step by several MiB whenever two
    were in flight at once, as much as the floor that tells a leak from noise."""
    if len(expected) <= BUFFERED_UP_TO:
        received = await lowhaio.buffered(body)
        return received == expected, len(received)
    position, same = 0, True
    async for chunk in body:
        end = position + len(chunk)
        same = same and expected[position:end] == chunk
        position = end
    return same and position == len(expected), position


def choose(rng: random.Random, servers: Servers) -> Tuple[
        str, bytes, str, Union[bytes, memoryview], tuple, Any]:
    """(kind, method, url, expected body, request headers, request body) for one request."""
    roll = rng.random()
    name, scheme = rng.choice(NAMES), rng.choice(('http', 'https'))
    port = servers.ports[scheme]
    offset = rng.randrange(4096)
    size = rng.choice((0, 1, 100, 1000, 4000, 20000, 70000))
    query = 'o=%d&n=%d' % (offset, size)
    nginx = servers.nginx
    if roll < 0.004:
        return 'nginx big download', b'GET', nginx.url('/big.bin'), view(0, BIG), (), None
    if roll < 0.006:
        return 'aiohttp big upload', b'POST', '%s://%s:%d/upload' % (scheme, name, port), \
            b'', ((b'content-length', b'%d' % BIG),), view(0, BIG)
    if roll < 0.008:
        return 'aiohttp big chunked download', b'GET', '%s://%s:%d/chunked?o=%d&n=%d' % (
            scheme, name, port, offset, BIG), view(offset, BIG), (), None
    if roll < 0.20:
        path = rng.choice(('/small.bin', '/chunked/small.bin'))
        url = nginx.url(path) if rng.random() < 0.5 else nginx.tls_url(path)
        return 'nginx ' + ('chunked' if 'chunked' in path else 'content-length'), b'GET', \
            url, BLOB[:20000], (), None
    if roll < 0.25:
        body = blob(offset, size)
        return 'aiohttp upload', b'POST', '%s://%s:%d/upload' % (scheme, name, port), b'', \
            ((b'content-length', b'%d' % len(body)),), body
    if roll < 0.30:
        return 'until close', b'GET', 'http://127.0.0.1:%d/?%s' % (
            servers.ports['until_close'], query), blob(offset, size), (), None
    if roll < 0.40:
        return 'aiohttp connection close', b'GET', '%s://%s:%d/cl?%s&close=1' % (
            scheme, name, port, query), blob(offset, size), (), None
    if roll < 0.65:
        return 'aiohttp chunked', b'GET', '%s://%s:%d/chunked?%s' % (
            scheme, name, port, query), blob(offset, size), (), None
    return 'aiohttp content-length', b'GET', '%s://%s:%d/cl?%s' % (
        scheme, name, port, query), blob(offset, size), (), None


async def one_request(request: Callable, rng: random.Random, servers: Servers,
                      tally: Tally) -> None:
    kind, method, url, expected, headers, upload = choose(rng, servers)
    mode = rng.random()
    body_function = None if upload is None else (lambda: stream(upload))
    if upload is not None:
        expected = b'%d %s' % (len(upload), hashlib.sha256(upload).hexdigest().encode())

    async def run() -> Tuple[bool, int]:
        extra = {} if body_function is None else {'body': body_function}
        code, _, body = await request(method, url, headers=headers, **extra)
        if mode < 0.02:  # abandoned half-read
            async for _ in body:
                break
            await body.aclose()
            return True, -1
        same_and_length = await read_and_compare(body, expected)
        if code not in (b'200', b'201', b'204'):
            raise AssertionError('%s: status %r' % (url, code))
        return same_and_length

    task = asyncio.ensure_future(run())
    if 0.02 <= mode < 0.04:  # cancelled at a random point
        await asyncio.sleep(rng.random() * 0.005)
        task.cancel()
    try:
        same, length = await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        tally.count('cancelled on purpose')
        return
    except lowhaio.HttpError as error:
        tally.count(type(error).__name__)
        return
    except Exception as error:  # noqa: BLE001 - anything else is a failure, recorded
        tally.failures.append('%s %s: %r' % (kind, url, error))
        return
    if length == -1:
        tally.count('abandoned on purpose')
        return
    if not same:
        tally.failures.append('%s %s: %d bytes, not the %d expected%s' % (
            kind, url, length, len(expected),
            ' (of that length, different)' if length == len(expected) else ''))
        return
    tally.count('ok: ' + kind)


def sample(request: Any, tally: Tally, started: float, traced: bool) -> Dict[str, Any]:
    loop = asyncio.get_running_loop()
    statuses = request.status()
    with open('/proc/self/statm') as statm:
        rss = int(statm.read().split()[1]) * resource.getpagesize()
    point = {
        'requests': tally.done, 'seconds': time.monotonic() - started,
        'fds': support.open_fds(), 'rss_mib': rss / 2 ** 20,
        'tasks': len(asyncio.all_tasks()),
        'idle': sum(s['idle'] for s in statuses.values()),
        'in_use': sum(s['in_use'] for s in statuses.values()),
        'waiting': sum(s['waiting'] for s in statuses.values()),
        'pool_keys': len(statuses),
        # The default loop keeps its timers in _scheduled; uvloop keeps them inside libuv,
        # out of Python's reach
        'timers': len(loop._scheduled) if hasattr(loop, '_scheduled') else None,
    }
    if traced:
        point['traced_mib'] = tracemalloc.get_traced_memory()[0] / 2 ** 20
    return point


def top_allocations(count: int = 5) -> List[str]:
    snapshot = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),))
    return ['%s: %.1f KiB in %d blocks' % (stat.traceback[0], stat.size / 1024, stat.count)
            for stat in snapshot.statistics('lineno')[:count]]


def slope_and_noise(points: List[Dict[str, Any]], key: str) -> Tuple[float, float, float]:
    """Least squares over the second half: (drift over that half, residual spread, span)."""
    half = [p for p in points[len(points) // 2:] if p.get(key) is not None]
    if len(half) < 3:
        return 0.0, 0.0, 0.0
    xs, ys = [p['requests'] for p in half], [p[key] for p in half]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs) or 1.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    residuals = [y - (mean_y + slope * (x - mean_x)) for x, y in zip(xs, ys)]
    spread = (sum(r * r for r in residuals) / len(residuals)) ** 0.5
    span = xs[-1] - xs[0]
    return slope * span, spread, span


# What counts as flat: the drift over the second half is no more than 3 standard deviations
# of the residuals above zero, or than a floor below which nothing is meaningful: a few
# descriptors, tasks or timers (16 requests are in flight at any moment), and for memory
# twice the largest body.
FLOORS = {'fds': 4, 'rss_mib': 8.0, 'tasks': 4, 'timers': 4, 'idle': 4, 'traced_mib': 8.0}


def verdicts(points: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    result = {}
    for key, floor in FLOORS.items():
        drift, spread, span = slope_and_noise(points, key)
        result[key] = {'drift_over_second_half': drift, 'residual_sd': spread,
                       'requests_in_second_half': span,
                       # Only growth is a leak: a resource that falls over the second half
                       # (pooled connections expiring as DNS answers move) is not one
                       'flat': drift <= max(3 * spread, floor)}
    return result


async def drive(arguments: argparse.Namespace, loop_name: str) -> Dict[str, Any]:
    with support.Nginx() as nginx:
        (nginx.root / 'small.bin').write_bytes(BLOB[:20000])
        (nginx.root / 'big.bin').write_bytes(BLOB[:BIG])
        cert_path = nginx.tmp / 'soak-server.pem'
        support.server_cert(*NAMES).private_key_and_cert_chain_pem.write_to_path(str(cert_path))
        server = await asyncio.create_subprocess_exec(
            sys.executable, __file__, '--serve', '--restart-every', str(arguments.restart_every),
            '--cert', str(cert_path), stdout=asyncio.subprocess.PIPE)
        try:
            assert server.stdout is not None
            ports = json.loads(await asyncio.wait_for(server.stdout.readline(), 60))
            return await drive_against(arguments, loop_name, Servers(ports, nginx), server)
        finally:
            server.kill()
            await server.wait()


async def drive_against(arguments: argparse.Namespace, loop_name: str, servers: Servers,
                        server: Any) -> Dict[str, Any]:
    tally = Tally()
    restarts = {'aiohttp': 0, 'nginx': 0}
    rng = random.Random(arguments.seed)
    request, close = lowhaio.Pool(
        get_dns_resolver=servers.get_dns_resolver, get_ssl_context=support.client_ssl_context,
        socket_timeout=10, response_head_timeout=20, keep_alive_timeout=KEEP_ALIVE_TIMEOUT)
    started = time.monotonic()
    deadline = started + arguments.minutes * 60 if arguments.minutes else float('inf')
    limit = arguments.requests or float('inf')
    # However fast the requests go, the run lasts long enough for its second half, which the
    # pass rule reads, to come after the warm-up: until keep_alive_timeout first passes, idle
    # connections only accumulate (a 3,000-request run took 3 s here, its idle count rising
    # throughout, and was judged a leak)
    shortest_end = started + arguments.at_least_seconds

    def going_on() -> bool:
        now = time.monotonic()
        return now < deadline and (tally.done < limit or now < shortest_end)
    points: List[Dict[str, Any]] = []
    every = max(arguments.sample_every, 1)

    async def worker() -> None:
        while going_on():
            tally.done += 1
            await one_request(request, rng, servers, tally)
            if tally.done % every == 0:
                points.append(sample(request, tally, started, arguments.tracemalloc))
            if tally.done % (every * 10) == 0 and not arguments.quiet:
                print('%s: %d requests, %.0f s, %d failures, fds %d, rss %.1f MiB' % (
                    loop_name, tally.done, time.monotonic() - started, len(tally.failures),
                    points[-1]['fds'], points[-1]['rss_mib']), flush=True)

    async def count_aiohttp_restarts() -> None:
        while True:
            line = await server.stdout.readline()
            if not line:
                return
            restarts['aiohttp'] = json.loads(line)['restarts']

    async def restart_nginx() -> None:
        loop = asyncio.get_running_loop()
        while arguments.nginx_restart_every:
            await asyncio.sleep(arguments.nginx_restart_every)
            # The restart waits for nginx to accept again: off the loop, so requests go on
            await loop.run_in_executor(None, servers.nginx.restart)
            restarts['nginx'] += 1

    if arguments.tracemalloc:
        tracemalloc.start(1)
    watchers = [asyncio.ensure_future(count_aiohttp_restarts()),
                asyncio.ensure_future(restart_nginx())]
    try:
        await asyncio.gather(*(worker() for _ in range(arguments.concurrency)))
        allocations = top_allocations() if arguments.tracemalloc else []
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await close()
        tracemalloc.stop()
    gc.collect()
    elapsed = time.monotonic() - started
    return {'loop': loop_name, 'requests': tally.done, 'seconds': elapsed,
            'counts': dict(sorted(tally.counts.items())), 'failures': tally.failures[:20],
            'restarts': restarts,
            'failure_count': len(tally.failures), 'samples': points,
            'verdicts': verdicts(points), 'top_allocations': allocations}


def plot(results: List[Dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    keys = [('fds', 'open descriptors'), ('rss_mib', 'RSS (MiB)'), ('tasks', 'tasks'),
            ('timers', 'loop timers (asyncio)'), ('idle', 'idle pooled connections'),
            ('traced_mib', 'tracemalloc (MiB)')]
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, (key, title) in zip(axes.flat, keys):
        for result in results:
            points = [p for p in result['samples'] if p.get(key) is not None]
            axis.plot([p['requests'] for p in points], [p[key] for p in points],
                      label=result['loop'], linewidth=0.8)
        axis.set_title(title)
        axis.set_xlabel('requests')
        axis.set_ylim(bottom=0)
        axis.legend()
    counts = sorted({'{:,}'.format(r['requests']) for r in results})
    figure.suptitle('lowhaio soak: one Pool, %s requests per loop (%s)' % (
        ' / '.join(counts), ', '.join(r['loop'] for r in results)))
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def run_loop(loop_name: str, arguments: argparse.Namespace) -> Dict[str, Any]:
    if loop_name == 'uvloop':
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(drive(arguments, loop_name))
    finally:
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=0, help='stop after N requests per loop')
    parser.add_argument('--minutes', type=float, default=0, help='stop after M minutes per loop')
    parser.add_argument('--loop', action='append', choices=('asyncio', 'uvloop'))
    parser.add_argument('--at-least-seconds', type=float, default=4 * KEEP_ALIVE_TIMEOUT,
                        help='go on past --requests until the run is this long, so that the '
                        'half judged comes after the warm-up (default: %(default)s)')
    parser.add_argument('--concurrency', type=int, default=16)
    parser.add_argument('--sample-every', type=int, default=0,
                        help='requests between samples (default: N/200 for --requests N, at '
                        'least 50; 500 for --minutes)')
    parser.add_argument('--restart-every', type=float, default=20.0,
                        help='seconds between restarts of the aiohttp server (0: never)')
    parser.add_argument('--nginx-restart-every', type=float, default=45.0,
                        help='seconds between restarts of nginx (0: never)')
    parser.add_argument('--no-tracemalloc', dest='tracemalloc', action='store_false')
    parser.add_argument('--seed', type=int, default=14)
    parser.add_argument('--output', type=pathlib.Path, help='JSON results (and a .png plot)')
    parser.add_argument('--quiet', action='store_true')
    parser.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--cert', help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(serve(arguments.restart_every, arguments.cert))
        return 0
    if not arguments.requests and not arguments.minutes:
        parser.error('give --requests N or --minutes M')
    if not arguments.sample_every:
        arguments.sample_every = max(arguments.requests // 200, 50) if arguments.requests \
            else 500
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = [run_loop(name, arguments) for name in arguments.loop or ('asyncio', 'uvloop')]
    ok = True
    for result in results:
        print('\n%s: %d requests in %.0f s (%.0f/s), %d failures' % (
            result['loop'], result['requests'], result['seconds'],
            result['requests'] / result['seconds'], result['failure_count']))
        print('  servers restarted: aiohttp %(aiohttp)d times, nginx %(nginx)d times'
              % result['restarts'])
        for failure in result['failures']:
            print('  FAILURE', failure)
        for what, count in result['counts'].items():
            print('  %-45s %d' % (what, count))
        for key, verdict in result['verdicts'].items():
            print('  %-10s drift %+9.2f over the second half (sd %.2f): %s' % (
                key, verdict['drift_over_second_half'], verdict['residual_sd'],
                'flat' if verdict['flat'] else 'NOT FLAT'))
            ok = ok and verdict['flat']
        for line in result['top_allocations']:
            print('  top allocation', line)
        ok = ok and result['failure_count'] == 0
    if arguments.output:
        arguments.output.write_text(json.dumps(results))
        plot(results, arguments.output.with_suffix('.png'))
    print('\nsoak: %s' % ('PASS' if ok else 'FAIL'))
    return 0 if ok else 1


if __name__ == '__main__':
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
