"""lowhaio benchmark harness: starts the servers, runs every client on every workload, reports.

Started by `bash benchmarks/run` (which prepares the virtualenv); README.md says what is measured.

Servers are pinned to CPU 0 and clients to CPU 1 with taskset, so a client never competes with the
server for its core. Each client+workload pair runs in its own process (clients.py); repetitions are
interleaved (rep 1 of everything, then rep 2, ...) so slow drifts of a shared machine hit all
clients alike.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import glob
import gzip
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Dict, Iterator, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')

SERVER_CPU = '0'
CLIENT_CPU = '1'

DEFAULT_CLIENTS = [
    'floor',
    'floor-uvloop',
    'lowhaio',
    'lowhaio-uvloop',
    'lowhaio-0.0.89',
    'aiohttp',
    'httpx',
    'httpx-lowhaio',
    'aiosonic',
    'pyreqwest',
    'rnet',
    'curl_cffi',
    'niquests',
]
PEERS = ['lowhaio-0.0.89', 'aiohttp', 'httpx', 'aiosonic', 'pyreqwest', 'rnet', 'curl_cffi',
         'niquests']
# Workloads through a proxy, run only by clients whose adapter has PROXIES = True
PROXY_WORKLOADS = ('proxy-small-seq',)

SMALL_BODY = (b'lowhaio benchmark small body; ' * 4)[:99] + b'\n'
assert len(SMALL_BODY) == 100
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# -------------------------------------------------------------------------------------------------
# Workloads
# -------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    kind: str  # 'small' (req/s), 'download' or 'upload' (MB/s); see clients.WORKLOADS
    unit: str
    n: int = 1
    concurrency: int = 1
    size: int = 0  # download / upload bytes (for gzip-download: decoded bytes)
    chunk_size: int = 64 * KiB  # upload: the body generator's chunks
    description: str = ''
    clients: Tuple[str, ...] = ()  # the clients (base names) that run it; () for all


def workloads(smoke: bool, scale: float) -> Dict[str, Workload]:
    def count(full: int, tiny: int) -> int:
        return tiny if smoke else max(1, int(full * scale))

    def size(full: int, tiny: int) -> int:
        return tiny if smoke else max(MiB, int(full * scale) // MiB * MiB)

    return {
        w.name: w
        for w in [
            Workload(
                'small-seq',
                'small',
                'req/s',
                n=count(20_000, 300),
                description='sequential GETs of a 100-byte body, one keep-alive connection',
            ),
            Workload(
                'small-seq-uniq',
                'small',
                'req/s',
                n=count(20_000, 300),
                description='as small-seq, but every response head is unique (x-request-id)',
            ),
            Workload(
                'small-c64',
                'small',
                'req/s',
                n=count(50_000, 640),
                concurrency=64,
                description='GETs of a 100-byte body from 64 concurrent tasks',
            ),
            Workload(
                'download',
                'download',
                'MB/s',
                size=size(GiB, 16 * MiB),
                description='one file streamed and discarded',
            ),
            Workload(
                'upload',
                'upload',
                'MB/s',
                size=size(512 * MiB, 16 * MiB),
                description='POST from an async generator of 64 KiB chunks, with content-length',
            ),
            Workload(
                'upload-small-chunks',
                'upload',
                'MB/s',
                size=size(32 * MiB, 2 * MiB),
                chunk_size=KiB,
                description='as upload, in 1 KiB chunks (the rows of a CSV or NDJSON body)',
            ),
            Workload(
                'tls-small-seq',
                'small',
                'req/s',
                n=count(20_000, 300),
                description='as small-seq, over HTTPS',
            ),
            Workload(
                'chunked-seq',
                'small',
                'req/s',
                n=count(10_000, 300),
                description='sequential GETs of a chunked body',
            ),
            Workload(
                'gzip-download',
                'gzip',
                'MB/s',
                size=size(128 * MiB, 4 * MiB),
                description='a gzip-encoded text file streamed, decoded and discarded',
                # the floor and aiosonic have no streaming gzip decoding to compare
                clients=('lowhaio', 'aiohttp', 'httpx'),
            ),
            Workload(
                'proxy-small-seq',
                'small',
                'req/s',
                n=count(5_000, 300),
                description='as small-seq, forwarded through tinyproxy',
            ),
        ]
    }


# -------------------------------------------------------------------------------------------------
# Servers
# -------------------------------------------------------------------------------------------------


def free_port() -> int:
    # nginx cannot listen on port 0, so ask the kernel for a free port and hand it over
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def chunked_source() -> bytes:
    # 16 KiB of text that nginx's sub_filter passes through: a sub_filter response has no known
    # length, so nginx streams it chunked, one chunk per output buffer (4 KiB). The pattern it looks
    # for is absent on purpose: every match would make nginx emit a tiny separate write, and the
    # workload would measure nginx's write pattern instead of the client's chunked parsing.
    line = b'lowhaio chunked-seq body: sixty-four bytes per line, 256 lines.\n'
    assert len(line) == 64
    return line * 256


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000000;
    keepalive_timeout 3600s;
    open_file_cache max=64 inactive=3600s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        {locations}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl backlog=4096;
        ssl_certificate {tmp}/server.pem;
        ssl_certificate_key {tmp}/server.key;
        ssl_session_cache shared:SSL:1m;
        {locations}
    }}
}}
"""

