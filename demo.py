"""A tour of lowhaio on loopback: streaming both ways, connection reuse, and following DNS.

Everything runs in this one process: a DNS server that says demo.test is 127.0.0.2, and two HTTPS
servers for https://demo.test:PORT, one on 127.0.0.2 and one on 127.0.0.3, whose certificate
comes from a throwaway CA. One lowhaio Pool, verifying TLS against that CA and resolving through
that DNS server, then

1. streams a large upload, which the server counts without keeping;
2. streams a large download, which this script counts without keeping;
3. makes two small requests, which share one connection;
4. points demo.test at 127.0.0.3 and, once the old answer expires, lands on the other server;
5. runs the command-line client (`python -m lowhaio`) to download into a temporary file, with
   its progress bar on stderr, asking the same DNS server and trusting the same CA.

Run with `bash scripts/demo`, or `python demo.py --size-mib 8` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import AsyncIterator, Dict, Tuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / 'tests'))

from aiohttp import web  # noqa: E402

from lowhaio import Pool, buffered  # noqa: E402
from support import (  # noqa: E402
    DnsServer,
    WebServer,
    ca,
    client_ssl_context,
    dns_server,
    web_server,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent

HOSTNAME = 'demo.test'
FIRST_ADDRESS = '127.0.0.2'
SECOND_ADDRESS = '127.0.0.3'
CHUNK_SIZE = 64 * 1024
MIB = 1024 * 1024
# Short, so that the change of address in step 4 is seen within a couple of seconds
DNS_TTL = 1


def say(message: str = '') -> None:
    print(message, flush=True)


# -- the servers --------------------------------------------------------------------------------

def connection_facts(request: web.Request) -> Dict[str, object]:
    """Which of the two servers answered, and the client's port: the same port means the same
    TCP connection."""
    transport = request.transport
    assert transport is not None
    return {
        'served_by': transport.get_extra_info('sockname')[0],
        'client_port': transport.get_extra_info('peername')[1],
    }


def demo_app() -> web.Application:
    async def count_upload(request: web.Request) -> web.Response:
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.json_response({'received': received, **connection_facts(request)})

    async def stream_download(request: web.Request) -> web.StreamResponse:
        size = int(request.query['bytes'])
        response = web.StreamResponse(headers={'content-type': 'application/octet-stream'})
        response.content_length = size
        await response.prepare(request)
        chunk = b'\x00' * CHUNK_SIZE
        for start in range(0, size, CHUNK_SIZE):
            await response.write(chunk[:min(CHUNK_SIZE, size - start)])
        await response.write_eof()
        return response

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response(connection_facts(request))

    app = web.Application()
    app.router.add_post('/upload', count_upload)
    app.router.add_get('/download', stream_download)
    app.router.add_get('/whoami', whoami)
    return app


async def start_servers_on_one_port(
        stack: contextlib.AsyncExitStack) -> Tuple[WebServer, WebServer]:
    """Both servers must share a port, since the URL stays https://demo.test:PORT throughout.

    Bind the first to a free port, then try that port on the second address; if another process
    happens to hold it there, start again on a fresh port.
    """
    for _ in range(10):
        first_context = web_server(demo_app(), host=FIRST_ADDRESS, tls=True, hostnames=(HOSTNAME,))
        first = await first_context.__aenter__()
        try:
            second = await stack.enter_async_context(web_server(
                demo_app(), host=SECOND_ADDRESS, port=first.port, tls=True,
                hostnames=(HOSTNAME,)))
        except OSError:
            await first_context.__aexit__(None, None, None)
            continue
        stack.push_async_exit(first_context.__aexit__)
        return first, second
    raise RuntimeError('could not find a port free on both addresses')



# -- the client ---------------------------------------------------------------------------------

async def upload_chunks(size: int) -> AsyncIterator[bytes]:
    chunk = b'\x00' * CHUNK_SIZE
    for start in range(0, size, CHUNK_SIZE):
        yield chunk[:min(CHUNK_SIZE, size - start)]


async def get_json(request, url: str) -> Dict[str, object]:
    code, _, body = await request(b'GET', url)
    assert code == b'200', code
    return json.loads(await buffered(body))


async def upload(request, base_url: str, size: int) -> None:
    say(f'1. Upload: streaming {size // MIB} MiB in {CHUNK_SIZE // 1024} KiB chunks, '
        'generated as they are sent')
    started = time.monotonic()
    code, _, body = await request(
        b'POST', base_url + '/upload',
        headers=((b'content-length', str(size).encode()),),
        body=upload_chunks, body_args=(size,))
    answer = json.loads(await buffered(body))
    elapsed = time.monotonic() - started
    assert code == b'200', code
    assert answer['received'] == size, answer
    say(f'   the server counted {answer["received"]} bytes: {rate(size, elapsed)}')


async def download(request, base_url: str, size: int) -> None:
    say(f'2. Download: {size // MIB} MiB streamed and counted here, never held in memory')
    started = time.monotonic()
    code, headers, body = await request(b'GET', base_url + f'/download?bytes={size}')
    assert code == b'200', code
    received = 0
    largest_piece = 0
    async for piece in body:
        received += len(piece)
        largest_piece = max(largest_piece, len(piece))
    elapsed = time.monotonic() - started
    assert received == size, (received, size)
    say(f'   received {received} bytes, at most {largest_piece} at a time: '
        f'{rate(size, elapsed)}')


async def reuse(request, base_url: str) -> Tuple[bool, str]:
    say('3. Connection reuse: two requests, and the port each arrived from')
    first = await get_json(request, base_url + '/whoami')
    second = await get_json(request, base_url + '/whoami')
    say(f'   first request:  served by {first["served_by"]}, from client port '
        f'{first["client_port"]}')
    say(f'   second request: served by {second["served_by"]}, from client port '
        f'{second["client_port"]}')
    verdict = 'the same connection was reused' if first['client_port'] == second['client_port'] \
        else 'a NEW connection was opened (not reused)'
    say(f'   => {verdict}')
    return first['client_port'] == second['client_port'], str(second['served_by'])


async def follow_dns(request, base_url: str, dns: DnsServer) -> str:
    say(f'4. DNS change: {HOSTNAME} now points at {SECOND_ADDRESS} (TTL {DNS_TTL}s)')
    dns.set(HOSTNAME, [SECOND_ADDRESS], ttl=DNS_TTL)
    wait = DNS_TTL + 0.5
    say(f'   waiting {wait}s for the cached answer to expire...')
    await asyncio.sleep(wait)
    answer = await get_json(request, base_url + '/whoami')
    say(f'   next request: served by {answer["served_by"]}, from client port '
        f'{answer["client_port"]}')
    return str(answer['served_by'])


async def command_line(base_url: str, dns: DnsServer, size: int) -> bool:
    say(f'5. The command-line client: python -m lowhaio -o FILE {base_url}/download?bytes={size}')
    with tempfile.TemporaryDirectory(prefix='lowhaio-demo-') as directory:
        cacert = pathlib.Path(directory) / 'ca.pem'
        ca.cert_pem.write_to_path(str(cacert))
        target = pathlib.Path(directory) / 'download.bin'
        # A subprocess awaited without blocking: the servers it talks to run in this loop.
        # Its stderr is ours, so the progress bar draws on this terminal.
        process = await asyncio.create_subprocess_exec(
            sys.executable, '-m', 'lowhaio', '--progress', '--cacert', str(cacert),
            '--dns-servers', f'127.0.0.1:{dns.port}', '-o', str(target),
            f'{base_url}/download?bytes={size}', cwd=str(REPO_ROOT))
        status = await process.wait()
        written = target.stat().st_size if target.exists() else 0
    say(f'   exit status {status}; {written} bytes written to the file')
    return status == 0 and written == size


def rate(size: int, seconds: float) -> str:
    return f'{size / MIB:.0f} MiB in {seconds:.2f}s = {size / MIB / seconds:.1f} MiB/s'


async def main(size: int) -> int:
    async with contextlib.AsyncExitStack() as stack:
        dns = await stack.enter_async_context(dns_server(ttl=DNS_TTL))
        dns.set(HOSTNAME, [FIRST_ADDRESS])
        first, second = await start_servers_on_one_port(stack)
        base_url = f'https://{HOSTNAME}:{first.port}'
        say(f'DNS server on 127.0.0.1:{dns.port}: {HOSTNAME} -> {FIRST_ADDRESS} '
            f'(TTL {DNS_TTL}s)')
        say(f'HTTPS servers on {FIRST_ADDRESS}:{first.port} and {SECOND_ADDRESS}:{second.port}, '
            f'certificate for {HOSTNAME} from a throwaway CA')
        say(f'One lowhaio Pool for everything below, trusting only that CA, asking only that '
            f'DNS server: {base_url}')
        say()

        request, close = Pool(
            get_dns_resolver=dns.get_dns_resolver, get_ssl_context=client_ssl_context)
        try:
            await upload(request, base_url, size)
            await download(request, base_url, size)
            reused, before = await reuse(request, base_url)
            after = await follow_dns(request, base_url, dns)
        finally:
            await close()

        followed = before == FIRST_ADDRESS and after == SECOND_ADDRESS
        say(f'   the same URL was served by {before}, then by {after}: '
            + ('lowhaio followed the DNS change.' if followed else 'UNEXPECTED.'))
        downloaded = await command_line(base_url, dns, size)
        return 0 if reused and followed and downloaded else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--size-mib', type=int, default=int(os.environ.get('LOWHAIO_DEMO_SIZE_MIB', '256')),
        help='size of the upload and of the download, MiB (default 256, or $LOWHAIO_DEMO_SIZE_MIB)')
    parser.add_argument(
        '--loop', choices=('asyncio', 'uvloop'), default='asyncio', help='event loop to use')
    return parser.parse_args()


def run() -> int:
    args = parse_args()
    if args.loop == 'uvloop':
        import uvloop

        return uvloop.run(main(args.size_mib * MIB))
    return asyncio.run(main(args.size_mib * MIB))


if __name__ == '__main__':
    sys.exit(run())
