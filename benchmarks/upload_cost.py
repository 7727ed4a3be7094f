"""Per-chunk cost of the upload workload, counted rather than timed: callgrind instructions,
system calls (strace -c -f) and task-clock (perf stat), each for two upload sizes whose difference
cancels start-up, imports and the warm-up request.

Run with the benchmark's virtualenv (bash benchmarks/run prepares it):

    benchmarks/.venv/bin/python benchmarks/upload_cost.py [--clients lowhaio,lowhaio-0.0.89,floor]
        [--sizes 16,48] [--tools callgrind,strace,perf]

It starts upload_server.py on CPU 0, runs clients.py's `upload` workload (64 KiB chunks from an async
generator, content-length) on CPU 1 with the working tree's lowhaio*.py, and prints a markdown table
of the cost per 64 KiB chunk. Under callgrind the client is ~50x slower than the sink, so the socket
almost always takes each chunk whole: it counts the client's own work per chunk, not waits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHUNK = 64 * 1024
MiB = 1 << 20
CA_FILE = '/etc/ssl/certs/ca-certificates.crt'  # only loaded: the upload is plain HTTP


def start_sink() -> Tuple[subprocess.Popen, int]:
    sink = subprocess.Popen(
        ['taskset', '-c', '0', sys.executable, os.path.join(HERE, 'upload_server.py')],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert sink.stdout is not None
    return sink, int(sink.stdout.readline())


def run_client(client: str, port: int, size: int, wrapper: List[str], tmp: str) -> Tuple[str, dict]:
    spec = {
        'client': client, 'workload': 'upload', 'kind': 'upload', 'n': 1, 'concurrency': 1,
        'ca_file': CA_FILE, 'url': f'http://127.0.0.1:{port}/upload', 'size': size,
        'chunk_size': CHUNK, 'warm_url': f'http://127.0.0.1:{port}/warm', 'warm_expected_len': 1,
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


def per_chunk(client: str, port: int, tool: str, sizes: Tuple[int, int], tmp: str) -> Dict[str, str]:
    """One tool's cost per chunk: the difference between the two sizes, over their chunks."""
    wrapper, parse = TOOLS[tool]
    (err_a, res_a), (err_b, res_b) = (run_client(client, port, size, wrapper, tmp) for size in sizes)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition('\n\n')[0])
    parser.add_argument('--clients', default='lowhaio,lowhaio-0.0.89,floor')
    parser.add_argument('--sizes', default='8,72',
                        help='two upload sizes in MiB for callgrind (slow: ~50x)')
    parser.add_argument('--timed-sizes', default='64,512',
                        help='two upload sizes in MiB for strace and perf, which run near full speed')
    parser.add_argument('--tools', default='callgrind,strace,perf')
    args = parser.parse_args()
    sizes = {
        'callgrind': tuple(int(s) * MiB for s in args.sizes.split(',')),
        'strace': tuple(int(s) * MiB for s in args.timed_sizes.split(',')),
    }
    sizes['perf'] = sizes['strace']
    sink, port = start_sink()
    rows: Dict[str, Dict[str, str]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for client in args.clients.split(','):
                row = rows.setdefault(client, {})
                for tool in args.tools.split(','):
                    row.update(per_chunk(client, port, tool, sizes[tool], tmp))  # type: ignore
                print(client, row, file=sys.stderr, flush=True)
    finally:
        sink.terminate()
        sink.wait()
    columns = ['instructions', 'M instr/GiB', 'syscalls', 'syscalls at full speed',
               'task-clock µs', 'CPU s/GiB']
    print('| client (per 64 KiB chunk) | ' + ' | '.join(columns) + ' |')
    print('|---' * (len(columns) + 1) + '|')
    for client, row in rows.items():
        print(f'| {client} | ' + ' | '.join(row.get(c, '') for c in columns) + ' |')


if __name__ == '__main__':
    main()
