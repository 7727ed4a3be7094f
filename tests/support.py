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
import itertools
import os
import pathlib
import pwd
import select
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

import aiodnsresolver
import dnslib
import trustme
from aiohttp import web

import lowhaio

__all__ = [
    'ca',
    'client_ssl_context',
    'server_ssl_context',
    'server_cert',
    'web_server',
    'WebServer',
    'dns_server',
    'DnsServer',
    'DnsReply',
    'DnsAnswerSent',
    'dns_addresses',
    'DNS_NODATA',
    'DNS_NXDOMAIN',
    'DNS_SERVFAIL',
    'DNS_SILENT',
    'Dnsmasq',
    'dnsmasq_binary',
    'scripted_server',
    'ScriptedServer',
    'assert_no_connection_was_reused',
    'Connection',
    'responding',
    'black_hole',
    'open_fds',
    'wait_for_fds',
    'Nginx',
    'nginx_binary',
    'proxy_binary',
    'ProxyServer',
    'Tinyproxy',
    'Squid',
    'Microsocks',
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

class DnsReply(NamedTuple):
    """How a `DnsServer` answers one name for one record type: see `DnsServer.set_reply`.

    Build one with `dns_addresses(...)` or start from `DNS_NODATA`, `DNS_NXDOMAIN`,
    `DNS_SERVFAIL` or `DNS_SILENT`; `.after(seconds)` delays it.
    """

    rcode: str = 'NOERROR'  # a dnslib.RCODE name: NOERROR, NXDOMAIN, SERVFAIL, REFUSED...
    addresses: Tuple[str, ...] = ()  # records of the asked type; none with NOERROR is NODATA
    ttl: Optional[int] = None  # None: the server's default
    delay: float = 0.0  # seconds between the query and the answer
    silent: bool = False  # never answer at all

    def after(self, delay: float) -> DnsReply:
        """The same reply, sent `delay` seconds after the query arrives."""
        return self._replace(delay=delay)


def dns_addresses(*addresses: str, ttl: Optional[int] = None) -> DnsReply:
    """A positive answer: one record per address, all of the asked type."""
    for address in addresses:
        ipaddress.ip_address(address)  # fail here, not in the middle of a query
    return DnsReply(addresses=tuple(addresses), ttl=ttl)


DNS_NODATA = DnsReply()  # NOERROR with an empty answer section: the name has no such record
DNS_NXDOMAIN = DnsReply(rcode='NXDOMAIN')
DNS_SERVFAIL = DnsReply(rcode='SERVFAIL')
DNS_SILENT = DnsReply(silent=True)

# RFC 1035 §4.2.1: a UDP message is at most 512 bytes; longer answers are cut and marked TC.
_UDP_LIMIT = 512
_MAX_CNAME_HOPS = 32


class DnsAnswerSent(NamedTuple):
    """One answer a `DnsServer` sent: loop times of the query and of the answer."""
    asked_at: float
    sent_at: float
    name: str
    qtype: str


class _Answer(NamedTuple):
    rcode: str
    records: Tuple[dnslib.RR, ...]
    delay: float
    silent: bool


class DnsServer(asyncio.DatagramProtocol):
    """An authoritative-only DNS server for names a test sets, over UDP on 127.0.0.1.

    Names it was never told about, or told to forget, get NXDOMAIN. It answers with the question
    exactly as asked, since aiodnsresolver randomises the case of names (0x20) and checks it.

    `set` gives a name its addresses; `set_reply` scripts one record type of a name on its own
    (addresses, NODATA, NXDOMAIN, SERVFAIL or silence, each after a delay); `set_cname` makes a
    name an alias. Delays run on the event loop's timers, so the server never blocks the loop
    and answers other queries meanwhile.
    """

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.host = '127.0.0.1'
        self.port = 0
        self.queries: List[Tuple[str, str]] = []
        # Every answer sent, with when it was asked and when sent, for ordering assertions
        self.answered: List[DnsAnswerSent] = []
        self.errors: List[BaseException] = []
        # How the resolver from get_dns_resolver asks: this many attempts, each given this long
        self.attempts = 5
        self.attempt_timeout = 0.5
        self._records: Dict[str, Tuple[Tuple[str, ...], int]] = {}
        self._replies: Dict[Tuple[str, str], DnsReply] = {}
        self._cnames: Dict[str, Tuple[str, int, bool]] = {}
        self._ignored: set = set()
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._delayed: Dict[int, asyncio.TimerHandle] = {}  # answers not sent yet
        self._serials = itertools.count()

    # -- what tests call ----------------------------------------------------------------------

    def set(self, name: str, addresses: Sequence[str], ttl: Optional[int] = None) -> None:
        """Answer `name` with `addresses`: A records for IPv4 ones, AAAA for IPv6 ones.

        Takes effect for the next query; clients may still use what they cached until the TTL
        of their previous answer runs out. A reply set with `set_reply` for one type of the
        name takes precedence for that type.
        """
        for address in addresses:
            ipaddress.ip_address(address)  # fail here, not in the middle of a query
        self._records[_normalise_name(name)] = (
            tuple(addresses), self.ttl if ttl is None else ttl,
        )

    def set_reply(self, name: str, qtype: str, reply: DnsReply) -> None:
        """Answer queries of type `qtype` ('A', 'AAAA'...) for `name` as `reply` says.

        Each type of a name is scripted independently, so a test can have the A lookup answer
        at once while the AAAA one fails late, or never comes back.
        """
        self._replies[(_normalise_name(name), qtype.upper())] = reply

    def set_cname(self, name: str, target: str, ttl: Optional[int] = None,
                  include_target: bool = True) -> None:
        """Make `name` an alias of `target`, for every record type.

        With `include_target`, the answer carries the whole chain and the target's records of
        the asked type, with the target's response code and delay, as a recursive resolver
        gives them; without, only the CNAME record, so the client asks again for the target.
        """
        self._cnames[_normalise_name(name)] = (
            _normalise_name(target), self.ttl if ttl is None else ttl, include_target)

    def remove(self, name: str) -> None:
        """From now on, answer NXDOMAIN for `name`."""
        name = _normalise_name(name)
        self._records.pop(name, None)
        self._cnames.pop(name, None)
        for key in [key for key in self._replies if key[0] == name]:
            del self._replies[key]

    def queries_for(self, name: str) -> List[str]:
        """The types asked for `name`, in the order the queries arrived."""
        name = _normalise_name(name)
        return [qtype for queried, qtype in self.queries if queried == name]

    def ignore(self, name: str) -> None:
        """From now on, never answer a query for `name` (it is still recorded in `queries`):
        a DNS server that has gone silent, for tests of deadlines during resolution."""
        self._ignored.add(_normalise_name(name))

    def get_dns_resolver(self, **kwargs: object) -> Tuple[Callable, Callable]:
        """A drop-in for `aiodnsresolver.Resolver` that asks only this server.

        Usable as `Pool(get_dns_resolver=dns.get_dns_resolver)`; keyword arguments, such as
        `get_logger_adapter`, are passed through.
        """
        return aiodnsresolver.Resolver(get_nameservers=self._get_nameservers, **kwargs)

    # -- internals ----------------------------------------------------------------------------

    async def _get_nameservers(self, _: object, __: object) -> AsyncIterator[
            Tuple[float, Tuple[str, int]]]:
        for _attempt in range(self.attempts):
            yield (self.attempt_timeout, (self.host, self.port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Tuple[str, int]) -> None:
        try:
            query = dnslib.DNSRecord.parse(data)
            reply, delay, silent = self._reply_to(query)
        except Exception as exception:  # a malformed query is a test bug: keep it for asserting
            self.errors.append(exception)
            return
        if silent or any(_normalise_name(str(question.qname)) in self._ignored
                         for question in query.questions):
            return
        now = asyncio.get_running_loop().time()
        asked = [DnsAnswerSent(now, now, _normalise_name(str(q.qname)), dnslib.QTYPE.get(q.qtype))
                 for q in query.questions]
        packed = _packed_within_udp_limit(reply)
        if delay > 0:
            serial = next(self._serials)
            self._delayed[serial] = asyncio.get_running_loop().call_later(
                delay, self._send_delayed, serial, packed, addr, asked)
        else:
            self._send(packed, addr, asked)

    def _send_delayed(self, serial: int, packed: bytes, addr: Tuple[str, int],
                      asked: List[DnsAnswerSent]) -> None:
        del self._delayed[serial]
        self._send(packed, addr, asked)

    def _send(self, packed: bytes, addr: Tuple[str, int], asked: List[DnsAnswerSent]) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._transport.sendto(packed, addr)
        now = asyncio.get_running_loop().time()
        self.answered.extend(answer._replace(sent_at=now) for answer in asked)

    def _cancel_delayed(self) -> None:
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()

    def _reply_to(self, query: dnslib.DNSRecord) -> Tuple[dnslib.DNSRecord, float, bool]:
        reply = query.reply()  # copies the question byte for byte, so its case is preserved
        delay, silent = 0.0, False
        for question in query.questions:
            name = _normalise_name(str(question.qname))
            qtype = dnslib.QTYPE.get(question.qtype)
            self.queries.append((name, qtype))
            answer = self._answer(question.qname, name, qtype, question.qtype)
            reply.header.rcode = getattr(dnslib.RCODE, answer.rcode)
            for record in answer.records:
                reply.add_answer(record)
            delay, silent = max(delay, answer.delay), silent or answer.silent
        return reply, delay, silent

    def _answer(self, qname: dnslib.DNSLabel, name: str, qtype: str, qtype_code: int,
                hops: int = 0) -> _Answer:
        """What this server knows of (name, type): its records, response code and delay."""
        reply = self._replies.get((name, qtype))
        if reply is not None:
            ttl = self.ttl if reply.ttl is None else reply.ttl
            records = tuple(
                dnslib.RR(qname, qtype_code, rdata=record, ttl=ttl)
                for record in (_address_record(address, qtype) for address in reply.addresses)
                if record is not None)
            return _Answer(reply.rcode, records, reply.delay, reply.silent)
        if name in self._cnames:
            if hops >= _MAX_CNAME_HOPS:  # a loop: what recursive resolvers answer then
                return _Answer('SERVFAIL', (), 0.0, False)
            target, ttl, include_target = self._cnames[name]
            alias = dnslib.RR(qname, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target + '.'),
                              ttl=ttl)
            if not include_target:
                return _Answer('NOERROR', (alias,), 0.0, False)
            rest = self._answer(dnslib.DNSLabel(target + '.'), target, qtype, qtype_code,
                                hops + 1)
            return rest._replace(records=(alias,) + rest.records)
        if name not in self._records:
            return _Answer('NXDOMAIN', (), 0.0, False)
        addresses, ttl = self._records[name]
        records = tuple(
            dnslib.RR(qname, qtype_code, rdata=record, ttl=ttl)
            for record in (_address_record(address, qtype) for address in addresses)
            if record is not None)
        return _Answer('NOERROR', records, 0.0, False)


def _packed_within_udp_limit(reply: dnslib.DNSRecord) -> bytes:
    packed = reply.pack()
    while len(packed) > _UDP_LIMIT and reply.rr:
        reply.rr.pop()
        reply.header.tc = 1
        packed = reply.pack()
    return packed


def _normalise_name(name: str) -> str:
    return name.rstrip('.').lower()


def _address_record(address: str, qtype: str) -> Optional[dnslib.RD]:
    parsed = ipaddress.ip_address(address)
    if qtype == 'A' and parsed.version == 4:
        return dnslib.A(address)
    if qtype == 'AAAA' and parsed.version == 6:
        # As 16 bytes: dnslib's own parser does not read every IPv6 notation (::ffff:1.2.3.4)
        return dnslib.AAAA(tuple(parsed.packed))
    return None


@contextlib.asynccontextmanager
async def dns_server(ttl: int = 60, own_thread: bool = False) -> AsyncIterator[DnsServer]:
    """Run a `DnsServer` on 127.0.0.1 (UDP, kernel-chosen port) in the running loop.

    With `own_thread`, it runs on an event loop of its own in a thread instead, so that it
    answers on time however busy the test's loop is: asyncio reads one datagram per loop
    iteration, so hundreds of queries at once would queue behind the test's own work. Its
    loop's time is the same monotonic clock as the test's loop (asyncio's and uvloop's alike).
    """
    if own_thread:
        with _dns_server_in_thread(ttl) as server:
            yield server
        return
    loop = asyncio.get_running_loop()
    server = DnsServer(ttl)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=(server.host, 0))
    server.port = transport.get_extra_info('sockname')[1]
    try:
        yield server
    finally:
        server._cancel_delayed()
        transport.close()


