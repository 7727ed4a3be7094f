"""Real servers on loopback for lowhaio's tests, each listening on a port the kernel picks.

Everything here is real: TLS through certificates from one `trustme` CA, DNS through an in-process
UDP server speaking the wire format (via `dnslib`), HTTP through `aiohttp.web`, a raw TCP server
that a test scripts byte by byte, and an nginx subprocess. Nothing binds beyond loopback.

The asynchronous servers start in the running event loop, so they work under both the default
asyncio loop and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import pathlib
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from typing import (
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
)

import aiodnsresolver
import dnslib
import trustme
from aiohttp import web

__all__ = [
    'ca',
    'client_ssl_context',
    'server_ssl_context',
    'server_cert',
    'web_server',
    'WebServer',
    'dns_server',
    'DnsServer',
    'scripted_server',
    'ScriptedServer',
    'Connection',
    'responding',
    'open_fds',
    'wait_for_fds',
    'Nginx',
    'nginx_binary',
]

# One CA for the whole test session: every server certificate is issued by it and every client
# context trusts it, so verification is always on and always meaningful.
ca = trustme.CA()

DEFAULT_SERVER_NAMES = ('localhost', '127.0.0.1', '::1')


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def server_cert(*extra_hostnames: str) -> trustme.LeafCert:
    """A certificate from `ca` for the loopback names plus `extra_hostnames`.

    Cached because issuing means generating a key, which is slow enough to notice per test.
    """
    return ca.issue_cert(*DEFAULT_SERVER_NAMES, *extra_hostnames)


@functools.lru_cache(maxsize=None)
def _client_cert() -> trustme.LeafCert:
    return ca.issue_cert('client.lowhaio.test')


def client_ssl_context(with_client_cert: bool = False) -> ssl.SSLContext:
    """A client context that trusts only `ca`, with hostname verification on.

    With `with_client_cert`, it also presents a certificate issued by `ca`, for servers made with
    `server_ssl_context(require_client_cert=True)`.
    """
    # Not create_default_context: that would also trust the system's CAs
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ca.configure_trust(context)
    if with_client_cert:
        _client_cert().configure_cert(context)
    return context


def server_ssl_context(*extra_hostnames: str, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server context whose certificate covers localhost, 127.0.0.1, ::1 and `extra_hostnames`.

    With `require_client_cert`, the handshake fails unless the client presents a certificate
    issued by `ca` (mutual TLS).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert(*extra_hostnames).configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------

def _host_in_url(host: str) -> str:
    """IPv6 literals must be bracketed in a URL's authority."""
    try:
        is_ipv6 = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        is_ipv6 = False
    return f'[{host}]' if is_ipv6 else host


def _url(scheme: str, host: str, port: int, path: str) -> str:
    if not path.startswith('/'):
        path = '/' + path
    return f'{scheme}://{_host_in_url(host)}:{port}{path}'


# ---------------------------------------------------------------------------------------------
# aiohttp.web server
# ---------------------------------------------------------------------------------------------

class WebServer:
    """A running `aiohttp.web` application: where it listens and how to address it."""

    def __init__(self, host: str, port: int, tls: bool) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.scheme = 'https' if tls else 'http'

    def url(self, path: str = '/') -> str:
        """E.g. 'http://127.0.0.1:PORT/path', or 'https://[::1]:PORT/path'."""
        return _url(self.scheme, self.host, self.port, path)

    def url_for(self, hostname: str, path: str = '/') -> str:
        """The URL with `hostname` in place of the address, e.g. for a name the DNS server knows."""
        return _url(self.scheme, hostname, self.port, path)


@contextlib.asynccontextmanager
async def web_server(
    app: web.Application,
    *,
    host: str = '127.0.0.1',
    port: int = 0,
    tls: bool = False,
    hostnames: Sequence[str] = (),
    ssl_context: Optional[ssl.SSLContext] = None,
) -> AsyncIterator[WebServer]:
    """Serve `app` on `host` in the running loop, on a kernel-chosen port unless `port` is given.

    With `tls`, the certificate is from `ca` and also covers `hostnames`; pass `ssl_context` to
    use another (e.g. one that requires client certificates).
    """
    if tls and ssl_context is None:
        ssl_context = server_ssl_context(*hostnames)
    # A short shutdown timeout: a test that abandons a response must not stall teardown for the
    # default 60 seconds while aiohttp waits for the handler.
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context if tls else None)
        await site.start()
        bound_port = _bound_port(site)
        yield WebServer(host, bound_port, tls)
    finally:
        await runner.cleanup()


