"""How cost grows: lowhaio next to aiohttp and the floor, along one parameter at a time.

Started by `bash benchmarks/scaling [--quick]`; README.md ("How cost grows") says what is measured.
nginx (and the upload sink, and a hold server for in-flight memory) run on CPU 0; each client runs
each curve in a fresh process on CPU 1 (scaling_client.py). Results: results/scaling.json, .md and
one PNG per curve.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import harness
from harness import (
    CLIENT_CPU,
    HERE,
    KiB,
    MiB,
    GiB,
    SERVER_CPU,
    SMALL_BODY,
    register_pid,
    snapshot_lowhaio,
    stop_process,
    wait_listening,
)

CLIENTS = ['floor', 'lowhaio', 'aiohttp']
CHUNKED_LEN = 4 * MiB

# name: (x label, y label, full points, quick points, log x)
CURVES: Dict[str, Tuple[str, str, List[int], List[int]]] = {
    'concurrency': ('concurrent requests (one host)', 'client CPU µs per request',
                    [1, 4, 16, 64, 256, 1024], [1, 16, 256]),
    'hosts': ('distinct hosts (127.0.x.y), requests in turn', 'client CPU µs per request',
              [1, 10, 100, 1000], [1, 10, 100]),
    'response-headers': ('response headers added (unique values)', 'client CPU µs per request',
                         [1, 10, 25, 50, 100], [1, 25, 100]),
    'request-headers': ('request headers sent', 'client CPU µs per request',
                        [0, 10, 25, 50, 100], [0, 25, 100]),
    'download-size': ('response body bytes', 'client CPU s per GB',
                      [KiB, 16 * KiB, 256 * KiB, 4 * MiB, 64 * MiB, GiB],
                      [KiB, 64 * KiB, 4 * MiB]),
    'upload-size': ('request body bytes', 'client CPU s per GB',
                    [KiB, 16 * KiB, 256 * KiB, 4 * MiB, 64 * MiB, GiB],
                    [KiB, 64 * KiB, 4 * MiB]),
    'chunk-size': ('chunk size of a chunked 4 MiB response (bytes)', 'client CPU s per GB',
                   [KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB], [KiB, 16 * KiB, 256 * KiB]),
    'idle-memory': ('idle pooled connections', 'bytes per connection (tracemalloc)',
                    [10, 100, 1000, 10000], [10, 100, 1000]),
    'inflight-memory': ('requests in flight (one connection each)',
                        'bytes per request (tracemalloc)',
                        [10, 100, 1000, 10000], [10, 100, 1000]),
}
LINEAR_X = {'response-headers', 'request-headers'}
CPU_CURVES = [c for c in CURVES if not c.endswith('memory')]


def host_addresses(count: int) -> List[str]:
    return [f'127.0.{i // 250}.{i % 250 + 1}' for i in range(count)]


NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 40000;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000000;
    keepalive_timeout 3600s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        {listens}
        root {tmp}/www;
        location = /small {{ alias {tmp}/www/small.txt; }}
        {locations}
    }}
}}
"""


def nginx_locations(header_counts: List[int], sizes: List[int]) -> str:
    out = []
    for count in header_counts:
        # every value differs per response ($request_id), so no cache of parsed heads can help
        adds = ''.join(f'add_header x-h{i} "{i}-$request_id"; ' for i in range(count))
        out.append(f'location = /h/{count} {{ alias {{tmp}}/www/small.txt; {adds}}}')
    for size in sizes:
        out.append(f'location = /size/{size} {{ alias {{tmp}}/www/size-{size}.bin; }}')
    return '\n        '.join(out)


def start_server(cmd: List[str], what: str) -> Tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        ['taskset', '-c', SERVER_CPU] + cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    register_pid(process.pid)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise RuntimeError(f'{what} did not start')
    port = int(line)
    wait_listening(port, process, what)
    return process, port


