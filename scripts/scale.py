"""Scale: ten thousand concurrent connections through one lowhaio Pool, next to aiohttp and httpx.

Run through scripts/scale. A server process listens on the same port on H addresses spread over
127.0.0.0/8 (127.0.1.1, 127.0.1.2, ...) and holds every request to /hold until it has N of
them, so that N requests are in flight at once; it then answers them all. Each client runs in a
process of its own, measured alone:
- the time from starting N concurrent requests until the server holds all N (every connection
  opened and its request sent);
- its memory (RSS) with N requests in flight, and again with the N connections idle in its
  pool, each per request or connection above what it used before;
- the cost of one request on a warm connection (sequential requests to one host), with no
  other connection pooled, and with the N idle ones pooled over 1 host and over H hosts: it
  should not grow with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any, Awaitable, Callable, Dict, List, Tuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
RESPONSE = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok'


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_mib() -> float:
    with open('/proc/self/statm') as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20


def addresses(hosts: int) -> List[str]:
    return ['127.0.%d.%d' % (1 + index // 250, 1 + index % 250) for index in range(hosts)]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

async def serve(hosts: int, hold: int, patience: float) -> None:
    held: List[asyncio.Transport] = []
    all_held = asyncio.get_running_loop().create_future()
    holding = [True]  # until all have arrived, or patience ran out

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b''

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b'\r\n\r\n' in self.buffer:
                head, _, self.buffer = self.buffer.partition(b'\r\n\r\n')
                if holding[0] and b' /hold ' in head.split(b'\r\n', 1)[0] + b' ':
                    held.append(self.transport)  # type: ignore[arg-type]
                    if len(held) >= hold and not all_held.done():
                        all_held.set_result(time.monotonic())
                else:
                    self.transport.write(RESPONSE)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    servers = []
    port = 0
    for host in addresses(hosts):
        server = await loop.create_server(Responder, host, port, backlog=65535,
                                          reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        servers.append(server)
    print(json.dumps({'port': port}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            return
        if line == 'wait':  # tell when every held request has arrived, then answer them
            try:
                at = await asyncio.wait_for(asyncio.shield(all_held), patience)
            except asyncio.TimeoutError:
                at = None
            holding[0] = False
            print(json.dumps({'all_held_at': at, 'held': len(held)}), flush=True)
            for transport in held:
                transport.write(RESPONSE)
            held.clear()


# ---------------------------------------------------------------------------------------------
# The clients: each gives (get, close), get(url) -> the body bytes
# ---------------------------------------------------------------------------------------------

Client = Tuple[Callable[[str], Awaitable[bytes]], Callable[[], Awaitable[None]]]


async def lowhaio_client(connections: int) -> Client:
    import lowhaio
    request, close = lowhaio.Pool(socket_timeout=120, response_head_timeout=120,
                                  keep_alive_timeout=600)

    async def get(url: str) -> bytes:
        _, _, body = await request(b'GET', url)
        return await lowhaio.buffered(body)
    return get, close


async def aiohttp_client(connections: int) -> Client:
    import aiohttp
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=600),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120))

    async def get(url: str) -> bytes:
        async with session.get(url) as response:
            return await response.read()
    return get, session.close


async def httpx_client(connections: int) -> Client:
    import httpx
    # As a user wanting N connections would set it: no cap on connections, N kept alive, no
    # timeouts (the pool timeout included: no request should wait for a connection)
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=connections,
                            keepalive_expiry=600),
        timeout=httpx.Timeout(None))

    async def get(url: str) -> bytes:
        response = await client.get(url)
        return response.content
    return get, client.aclose


CLIENTS = {'lowhaio': lowhaio_client, 'aiohttp': aiohttp_client, 'httpx': httpx_client}


async def per_request_microseconds(get: Callable[[str], Awaitable[bytes]], url: str,
                                   count: int, budget: float = 5.0) -> float:
    """The best of five batches of count/5 sequential requests (the machine is shared, and
    others' work only ever adds time), each batch cut short after `budget` seconds."""
    started = time.perf_counter()
    for _ in range(min(count, 20)):  # warm: the connection and any caches
        assert await get(url) == b'ok'
        if time.perf_counter() - started > budget:
            break
    batch = max(count // 5, 1)
    best = float('inf')
    for _ in range(5):
        started = time.perf_counter()
        done = 0
        while done < batch and time.perf_counter() - started < budget:
            await get(url)
            done += 1
        best = min(best, (time.perf_counter() - started) / done)
    return best * 1e6


def give_up_after(seconds: float, result: Dict[str, Any], in_flight: List[asyncio.Future[bytes]],
                  baseline: float) -> threading.Timer:
    """Report what was measured and end the process if not all answers are read in time. A
    thread, since a client whose every answer costs it time in proportion to its pool can hold
    the event loop for longer than the patience in one turn (httpx), even before it reads the
    server's report; and no cancelling of the rest, which would cost as much as reading them."""
    def give_up() -> None:
        answered = sum(task.done() for task in list(in_flight))
        report = dict(result, answered=answered,
                      unfinished_after_patience=len(in_flight) - answered)
        if 'answering_from' in result:
            report['seconds_answering'] = time.monotonic() - result['answering_from']
        else:  # the client never got to the server's report: its memory now, all in flight
            report['kib_per_request_in_flight'] = \
                (rss_mib() - baseline) * 1024 / len(in_flight)
            report['python_kib_per_request_in_flight'] = \
                tracemalloc.get_traced_memory()[0] / 1024 / len(in_flight)
        print(json.dumps(report), flush=True)
        os._exit(0)
    watchdog = threading.Timer(seconds, give_up)
    watchdog.daemon = True
    watchdog.start()
    return watchdog


async def measure(client: str, connections: int, hosts: int, sequential: int,
                  patience: float) -> Dict[str, Any]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, '--serve', '--hosts', str(hosts), '--hold', str(connections),
        '--patience', str(patience),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    try:
        port = json.loads(await server.stdout.readline())['port']
        urls = ['http://%s:%d' % (host, port) for host in addresses(hosts)]
        result: Dict[str, Any] = {'client': client, 'connections': connections, 'hosts': hosts,
                                  'loop': type(asyncio.get_running_loop()).__module__}
        get, close = await CLIENTS[client](connections)
        result['us_per_request_empty_pool'] = await per_request_microseconds(
            get, urls[0] + '/', sequential)
        baseline = result['rss_mib_baseline'] = rss_mib()
        tracemalloc.start()

        started = time.monotonic()
        in_flight = [asyncio.ensure_future(get(urls[index % hosts] + '/hold'))
                     for index in range(connections)]
        # patience for the connections to open, and again for the answers to be read
        watchdog = give_up_after(2 * patience, result, in_flight, baseline)
        server.stdin.write(b'wait\n')
        await server.stdin.drain()
        report = json.loads(await server.stdout.readline())
        result['answering_from'] = time.monotonic()  # the server answers all as it reports
        # None: not all had arrived when the server's patience ran out
        result['seconds_to_open_all'] = report['all_held_at'] and \
            report['all_held_at'] - started
        result['held_when_measured'] = report['held']
        result['kib_per_request_in_flight'] = (rss_mib() - baseline) * 1024 / connections
        result['python_kib_per_request_in_flight'] = \
            tracemalloc.get_traced_memory()[0] / 1024 / connections
        await asyncio.gather(*in_flight)
        watchdog.cancel()
        assert all(task.result() == b'ok' for task in in_flight)
        # From the server's answers to the last response read: the client's work as the n
        # requests end and their connections go idle, which should grow as n
        result['seconds_answering'] = time.monotonic() - result['answering_from']
        result['answered'], result['unfinished_after_patience'] = connections, 0
        del in_flight
        result['seconds_until_all_answered'] = time.monotonic() - started
        await asyncio.sleep(0.5)
        # RSS counts everything (the event loop's and OpenSSL's C memory too) but rarely
        # shrinks; the Python heap (tracemalloc) shows what the idle connections still hold
        result['kib_per_idle_connection'] = (rss_mib() - baseline) * 1024 / connections
        result['python_kib_per_idle_connection'] = \
            tracemalloc.get_traced_memory()[0] / 1024 / connections
        tracemalloc.stop()
        result['us_per_request_with_idle_pool'] = await per_request_microseconds(
            get, urls[-1] + '/', sequential)
        await close()
        return result
    finally:
        server.stdin.close()
        server.kill()
        await server.wait()


def run_client(client: str, loop_name: str, arguments: argparse.Namespace) -> Dict[str, Any]:
    """Measure one client in a fresh process, so that its memory is its own."""
    output = subprocess.run(
        [sys.executable, __file__, '--measure', client, '--loop', loop_name,
         '--connections', str(arguments.connections), '--hosts', str(arguments.hosts),
         '--sequential', str(arguments.sequential), '--patience', str(arguments.patience)],
        check=True, stdout=subprocess.PIPE).stdout
    return json.loads(output.splitlines()[-1])


TABLE = '%-8s %-8s %10s %16s %10s %10s %10s %10s %10s %10s'


def table_row(result: Dict[str, Any], patience: float) -> str:
    def figure(key: str, form: str) -> str:
        return form % result[key] if result.get(key) is not None else '-'
    if 'held_when_measured' not in result:  # it never got to read the server's report
        opened, answered = '?', '>%.0f (%d done)' % (2 * patience, result['answered'])
    else:
        opened = figure('seconds_to_open_all', '%.2f') \
            if result['seconds_to_open_all'] is not None else \
            '>%.0f (%d)' % (patience, result['held_when_measured'])
        answered = figure('seconds_answering', '%.2f') \
            if not result['unfinished_after_patience'] else \
            '>%.0f (%d done)' % (result['seconds_answering'], result['answered'])
    return TABLE % (
        result['client'], result['loop'].split('.')[0], opened, answered,
        figure('kib_per_request_in_flight', '%.1f'), figure('kib_per_idle_connection', '%.1f'),
        figure('python_kib_per_request_in_flight', '%.1f'),
        figure('python_kib_per_idle_connection', '%.1f'),
        figure('us_per_request_empty_pool', '%.0f'),
        figure('us_per_request_with_idle_pool', '%.0f'))


def new_loop(loop_name: str) -> asyncio.AbstractEventLoop:
    if loop_name == 'uvloop':
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--connections', type=int, default=10000)
    parser.add_argument('--hosts', type=int, default=100,
                        help='addresses in 127.0.0.0/8 the connections are spread over')
    parser.add_argument('--sequential', type=int, default=2000,
                        help='sequential requests timed for the per-request cost')
    parser.add_argument('--client', action='append', choices=sorted(CLIENTS))
    parser.add_argument('--patience', type=float, default=120,
                        help='seconds to wait for all connections to open, and then for all the '
                        'answers to be read, before measuring')
    parser.add_argument('--loop', action='append', choices=('asyncio', 'uvloop'))
    parser.add_argument('--ci', action='store_true',
                        help='small: 300 connections over 10 hosts, lowhaio only')
    parser.add_argument('--output', help='write the results as JSON here')
    parser.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--hold', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--measure', help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    limit = raise_fd_limit()
    if arguments.serve:
        asyncio.run(serve(arguments.hosts, arguments.hold, arguments.patience))
        return 0
    if arguments.measure:
        loop = new_loop(arguments.loop[0])
        result = loop.run_until_complete(measure(
            arguments.measure, arguments.connections, arguments.hosts, arguments.sequential,
            arguments.patience))
        loop.close()
        print(json.dumps(result))
        return 0
    if arguments.ci:
        arguments.connections, arguments.hosts, arguments.sequential = 300, 10, 200
        arguments.client = arguments.client or ['lowhaio']
    if arguments.connections + 100 > limit:
        parser.error('%d connections need more file descriptors than the limit, %d'
                     % (arguments.connections, limit))
    results = []
    print(TABLE % ('client', 'loop', 'open all', 'answer all', 'RSS KiB', '', 'Py KiB', '',
                   'us/req', ''))
    print(TABLE % ('', '', 's', 's', 'in flight', 'idle', 'in flight', 'idle', 'empty',
                   'N pooled'))
    for loop_name in arguments.loop or ['asyncio', 'uvloop']:
        for client in arguments.client or ['lowhaio', 'aiohttp', 'httpx']:
            result = run_client(client, loop_name, arguments)
            results.append(result)
            print(table_row(result, arguments.patience), flush=True)
    if arguments.output:
        with open(arguments.output, 'w') as output:
            json.dump(results, output)
    return 0


if __name__ == '__main__':
    sys.exit(main())
