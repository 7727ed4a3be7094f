"""The network failing in every way (issue 14): each phase of a request x each kind of fault.

Everything happens inside a network namespace this module creates (`ip netns add`) and enters
(setns on the test thread), on its loopback interface: faults are nftables rules added and
removed around each case, so no packet can leave the machine and nothing on the host changes.
The server is a child process (so that it can be SIGKILLed and restarted) that pauses at the
phase under test until the fault is in place.

For each (phase, fault) the test checks what users rely on:
- the request fails only with an HttpError, and when nothing was sent (DNS, connect, TLS) with
  an HttpConnectionError, which says a retry is safe; once the head has started to leave, with
  an HttpDataError, which does not;
- it fails by the configured deadline (plus a generous margin for a loaded machine), never hangs;
- once the fault is removed the same pool serves the next request, correctly;
- afterwards no descriptor, task or pooled connection is left over.

Needs root (namespaces, nftables). Where that is impossible it skips, saying why; run as root it
fails loudly if the namespace cannot be made. Set LOWHAIO_FAULT_TABLE=path to have each case's
outcome appended there as a JSON line (scripts/fault-table turns them into the README's table).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from typing import Any, AsyncIterator, Awaitable, Iterator, List, Optional, Tuple

import dnslib
import pytest

import lowhaio
import support

DEADLINE = 1.0  # connect_timeout, socket_timeout and response_head_timeout of every pool here
MARGIN = 4.0  # a shared, loaded machine may be slow to notice a deadline; never to ignore one
RESPONSE_BODY = bytes(range(256)) * 800  # 200 KiB: the server can pause half way through it
BIG_HEADER = b'h' * 1_000_000  # larger than the socket buffers: sending the head takes a while
REQUEST_BODY_CHUNK = b'b' * 65536
REQUEST_BODY_CHUNKS = 32
SMALL_BUFFER = 8192
NFT_TABLE = 'lowhaio_faults'
DNS_NAME = 'faults.lowhaio.test'

PHASES = ['dns', 'connect', 'tls', 'sending head', 'sending body', 'waiting for head',
          'reading body', 'idle in pool']
FAULTS = ['black hole to server', 'black hole to client', 'black hole both ways', 'reset',
          'server killed', 'half-close']
DNS_FAULTS = ['dns silent', 'dns servfail']
# A half-close needs a connection: there is none to half-close while connecting
CASES = [('dns', fault) for fault in DNS_FAULTS] + \
    [(phase, fault) for phase in PHASES[1:] for fault in FAULTS
     if (phase, fault) != ('connect', 'half-close')]
NOTHING_SENT = ('dns', 'connect', 'tls')

# Where the server pauses (and says so on stdout) for each phase, so the fault can be put in
# place at exactly that point; for DNS and connect, the fault is in place before the request.
SERVER_PAUSES = {
    'dns': 'never', 'connect': 'never', 'tls': 'accepted', 'sending head': 'head started',
    'sending body': 'body started', 'waiting for head': 'request read',
    'reading body': 'half the body sent', 'idle in pool': 'response sent',
}

SERVER_SCRIPT = textwrap.dedent('''
    import socket, ssl, sys, threading
    port, pause_at, tls, cert = int(sys.argv[1]), sys.argv[2], sys.argv[3] == '1', sys.argv[4]
    body = bytes(range(256)) * 800
    commands, paused = [], threading.Event()
    command_ready = threading.Condition()

    def pause(point):
        # Only the first request pauses: the one after the fault (the recovery) runs through
        if point != pause_at or paused.is_set():
            return None
        paused.set()
        print(point, flush=True)
        with command_ready:
            command_ready.wait_for(lambda: commands)
            return commands.pop(0)

    def obey(conn, command):
        if command == 'halfclose':
            conn.shutdown(socket.SHUT_WR)
            print('half-closed', flush=True)
            while conn.recv(65536):  # keeps reading, as the half-close fault says
                pass
            raise EOFError

    def read_request(conn, buffered):
        while b'\\r\\n\\r\\n' not in buffered:
            data = conn.recv(1024)
            if not data:
                raise EOFError
            buffered += data
            if len(buffered) >= 1024:
                obey(conn, pause('head started'))
        head, _, rest = buffered.partition(b'\\r\\n\\r\\n')
        length = 0
        for line in head.split(b'\\r\\n')[1:]:
            name, _, value = line.partition(b':')
            if name.strip().lower() == b'content-length':
                length = int(value)
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                raise EOFError
            rest += data
            obey(conn, pause('body started'))
        return rest[length:]

    def serve(conn):
        try:
            obey(conn, pause('accepted'))
            if tls:
                conn = context.wrap_socket(conn, server_side=True)
            buffered = b''
            while True:
                buffered = read_request(conn, buffered)
                obey(conn, pause('request read'))
                conn.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n' % len(body))
                conn.sendall(body[:len(body) // 2])
                obey(conn, pause('half the body sent'))
                conn.sendall(body[len(body) // 2:])
                obey(conn, pause('response sent'))
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    listener.bind(('127.0.0.1', port))
    listener.listen(64)
    print('listening %d' % listener.getsockname()[1], flush=True)

    def accept_forever():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    for line in sys.stdin:
        with command_ready:
            commands.append(line.strip())
            command_ready.notify_all()
''').replace('RECEIVE_BUFFER', str(SMALL_BUFFER))


# ---------------------------------------------------------------------------------------------
# The namespace, nftables and the server process
# ---------------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, 'setns: ' + os.strerror(error))


def _skip_unless_possible() -> None:
    if sys.platform != 'linux':
        pytest.skip('network namespaces are Linux-only')
    if os.geteuid() != 0:
        pytest.skip('fault injection needs root (network namespaces and nftables)')
    # As root, a missing tool is a broken set-up (scripts/test installs them): fail, not skip
    for tool in ('ip', 'nft'):
        assert shutil.which(tool) or shutil.which(tool, path='/usr/sbin:/sbin'), \
            f'{tool} is missing: scripts/test installs iproute2 and nftables'


@pytest.fixture(scope='module')
def network_namespace() -> Iterator[str]:
    """A fresh network namespace with loopback up, entered by this thread for the module."""
    _skip_unless_possible()
    name = f'lowhaio-faults-{os.getpid()}'
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    original = os.open('/proc/self/ns/net', os.O_RDONLY)
    try:
        inside = os.open(f'/run/netns/{name}', os.O_RDONLY)
        try:
            _setns(inside)
        finally:
            os.close(inside)
        try:
            subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
            yield name
        finally:
            _setns(original)
    finally:
        os.close(original)
        subprocess.run(['ip', 'netns', 'del', name], check=False)


def nft_rules(rules: List[str]) -> None:
    """Replace this module's nftables table with one dropping or rejecting as `rules` say.

    Rules sit on the input hook: on loopback every packet passes it once, whichever way it goes,
    and a packet dropped there has left its sender, which cannot tell (on the output hook,
    sendto would fail at once with EPERM: not a black hole).
    """
    remove_nft_rules()
    text = 'table inet %s {\n chain in {\n  type filter hook input priority 0; ' \
        'policy accept;\n%s\n }\n}\n' % (NFT_TABLE, '\n'.join('  ' + rule for rule in rules))
    subprocess.run(['nft', '-f', '-'], input=text.encode(), check=True)


def remove_nft_rules() -> None:
    subprocess.run(['nft', 'delete', 'table', 'inet', NFT_TABLE], check=False,
                   stderr=subprocess.DEVNULL)


def rules_for(fault: str, port: int, dns_port: int) -> List[str]:
    to_server, to_client = f'tcp dport {port}', f'tcp sport {port}'
    return {
        'black hole to server': [f'{to_server} drop'],
        'black hole to client': [f'{to_client} drop'],
        'black hole both ways': [f'{to_server} drop', f'{to_client} drop'],
        'reset': [f'{to_server} reject with tcp reset'],
        'dns silent': [f'udp dport {dns_port} drop'],
    }.get(fault, [])


class ServerProcess:
    """The child-process server: started, paused at a phase, commanded, killed, restarted."""

    def __init__(self, pause_at: str, tls: bool, cert_path: str) -> None:
        self.pause_at = pause_at
        self.tls = tls
        self.cert_path = cert_path
        self.port = 0
        self.process: Optional[asyncio.subprocess.Process] = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, '-c', SERVER_SCRIPT, str(self.port), self.pause_at,
            '1' if self.tls else '0', self.cert_path,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await self.next_line()
        assert line.startswith('listening '), line
        self.port = int(line.split()[1])

    async def next_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        return (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().strip()

    async def command(self, command: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(command.encode() + b'\n')
        await self.process.stdin.drain()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()

    @property
    def scheme(self) -> str:
        return 'https' if self.tls else 'http'


@contextlib.asynccontextmanager
async def server_process(pause_at: str, tls: bool) -> AsyncIterator[ServerProcess]:
    with tempfile.TemporaryDirectory() as directory:
        cert_path = str(pathlib.Path(directory) / 'server.pem')
        support.server_cert().private_key_and_cert_chain_pem.write_to_path(cert_path)
        server = ServerProcess(pause_at, tls, cert_path)
        await server.start()
        try:
            yield server
        finally:
            await server.kill()


class FaultyDnsServer(support.DnsServer):
    """The test DNS server, able to answer SERVFAIL to everything while `failing` is set."""

    def __init__(self, ttl: int) -> None:
        super().__init__(ttl)
        self.failing = False

    def _reply_to(self, query: dnslib.DNSRecord) -> dnslib.DNSRecord:
        if not self.failing:
            return super()._reply_to(query)
        reply = query.reply()
        reply.header.rcode = dnslib.RCODE.SERVFAIL
        return reply


@contextlib.asynccontextmanager
async def faulty_dns_server() -> AsyncIterator[FaultyDnsServer]:
    loop = asyncio.get_running_loop()
    server = FaultyDnsServer(ttl=0)  # nothing cached: every request asks again
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=('127.0.0.1', 0))
    server.port = transport.get_extra_info('sockname')[1]
    try:
        yield server
    finally:
        transport.close()


def small_buffer_sock(family: int = socket.AF_INET) -> socket.socket:
    """lowhaio's socket with a small send buffer, so that a large head or body takes a while."""
    sock = lowhaio.get_nonblocking_sock(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    return sock


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

async def request_body() -> AsyncIterator[bytes]:
    for _ in range(REQUEST_BODY_CHUNKS):
        yield REQUEST_BODY_CHUNK


def request_arguments(phase: str) -> Tuple[Tuple[Tuple[bytes, bytes], ...], dict]:
    if phase == 'sending head':
        return ((b'x-big', BIG_HEADER),), {}
    if phase == 'sending body':
        length = b'%d' % (len(REQUEST_BODY_CHUNK) * REQUEST_BODY_CHUNKS)
        return ((b'content-length', length),), {'body': request_body}
    return (), {}


async def fetch(request: Any, url: str, phase: str) -> bytes:
    headers, extra = request_arguments(phase)
    method = b'POST' if phase == 'sending body' else b'GET'
    code, _, body = await request(method, url, headers=headers, **extra)
    assert code == b'200'
    return await lowhaio.buffered(body)


async def apply_fault(fault: str, server: ServerProcess, dns: FaultyDnsServer) -> None:
    if fault == 'server killed':
        await server.kill()
    elif fault == 'half-close':
        await server.command('halfclose')
        assert await server.next_line() == 'half-closed'  # the FIN is on its way
    elif fault == 'dns servfail':
        dns.failing = True
    else:
        nft_rules(rules_for(fault, server.port, dns.port))


async def remove_fault(fault: str, server: ServerProcess, dns: FaultyDnsServer) -> None:
    remove_nft_rules()
    dns.failing = False
    if fault == 'server killed':
        server.pause_at = 'never'  # the fault happened: the restarted server just serves
        await server.start()  # on the same port: SO_REUSEADDR


async def run_case(phase: str, fault: str, loop_name: str) -> dict:
    tls = phase == 'tls'
    async with faulty_dns_server() as dns, server_process(SERVER_PAUSES[phase], tls) as server:
        dns.set(DNS_NAME, ['127.0.0.1'])
        host = DNS_NAME if phase == 'dns' else '127.0.0.1'
        url = f'{server.scheme}://{host}:{server.port}/'
        fds_before = support.open_fds()
        request, close = lowhaio.Pool(
            get_dns_resolver=dns.get_dns_resolver, get_sock=small_buffer_sock,
            get_ssl_context=support.client_ssl_context, connect_timeout=DEADLINE,
            socket_timeout=DEADLINE, response_head_timeout=DEADLINE)
        try:
            if phase == 'idle in pool':
                assert await fetch(request, url, phase) == RESPONSE_BODY
                assert await server.next_line() == SERVER_PAUSES[phase]
                await apply_fault(fault, server, dns)
                if fault == 'server killed':
                    await remove_fault(fault, server, dns)  # restarted before the next request
                elif fault != 'half-close':
                    await server.command('go')
                outcome = await timed(fetch(request, url, phase))
            elif SERVER_PAUSES[phase] == 'never':
                await apply_fault(fault, server, dns)  # before the request starts
                outcome = await timed(fetch(request, url, phase))
            else:
                outcome = await timed(fetch_with_fault_at_pause(
                    request, url, phase, fault, server, dns))
            if fault != 'server killed' or phase != 'idle in pool':
                await remove_fault(fault, server, dns)
            recovered = await asyncio.wait_for(fetch(request, url, 'recovery'), 30)
            assert recovered == RESPONSE_BODY
            in_use = sum(counts['in_use'] for counts in request.status().values())
            waiting = sum(counts['waiting'] for counts in request.status().values())
        finally:
            remove_nft_rules()
            await close()
        fds_after = await support.wait_for_fds(fds_before)
        tasks_left = await tasks_left_after(0.5)
    return {'phase': phase, 'fault': fault, 'loop': loop_name, **outcome,
            'fds_leaked': fds_after - fds_before, 'tasks_left': tasks_left,
            'in_use_after': in_use, 'waiting_after': waiting}


async def fetch_with_fault_at_pause(request: Any, url: str, phase: str, fault: str,
                                    server: ServerProcess, dns: FaultyDnsServer) -> bytes:
    fetching = asyncio.ensure_future(fetch(request, url, phase))
    try:
        paused = asyncio.ensure_future(server.next_line())
        await asyncio.wait([fetching, paused], return_when=asyncio.FIRST_COMPLETED)
        if not paused.done():
            paused.cancel()
            return await fetching  # finished (or failed) before the server paused
        assert paused.result() == SERVER_PAUSES[phase]
        await apply_fault(fault, server, dns)
        if fault not in ('server killed', 'half-close'):
            await server.command('go')  # the server carries on, into the fault
        return await fetching
    finally:
        if not fetching.done():
            fetching.cancel()


async def timed(fetching: Awaitable[bytes]) -> dict:
    started = time.monotonic()
    try:
        body = await asyncio.wait_for(fetching, DEADLINE + MARGIN + 30)
    except lowhaio.HttpError as error:
        return {'outcome': type(error).__name__, 'retry_safe':
                isinstance(error, lowhaio.HttpConnectionError),
                'is_http_error': True, 'seconds': time.monotonic() - started,
                'cause': type(error.__cause__).__name__ if error.__cause__ else ''}
    except Exception as error:  # recorded, and failed on below: only HttpError is allowed
        return {'outcome': type(error).__name__, 'retry_safe': False, 'is_http_error': False,
                'seconds': time.monotonic() - started, 'cause': traceback.format_exc()}
    assert body == RESPONSE_BODY
    return {'outcome': 'succeeded', 'retry_safe': None, 'is_http_error': True,
            'seconds': time.monotonic() - started, 'cause': ''}


async def tasks_left_after(grace: float) -> int:
    deadline = time.monotonic() + grace
    while True:
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if not others or time.monotonic() > deadline:
            return len(others)
        await asyncio.sleep(0.02)


def record(result: dict) -> None:
    path = os.environ.get('LOWHAIO_FAULT_TABLE')
    if path:
        with open(path, 'a') as table:
            table.write(json.dumps(result) + '\n')


# ---------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------

def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split('.')[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(('phase', 'fault'), CASES, ids=[f'{p}-{f}' for p, f in CASES])
async def test_fault_fails_cleanly_in_time_and_the_pool_recovers(
        network_namespace: str, phase: str, fault: str) -> None:
    result = await run_case(phase, fault, loop_name())
    record(result)
    assert result['is_http_error'], result  # only HttpError subclasses, never anything else
    if result['outcome'] != 'succeeded':
        # The deadline is kept: a timeout fires by it, other failures are seen sooner
        assert result['seconds'] < DEADLINE + MARGIN, result
        if (phase, fault) in HANDSHAKE_DONE_FIRST:
            # Whether the client's side of the handshake completed before the fault depends
            # on timing: either way the error must say so (a TLS error: nothing was sent)
            assert result['retry_safe'] == (result['outcome'] == 'HttpTlsError'), result
        elif phase in NOTHING_SENT:
            assert result['retry_safe'], result  # nothing was sent: retrying is safe
        elif phase != 'idle in pool':
            assert not result['retry_safe'], result  # the request may have been processed
    else:
        # A request that got through got the right bytes (timed() checks them); no request
        # can get through a fault that stops every byte of the response
        assert fault not in RESPONSE_STOPPED or phase == 'idle in pool', result
    assert result['fds_leaked'] <= 0, result
    assert result['tasks_left'] == 0, result
    assert result['in_use_after'] == 0 and result['waiting_after'] == 0, result


# In TLS 1.3 the client's side of the handshake is complete once the server's Finished
# arrives; only the packets to the server being lost, the client usually goes on to send its
# request, and then rightly reports that it may have been received (HttpDataError). When the
# fault comes before the server's Finished, the handshake fails instead (HttpTlsError).
HANDSHAKE_DONE_FIRST = {('tls', 'black hole to server'), ('tls', 'reset')}
RESPONSE_STOPPED = ('black hole to client', 'black hole both ways', 'server killed',
                    'dns silent', 'dns servfail')