def prepare(tmp: str, points: Dict[str, List[int]]) -> Tuple[List[subprocess.Popen], dict]:
    www = os.path.join(tmp, 'www')
    os.makedirs(www)
    with open(os.path.join(www, 'small.txt'), 'wb') as file:
        file.write(SMALL_BODY)
    for size in points['download-size']:
        with open(os.path.join(www, f'size-{size}.bin'), 'wb') as file:
            file.truncate(size)  # sparse
    ca_file = harness.write_certs(tmp)
    hosts = host_addresses(max(points['hosts']))
    processes: List[subprocess.Popen] = []
    nginx = shutil.which('nginx') or '/usr/sbin/nginx'
    for attempt in range(5):
        port = harness.free_port()
        listens = ' '.join(f'listen {h}:{port} backlog=16384;' for h in hosts)
        locations = nginx_locations(
            points['response-headers'], points['download-size']
        ).replace('{tmp}', tmp)
        conf = NGINX_CONF.format(tmp=tmp, listens=listens, locations=locations)
        if os.geteuid() == 0:
            conf = 'user root;\n' + conf
        conf_path = os.path.join(tmp, 'nginx.conf')
        with open(conf_path, 'w') as file:
            file.write(conf)
        log = os.path.join(tmp, 'nginx-error.log')
        process = subprocess.Popen(
            ['taskset', '-c', SERVER_CPU, nginx, '-p', tmp, '-c', conf_path, '-e', log],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        register_pid(process.pid)
        try:
            wait_listening(port, process, 'nginx', log)
            processes.append(process)
            break
        except RuntimeError:
            stop_process(process)
            if attempt == 4:
                raise
    upload, upload_port = start_server([sys.executable, os.path.join(HERE, 'upload_server.py')],
                                       'upload sink')
    hold, hold_port = start_server([sys.executable, os.path.join(HERE, 'hold_server.py')],
                                   'hold server')
    chunked, chunked_port = start_server(
        [sys.executable, os.path.join(HERE, 'scaling_chunked_server.py'), str(CHUNKED_LEN)],
        'chunked server')
    processes += [upload, hold, chunked]
    base = f'http://127.0.0.1:{port}'
    urls = {
        'url': base + '/small',
        'host_urls': [f'http://{h}:{port}/small' for h in hosts],
        'headers_url': base + '/h/%d',
        'size_url': base + '/size/%d',
        'chunked_url': f'http://127.0.0.1:{chunked_port}/chunked/%d',
        'chunked_port': chunked_port,
        'chunked_len': CHUNKED_LEN,
        'upload_url': f'http://127.0.0.1:{upload_port}/upload',
        'hold_url': f'http://127.0.0.1:{hold_port}',
        'hold_port': hold_port,
        'ca_file': ca_file,
    }
    verify(urls, points)
    return processes, urls


def verify(urls: dict, points: Dict[str, List[int]]) -> None:
    """Raw-socket checks: unique header values, and chunk sizes as configured."""
    port = int(urls['url'].rsplit(':', 1)[1].split('/')[0])
    count = max(points['response-headers'])
    heads = {harness.raw_get(port, f'/h/{count}')[0] for _ in range(2)}
    if len(heads) != 2 or any(head.count(b'\r\nx-h') != count for head in heads):
        raise RuntimeError(f'/h/{count} does not send {count} unique headers')
    for chunk in points['chunk-size']:
        head, body = harness.raw_get(urls['chunked_port'], f'/chunked/{chunk}')
        data, chunks = harness.dechunk(body)
        if b'chunked' not in head.lower() or len(data) != CHUNKED_LEN or \
                chunks != -(-CHUNKED_LEN // chunk):
            raise RuntimeError(f'/chunked/{chunk}: {len(data)} bytes in {chunks} chunks')


def run_curve(client: str, curve: str, xs: List[int], urls: dict, quick: bool, tmp: str,
              timeout: float, profile: bool = False) -> dict:
    spec = dict(urls, client=client, curve=curve, points=xs, profile=profile,
                n=300 if quick else 3000,
                bytes_per_point=(16 if quick else 256) * MiB,
                max_requests=300 if quick else 3000)
    out = os.path.join(tmp, 'result.json')
    if os.path.exists(out):
        os.remove(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(tmp, 'src'), HERE]))
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            ['taskset', '-c', CLIENT_CPU, sys.executable, os.path.join(HERE, 'scaling_client.py'),
             json.dumps(spec), out],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
        )
        with open(out) as file:
            result = json.load(file)
        if profile:
            result['stdout'] = proc.stdout.decode(errors='replace')
        if proc.stderr.strip():
            result['stderr'] = proc.stderr.decode(errors='replace')[-3000:]
    except subprocess.TimeoutExpired:
        result = {'ok': False, 'error': f'timed out after {timeout:g} s'}
    except (OSError, ValueError):
        result = {'ok': False, 'error': 'client process left no result',
                  'stderr': proc.stderr.decode(errors='replace')[-3000:]}
    result['seconds'] = time.perf_counter() - started
    return result