def _bound_port(site: web.TCPSite) -> int:
    # aiohttp keeps the asyncio.Server here; it is the only way to the port
    sockets = getattr(site._server, 'sockets', None)
    assert sockets
    return int(sockets[0].getsockname()[1])


# ---------------------------------------------------------------------------------------------
# DNS server
# ---------------------------------------------------------------------------------------------

class DnsServer(asyncio.DatagramProtocol):
    """An authoritative-only DNS server for names a test sets, over UDP on 127.0.0.1.

    Names it was never told about, or told to forget, get NXDOMAIN. It answers with the question
    exactly as asked, since aiodnsresolver randomises the case of names (0x20) and checks it.
    """

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.host = '127.0.0.1'
        self.port = 0
        self.queries: List[Tuple[str, str]] = []
        self.errors: List[BaseException] = []
        self._records: Dict[str, Tuple[Tuple[str, ...], int]] = {}
        self._transport: Optional[asyncio.DatagramTransport] = None

    # -- what tests call ----------------------------------------------------------------------

    def set(self, name: str, addresses: Sequence[str], ttl: Optional[int] = None) -> None:
        """Answer `name` with `addresses`: A records for IPv4 ones, AAAA for IPv6 ones.

        Takes effect for the next query; clients may still use what they cached until the TTL
        of their previous answer runs out.
        """
        for address in addresses:
            ipaddress.ip_address(address)  # fail here, not in the middle of a query
        self._records[_normalise_name(name)] = (
            tuple(addresses), self.ttl if ttl is None else ttl,
        )

    def remove(self, name: str) -> None:
        """From now on, answer NXDOMAIN for `name`."""
        self._records.pop(_normalise_name(name), None)

    def get_dns_resolver(self, **kwargs: object) -> Tuple[Callable, Callable]:
        """A drop-in for `aiodnsresolver.Resolver` that asks only this server.

        Usable as `Pool(get_dns_resolver=dns.get_dns_resolver)`; keyword arguments, such as
        `get_logger_adapter`, are passed through.
        """
        return aiodnsresolver.Resolver(get_nameservers=self._get_nameservers, **kwargs)

    # -- internals ----------------------------------------------------------------------------

    async def _get_nameservers(self, _: object, __: object) -> AsyncIterator[
            Tuple[float, Tuple[str, int]]]:
        for _attempt in range(5):
            yield (0.5, (self.host, self.port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Tuple[str, int]) -> None:
        try:
            reply = self._reply_to(dnslib.DNSRecord.parse(data))
        except Exception as exception:  # a malformed query is a test bug: keep it for asserting
            self.errors.append(exception)
            return
        assert self._transport is not None
        self._transport.sendto(reply.pack(), addr)

    def _reply_to(self, query: dnslib.DNSRecord) -> dnslib.DNSRecord:
        reply = query.reply()  # copies the question byte for byte, so its case is preserved
        for question in query.questions:
            name = _normalise_name(str(question.qname))
            qtype = dnslib.QTYPE.get(question.qtype)
            self.queries.append((name, qtype))
            if name not in self._records:
                reply.header.rcode = dnslib.RCODE.NXDOMAIN
                continue
            addresses, ttl = self._records[name]
            for address in addresses:
                record = _address_record(address, qtype)
                if record is not None:
                    reply.add_answer(
                        dnslib.RR(question.qname, question.qtype, rdata=record, ttl=ttl))
        return reply


def _normalise_name(name: str) -> str:
    return name.rstrip('.').lower()


def _address_record(address: str, qtype: str) -> Optional[dnslib.RD]:
    version = ipaddress.ip_address(address).version
    if qtype == 'A' and version == 4:
        return dnslib.A(address)
    if qtype == 'AAAA' and version == 6:
        return dnslib.AAAA(address)
    return None


@contextlib.asynccontextmanager
async def dns_server(ttl: int = 60) -> AsyncIterator[DnsServer]:
    """Run a `DnsServer` on 127.0.0.1 (UDP, kernel-chosen port) in the running loop."""
    loop = asyncio.get_running_loop()
    server = DnsServer(ttl)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=(server.host, 0))
    server.port = transport.get_extra_info('sockname')[1]
    try:
        yield server
    finally:
        transport.close()