@contextlib.contextmanager
def _dns_server_in_thread(ttl: int) -> Iterator[DnsServer]:
    server = DnsServer(ttl)
    loop = asyncio.new_event_loop()
    started: List[asyncio.DatagramTransport] = []
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(
                lambda: server, local_addr=(server.host, 0)))
            server.port = transport.get_extra_info('sockname')[1]
            started.append(transport)
        finally:
            ready.set()
        loop.run_forever()
        server._cancel_delayed()
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))  # the transport closes its socket
        loop.close()

    thread = threading.Thread(target=serve, name='dns-server', daemon=True)
    thread.start()
    ready.wait(10)
    if not started:
        thread.join(10)
        raise RuntimeError('the DNS server thread failed to start')
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


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

    async def read_some(self, n: int = 65536) -> bytes:
        """Up to `n` bytes, as soon as there are any; b'' once the client has closed its side."""
        return await self._reader.read(n)

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

    async def write_in_turn(self, pieces: Sequence[bytes], delay: float = 0.02) -> None:
        """Write each of `pieces`, `delay` seconds apart, so that the client gets them apart."""
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(delay)
            self._writer.write(piece)
            await self._writer.drain()

    async def write_slowly(self, data: bytes, chunk_size: int = 1, delay: float = 0.01) -> None:
        """Send `data` a few bytes at a time, so the client sees it arrive in pieces."""
        for start in range(0, len(data), chunk_size):
            self._writer.write(data[start:start + chunk_size])
            await self._writer.drain()
            await asyncio.sleep(delay)

    async def relay_to(self, host: str, port: int) -> None:
        """Pipe bytes both ways between this connection and a new one to host:port, until
        either side closes: what a proxy does once its tunnel is open."""
        reader, writer = await asyncio.open_connection(host, port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    data = await source.read(65536)
                    if not data:
                        break
                    sink.write(data)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(pipe(self._reader, writer), pipe(reader, self._writer))
        finally:
            writer.close()

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

    def __init__(self, host: str, tls: bool = False) -> None:
        self.host = host
        self.scheme = 'https' if tls else 'http'
        self.port = 0
        self.connections = 0
        self.requests: List[bytes] = []
        self.errors: List[BaseException] = []
        # Requests that arrived after a `responding` handler ran out of responses
        self.unanswered: List[bytes] = []
        self._open: List[Connection] = []
        self._tasks: List[asyncio.Task] = []

    def url(self, path: str = '/') -> str:
        return _url(self.scheme, self.host, self.port, path)

    def url_for(self, hostname: str, path: str = '/') -> str:
        return _url(self.scheme, hostname, self.port, path)


def answering_with(response: bytes) -> Handler:
    """A scripted server's handler that answers every request on a connection with the same
    bytes, until the client closes it."""
    async def answer(conn: Connection) -> None:
        while await conn.read_request():
            conn.write(response)
            await conn.drain()
    return answer


async def assert_no_connection_was_reused(request: Any, server: ScriptedServer,
                                          refused: int) -> None:
    """A GET after `refused` refused requests, each on a connection of its own, takes a new
    one: the server answers it with 200 and 'ok' (as OK in the tests that use this)."""
    code, _, response = await request(b'GET', server.url('/'))
    assert (code, await lowhaio.buffered(response)) == (b'200', b'ok')
    assert server.connections == refused + 1


@contextlib.asynccontextmanager
async def scripted_server(handler: Handler, host: str = '127.0.0.1',
                          tls: bool = False) -> AsyncIterator[ScriptedServer]:
    """Run `await handler(conn)` for each connection accepted on `host`, kernel-chosen port;
    with `tls`, behind asyncio's TLS with a certificate from `ca` (https:// URLs).

    Exceptions from the handler land in `server.errors` (assert it is empty). When the handler
    returns, the connection is closed gracefully unless the handler already closed or reset it.
    """
    server = ScriptedServer(host, tls)

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
    tcp_server = await asyncio.start_server(on_connection, host, 0, limit=2 ** 24,
                                            ssl=server_ssl_context() if tls else None)
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
# A black hole
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def black_hole(host: str = '127.0.0.1') -> Iterator[int]:
    """A port on `host` where connection attempts neither succeed nor fail, as with a host
    that went away: a listener whose accept queue is full, so the kernel drops further SYNs.
    Yields the port; checks first that this kernel does drop them."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.settimeout(1.0)
        filler.connect((host, port))  # occupies the single accept slot, never accepted
        probe.setblocking(False)
        probe.connect_ex((host, port))
        _, writable, _ = select.select((), (probe,), (), 0.05)
        assert not writable, 'a full accept queue does not black-hole SYNs on this kernel'
        probe.close()
        yield port
    finally:
        probe.close()
        filler.close()
        listener.close()


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


@contextlib.asynccontextmanager
async def open_pool(**options: Any) -> AsyncIterator[Any]:
    """`request` of a `lowhaio.Pool(**options)`, closed on leaving the block."""
    request, close = lowhaio.Pool(**options)
    try:
        yield request
    finally:
        await close()


def open_sockets() -> int:
    """How many sockets this process has open. Unlike `open_fds`, not thrown off by other
    descriptors an event loop opens once for good (libuv opens /dev/null the first time a
    uvloop transport with unsent data is aborted)."""
    count = 0
    for fd in os.listdir('/proc/self/fd'):
        with contextlib.suppress(OSError):  # closed since it was listed
            count += os.readlink('/proc/self/fd/' + fd).startswith('socket:')
    return count


def fd_of_the_socket_connected_to(address: Tuple[str, int]) -> int:
    """The descriptor of this process's one socket connected to `address` (a client's end
    of its one connection to a server)."""
    found = []
    for fd in os.listdir('/proc/self/fd'):
        with contextlib.suppress(OSError):
            if not os.readlink('/proc/self/fd/' + fd).startswith('socket:'):
                continue
            sock = socket.socket(fileno=int(fd))
            try:
                if sock.getpeername()[:2] == address:
                    found.append(int(fd))
            finally:
                sock.detach()  # it stays open: it is not this function's to close
    assert len(found) == 1, 'sockets connected to %r: %r' % (address, found)
    return found[0]


async def wait_for_sockets(expected: int, timeout: float = 2.0) -> int:
    """Wait until at most `expected` sockets are open, or `timeout`; return the final count."""
    deadline = time.monotonic() + timeout
    count = open_sockets()
    while count > expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        count = open_sockets()
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


# How every nginx configuration the tests write starts: one worker, all its files under {tmp},
# and an http block left open for the rest
NGINX_PRELUDE = '''\
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
'''

_NGINX_CONF = NGINX_PRELUDE + '''
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

        # The same files, gzip-encoded as they are sent when the request accepts gzip
        # (streamed chunked, since the encoded length is not known in advance)
        location /gzip/ {{
            alias {root}/;
            gzip on;
            gzip_types *;
            gzip_min_length 0;
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

        # The same, for bodies of at most 1 KiB: a larger content-length gets 413 at once,
        # before any of the body is read (and before 100 Continue, when one is expected).
        location /small-dav/ {{
            alias {tmp}/dav/;
            dav_methods PUT DELETE;
            create_full_put_path on;
            client_max_body_size 1k;
        }}
    }}
}}
'''


class Nginx:
    """nginx serving `root` over HTTP and HTTPS on 127.0.0.1, as a subprocess.

    Use as a context manager. Tests write files into `root`; `url(path)` and `tls_url(path)` give
    their addresses. `/chunked/<file>` serves the same file with Transfer-Encoding: chunked,
    `/gzip/<file>` serves it gzip-encoded to requests that accept gzip, `/echo` describes the
    request's framing, and `/dav/<name>` stores a PUT body and serves it back (`/small-dav/<name>`
    too, for bodies up to 1 KiB, answering 413 to a larger content-length).
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
        if _started(self._process, 10.0, lambda: _accepting(self.host, self.port) and
                    _accepting(self.host, self.tls_port)):
            return True
        self._stop()
        return False

    def _stop(self) -> None:
        _stop_process(self._process, 5)
        self._process = None

    def restart(self, attempts: int = 50) -> None:
        """Stop nginx and start it again on the same ports, as a server restarted under its
        clients is. SIGTERM is nginx's fast shutdown: open connections are dropped at once."""
        self._stop()
        # Until nginx binds again, a client's outgoing connection can hold the port as its own
        # local port; nginx then exits at once, and is tried again
        for _ in range(attempts):
            if self._start():
                return
            time.sleep(0.1)
        raise RuntimeError(f'nginx failed to restart:\n{self.error_log}')