def plot(curve: str, xs: List[int], values: Dict[str, List[float]], path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    xlabel, ylabel, _, _ = CURVES[curve]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for client, ys in values.items():
        ax.plot(xs, ys, marker='o', label=client)
    if curve not in LINEAR_X:
        ax.set_xscale('symlog' if 0 in xs else 'log')
    if curve.endswith('size'):
        ax.set_yscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0 if not curve.endswith('size') else None)
    ax.set_title(curve)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt(value: float) -> str:
    return f'{value:,.0f}' if value >= 100 else f'{value:.2f}' if value < 10 else f'{value:.1f}'


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog='benchmarks/scaling', description=__doc__)
    parser.add_argument('--quick', action='store_true', help='fewer points and requests (CI)')
    parser.add_argument('--only', help='comma-separated curves (default: all)')
    parser.add_argument('--clients', help='comma-separated clients (default floor,lowhaio,aiohttp)')
    parser.add_argument('--output',
                        help='path prefix of the .json/.md results and PNGs (default '
                        'results/scaling, or results/scaling-quick with --quick)')
    parser.add_argument('--timeout', type=float, default=900)
    parser.add_argument('--profile', metavar='CLIENT',
                        help='run CLIENT alone under cProfile, print the top 25 functions per '
                        'point (writes no results)')
    args = parser.parse_args(argv)
    if args.output is None:
        name = 'scaling-quick' if args.quick else 'scaling'
        args.output = os.path.join(harness.RESULTS, name)
    curves = args.only.split(',') if args.only else list(CURVES)
    clients = [args.profile] if args.profile else \
        args.clients.split(',') if args.clients else CLIENTS
    points = {c: CURVES[c][3 if args.quick else 2] for c in CURVES}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix='lowhaio-scaling-')
    os.chmod(tmp, 0o755)
    processes: List[subprocess.Popen] = []
    results: Dict[str, Dict[str, dict]] = {}
    try:
        snapshot_lowhaio(tmp)
        processes, urls = prepare(tmp, points)
        for curve in curves:
            results[curve] = {}
            for client in clients:
                result = run_curve(client, curve, points[curve], urls, args.quick, tmp,
                                   args.timeout, bool(args.profile))
                if args.profile:
                    print(result.get('stdout', ''))
                results[curve][client] = result
                shown = ', '.join(fmt(v) for v in result['values']) if result['ok'] \
                    else 'ERROR ' + result['error']
                print(f'{curve:<17} {client:<8} {shown}  ({result["seconds"]:.0f} s)',
                      file=sys.stderr)
    finally:
        for process in reversed(processes):
            stop_process(process)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if args.profile and all(r['ok'] for c in results.values() for r in c.values()) \
        else 1 if args.profile else report(results, points, args)


def report(results: Dict[str, Dict[str, dict]], points: Dict[str, List[int]],
           args: argparse.Namespace) -> int:
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    if args.only and os.path.exists(args.output + '.json'):
        # a partial run (--only) replaces its curves in the last results and keeps the others
        with open(args.output + '.json') as file:
            previous = json.load(file)
        results = {**{c: r for c, r in previous['results'].items() if c not in results}, **results}
        results = {c: results[c] for c in CURVES if c in results}
        points = {**previous['points'], **{c: points[c] for c in results if c in points}}
    lines = [f"# Scaling{' (quick)' if args.quick else ''}: "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", '']
    failed = 0
    for curve, by_client in results.items():
        xs = points[curve]
        lines += [f'## {curve}: {CURVES[curve][1]} against {CURVES[curve][0]}', '',
                  '| client | ' + ' | '.join(f'{x:,}' for x in xs) + ' |',
                  '|---|' + '---:|' * len(xs)]
        good = {}
        for client, result in by_client.items():
            if result['ok']:
                good[client] = result['values']
                lines.append(f'| {client} | ' + ' | '.join(fmt(v) for v in result['values']) + ' |')
            else:
                failed += 1
                lines.append(f'| {client} | ERROR: {result["error"]} |')
                print(result.get('traceback') or result.get('stderr', ''), file=sys.stderr)
        lines.append('')
        if good:
            png = f'{args.output}-{curve}.png'
            plot(curve, xs, good, png)
            lines += [f'![{curve}]({os.path.basename(png)})', '']
    with open(args.output + '.json', 'w') as file:
        json.dump({'points': points, 'results': results}, file, indent=1)
    with open(args.output + '.md', 'w') as file:
        file.write('\n'.join(lines))
    print('\n'.join(lines))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