# ---------------------------------------------------------------------------------------------
# Scripted TCP server
# ---------------------------------------------------------------------------------------------

class Connection:
    """One accepted connection of a `scripted_server`, for a handler to script byte by byte."""

    def __init__(self, server: ScriptedServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self.closed = False

    async def read_head(self) -> bytes:
        """Up to and including the first blank line; b'' if the client closed before any byte."""
        head = await self._read_head()
        if head:
            self._server.requests.append(head)
        return head

    async def read_request(self) -> bytes:
        """A whole request: the head plus a content-length or chunked body, as raw bytes.

        Returns b'' if the client closed the connection before sending any byte of it.
        """
        head = await self._read_head()
        if not head:
            return b''
        body = await self._read_body(head)
        self._server.requests.append(head + body)
        return head + body

    async def read(self, n: int) -> bytes:
        """Exactly `n` bytes (raises asyncio.IncompleteReadError on EOF before that)."""
        return await self._reader.readexactly(n)

    async def read_until_eof(self) -> bytes:
        """Everything the client sends until it closes its side."""
        return await self._reader.read()

    def at_eof(self) -> bool:
        """Whether the client has closed its side and everything it sent has been read."""
        return self._reader.at_eof()

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    async def write_slowly(self, data: bytes, chunk_size: int = 1, delay: float = 0.01) -> None:
        """Send `data` a few bytes at a time, so the client sees it arrive in pieces."""
        for start in range(0, len(data), chunk_size):
            self._writer.write(data[start:start + chunk_size])
            await self._writer.drain()
            await asyncio.sleep(delay)

    def close(self) -> None:
        """Close gracefully: what was written is still sent, then a FIN."""
        if not self.closed:
            self.closed = True
            self._writer.close()

    def half_close(self) -> None:
        """Send a FIN but keep the connection open for reading: the client may still send."""
        self._writer.write_eof()

    def reset(self) -> None:
        """Close abortively: the client gets a RST. `await drain()` first to send what was
        written."""
        if self.closed:
            return
        self.closed = True
        sock = self._writer.get_extra_info('socket')
        if sock is not None:
            with contextlib.suppress(OSError):
                # Linger on with a zero timeout makes close() send RST rather than FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        self._writer.transport.abort()

    async def _read_head(self) -> bytes:
        try:
            return await self._reader.readuntil(b'\r\n\r\n')
        except asyncio.IncompleteReadError as exception:
            if exception.partial:
                raise
            return b''

    async def _read_body(self, head: bytes) -> bytes:
        headers = _parse_headers(head)
        if b'chunked' in headers.get(b'transfer-encoding', b'').lower():
            return await self._read_chunked_body()
        length = int(headers.get(b'content-length', b'0'))
        return await self._reader.readexactly(length)

    async def _read_chunked_body(self) -> bytes:
        """The chunked body with its framing, up to and including the trailer's blank line."""
        raw = b''
        while True:
            size_line = await self._reader.readuntil(b'\r\n')
            raw += size_line
            size = int(size_line.split(b';', 1)[0].strip(), 16)
            if size == 0:
                break
            raw += await self._reader.readexactly(size + 2)
        while True:  # trailer fields, then the final blank line
            line = await self._reader.readuntil(b'\r\n')
            raw += line
            if line == b'\r\n':
                return raw


def _parse_headers(head: bytes) -> Dict[bytes, bytes]:
    lines = head.split(b'\r\n')[1:]
    return {
        name.strip().lower(): value.strip()
        for line in lines if b':' in line
        for name, _, value in (line.partition(b':'),)
    }


Handler = Callable[[Connection], Awaitable[None]]


class ScriptedServer:
    """A TCP server whose every connection runs a test's handler."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self.requests: List[bytes] = []
        self.errors: List[BaseException] = []
        # Requests that arrived after a `responding` handler ran out of responses
        self.unanswered: List[bytes] = []
        self._open: List[Connection] = []
        self._tasks: List[asyncio.Task] = []

    def url(self, path: str = '/') -> str:
        return _url('http', self.host, self.port, path)

    def url_for(self, hostname: str, path: str = '/') -> str:
        return _url('http', hostname, self.port, path)


@contextlib.asynccontextmanager
async def scripted_server(handler: Handler, host: str = '127.0.0.1') -> AsyncIterator[
        ScriptedServer]:
    """Run `await handler(conn)` for each connection accepted on `host`, kernel-chosen port.

    Exceptions from the handler land in `server.errors` (assert it is empty). When the handler
    returns, the connection is closed gracefully unless the handler already closed or reset it.
    """
    server = ScriptedServer(host)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        conn = Connection(server, reader, writer)
        server._open.append(conn)
        task = asyncio.current_task()
        assert task is not None
        server._tasks.append(task)
        try:
            await handler(conn)
        except asyncio.CancelledError:
            # Only our own teardown cancels handlers. Ending normally matters: asyncio's stream
            # machinery calls task.exception() on the finished task, which raises if cancelled.
            pass
        except Exception as exception:
            server.errors.append(exception)
        finally:
            conn.close()

    # A generous limit so tests of over-long headers control the length, not the server
    tcp_server = await asyncio.start_server(on_connection, host, 0, limit=2 ** 24)
    server.port = tcp_server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        tcp_server.close()
        for conn in server._open:
            conn.close()
        for task in server._tasks:
            task.cancel()
        await asyncio.gather(*server._tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            # Since 3.12 this waits for connections too; they were closed just above
            await asyncio.wait_for(tcp_server.wait_closed(), 2.0)


def responding(*responses: bytes, then: str = 'keep') -> Handler:
    """A handler that answers each request with the next of `responses`.

    The responses are shared across connections, in order. After each response, `then` says what
    happens to that connection: 'keep' (read the next request), 'close' (FIN) or 'reset' (RST).
    A request arriving once responses have run out is recorded in `server.unanswered`, and its
    connection closed.
    """
    if then not in ('keep', 'close', 'reset'):
        raise ValueError(f'then must be keep, close or reset, not {then!r}')
    remaining = list(responses)

    async def handler(conn: Connection) -> None:
        while True:
            try:
                request = await conn.read_request()
            except ConnectionResetError:
                return  # a client may drop an idle keep-alive connection any way it likes
            if not request:
                return
            if not remaining:
                conn._server.unanswered.append(request)
                return
            conn.write(remaining.pop(0))
            await conn.drain()
            if then == 'close':
                conn.close()
                return
            if then == 'reset':
                conn.reset()
                return

    return handler


# ---------------------------------------------------------------------------------------------
# File descriptors
# ---------------------------------------------------------------------------------------------

def open_fds() -> int:
    """How many file descriptors this process has open (sockets included)."""
    return len(os.listdir('/proc/self/fd'))


async def wait_for_fds(expected: int, timeout: float = 2.0) -> int:
    """Wait until at most `expected` descriptors are open, or `timeout`; return the final count.

    Transports close their sockets a loop iteration or so after being asked to, so a count taken
    straight after `close()` can be one high. Take the baseline once the servers a test needs
    are listening: the first time a uvloop loop listens, libuv reserves a descriptor for good.
    """
    deadline = time.monotonic() + timeout
    count = open_fds()
    while count > expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        count = open_fds()
    return count


# ---------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------

def nginx_binary() -> Optional[str]:
    """Path to nginx, also looking in sbin directories, which are often not on a user's PATH."""
    return shutil.which('nginx') or shutil.which(
        'nginx', path='/usr/sbin:/usr/local/sbin:/sbin:/usr/local/nginx/sbin')


def _free_port() -> int:
    """A port that was free a moment ago: nginx cannot bind port 0, so it needs a number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


_NGINX_CONF = '''\
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    # Keep-alive connections serve any number of requests, so pooling tests see reuse
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    sendfile on;

    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        server_name localhost;
        ssl_certificate {tmp}/server.pem;
        ssl_certificate_key {tmp}/server.pem;

        root {root};

        # The same files, streamed with Transfer-Encoding: chunked: a substitution filter,
        # even one that never matches, means nginx cannot know the length in advance.
        location /chunked/ {{
            alias {root}/;
            sub_filter_types *;
            sub_filter_once off;
            sub_filter '<lowhaio-never-matches>' '';
        }}

        # What nginx understood of the request framing; the body is read and discarded.
        location = /echo {{
            default_type text/plain;
            set $cl $http_content_length;
            set $te $http_transfer_encoding;
            return 200 "$request_method $request_uri content-length=$cl transfer-encoding=$te\\n";
        }}

        # PUT stores the body; GET returns it: an echo through the file system.
        location /dav/ {{
            alias {tmp}/dav/;
            dav_methods PUT DELETE;
            create_full_put_path on;
        }}
    }}
}}
'''


class Nginx:
    """nginx serving `root` over HTTP and HTTPS on 127.0.0.1, as a subprocess.

    Use as a context manager. Tests write files into `root`; `url(path)` and `tls_url(path)` give
    their addresses. `/chunked/<file>` serves the same file with Transfer-Encoding: chunked,
    `/echo` describes the request's framing, and `/dav/<name>` stores a PUT body and serves it back.
    """

    START_ATTEMPTS = 10

    def __init__(self, binary: Optional[str] = None) -> None:
        found = binary or nginx_binary()
        if found is None:
            raise FileNotFoundError('nginx not found on PATH nor in sbin directories')
        self.binary = found
        self.host = '127.0.0.1'
        self.port = 0
        self.tls_port = 0
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._process: Optional[subprocess.Popen] = None

    @property
    def tmp(self) -> pathlib.Path:
        assert self._tmp is not None, 'nginx is not started'
        return pathlib.Path(self._tmp.name)

    @property
    def root(self) -> pathlib.Path:
        """The document root: files written here are served at `url('/name')`."""
        return self.tmp / 'root'

    @property
    def error_log(self) -> str:
        path = self.tmp / 'error.log'
        return path.read_text() if path.exists() else ''

    def url(self, path: str = '/') -> str:
        return _url('http', self.host, self.port, path)

    def tls_url(self, path: str = '/') -> str:
        return _url('https', self.host, self.tls_port, path)

    def __enter__(self) -> Nginx:
        self._tmp = tempfile.TemporaryDirectory(prefix='lowhaio-nginx-')
        self.root.mkdir()
        (self.tmp / 'dav').mkdir()
        server_cert().private_key_and_cert_chain_pem.write_to_path(str(self.tmp / 'server.pem'))
        try:
            self._start_on_free_ports()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._stop()
        assert self._tmp is not None
        self._tmp.cleanup()

    def _start_on_free_ports(self) -> None:
        # Another process can take a port between our probe and nginx's bind: try again then
        for _ in range(self.START_ATTEMPTS):
            self.port, self.tls_port = _free_port(), _free_port()
            if self.port == self.tls_port:
                continue
            self._write_config()
            if self._start():
                return
        raise RuntimeError(f'nginx failed to start:\n{self.error_log}')

    def _write_config(self) -> None:
        (self.tmp / 'nginx.conf').write_text(_NGINX_CONF.format(
            # nginx run as root would otherwise switch its workers to "nobody", who cannot read
            # the temporary directory
            user='user root;' if os.geteuid() == 0 else '',
            tmp=self.tmp, root=self.root, port=self.port, tls_port=self.tls_port,
        ))

    def _start(self) -> bool:
        error_log = self.tmp / 'error.log'
        if error_log.exists():
            error_log.unlink()
        self._process = subprocess.Popen(
            [self.binary, '-p', str(self.tmp), '-e', str(error_log),
             '-c', str(self.tmp / 'nginx.conf'), '-g', 'daemon off;'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # most likely a port was taken
            if _accepting(self.host, self.port) and _accepting(self.host, self.tls_port):
                return True
            time.sleep(0.02)
        self._stop()
        return False

    def _stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False