def gzip_text_blocks(size: int) -> Iterator[bytes]:
    """`size` bytes of access-log-like lines, in blocks of about 64 KiB: they compress about as
    much as real text (about 5 to 1), and every line differs, so no client can take a shortcut.
    Made block by block because the harness must stay small: every client process is forked
    from it, and on Linux a child's peak RSS starts at its parent's."""
    left, first = size, 0
    while left:
        block = b''.join(
            b'%09d GET /api/v1/items/%d?page=%d 200 %d bytes in %d us\n'
            % (n, n * 7919 % 100003, n % 97, n * 31 % 65536, n * 13 % 9973)
            for n in range(first, first + 1000)
        )[:left]
        first += 1000
        left -= len(block)
        yield block


NGINX_LOCATIONS = """
        root {tmp}/www;
        location = /small {{ alias {tmp}/www/small.txt; }}
        location = /small-uniq {{
            alias {tmp}/www/small.txt;
            add_header x-request-id $request_id;
        }}
        location = /big {{ alias {tmp}/www/big.bin; }}
        # gzip_static: the file compressed in advance (text.txt.gz), sent with content-encoding
        # gzip to clients that accept it, so nginx spends no CPU compressing
        location = /gzip-download {{
            alias {tmp}/www/text.txt;
            default_type text/plain;
            gzip_static on;
        }}
        location = /chunked {{
            alias {tmp}/www/chunked.txt;
            default_type text/plain;
            sub_filter NOT-IN-THE-BODY x;
            sub_filter_types text/plain;
            output_buffers 4 4k;
        }}
"""


@dataclass
class Servers:
    tmp: str
    http_port: int = 0
    https_port: int = 0
    upload_port: int = 0
    proxy_port: int = 0
    ca_file: str = ''
    chunked_len: int = 0
    chunk_count: int = 0
    gzip_size: int = 0  # decoded size of /gzip-download
    gzip_sha256: str = ''  # of the decoded body
    gzip_encoded_size: int = 0
    processes: List[subprocess.Popen] = field(default_factory=list)

    def url(self, path: str, tls: bool = False) -> str:
        return (
            f'https://127.0.0.1:{self.https_port}{path}'
            if tls
            else f'http://127.0.0.1:{self.http_port}{path}'
        )

    def upload_url(self, path: str) -> str:
        return f'http://127.0.0.1:{self.upload_port}{path}'


def write_gzip_files(www: str, size: int) -> str:
    """text.txt and text.txt.gz (gzip level 6, as web servers usually compress); the sha256 of
    the text."""
    digest = hashlib.sha256()
    with open(os.path.join(www, 'text.txt'), 'wb') as plain, \
            gzip.open(os.path.join(www, 'text.txt.gz'), 'wb', 6) as packed:
        for block in gzip_text_blocks(size):
            plain.write(block)
            packed.write(block)
            digest.update(block)
    return digest.hexdigest()


def write_files(tmp: str, download_size: int) -> None:
    www = os.path.join(tmp, 'www')
    os.makedirs(www)
    with open(os.path.join(www, 'small.txt'), 'wb') as file:
        file.write(SMALL_BODY)
    with open(os.path.join(www, 'chunked.txt'), 'wb') as file:
        file.write(chunked_source())
    with open(os.path.join(www, 'big.bin'), 'wb') as file:
        file.truncate(download_size)  # sparse: reads as zeros, costs no disk


def write_certs(tmp: str) -> str:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert('127.0.0.1', 'localhost')
    cert.private_key_pem.write_to_path(os.path.join(tmp, 'server.key'))
    cert.cert_chain_pems[0].write_to_path(os.path.join(tmp, 'server.pem'))
    for extra in cert.cert_chain_pems[1:]:
        with open(os.path.join(tmp, 'server.pem'), 'ab') as file:
            file.write(extra.bytes())
    ca_file = os.path.join(tmp, 'ca.pem')
    ca.cert_pem.write_to_path(ca_file)
    return ca_file


def wait_listening(
    port: int, process: subprocess.Popen, what: str, log: Optional[str] = None
) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = ''
            if log and os.path.exists(log):
                with open(log) as file:
                    detail = file.read()
            raise RuntimeError(f'{what} exited with {process.returncode}: {detail}')
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f'{what} not listening on {port}')


