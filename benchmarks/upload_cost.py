"""Per-chunk cost of the upload workload, counted rather than timed: callgrind instructions,
system calls (strace -c -f, and perf stat's syscall tracepoints at full speed) and task-clock, each
from two upload sizes whose difference cancels start-up, imports and the warm-up request.

Run with the benchmark's virtualenv (bash benchmarks/run prepares it):

    benchmarks/.venv/bin/python benchmarks/upload_cost.py [--clients lowhaio,lowhaio-0.0.89,floor]
        [--sizes 8,72] [--timed-sizes 64,512] [--tools callgrind,strace,perf] [--reps N] [--tls]

It starts upload_server.py on CPU 0 (behind TLS with --tls, a trustme certificate), runs
clients.py's `upload` workload (64 KiB chunks from an async generator, content-length) on CPU 1
with the working tree's lowhaio*.py, and prints a markdown table of the cost per 64 KiB chunk;
`--reps N` adds the medians of N interleaved timed uploads. Under callgrind the client is ~50x
slower than the sink, so the socket nearly always takes each chunk whole: it counts the client's
own work per chunk, and a few waits (each adds ~100,000 instructions, mostly one-off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHUNK = 64 * 1024
MiB = 1 << 20
CA_FILE = '/etc/ssl/certs/ca-certificates.crt'  # for plain HTTP it is only loaded


def serve_tls(cert_file: str) -> None:
    """upload_server.py's sink behind TLS (the key is in cert_file): `--tls-sink CERT` runs it."""
    import ssl

    import uvloop
    from server_lifetime import serve_until_stopped
    from upload_server import UploadSink

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        create_server = loop.create_server

        async def create_tls_server(factory, host, port, **kwargs):  # type: ignore
            return await create_server(factory, host, port, ssl=ctx, **kwargs)

        loop.create_server = create_tls_server  # type: ignore[method-assign]
        await serve_until_stopped(UploadSink)

    uvloop.run(serve())


def start_sink(tls_dir: str = '') -> Tuple[subprocess.Popen, int]:
    """The upload sink on CPU 0, behind TLS with a certificate for 127.0.0.1 if tls_dir is given
    (its CA then in tls_dir/ca.pem)."""
    command = [sys.executable, os.path.join(HERE, 'upload_server.py')]
    if tls_dir:
        import trustme

        ca = trustme.CA()
        ca.cert_pem.write_to_path(os.path.join(tls_dir, 'ca.pem'))
        cert = os.path.join(tls_dir, 'server.pem')
        ca.issue_cert('127.0.0.1').private_key_and_cert_chain_pem.write_to_path(cert)
        command = [sys.executable, os.path.abspath(__file__), '--tls-sink', cert]
    sink = subprocess.Popen(['taskset', '-c', '0', *command],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=HERE)
    assert sink.stdout is not None
    return sink, int(sink.stdout.readline())


def run_client(client: str, port: int, size: int, wrapper: List[str], tmp: str,
               tls_dir: str = '') -> Tuple[str, dict]:
    base = f'https://127.0.0.1:{port}' if tls_dir else f'http://127.0.0.1:{port}'
    spec = {
        'client': client, 'workload': 'upload', 'kind': 'upload', 'n': 1, 'concurrency': 1,
        # for plain HTTP the CA is only loaded
        'ca_file': os.path.join(tls_dir, 'ca.pem') if tls_dir else CA_FILE,
        'url': f'{base}/upload', 'size': size, 'chunk_size': CHUNK,
        'warm_url': f'{base}/warm', 'warm_expected_len': 1,
    }
    out = os.path.join(tmp, 'result.json')
    # A fixed hash seed: with a random one, the cost of dict look-ups during start-up varies by
    # 100,000s of instructions from run to run, which the difference of two runs then keeps
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED='0')
    proc = subprocess.run(
        ['taskset', '-c', '1', *wrapper, sys.executable, os.path.join(HERE, 'clients.py'),
         json.dumps(spec), out],
        env=env, capture_output=True, check=False,
    )
    with open(out) as file:
        result = json.load(file)
    if not result.get('ok'):
        raise RuntimeError(f'{client}: {result}')
    return proc.stderr.decode(errors='replace'), result


def callgrind_total(stderr: str) -> float:
    return float(re.search(r'Collected : (\d+)', stderr).group(1))  # type: ignore[union-attr]


def strace_calls(stderr: str) -> Dict[str, float]:
    calls: Dict[str, float] = {}
    for line in stderr.splitlines():
        fields = line.split()
        # "% time seconds usecs/call calls [errors] syscall"
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != 'total':
            calls[fields[-1]] = float(fields[3])
    return calls


# perf stat at full speed: task-clock, and the system calls by tracepoint (strace slows the client
# so much that the socket never fills; these count the waits of a real run)
PERF_EVENTS = ['task-clock', 'raw_syscalls:sys_enter'] + [
    f'syscalls:sys_enter_{name}' for name in ('sendto', 'epoll_wait', 'epoll_ctl', 'setsockopt')
]


def perf_counts(stderr: str) -> Dict[str, float]:
    counts = {}
    for line in stderr.splitlines():
        fields = [field for field in line.split() if field != 'msec']
        if len(fields) >= 2 and fields[1] in PERF_EVENTS:
            counts[fields[1]] = float(fields[0].replace(',', ''))
    if 'task-clock' not in counts:
        raise RuntimeError(f'no task-clock in {stderr[-2000:]}')
    return counts