def _started(process: subprocess.Popen, seconds: float, ready: Callable[[], bool]) -> bool:
    """Whether a server process became `ready` within `seconds`. False at once if it exited:
    most likely its port was taken, and the caller tries another."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.02)
    return False


def _stop_process(process: Optional[subprocess.Popen], seconds: float) -> None:
    """Terminate a server process, killing it if it has not exited within `seconds`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False



# ---------------------------------------------------------------------------------------------
# dnsmasq
# ---------------------------------------------------------------------------------------------

def dnsmasq_binary() -> Optional[str]:
    """Path to dnsmasq, also looking in sbin directories, which are often not on a user's PATH."""
    return shutil.which('dnsmasq') or shutil.which(
        'dnsmasq', path='/usr/sbin:/usr/local/sbin:/sbin')


class Dnsmasq:
    """dnsmasq, the resolver many systems run, answering on 127.0.0.1 for names under `domain`.

    Use as a context manager. `host_records` are (name, addresses) pairs given to dnsmasq as
    `--host-record`: a name answers A for its IPv4 addresses and AAAA for its IPv6 ones, and
    NODATA for a family it has none of; every other name under `domain` gets NXDOMAIN. Nothing
    is forwarded anywhere. `local_ttl` is the TTL of those answers (dnsmasq's default is 0).
    """

    START_ATTEMPTS = 10

    def __init__(self, host_records: Sequence[Tuple[str, Sequence[str]]], domain: str = 'test',
                 local_ttl: int = 0, binary: Optional[str] = None) -> None:
        found = binary or dnsmasq_binary()
        if found is None:
            raise FileNotFoundError('dnsmasq not found on PATH nor in sbin directories')
        self.binary = found
        self.host = '127.0.0.1'
        self.port = 0
        self.domain = domain
        self.local_ttl = local_ttl
        self.host_records = [(name, tuple(addresses)) for name, addresses in host_records]
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._process: Optional[subprocess.Popen] = None

    @property
    def tmp(self) -> pathlib.Path:
        assert self._tmp is not None, 'dnsmasq is not started'
        return pathlib.Path(self._tmp.name)

    @property
    def log(self) -> str:
        """dnsmasq's log, queries included."""
        path = self.tmp / 'dnsmasq.log'
        return path.read_text() if path.exists() else ''

    def get_dns_resolver(self, **kwargs: object) -> Tuple[Callable, Callable]:
        """A drop-in for `aiodnsresolver.Resolver` that asks only this dnsmasq."""
        async def get_nameservers(_: object, __: object) -> AsyncIterator[
                Tuple[float, Tuple[str, int]]]:
            for _attempt in range(5):
                yield (0.5, (self.host, self.port))
        return aiodnsresolver.Resolver(get_nameservers=get_nameservers, **kwargs)

    def __enter__(self) -> Dnsmasq:
        self._tmp = tempfile.TemporaryDirectory(prefix='lowhaio-dnsmasq-')
        try:
            for _ in range(self.START_ATTEMPTS):
                self.port = _free_udp_port()
                if self._start():
                    return self
            raise RuntimeError(f'dnsmasq failed to start:\n{self.log}')
        except BaseException:
            self._stop()
            self._tmp.cleanup()
            raise

    def __exit__(self, *_: object) -> None:
        self._stop()
        assert self._tmp is not None
        self._tmp.cleanup()

    def _arguments(self) -> List[str]:
        user = pwd.getpwuid(os.geteuid()).pw_name  # run as root, it would switch to "nobody"
        return [
            self.binary, '--keep-in-foreground', '--no-resolv', '--no-hosts',
            '--conf-file=/dev/null', f'--listen-address={self.host}', '--bind-interfaces',
            f'--port={self.port}', f'--pid-file={self.tmp / "dnsmasq.pid"}',
            f'--log-facility={self.tmp / "dnsmasq.log"}', '--log-queries', f'--user={user}',
            f'--local=/{self.domain}/', f'--local-ttl={self.local_ttl}',
        ] + [f'--host-record={name},{",".join(addresses)}'
             for name, addresses in self.host_records]

    def _start(self) -> bool:
        self._process = subprocess.Popen(
            self._arguments(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT)
        if _started(self._process, 10.0, lambda: _answers_dns(self.host, self.port)):
            return True
        self._stop()
        return False

    def _stop(self) -> None:
        _stop_process(self._process, 5)
        self._process = None


def _free_udp_port() -> int:
    """A UDP port that was free a moment ago, for a server that cannot bind port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def _answers_dns(host: str, port: int) -> bool:
    query = dnslib.DNSRecord.question('ready.invalid').pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(query, (host, port))
            sock.recv(_UDP_LIMIT)
        except OSError:  # refused: not listening yet; timed out: not answering yet
            return False
    return True




# ---------------------------------------------------------------------------------------------
# Proxy servers (Debian packages), each a subprocess with its configuration in a temporary
# directory, on a free port of 127.0.0.1
# ---------------------------------------------------------------------------------------------

def proxy_binary(name: str) -> Optional[str]:
    """Path to tinyproxy, squid or microsocks, also looking in sbin directories."""
    return shutil.which(name) or shutil.which(
        name, path='/usr/sbin:/usr/local/sbin:/sbin:/usr/bin:/usr/local/bin')


class ProxyServer:
    """A proxy server subprocess. Use as a context manager; `url` is its proxy URL, with the
    credentials it requires (if any) in it."""

    NAME = ''
    SCHEME = 'http'
    START_ATTEMPTS = 10
    START_SECONDS = 30.0

    def __init__(self, username: Optional[str] = None, password: Optional[str] = None) -> None:
        binary = proxy_binary(self.NAME)
        if binary is None:
            raise FileNotFoundError(f'{self.NAME} not found')
        self.binary = binary
        self.username = username
        self.password = password
        self.host = '127.0.0.1'
        self.port = 0
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._process: Optional[subprocess.Popen] = None

    @property
    def tmp(self) -> pathlib.Path:
        assert self._tmp is not None, f'{self.NAME} is not started'
        return pathlib.Path(self._tmp.name)

    def url_with(self, username: Optional[str] = None, password: Optional[str] = None,
                 scheme: Optional[str] = None, host: Optional[str] = None) -> str:
        """The proxy URL with other credentials (or none), scheme or host name."""
        userinfo = '' if username is None else (
            urllib.parse.quote(username, safe='') + ':' +
            urllib.parse.quote(password or '', safe='') + '@')
        return f'{scheme or self.SCHEME}://{userinfo}{_host_in_url(host or self.host)}:{self.port}'

    @property
    def url(self) -> str:
        return self.url_with(self.username, self.password)

    def log(self) -> str:
        return '\n'.join(path.read_text(errors='replace')
                         for path in sorted(self.tmp.glob('*.log')))

    def command(self) -> List[str]:
        raise NotImplementedError

    def ports(self) -> List[int]:
        """The ports that must accept connections before the server counts as started."""
        return [self.port]

    def write_config(self) -> None:
        pass

    def __enter__(self) -> 'ProxyServer':
        self._tmp = tempfile.TemporaryDirectory(prefix=f'lowhaio-{self.NAME}-')
        # Proxies started as root switch to an unprivileged user, who must reach the directory
        os.chmod(self.tmp, 0o777)
        try:
            for _ in range(self.START_ATTEMPTS):
                self.port = _free_port()
                self.write_config()
                if self._start():
                    return self
            raise RuntimeError(f'{self.NAME} failed to start:\n{self.log()}')
        except BaseException:
            self._tmp.cleanup()
            raise

    def __exit__(self, *_: object) -> None:
        self._stop()
        assert self._tmp is not None
        self._tmp.cleanup()

    def _start(self) -> bool:
        self._process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL,
            stdout=open(self.tmp / 'stdout.log', 'wb'), stderr=subprocess.STDOUT,
        )
        if _started(self._process, self.START_SECONDS,
                    lambda: all(_accepting(self.host, port) for port in self.ports())):
            return True
        self._stop()
        return False

    def _stop(self) -> None:
        _stop_process(self._process, 10)
        self._process = None


class Tinyproxy(ProxyServer):
    """tinyproxy: forwarding and CONNECT to any port, without authentication."""

    NAME = 'tinyproxy'

    def write_config(self) -> None:
        user = 'User nobody\nGroup nogroup\n' if os.geteuid() == 0 else ''
        (self.tmp / 'tinyproxy.conf').write_text(
            f'{user}Port {self.port}\nListen {self.host}\nTimeout 600\nMaxClients 200\n'
            f'LogLevel Error\nLogFile "{self.tmp}/tinyproxy.log"\nDisableViaHeader Yes\n')

    def command(self) -> List[str]:
        return [self.binary, '-d', '-c', str(self.tmp / 'tinyproxy.conf')]


class Squid(ProxyServer):
    """squid with Basic authentication: a request without the right credentials gets 407.

    It also listens with TLS on `tls_port` (an https:// proxy, certificate from `ca`)."""

    NAME = 'squid'

    def __init__(self, username: str = 'proxy-user', password: str = 'proxy-secret') -> None:
        super().__init__(username, password)
        self.tls_port = 0

    @property
    def tls_url(self) -> str:
        """The https:// proxy URL, with the credentials."""
        return self.url_with(self.username, self.password, scheme='https').rsplit(':', 1)[0] + \
            f':{self.tls_port}'

    def ports(self) -> List[int]:
        return [self.port, self.tls_port]

    def write_config(self) -> None:
        self.tls_port = _free_port()
        server_cert().private_key_pem.write_to_path(str(self.tmp / 'key.pem'))
        server_cert().cert_chain_pems[0].write_to_path(str(self.tmp / 'cert.pem'))
        hashed = subprocess.run(['openssl', 'passwd', '-apr1', self.password or ''],
                                check=True, capture_output=True, text=True).stdout.strip()
        (self.tmp / 'passwd').write_text(f'{self.username}:{hashed}\n')
        helper = next((path for path in ('/usr/lib/squid/basic_ncsa_auth',
                                         '/usr/lib/squid3/basic_ncsa_auth')
                       if os.path.exists(path)), 'basic_ncsa_auth')
        (self.tmp / 'squid.conf').write_text(f'''\
http_port {self.host}:{self.port}
https_port {self.host}:{self.tls_port} tls-cert={self.tmp}/cert.pem tls-key={self.tmp}/key.pem
pid_filename {self.tmp}/squid.pid
cache_log {self.tmp}/cache.log
access_log none
# Room for a whole test upload (the largest is 32 MiB). Squid 5.7 (Debian 12's) reads its
# client with no room left when that buffer (512 KB by default) is full, takes the read's 0
# for the client's end, and drops the request and both its connections without a word at
# debug level 1: strace shows read(fd, "", 0) = 0, then the closes. That happens whenever
# the client sends faster than the origin reads, at random: 17 of 90 32 MiB uploads here
client_request_buffer_max_size 64 MB
cache deny all
cache_mem 8 MB
coredump_dir {self.tmp}
shutdown_lifetime 0 seconds
visible_hostname lowhaio-test
pinger_enable off
auth_param basic program {helper} {self.tmp}/passwd
auth_param basic realm lowhaio
acl authenticated proxy_auth REQUIRED
http_access allow authenticated
http_access deny all
''')

    def command(self) -> List[str]:
        return [self.binary, '-N', '-f', str(self.tmp / 'squid.conf')]


class Microsocks(ProxyServer):
    """microsocks: SOCKS5, with a username and password when given."""

    NAME = 'microsocks'
    SCHEME = 'socks5'

    def command(self) -> List[str]:
        credentials = [] if self.username is None else \
            ['-u', self.username, '-P', self.password or '']
        return [self.binary, '-i', self.host, '-p', str(self.port), *credentials]