def start_nginx(servers: Servers) -> None:
    tmp = servers.tmp
    nginx = shutil.which('nginx') or '/usr/sbin/nginx'
    for attempt in range(5):  # a free port can be taken between our probe and nginx's bind: retry
        servers.http_port, servers.https_port = free_port(), free_port()
        locations = NGINX_LOCATIONS.format(tmp=tmp)
        conf = NGINX_CONF.format(
            tmp=tmp, http_port=servers.http_port, https_port=servers.https_port, locations=locations
        )
        if os.geteuid() == 0:
            conf = 'user root;\n' + conf  # the worker must read files in our private temp dir
        conf_path = os.path.join(tmp, 'nginx.conf')
        with open(conf_path, 'w') as file:
            file.write(conf)
        log = os.path.join(tmp, 'nginx-error.log')
        process = subprocess.Popen(
            ['taskset', '-c', SERVER_CPU, nginx, '-p', tmp, '-c', conf_path, '-e', log],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        servers.processes.append(process)
        register_pid(process.pid)
        try:
            wait_listening(servers.http_port, process, 'nginx', log)
            wait_listening(servers.https_port, process, 'nginx', log)
            return
        except RuntimeError:
            stop_process(process)
            if attempt == 4:
                raise


def start_upload_server(servers: Servers) -> None:
    process = subprocess.Popen(
        ['taskset', '-c', SERVER_CPU, sys.executable, os.path.join(HERE, 'upload_server.py')],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    servers.processes.append(process)
    register_pid(process.pid)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise RuntimeError('upload server did not start')
    servers.upload_port = int(line)
    wait_listening(servers.upload_port, process, 'upload server')


TINYPROXY_CONF = '''\
{user}Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 100
LogLevel Error
LogFile "{tmp}/tinyproxy.log"
DisableViaHeader Yes
'''


def start_tinyproxy(servers: Servers) -> None:
    tinyproxy = shutil.which('tinyproxy') or '/usr/sbin/tinyproxy'
    user = 'User nobody\nGroup nogroup\n' if os.geteuid() == 0 else ''
    for attempt in range(5):
        servers.proxy_port = free_port()
        conf_path = os.path.join(servers.tmp, 'tinyproxy.conf')
        with open(conf_path, 'w') as file:
            file.write(TINYPROXY_CONF.format(user=user, port=servers.proxy_port, tmp=servers.tmp))
        process = subprocess.Popen(
            ['taskset', '-c', SERVER_CPU, tinyproxy, '-d', '-c', conf_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        servers.processes.append(process)
        register_pid(process.pid)
        try:
            wait_listening(servers.proxy_port, process, 'tinyproxy')
            return
        except RuntimeError:
            stop_process(process)
            if attempt == 4:
                raise


def register_pid(pid: int) -> None:
    # benchmarks/run kills these on exit too, in case this process dies without running its cleanup
    pid_file = os.environ.get('BENCH_PID_FILE')
    if pid_file:
        with open(pid_file, 'a') as file:
            file.write(f'{pid}\n')


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- raw-socket checks that the servers serve what the workloads assume


def raw_get(
    port: int, path: str, tls_ca: Optional[str] = None, extra: bytes = b''
) -> Tuple[bytes, bytes]:
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    if tls_ca:
        sock = ssl.create_default_context(cafile=tls_ca).wrap_socket(
            sock, server_hostname='127.0.0.1'
        )
    with sock:
        sock.sendall(
            b'GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n%s\r\n'
            % (path.encode(), extra)
        )
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    return head, body


def dechunk(body: bytes) -> Tuple[bytes, int]:
    data, chunks, pos = b'', 0, 0
    while True:
        line_end = body.index(b'\r\n', pos)
        size = int(body[pos:line_end].split(b';')[0], 16)
        if size == 0:
            return data, chunks
        data += body[line_end + 2 : line_end + 2 + size]
        chunks += 1
        pos = line_end + 2 + size + 2


def verify_servers(servers: Servers) -> None:
    for tls in (False, True):
        port = servers.https_port if tls else servers.http_port
        head, body = raw_get(port, '/small', servers.ca_file if tls else None)
        if not head.startswith(b'HTTP/1.1 200') or body != SMALL_BODY:
            raise RuntimeError(f'nginx /small (tls={tls}) answered {head!r} {body[:200]!r}')
        ca_file = servers.ca_file if tls else None
        heads = {raw_get(port, '/small-uniq', ca_file)[0] for _ in range(3)}
        if len(heads) != 3 or not all(b'\r\nx-request-id: ' in head for head in heads):
            raise RuntimeError(f'nginx /small-uniq heads are not unique: {heads!r}')
        head, body = raw_get(port, '/chunked', servers.ca_file if tls else None)
        if (
            b'\r\ntransfer-encoding: chunked' not in head.lower()
            or b'content-length' in head.lower()
        ):
            raise RuntimeError(f'nginx /chunked is not chunked: {head!r}')
        data, chunks = dechunk(body)
        if data != chunked_source() or chunks < 2:
            raise RuntimeError(
                f'nginx /chunked sent an unexpected body ({len(data)} bytes, {chunks} chunks)'
            )
        servers.chunked_len, servers.chunk_count = len(data), chunks
    verify_gzip_download(servers)
    sock = socket.create_connection(('127.0.0.1', servers.upload_port), timeout=10)
    with sock:
        sock.sendall(
            b'POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello'
            b'POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n'
            b'3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n'
        )
        data = b''
        while data.count(b'HTTP/1.1 200') < 2 or not data.endswith(b'7'):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not (data.endswith(b'7') and b'content-length: 1\r\n\r\n5' in data):
        raise RuntimeError(f'upload server answered {data!r}')


def verify_gzip_download(servers: Servers) -> None:
    """/gzip-download is the text, gzip-encoded, for a client that accepts gzip: decoded as
    it is read, so the harness never holds it whole."""
    sock = socket.create_connection(('127.0.0.1', servers.http_port), timeout=10)
    with sock:
        sock.sendall(
            b'GET /gzip-download HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n'
            b'accept-encoding: gzip\r\n\r\n'
        )
        data = b''
        while b'\r\n\r\n' not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, data = data.partition(b'\r\n\r\n')
        decoder, digest, encoded = zlib.decompressobj(31), hashlib.sha256(), 0
        while data:
            encoded += len(data)
            digest.update(decoder.decompress(data))
            data = sock.recv(65536)
    if b'\r\ncontent-encoding: gzip' not in head.lower() or not decoder.eof or \
            digest.hexdigest() != servers.gzip_sha256:
        raise RuntimeError(f'nginx /gzip-download is not the gzip-encoded text: {head!r}')
    servers.gzip_encoded_size = encoded


def start_servers(servers: Servers, download_size: int, gzip_size: int,
                  with_proxy: bool = False) -> None:
    write_files(servers.tmp, download_size)
    servers.gzip_size = gzip_size
    servers.gzip_sha256 = write_gzip_files(os.path.join(servers.tmp, 'www'), gzip_size)
    servers.ca_file = write_certs(servers.tmp)
    start_nginx(servers)
    start_upload_server(servers)
    if with_proxy:
        start_tinyproxy(servers)
    verify_servers(servers)


# -------------------------------------------------------------------------------------------------
# Running clients
# -------------------------------------------------------------------------------------------------


def spec_for(client: str, workload: Workload, servers: Servers, max_seconds: float) -> dict:
    spec = {
        'client': client,
        'workload': workload.name,
        'kind': workload.kind,
        'n': workload.n,
        'concurrency': workload.concurrency,
        'ca_file': servers.ca_file,
    }
    if workload.name == 'small-seq-uniq':
        spec.update(url=servers.url('/small-uniq'), expected_len=100)
    elif workload.name in ('small-seq', 'small-c64', 'tls-small-seq'):
        spec.update(
            url=servers.url('/small', tls=workload.name.startswith('tls')), expected_len=100
        )
    elif workload.name == 'proxy-small-seq':
        spec.update(
            url=servers.url('/small'),
            expected_len=100,
            proxy=f'http://127.0.0.1:{servers.proxy_port}',
        )
    elif workload.name == 'chunked-seq':
        spec.update(url=servers.url('/chunked'), expected_len=servers.chunked_len)
    elif workload.name == 'download':
        spec.update(
            url=servers.url('/big'),
            expected_len=workload.size,
            warm_url=servers.url('/small'),
            warm_expected_len=100,
        )
    elif workload.name == 'gzip-download':
        spec.update(
            url=servers.url('/gzip-download'),
            expected_len=servers.gzip_size,
            warm_url=servers.url('/small'),
            warm_expected_len=100,
        )
    elif workload.kind == 'upload':
        spec.update(
            url=servers.upload_url('/upload'),
            size=workload.size,
            chunk_size=workload.chunk_size,
            warm_url=servers.upload_url('/warm'),
            warm_expected_len=1,
        )  # the sink answers b'0'
    if workload.kind == 'small':
        # enough requests to open every connection and run every code path before the clock starts
        spec['warmup'] = max(workload.concurrency * 4, min(200, workload.n // 10))
        spec['max_seconds'] = max_seconds
    return spec


def warm_page_cache(path: str) -> None:
    """Read the download file once, so that nginx serves it from the page cache to every client.

    This machine evicts file pages within minutes, and a client whose download found the file
    cold paid more CPU for the same bytes (0.26-0.32 against 0.22-0.27 s/GB at 1 GiB), and the
    first client of a run paid it most: measured against the server's disk, not the client."""
    with open(path, 'rb') as file:
        while file.read(1 << 20):
            pass


def expected_bytes(spec: dict, requests: int) -> int:
    if spec['kind'] == 'upload':
        return spec['size'] * requests
    return spec['expected_len'] * requests


def snapshot_lowhaio(tmp: str) -> str:
    """Copy the repository's lowhaio*.py modules into tmp/src, and return their sha256 (short).

    Every client process of the run imports this copy, so all reps measure the same code even while
    lowhaio.py is being edited in the work tree.
    """
    src = os.path.join(tmp, 'src')
    os.makedirs(src)
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(REPO, 'lowhaio*.py'))):
        shutil.copy2(path, src)
        with open(path, 'rb') as file:
            digest.update(file.read())
    # Compiled once here, as an installed package is: otherwise every client process compiles
    # lowhaio.py from source, and the memory that takes stays in its RSS and peak RSS
    compileall.compile_dir(src, quiet=1)
    return digest.hexdigest()[:12]


def run_one(spec: dict, tmp: str, timeout: float, profile: bool = False,
            wrapper: Tuple[str, ...] = ()) -> dict:
    out_path = os.path.join(tmp, 'result.json')
    if os.path.exists(out_path):
        os.remove(out_path)
    env = dict(os.environ)
    src = os.path.join(tmp, 'src')  # the snapshot of lowhaio, see snapshot_lowhaio
    env['PYTHONPATH'] = src + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    cmd = [
        'taskset',
        '-c',
        CLIENT_CPU,
        *wrapper,
        sys.executable,
        os.path.join(HERE, 'clients.py'),
        json.dumps(spec),
        out_path,
    ] + (['--profile'] if profile else [])
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return {
            'ok': False,
            'error': f'timed out after {timeout:g} s',
            'stderr': (exc.stderr or b'').decode(errors='replace')[-4000:],
        }
    result: dict
    try:
        with open(out_path) as file:
            result = json.load(file)
    except (OSError, ValueError):
        result = {
            'ok': False,
            'error': f'client process exited with {proc.returncode} and no result',
        }
    result['process_s'] = time.perf_counter() - started
    stderr = proc.stderr.decode(errors='replace')
    if stderr.strip():
        result['stderr'] = stderr[-4000:]
    if profile:
        result['stdout'] = proc.stdout.decode(errors='replace')
    if wrapper:
        result['wrapper_stderr'] = stderr
    if result.get('ok'):
        requests = result['requests']
        if result['bytes'] != expected_bytes(spec, requests):
            result['ok'] = False
            result['error'] = (
                f"byte count mismatch: got {result['bytes']}, "
                f"expected {expected_bytes(spec, requests)}"
            )
        elif requests < 1 or (spec['kind'] != 'small' and requests != spec['n']):
            result['ok'] = False
            result['error'] = f'{requests} requests done, expected {spec["n"]}'
    return result


def add_metrics(result: dict, workload: Workload) -> None:
    if not result.get('ok'):
        return
    wall, cpu = result['wall_s'], result['cpu_s']
    if workload.kind == 'small':
        result['throughput'] = result['requests'] / wall
        result['cpu_us_per_request'] = cpu / result['requests'] * 1e6
    else:
        result['throughput'] = result['bytes'] / wall / 1e6  # MB/s, 1 MB = 10^6 bytes
        result['cpu_s_per_gb'] = cpu / (result['bytes'] / 1e9)  # 1 GB = 10^9 bytes
        result['cpu_us_per_request'] = cpu / result['requests'] * 1e6
    result['peak_rss_mib'] = result['maxrss_kb'] / 1024


# -------------------------------------------------------------------------------------------------
# Summaries and the report
# -------------------------------------------------------------------------------------------------


def summarise(runs: List[dict], clients: List[str], names: List[str]) -> Dict[str, Dict[str, dict]]:
    summary: Dict[str, Dict[str, dict]] = {}
    for name in names:
        summary[name] = {}
        for client in clients:
            these = [r for r in runs if r['workload'] == name and r['client'] == client]
            good = [r for r in these if r.get('ok')]
            entry: dict = {
                'reps': len(these),
                'errors': [r.get('error') for r in these if not r.get('ok')],
            }
            if good:
                values = [r['throughput'] for r in good]
                entry.update(median=statistics.median(values), min=min(values), max=max(values))
                for key in ('cpu_us_per_request', 'cpu_s_per_gb', 'peak_rss_mib'):
                    if key in good[0]:
                        entry[key] = statistics.median(r[key] for r in good)
            summary[name][client] = entry
    return summary


def fmt_number(value: float) -> str:
    if value >= 100:
        return f'{value:,.0f}'
    if value >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def cell(entry: dict) -> str:
    if entry.get('errors'):
        return f"ERROR ({len(entry['errors'])}/{entry['reps']})"
    if 'median' not in entry:
        return '–'
    if entry['reps'] == 1:
        return fmt_number(entry['median'])
    return f"{fmt_number(entry['median'])} ({fmt_number(entry['min'])}–{fmt_number(entry['max'])})"


def ratio(summary: Dict[str, dict], a: str, b: str, key: str = 'median') -> str:
    if (
        a in summary
        and b in summary
        and key in summary[a]
        and key in summary[b]
        and not summary[a]['errors']
        and not summary[b]['errors']
    ):
        return f"{summary[a][key] / summary[b][key]:.2f}"
    return '–'


def markdown(
    summary: Dict[str, Dict[str, dict]], wls: Dict[str, Workload], clients: List[str], meta: dict
) -> str:
    names = list(summary)
    lines = [
        f"### Throughput: median of {meta['reps']} interleaved rep(s), (min–max); higher is better",
        '',
        '| client | ' + ' | '.join(f'{n} {wls[n].unit}' for n in names) + ' |',
        '|---|' + '---:|' * len(names),
    ]
    for client in clients:
        lines.append(f'| {client} | ' + ' | '.join(cell(summary[n][client]) for n in names) + ' |')

    lines += ['', '### Client CPU (median); lower is better', '']
    cpu_cols: List[Tuple[str, str, str]] = []
    for n in names:
        if wls[n].kind == 'small':
            cpu_cols.append((n, 'cpu_us_per_request', f'{n} CPU µs/req'))
        else:
            cpu_cols.append((n, 'cpu_s_per_gb', f'{n} CPU s/GB'))
        if wls[n].kind == 'upload':
            cpu_cols.append((n, 'peak_rss_mib', f'{n} peak RSS MiB'))
    lines += [
        '| client | ' + ' | '.join(c[2] for c in cpu_cols) + ' |',
        '|---|' + '---:|' * len(cpu_cols),
    ]
    for client in clients:
        cells = []
        for n, key, _ in cpu_cols:
            entry = summary[n][client]
            cells.append(
                fmt_number(entry[key])
                if key in entry and not entry['errors']
                else ('ERROR' if entry['errors'] else '–')
            )
        lines.append(f'| {client} | ' + ' | '.join(cells) + ' |')

    lines += [
        '',
        '### Ratios to the floor and to the best peer',
        '',
        'Throughput ratios: median ÷ median, above 1 = faster. CPU ratios: client CPU per request '
        '(or per GB) ÷ the same for the floor, above 1 = more CPU; they are steadier than '
        'throughput on a shared machine, where wall time also depends on the server and the '
        'neighbours.',
        '',
        '| workload | lowhaio ÷ floor | lowhaio-uvloop ÷ floor-uvloop | lowhaio ÷ best peer '
        '| best peer '
        '| CPU lowhaio ÷ floor | CPU lowhaio-uvloop ÷ floor-uvloop |',
        '|---|---:|---:|---:|---|---:|---:|',
    ]
    for n in names:
        peers = [
            (summary[n][p]['median'], p)
            for p in PEERS
            if p in summary[n] and 'median' in summary[n][p] and not summary[n][p]['errors']
        ]
        best = max(peers)[1] if peers else None
        cpu_key = 'cpu_us_per_request' if wls[n].kind == 'small' else 'cpu_s_per_gb'
        lines.append(
            f"| {n} | {ratio(summary[n], 'lowhaio', 'floor')} | "
            f"{ratio(summary[n], 'lowhaio-uvloop', 'floor-uvloop')} | "
            f"{ratio(summary[n], 'lowhaio', best) if best else '–'} | {best or '–'} | "
            f"{ratio(summary[n], 'lowhaio', 'floor', cpu_key)} | "
            f"{ratio(summary[n], 'lowhaio-uvloop', 'floor-uvloop', cpu_key)} |"
        )

    lines += variant_ratios(summary, wls, clients)

    errors = [(n, c, e) for n in names for c in clients for e in summary[n][c]['errors']]
    if errors:
        lines += ['', '### Errors', '']
        lines += [f'- **{c}** on {n}: {e}' for n, c, e in errors]
    lines += [
        '',
        f"Python {meta['python']}, {meta['versions_line']}; servers on CPU {SERVER_CPU} "
        f"(nginx {meta['nginx']}, uvloop upload sink), clients on CPU {CLIENT_CPU}; sizes: "
        f"{meta['sizes_line']}. {meta['date']}.",
    ]
    return '\n'.join(lines) + '\n'


def variant_ratios(
    summary: Dict[str, Dict[str, dict]], wls: Dict[str, Workload], clients: List[str]
) -> List[str]:
    """Each lowhaio variant (a client named lowhaio-SOMETHING, e.g. lowhaio-recv16k, or
    lowhaio-recv16k-uvloop) next to plain lowhaio on the same loop: what its option costs."""
    pairs = []
    for client in clients:
        on_uvloop = client.endswith('-uvloop')
        base = 'lowhaio-uvloop' if on_uvloop else 'lowhaio'
        # lowhaio-0.0.89 is another release, a peer, not an option of this one
        if client.startswith('lowhaio-') and client != base and client != 'lowhaio-uvloop' \
                and not client.startswith('lowhaio-0.0.89') and base in clients:
            pairs.append((client, base))
    if not pairs:
        return []
    lines = [
        '',
        '### lowhaio variants ÷ lowhaio on the same loop',
        '',
        'Throughput: above 1 = the variant is faster. CPU: above 1 = the variant uses more.',
        '',
        '| workload | variant | throughput ÷ base | CPU ÷ base |',
        '|---|---|---:|---:|',
    ]
    for n in summary:
        cpu_key = 'cpu_us_per_request' if wls[n].kind == 'small' else 'cpu_s_per_gb'
        for variant, base in pairs:
            lines.append(
                f"| {n} | {variant} ÷ {base} | {ratio(summary[n], variant, base)} | "
                f"{ratio(summary[n], variant, base, cpu_key)} |"
            )
    return lines


def versions(lowhaio_sha: str) -> Dict[str, str]:
    found = {'lowhaio.py sha256': lowhaio_sha}
    for dist in (
        'aiohttp',
        'httpx',
        'aiosonic',
        'pyreqwest',
        'rnet',
        'curl_cffi',
        'niquests',
        'uvloop',
        'aiodnsresolver',
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = 'missing'
    try:
        out = subprocess.run(
            ['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'], capture_output=True, check=False
        )
        found['lowhaio (git)'] = out.stdout.decode().strip() or 'unknown'
        dirty = subprocess.run(
            ['git', '-C', REPO, 'status', '--porcelain', 'lowhaio.py'],
            capture_output=True,
            check=False,
        )
        if dirty.stdout.strip():
            found['lowhaio (git)'] += '+uncommitted'
    except OSError:
        pass
    return found


def nginx_version() -> str:
    out = subprocess.run(
        [shutil.which('nginx') or '/usr/sbin/nginx', '-v'], capture_output=True, check=False
    )
    return out.stderr.decode().strip().rpartition('/')[2]


# -------------------------------------------------------------------------------------------------


# Instruction counts: callgrind counts the instructions a process runs, the same whatever else the
# machine is doing. Each client runs a workload twice, with N and 3N measured requests after the
# same warm-up; the difference divided by 2N is its cost per request, with start-up, imports and
# warm-up cancelled out.
INSTRUCTION_REQUESTS = 200
CALLGRIND = ('valgrind', '--tool=callgrind', '--callgrind-out-file=/dev/null')


def collected_instructions(result: dict) -> int:
    for line in result.get('wrapper_stderr', '').splitlines():
        if 'Collected :' in line:
            return int(line.rpartition(':')[2])
    raise RuntimeError(f"no callgrind total in: {result.get('wrapper_stderr', '')[-2000:]}")


def count_instructions(
    clients: List[str], names: List[str], wls: Dict[str, Workload], servers: Servers, tmp: str,
    timeout: float,
) -> Tuple[Dict[str, Dict[str, float]], List[dict]]:
    """{workload: {client: instructions per request}}, and every run (for their errors)."""
    counts: Dict[str, Dict[str, float]] = {}
    runs = []
    for name in names:
        workload = wls[name]
        if workload.kind != 'small':
            continue
        for client in clients:
            totals = []
            for n in (INSTRUCTION_REQUESTS, 3 * INSTRUCTION_REQUESTS):
                spec = spec_for(client, workload, servers, max_seconds=1e9)
                spec['n'] = n
                result = run_one(spec, tmp, timeout, wrapper=CALLGRIND)
                result.update(client=client, workload=name, rep=1)
                runs.append(result)
                if not result.get('ok') or result['requests'] != n:
                    break
                totals.append(collected_instructions(result))
            if len(totals) == 2:
                per_request = (totals[1] - totals[0]) / (2 * INSTRUCTION_REQUESTS)
                counts.setdefault(name, {})[client] = per_request
                print(f'{name} {client}: {per_request:,.0f} instructions per request',
                      file=sys.stderr)
    return counts, runs


def instructions_markdown(counts: Dict[str, Dict[str, float]], clients: List[str],
                          meta: dict) -> str:
    lines = [
        '### Instructions per request (callgrind; lower is better)',
        '',
        '| client | ' + ' | '.join(counts) + ' |',
        '|---|' + '---:|' * len(counts),
    ]
    for client in clients:
        row = [counts[name].get(client) for name in counts]
        lines.append(f'| {client} | ' + ' | '.join(
            '–' if value is None else f'{value / 1000:,.1f}k' for value in row) + ' |')
    lines += ['', f"Python {meta['python']}, {meta['versions_line']}; {meta['date']}.", '']
    return '\n'.join(lines)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='benchmarks/run', description=__doc__)
    parser.add_argument(
        '--smoke', action='store_true', help='tiny counts and sizes, 1 rep: checks it all works'
    )
    parser.add_argument('--only', help='comma-separated workloads (default: all)')
    parser.add_argument(
        '--clients', help='comma-separated clients (default: all); any NAME-uvloop works'
    )
    parser.add_argument('--reps', type=int, help='interleaved repetitions (default 3, smoke 1)')
    parser.add_argument(
        '--size-scale',
        type=float,
        default=1.0,
        help='multiply request counts and transfer sizes (e.g. 0.25 for a quicker run)',
    )
    parser.add_argument(
        '--profile',
        metavar='CLIENT',
        help='run CLIENT once per workload under cProfile, print the top 40 by tottime',
    )
    parser.add_argument(
        '--instructions',
        action='store_true',
        help='count instructions per request under callgrind (request workloads only) instead '
        'of timing: the same however busy the machine is',
    )
    parser.add_argument(
        '--max-seconds',
        type=float,
        default=20,
        help='time cap of one request-count measurement: a slower client stops early and '
        'is rated on the requests it did (default 20)',
    )
    parser.add_argument(
        '--timeout', type=float, default=600, help='seconds allowed per client process'
    )
    parser.add_argument(
        '--output',
        default=os.path.join(RESULTS, 'latest'),
        help='path prefix for the .json and .md results (default results/latest)',
    )
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    all_workloads = workloads(args.smoke, args.size_scale)
    names = args.only.split(',') if args.only else list(all_workloads)
    unknown = [n for n in names if n not in all_workloads]
    if unknown:
        raise SystemExit(f'unknown workload(s) {unknown}; known: {list(all_workloads)}')
    clients = args.clients.split(',') if args.clients else list(DEFAULT_CLIENTS)
    if args.profile:
        clients = [args.profile]
    sys.path.insert(0, HERE)
    from clients import client_factory

    for client in clients:
        client_factory(client)  # unknown names fail now, not after the servers have started
    reps = 1 if args.profile else (args.reps or (1 if args.smoke else 3))
    download_size = all_workloads['download'].size
    gzip_size = all_workloads['gzip-download'].size

    # SIGTERM (e.g. from the run script's trap) unwinds through the finally below: servers stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix='lowhaio-bench-')
    os.chmod(tmp, 0o755)
    servers = Servers(tmp=tmp)
    try:
        lowhaio_sha = snapshot_lowhaio(tmp)
        start_servers(servers, download_size, gzip_size,
                      with_proxy='proxy-small-seq' in names)
        print(
            f'servers up: nginx http :{servers.http_port} https :{servers.https_port}, '
            f'upload sink :{servers.upload_port}; /chunked is {servers.chunked_len} bytes in '
            f'{servers.chunk_count} chunks',
            file=sys.stderr,
        )
        runs: List[dict] = []
        instruction_counts: Dict[str, Dict[str, float]] = {}
        if args.instructions:
            instruction_counts, runs = count_instructions(
                clients, names, all_workloads, servers, tmp, args.timeout)
            reps = 0
        for rep in range(reps):
            for name in names:
                workload = all_workloads[name]
                # rotate the order each rep, so no client always runs first (or right after another)
                order = clients[rep % len(clients) :] + clients[: rep % len(clients)]
                for client in order:
                    if workload.clients and client.split('-')[0] not in workload.clients:
                        continue
                    adapter = client_factory(client)[0]
                    if workload.kind == 'gzip' and not hasattr(adapter, 'get_decoded'):
                        continue  # lowhaio 0.0.89 decodes nothing
                    proxies = getattr(adapter, 'PROXIES', False)
                    if name in PROXY_WORKLOADS and not proxies:
                        continue  # the floor has no proxy support; aiosonic's is not compared
                    spec = spec_for(client, workload, servers, args.max_seconds)
                    if name == 'download':
                        warm_page_cache(os.path.join(tmp, 'www', 'big.bin'))
                    result = run_one(spec, tmp, args.timeout, profile=bool(args.profile))
                    add_metrics(result, workload)
                    result.update(client=client, workload=name, rep=rep + 1)
                    runs.append(result)
                    report_progress(result, workload)
                    if args.profile:
                        print(
                            f'\n## cProfile of {client} on {name} ({workload.n} requests), '
                            f'top 40 by tottime (CPU time of the measured requests only)\n'
                        )
                        print(result.get('stdout', ''))
    finally:
        for process in reversed(servers.processes):
            stop_process(process)
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {} if args.instructions else summarise(runs, clients, names)
    vers = versions(lowhaio_sha)
    meta = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'argv': argv,
        'reps': reps,
        'python': platform.python_version(),
        'nginx': nginx_version(),
        'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}',
        'versions': vers,
        'versions_line': ', '.join(f'{k} {v}' for k, v in vers.items()),
        'workloads': {n: vars(all_workloads[n]) for n in names},
        'chunked_body': {'bytes': servers.chunked_len, 'chunks': servers.chunk_count},
        'sizes_line': sizes_line(all_workloads, names, servers),
    }
    if args.instructions:
        table = instructions_markdown(instruction_counts, clients, meta)
        args.output = args.output.replace('latest', 'instructions')
    else:
        table = markdown(summary, all_workloads, clients, meta)
    if not args.profile:
        os.makedirs(os.path.dirname(args.output) or '.', exist_ok=True)
        with open(args.output + '.json', 'w') as file:
            json.dump({'meta': meta, 'summary': summary, 'runs': runs}, file, indent=1)
        with open(args.output + '.md', 'w') as file:
            file.write(table)
        print(table)
    failed = [r for r in runs if not r.get('ok')]
    for r in failed:
        print(
            f"\nERROR {r['client']} {r['workload']} rep {r['rep']}: {r.get('error')}\n"
            f"{r.get('traceback') or r.get('stderr') or ''}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def sizes_line(wls: Dict[str, Workload], names: List[str], servers: Servers) -> str:
    parts = []
    for n in names:
        w = wls[n]
        if w.kind == 'small':
            parts.append(f'{n} {w.n:,} requests')
        else:
            parts.append(f'{n} {w.size / MiB:,.0f} MiB')
    if 'chunked-seq' in names:
        parts.append(f'chunked body {servers.chunked_len:,} bytes in {servers.chunk_count} chunks')
    if 'gzip-download' in names:
        parts.append(f'gzip-download {servers.gzip_encoded_size / MiB:,.1f} MiB encoded')
    return ', '.join(parts)


def report_progress(result: dict, workload: Workload) -> None:
    if result.get('ok'):
        if workload.kind == 'small':
            extra = f"{result['cpu_us_per_request']:.1f} µs CPU/req"
        else:
            extra = (
                f"{result['cpu_s_per_gb']:.2f} s CPU/GB, peak RSS {result['peak_rss_mib']:.0f} MiB"
            )
        print(
            f"rep {result['rep']} {workload.name:<14} {result['client']:<15} "
            f"{fmt_number(result['throughput']):>9} {workload.unit}  {extra}",
            file=sys.stderr,
        )
    else:
        print(
            f"rep {result['rep']} {workload.name:<14} {result['client']:<15} "
            f"ERROR {result.get('error')}",
            file=sys.stderr,
        )


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