TOOLS = {
    'callgrind': (['valgrind', '--tool=callgrind', '--callgrind-out-file=/dev/null'],
                  callgrind_total),
    'strace': (['strace', '-c', '-f'], strace_calls),
    'perf': (['perf', 'stat', '-e', ','.join(PERF_EVENTS)], perf_counts),
}


def per_chunk(client: str, port: int, tool: str, sizes: Tuple[int, int], tmp: str,
              tls_dir: str) -> Dict[str, str]:
    """One tool's cost per chunk: the difference between the two sizes, over their chunks."""
    wrapper, parse = TOOLS[tool]
    (err_a, res_a), (err_b, res_b) = (run_client(client, port, size, wrapper, tmp, tls_dir)
                                      for size in sizes)
    chunks = (sizes[1] - sizes[0]) / CHUNK
    if tool == 'callgrind':
        per = (parse(err_b) - parse(err_a)) / chunks
        return {'instructions': f'{per:,.0f}', 'M instr/GiB': f'{per * (1 << 14) / 1e6:,.0f}'}
    if tool == 'strace':
        a, b = parse(err_a), parse(err_b)
        calls = {k: (b[k] - a.get(k, 0)) / chunks for k in b}
        return {'syscalls': ', '.join(f'{k} {v:.2f}' for k, v in sorted(calls.items())
                                      if v >= 0.005)}  # under strace
    a, b = parse(err_a), parse(err_b)
    per = {k: (b[k] - a.get(k, 0)) / chunks for k in b}
    cpu_s_per_gib = res_b['cpu_s'] / sizes[1] * (1 << 30)  # the measured request's own CPU
    return {'task-clock µs': f"{per.pop('task-clock') * 1000:.1f}",
            'CPU s/GiB': f'{cpu_s_per_gib:.3f}',
            'syscalls at full speed': ', '.join(
                f"{k.rpartition('_')[2] if 'raw' not in k else 'all'} {v:.2f}"
                for k, v in sorted(per.items()))}


def timed_reps(clients: List[str], port: int, size: int, reps: int, tmp: str,
               tls_dir: str) -> Dict[str, Dict[str, str]]:
    """Medians of `reps` timed uploads each, interleaved (the first client rotating), of the
    measured request's CPU (process time) per GB and its MB/s: timed, so only as good as the
    number of reps on a busy machine."""
    cpu: Dict[str, List[float]] = {client: [] for client in clients}
    speed: Dict[str, List[float]] = {client: [] for client in clients}
    for rep in range(reps):
        for client in clients[rep % len(clients):] + clients[:rep % len(clients)]:
            _, result = run_client(client, port, size, [], tmp, tls_dir)
            cpu[client].append(result['cpu_s'] / size * 1e9)
            speed[client].append(size / result['wall_s'] / 1e6)
    rows = {}
    for client in clients:
        quartiles = statistics.quantiles(cpu[client], n=4) if reps > 1 else cpu[client] * 3
        rows[client] = {
            f'CPU s/GB, median of {reps}': f'{statistics.median(cpu[client]):.3f} '
                                           f'({quartiles[0]:.3f}-{quartiles[2]:.3f})',
            f'MB/s, median of {reps}': f'{statistics.median(speed[client]):,.0f}',
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition('\n\n')[0])
    parser.add_argument('--clients', default='lowhaio,lowhaio-0.0.89,floor')
    parser.add_argument('--sizes', default='8,72',
                        help='two upload sizes in MiB for callgrind (slow: ~50x)')
    parser.add_argument('--timed-sizes', default='64,512',
                        help='two upload sizes in MiB for strace and perf (near full speed)')
    parser.add_argument('--tools', default='callgrind,strace,perf')
    parser.add_argument('--reps', type=int, default=0,
                        help='then this many timed uploads of the larger timed size per client')
    parser.add_argument('--tls', action='store_true', help='upload over TLS')
    parser.add_argument('--tls-sink', metavar='CERT', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tls_sink:
        serve_tls(args.tls_sink)
        return
    sizes = {
        'callgrind': tuple(int(s) * MiB for s in args.sizes.split(',')),
        'strace': tuple(int(s) * MiB for s in args.timed_sizes.split(',')),
    }
    sizes['perf'] = sizes['strace']
    rows: Dict[str, Dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tls_dir = tmp if args.tls else ''
        sink, port = start_sink(tls_dir)
        try:
            for client in args.clients.split(','):
                row = rows.setdefault(client, {})
                if not args.tools:
                    continue
                for tool in args.tools.split(','):  # '' for none
                    row.update(per_chunk(client, port, tool, sizes[tool], tmp,  # type: ignore
                                         tls_dir))
                print(client, row, file=sys.stderr, flush=True)
            if args.reps:
                for client, timed in timed_reps(list(rows), port, sizes['perf'][1], args.reps,
                                                tmp, tls_dir).items():
                    rows[client].update(timed)
        finally:
            sink.terminate()
            sink.wait()
    columns = ['instructions', 'M instr/GiB', 'syscalls', 'syscalls at full speed',
               'task-clock µs', 'CPU s/GiB']
    columns += [f'CPU s/GB, median of {args.reps}', f'MB/s, median of {args.reps}']
    columns = [c for c in columns if any(c in row for row in rows.values())]
    print('| client (per 64 KiB chunk) | ' + ' | '.join(columns) + ' |')
    print('|---' * (len(columns) + 1) + '|')
    for client, row in rows.items():
        print(f'| {client} | ' + ' | '.join(row.get(c, '') for c in columns) + ' |')


if __name__ == '__main__':
    main()
