"""lowhaio's command-line client: curl-like, and streaming both ways.

    lowhaio [options] URL
    python -m lowhaio [options] URL

Request bodies (`-d @file`, `-d @-`) are read and sent a chunk at a time, and response bodies are
written as they arrive, so neither is ever held whole in memory. Redirects, retries and
decompression come from the helper modules (`lowhaio_redirect`, `lowhaio_retry`,
`lowhaio_decompress`). A progress bar needs the optional extra: `pip install "lowhaio[cli]"`.
Exit codes are curl's where the meaning is the same; `EXIT_CODES` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import ssl
import stat
import sys
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    IO,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Type,
)

import lowhaio
from lowhaio import (
    BodyFunction,
    Headers,
    HttpConnectionClosedError,
    HttpConnectionError,
    HttpDataError,
    HttpDnsError,
    HttpError,
    HttpHeaderTooLong,
    HttpInvalidRequestError,
    HttpProtocolError,
    HttpTimeoutError,
    HttpTlsError,
    Pool,
    Request,
)

# Bytes read from a file or stdin per chunk sent
CHUNK_SIZE = 65536
# The statuses curl's --retry counts as transient (408, 429, 500, 502, 503, 504)
TRANSIENT_STATUSES: Tuple[int, ...] = (408, 429, 500, 502, 503, 504)
IDEMPOTENT_METHODS: FrozenSet[bytes] = frozenset((
    b'GET', b'HEAD', b'OPTIONS', b'TRACE', b'PUT', b'DELETE'))
EXTRA_HINT = 'pip install "lowhaio[cli]"'

EXIT_CODES: Sequence[Tuple[int, str]] = (
    (0, 'success (whatever the HTTP status, unless --fail)'),
    (1, 'unsupported protocol: the URL is not http or https'),
    (2, 'bad command line'),
    (3, 'malformed URL'),
    (6, 'could not resolve the host name'),
    (7, 'could not connect to the server'),
    (8, "the server's reply broke HTTP/1.1 (malformed or too large head, bad framing)"),
    (18, 'partial body: the server closed the connection before the whole body arrived'),
    (22, 'HTTP status 400 or above, with -f/--fail'),
    (23, 'could not write the output'),
    (26, 'could not read the data to send (-d @file)'),
    (28, 'timed out: --connect-timeout, --max-time, or a wait for the network'),
    (35, 'the TLS handshake failed'),
    (47, 'too many redirects (--max-redirs)'),
    (56, 'failure receiving data: connection reset, or closed before the response head'),
    (60, "the server's certificate could not be verified (untrusted, or not for the host)"),
    (61, 'the response could not be decompressed (--compressed)'),
    (77, 'could not read the CA certificates (--cacert)'),
    (130, 'interrupted (Ctrl-C)'),
)


class CliError(Exception):
    """Ends the run with `exit_code`, printing `message` unless --silent."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code: int = exit_code
        self.message: str = message


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='lowhaio',
        description='Make an HTTP/1.1 request with lowhaio and write the response body to\n'
                    'stdout (or -o FILE), streaming both ways.',
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add('url', metavar='URL', help='http:// or https:// URL (http:// if no scheme is given)')
    add('-X', '--request', metavar='METHOD', dest='method',
        help='request method (default GET, or POST with -d, HEAD with -I)')
    add('-H', '--header', metavar="'NAME: VALUE'", dest='headers', action='append', default=[],
        help="add a header, repeatable. 'NAME:' removes a default header, 'NAME;' sends it empty")
    add('-d', '--data', '--data-binary', metavar='DATA', dest='data', action='append',
        default=[], help='send DATA as the body (POST by default); @FILE streams a file, @- '
                         'stdin, byte for byte. Repeated: joined with &')
    add('-o', '--output', metavar='FILE', help='write the body to FILE (- for stdout)')
    add('-i', '--include', action='store_true', help='write the response head before the body')
    add('-I', '--head', action='store_true', help='HEAD request; write the response head only')
    add('-L', '--location', action='store_true', help='follow redirects')
    add('--max-redirs', metavar='N', type=int, default=50,
        help='with -L, the most redirects followed (default 50)')
    add('--retry', metavar='N', type=int, default=0,
        help='retry up to N times on failures to connect, timeouts of idempotent requests, '
             'and statuses %s, honouring Retry-After'
             % ', '.join(str(status) for status in TRANSIENT_STATUSES))
    add('--retry-delay', metavar='SECONDS', type=float,
        help='with --retry, wait this long between attempts (default: exponential backoff '
             'from 1 second)')
    add('--compressed', action='store_true',
        help='ask for a compressed response (accept-encoding) and decompress it')
    add('--cacert', metavar='FILE', help='trust the CA certificates in FILE (PEM), only them')
    add('-k', '--insecure', action='store_true', help='do not verify the server certificate')
    add('--resolve', metavar='HOST:PORT:ADDRESS[,ADDRESS]', action='append', default=[],
        help='connect to ADDRESS for HOST, instead of looking it up; TLS still checks the '
             'certificate against HOST. Applies to HOST on any port; repeatable')
    add('--dns-servers', metavar='ADDRESS[:PORT][,...]',
        help='look host names up with these DNS servers instead of /etc/resolv.conf\'s')
    add('--connect-timeout', metavar='SECONDS', type=float,
        help='most time for DNS, connecting and the TLS handshake (default 10)')
    add('-m', '--max-time', metavar='SECONDS', type=float,
        help='most time for the whole transfer')
    add('-f', '--fail', action='store_true',
        help='on a status of 400 or above, write nothing and exit with 22')
    add('-v', '--verbose', action='store_true', help='show request and response heads on stderr')
    add('--progress', action='store_true',
        help='show a progress bar on stderr (the default with -o FILE); needs the extra: '
             + EXTRA_HINT)
    add('-s', '--silent', action='store_true', help='no progress bar and no error messages')
    add('-S', '--show-error', action='store_true', help='with -s, still show error messages')
    return parser


def exit_codes_help() -> str:
    return 'exit codes (as curl\'s where the meaning is the same):\n' + '\n'.join(
        f'  {code:>3}  {meaning}' for code, meaning in EXIT_CODES)


class Resolved(NamedTuple):
    """A --resolve entry: the addresses to use for a host name."""
    host: str
    addresses: Tuple[str, ...]


def parse_resolve(value: str) -> Resolved:
    """HOST:PORT:ADDRESS[,ADDRESS...], where an IPv6 ADDRESS may be bracketed."""
    host, port, addresses = (value.split(':', 2) + ['', ''])[:3]
    if not host or not port.isdigit() or not addresses:
        raise CliError(2, f'--resolve wants HOST:PORT:ADDRESS, not {value!r}')
    parsed = []
    for address in addresses.split(','):
        try:
            parsed.append(str(ipaddress.ip_address(address.strip().strip('[]'))))
        except ValueError:
            raise CliError(2, f'--resolve: {address!r} is not an IP address') from None
    return Resolved(normalised_host(host), tuple(parsed))


def normalised_host(host: str) -> str:
    # As lowhaio passes host names to the resolver
    return host.lower().rstrip('.').strip('[]')


def parse_dns_servers(value: str) -> Tuple[Tuple[str, int], ...]:
    """ADDRESS[:PORT],...; an IPv6 address with a port is bracketed: [::1]:53."""
    try:
        return tuple(parse_dns_server(item.strip()) for item in value.split(','))
    except ValueError:
        raise CliError(2, f'--dns-servers wants ADDRESS[:PORT],..., not {value!r}') from None


def parse_dns_server(item: str) -> Tuple[str, int]:
    if item.startswith('['):
        address, bracket, rest = item[1:].partition(']')
        if not bracket or rest[:1] not in ('', ':'):
            raise ValueError(item)
        has_port, port = bool(rest), rest[1:]
    elif item.count(':') == 1:  # IPv4 and a port
        address, port = item.split(':')
        has_port = True
    else:  # IPv4, or IPv6 without brackets and so without a port
        address, port, has_port = item, '', False
    if has_port and not port.isdigit():
        raise ValueError(item)
    return str(ipaddress.ip_address(address)), int(port) if has_port else 53


def parse_header(value: str) -> Tuple[bytes, Optional[bytes]]:
    """'name: value' → (name, value); 'name:' → (name, None), meaning remove; 'name;' →
    (name, b'')."""
    raw = os.fsencode(value)
    name, colon, header_value = raw.partition(b':')
    if not colon:
        if raw.endswith(b';') and len(raw) > 1:
            return raw[:-1].strip(), b''
        raise CliError(2, f"-H wants 'NAME: VALUE', not {value!r}")
    header_value = header_value.strip()
    return name.strip(), header_value or None


class Options(NamedTuple):
    """The command line, checked and converted."""
    url: str
    method: bytes
    headers: Headers
    data: Tuple[bytes, ...]
    output: Optional[str]
    include: bool
    head_only: bool
    location: bool
    max_redirs: int
    retry: int
    retry_delay: Optional[float]
    compressed: bool
    cacert: Optional[str]
    insecure: bool
    resolve: Tuple[Resolved, ...]
    dns_servers: Optional[Tuple[Tuple[str, int], ...]]
    connect_timeout: Optional[float]
    max_time: Optional[float]
    fail: bool
    verbose: bool
    progress: bool
    silent: bool
    show_error: bool


def parse_options(argv: Optional[Sequence[str]]) -> Options:
    arguments = argument_parser().parse_args(argv)
    url = arguments.url if '://' in arguments.url else 'http://' + arguments.url
    check_url(url)
    data = tuple(os.fsencode(item) for item in arguments.data)
    method = os.fsencode(arguments.method) if arguments.method else \
        b'HEAD' if arguments.head else b'POST' if data else b'GET'
    for name, value in (('--retry', arguments.retry), ('--max-redirs', arguments.max_redirs)):
        if value < 0:
            raise CliError(2, f'{name} must not be negative')
    return Options(
        url=url, method=method,
        headers=request_headers([parse_header(header) for header in arguments.headers], data),
        data=data, output=None if arguments.output == '-' else arguments.output,
        include=arguments.include or arguments.head, head_only=arguments.head,
        location=arguments.location, max_redirs=arguments.max_redirs,
        retry=arguments.retry, retry_delay=arguments.retry_delay,
        compressed=arguments.compressed, cacert=arguments.cacert, insecure=arguments.insecure,
        resolve=tuple(parse_resolve(value) for value in arguments.resolve),
        dns_servers=None if arguments.dns_servers is None else
        parse_dns_servers(arguments.dns_servers),
        connect_timeout=arguments.connect_timeout, max_time=arguments.max_time,
        fail=arguments.fail, verbose=arguments.verbose, progress=arguments.progress,
        silent=arguments.silent, show_error=arguments.show_error,
    )


def check_url(url: str) -> None:
    scheme = url.partition('://')[0].lower()
    if scheme not in ('http', 'https'):
        raise CliError(1, f'Protocol "{scheme}" not supported: only http and https')
    try:
        lowhaio.parse_target(url)
    except HttpInvalidRequestError as exception:
        raise CliError(3, str(exception)) from exception


def request_headers(given: List[Tuple[bytes, Optional[bytes]]], data: Tuple[bytes, ...]) \
        -> Headers:
    """curl's defaults (user-agent, accept, and content-type with -d), then the given headers;
    a given header replaces a default of the same name, and NAME: without a value removes it."""
    defaults = [(b'user-agent', b'lowhaio/' + version().encode()), (b'accept', b'*/*')]
    if data:
        defaults.append((b'content-type', b'application/x-www-form-urlencoded'))
    given_names = {name.lower() for name, _ in given}
    headers = tuple(
        [(name, value) for name, value in defaults if name not in given_names] +
        [(name, value) for name, value in given if value is not None])
    try:
        lowhaio.encode_request_headers(b'GET', headers)
    except HttpInvalidRequestError as exception:
        raise CliError(2, f'-H: {exception}') from exception
    return headers


def version() -> str:
    try:
        from importlib.metadata import version as installed_version
        return installed_version('lowhaio')
    except Exception:  # running from a checkout that was never installed
        return 'dev'


# ---------------------------------------------------------------------------------------------
# The request body: -d DATA, -d @FILE, -d @-
# ---------------------------------------------------------------------------------------------

class RequestBody(NamedTuple):
    function: BodyFunction
    length: Optional[int]  # None: not known in advance, so it is sent chunked


def request_body(data: Tuple[bytes, ...]) -> RequestBody:
    """Each -d is a part; parts are joined with '&', as curl joins them. Files and stdin are
    opened and sized now, so a missing file fails before anything is sent."""
    parts = [data_part(item) for item in data]
    lengths = [part.length for part in parts]
    total = None if None in lengths else sum(lengths) + len(parts) - 1  # type: ignore

    async def body() -> AsyncIterator[bytes]:
        for index, part in enumerate(parts):
            if index:
                yield b'&'
            async for chunk in part.function():
                yield chunk

    return RequestBody(body, total)


def data_part(item: bytes) -> RequestBody:
    if not item.startswith(b'@'):
        async def literal() -> AsyncIterator[bytes]:
            if item:
                yield item
        return RequestBody(literal, len(item))
    if item == b'@-':
        return stdin_part()
    return file_part(os.fsdecode(item[1:]))


def file_part(path: str) -> RequestBody:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            # A FIFO or a device: opened now, as `cat` would (a FIFO waits here for its
            # writer), then read as a stream, sent chunked, and only once
            return stream_part(os.open(path, os.O_RDONLY), path)
        with open(path, 'rb'):
            pass
    except OSError as exception:
        raise CliError(26, f'Failed to open {path}: {exception.strerror}') from exception

    async def file_chunks() -> AsyncIterator[bytes]:
        # Opened again for every attempt, so that retries and 307/308 redirects resend it
        try:
            with open(path, 'rb') as file:
                while True:
                    chunk = file.read(CHUNK_SIZE)
                    if not chunk:
                        return
                    yield chunk
        except OSError as exception:
            raise CliError(26, f'Failed to read {path}: {exception.strerror}') from exception

    return RequestBody(file_chunks, info.st_size)


def stdin_part() -> RequestBody:
    fd = sys.stdin.fileno()
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return stream_part(fd, 'stdin')

    # Redirected from a file: its size is known, and it can be read again from the start
    start = os.lseek(fd, 0, os.SEEK_CUR)

    async def stdin_file_chunks() -> AsyncIterator[bytes]:
        os.lseek(fd, start, os.SEEK_SET)
        while True:
            chunk = os.read(fd, CHUNK_SIZE)
            if not chunk:
                return
            yield chunk
    return RequestBody(stdin_file_chunks, info.st_size - start)


def stream_part(fd: int, name: str) -> RequestBody:
    """A pipe, FIFO or terminal: its length is unknown, and it can be read only once."""
    started = False

    async def stream_chunks() -> AsyncIterator[bytes]:
        nonlocal started
        if started:
            # Resending would need the whole stream kept in memory
            raise CliError(26, f'{name} was already sent once, and cannot be sent again')
        started = True
        async for chunk in fd_chunks(fd):
            yield chunk
    return RequestBody(stream_chunks, None)


async def fd_chunks(fd: int) -> AsyncIterator[bytes]:
    """A pipe, socket or terminal, read through the event loop, so that waiting for it blocks
    nothing and --max-time can still end the transfer."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 * CHUNK_SIZE)
    was_blocking = os.get_blocking(fd)
    pipe = os.fdopen(fd, 'rb', buffering=0, closefd=False)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while True:
            try:
                chunk = await reader.read(CHUNK_SIZE)
            except OSError as exception:
                raise CliError(26, f'Failed to read the data: {exception}') from exception
            if not chunk:
                return
            yield chunk
    finally:
        transport.close()
        # The descriptor may be shared with the shell that started us
        with contextlib.suppress(OSError):
            os.set_blocking(fd, was_blocking)


def with_body_headers(headers: Headers, body: RequestBody) -> Tuple[Headers, BodyFunction]:
    """content-length when the size is known, else chunked: unless the caller set either."""
    names = {name.lower() for name, _ in headers}
    if b'transfer-encoding' in names:
        chunked_asked = any(name.lower() == b'transfer-encoding' and b'chunked' in value.lower()
                            for name, value in headers)
        return headers, chunked_body(body.function) if chunked_asked else body.function
    if b'content-length' in names:
        return headers, body.function
    if body.length is None:
        return headers + ((b'transfer-encoding', b'chunked'),), chunked_body(body.function)
    return headers + ((b'content-length', b'%d' % body.length),), body.function


def chunked_body(function: BodyFunction) -> BodyFunction:
    from lowhaio_chunked import chunked
    return chunked(function)


# ---------------------------------------------------------------------------------------------
# The pool: TLS, DNS and timeouts
# ---------------------------------------------------------------------------------------------

def pool_options(options: Options) -> Dict[str, Any]:
    pool: Dict[str, Any] = {'get_ssl_context': ssl_context_getter(options)}
    if options.connect_timeout is not None:
        pool['connect_timeout'] = options.connect_timeout
    if options.resolve or options.dns_servers:
        pool['get_dns_resolver'] = dns_resolver_getter(options.resolve, options.dns_servers)
    return pool


def ssl_context_getter(options: Options) -> Callable[[], ssl.SSLContext]:
    """Made now rather than on first use, so that a bad --cacert fails before connecting."""
    try:
        context = ssl.create_default_context(cafile=options.cacert)
    except (OSError, ssl.SSLError) as exception:
        raise CliError(77, f'Could not load the CA certificates from {options.cacert}: '
                           f'{exception}') from exception
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return lambda: context


def dns_resolver_getter(resolve: Sequence[Resolved],
                        dns_servers: Optional[Tuple[Tuple[str, int], ...]]) \
        -> Callable[..., Tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[None]]]]:
    """A `get_dns_resolver` for Pool: --resolve's hosts answered from the command line, every
    other host asked of --dns-servers (or the system's servers)."""
    import aiodnsresolver
    from aiodnsresolver import TYPES, DnsRecordDoesNotExist

    fixed: Dict[str, Tuple[str, ...]] = {}
    for entry in resolve:
        fixed[entry.host] = fixed.get(entry.host, ()) + entry.addresses

    async def get_nameservers(_: Any, __: Any) -> AsyncIterator[Tuple[float, Tuple[str, int]]]:
        assert dns_servers is not None
        for _attempt in range(5):
            for server in dns_servers:
                yield 0.5, server

    def get_dns_resolver(**kwargs: Any) -> Tuple[Callable[..., Awaitable[Any]],
                                                 Callable[..., Awaitable[None]]]:
        if dns_servers is not None:
            kwargs['get_nameservers'] = get_nameservers
        resolve_by_dns, clear_cache = aiodnsresolver.Resolver(**kwargs)

        async def resolve_host(host: str, qtype: Any, **resolve_kwargs: Any) -> Any:
            addresses = fixed.get(normalised_host(host))
            if addresses is None:
                return await resolve_by_dns(host, qtype, **resolve_kwargs)
            version, record = (4, aiodnsresolver.IPv4AddressExpiresAt) if qtype == TYPES.A \
                else (6, aiodnsresolver.IPv6AddressExpiresAt)
            answer = tuple(record(address, expires_at=float('inf')) for address in addresses
                           if ipaddress.ip_address(address).version == version)
            if not answer:
                raise DnsRecordDoesNotExist()
            return answer

        return resolve_host, clear_cache

    return get_dns_resolver


# ---------------------------------------------------------------------------------------------
# Wrapping request: heads shown, redirects, retries, decompression
# ---------------------------------------------------------------------------------------------

class Heads:
    """The response heads of the current attempt, for -i: with -L, one per hop, as curl."""

    def __init__(self, err: IO[str], verbose: bool) -> None:
        self.err: IO[str] = err
        self.verbose: bool = verbose
        self.responses: List[bytes] = []

    def request_sent(self, method: bytes, url: str, headers: Headers) -> None:
        if not self.verbose:
            return
        target = lowhaio.parse_target(url)
        lines = [b'%s %s HTTP/1.1' % (method, target.path_and_query)]
        if not any(name.lower() == b'host' for name, _ in headers):
            lines.append(target.host_line.rstrip(b'\r\n'))
        lines.extend(b'%s: %s' % header for header in headers)
        self.show_verbose(b'> ', lines)

    def response_received(self, code: bytes, headers: Headers) -> None:
        # lowhaio keeps neither the reason phrase nor the minor version: HTTP/1.1 is what it
        # speaks, and header names come lowercased
        lines = [b'HTTP/1.1 ' + code] + [b'%s: %s' % header for header in headers]
        self.responses.append(b''.join(line + b'\r\n' for line in lines) + b'\r\n')
        if self.verbose:
            self.show_verbose(b'< ', lines)

    def show_verbose(self, prefix: bytes, lines: List[bytes]) -> None:
        text = b''.join(prefix + line + b'\n' for line in lines + [b''])
        self.err.write(text.decode('latin-1'))
        self.err.flush()


def shown(request: Request, heads: Heads) -> Request:
    """Innermost wrapper: sees every request actually made, redirects and retries included."""
    async def shown_request(method: bytes, url: str, **kwargs: Any) -> Tuple[bytes, Headers, Any]:
        heads.request_sent(method, url, kwargs.get('headers', ()))
        code, headers, body = await request(method, url, **kwargs)
        heads.response_received(code, headers)
        return code, headers, body
    return shown_request


def each_attempt_starts_afresh(request: Request, heads: Heads) -> Request:
    """Just inside retry: a retried attempt's heads replace the failed one's."""
    async def attempt(method: bytes, url: str, **kwargs: Any) -> Tuple[bytes, Headers, Any]:
        heads.responses.clear()
        return await request(method, url, **kwargs)
    return attempt


def wrapped(request: Request, options: Options, heads: Heads) -> Request:
    request = shown(request, heads)
    if options.location:
        from lowhaio_redirect import redirectable
        request = redirectable(request, max_redirects=options.max_redirs)
    if options.retry:
        request = retrying(each_attempt_starts_afresh(request, heads), options)
    if options.compressed:
        request = decompressing(request)
    return request


def retrying(request: Request, options: Options) -> Request:
    from lowhaio_retry import exponential_backoff, retry

    # One iterator object for every rule and for statuses, so that N is the total number of
    # retries: an iterator is consumed once, and the CLI calls the wrapped request only once
    intervals = iter(
        exponential_backoff(base=1.0, cap=600.0, max_count=options.retry)
        if options.retry_delay is None else [options.retry_delay] * options.retry)
    # Nothing was sent: always safe. A timeout, or a reused connection closed before the
    # response: safe only when repeating the request cannot do anything twice.
    retried: List[Type[BaseException]] = [HttpConnectionError]
    if options.method.upper() in IDEMPOTENT_METHODS:
        retried += [HttpTimeoutError, lowhaio.HttpConnectionClosedBeforeResponseError]
    return retry(request, exception_intervals=[(cls, intervals) for cls in retried],
                 retry_statuses=TRANSIENT_STATUSES, status_intervals=intervals)


def decompressing(request: Request) -> Request:
    from lowhaio_decompress import decompressed

    # No size or ratio limit, as curl has none: the body is streamed to the output, so even a
    # decompression bomb holds only one decoded piece in memory at a time
    return decompressed(request, max_size=None, max_ratio=None)


# ---------------------------------------------------------------------------------------------
# The response body: output and progress
# ---------------------------------------------------------------------------------------------

class Output:
    """stdout or -o FILE, created only once there is something to write to it."""

    def __init__(self, path: Optional[str]) -> None:
        self.path: Optional[str] = path
        self.file: Optional[IO[bytes]] = None

    def write(self, data: bytes) -> None:
        try:
            if self.file is None:
                self.file = sys.stdout.buffer if self.path is None else open(self.path, 'wb')
            self.file.write(data)
            if self.path is None:
                self.file.flush()  # a stream read as it arrives (events, logs) is seen so
        except OSError as exception:
            raise CliError(23, f'Failed writing the output to {self.path or "stdout"}: '
                               f'{exception.strerror or exception}') from exception

    def close(self) -> None:
        if self.file is not None and self.path is not None:
            try:
                self.file.close()
            except OSError as exception:
                raise CliError(23, f'Failed writing the output to {self.path}: '
                                   f'{exception.strerror}') from exception


def decoded_length(headers: Headers, compressed: bool) -> Optional[int]:
    """The body's length if known in advance: with --compressed, content-length is the
    encoded length, which says nothing of the decoded one."""
    if compressed and any(name == b'content-encoding' for name, _ in headers):
        return None
    value = next((value for name, value in headers if name == b'content-length'), None)
    return int(value) if value is not None and value.isdigit() else None


@contextlib.contextmanager
def progress_bar(options: Options, total: Optional[int]) -> Iterator[Callable[[int], Any]]:
    """A function to call with each chunk's size: a tqdm bar on stderr (size, speed, and ETA
    when the length is known) if one is wanted and the extra is installed; else it does
    nothing."""
    wanted = not options.silent and (options.progress or options.output is not None)
    try:
        from tqdm import tqdm
    except ImportError:
        if wanted and options.progress:
            sys.stderr.write(f'lowhaio: no progress bar without tqdm: {EXTRA_HINT}\n')
        wanted = False
    if not wanted:
        yield lambda _: None
        return
    with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr,
              desc=os.path.basename(options.output) if options.output else 'stdout',
              dynamic_ncols=True, leave=True) as bar:
        yield bar.update


async def copy_body(body: Any, output: Output, advance: Callable[[int], Any]) -> None:
    try:
        async for chunk in body:
            output.write(chunk)
            advance(len(chunk))
    except HttpConnectionClosedError as exception:
        # Closed in order (a FIN, so no cause) part-way: curl's "partial file". A reset
        # stays a receive failure.
        if exception.__cause__ is None:
            raise CliError(18, f'Transfer closed early: {exception}') from exception
        raise


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------

async def transfer(options: Options) -> None:
    body = request_body(options.data) if options.data else None
    heads = Heads(sys.stderr, options.verbose)
    pool_request, close = Pool(**pool_options(options))
    try:
        request = wrapped(pool_request, options, heads)
        if options.max_time is None:
            await perform(request, options, body, heads)
        else:
            await asyncio.wait_for(perform(request, options, body, heads), options.max_time)
    finally:
        await close()


async def perform(request: Request, options: Options, body: Optional[RequestBody],
                  heads: Heads) -> None:
    headers = options.headers
    kwargs: Dict[str, Any] = {}
    if body is not None:
        headers, kwargs['body'] = with_body_headers(headers, body)
    code, response_headers, response_body = await request(
        options.method, options.url, headers=headers, **kwargs)
    output = Output(options.output)
    try:
        if options.fail and int(code) >= 400:
            raise CliError(22, f'The requested URL returned error: {code.decode()}')
        if options.include:
            output.write(b''.join(heads.responses))
        if not options.head_only:
            with progress_bar(
                    options, decoded_length(response_headers, options.compressed)) as advance:
                await copy_body(response_body, output, advance)
        if output.file is None and options.output is not None:
            output.write(b'')  # an empty body still makes the file, as curl does
    finally:
        await response_body.aclose()
        output.close()


def exit_code_for(exception: BaseException) -> int:
    """curl's exit code for the failure, where curl has one that means the same."""
    chain = list(causes(exception))
    for cause in chain:
        if isinstance(cause, CliError):
            return cause.exit_code
    timed_out = any(isinstance(cause, asyncio.TimeoutError) for cause in chain)
    decompress_error = decompression_error_class()
    for cause in chain:
        if decompress_error is not None and isinstance(cause, decompress_error):
            return 61
        if type(cause).__name__ == 'HttpTooManyRedirects':
            return 47
        if isinstance(cause, (HttpTimeoutError, asyncio.TimeoutError)):
            return 28
        if isinstance(cause, HttpDnsError):
            return 28 if timed_out else 6
        if isinstance(cause, HttpTlsError):
            return 28 if timed_out else \
                60 if any(isinstance(c, ssl.SSLCertVerificationError) for c in chain) else 35
        if isinstance(cause, HttpConnectionError):
            return 28 if timed_out else 7
        if isinstance(cause, (HttpProtocolError, HttpHeaderTooLong)):
            return 8
        if isinstance(cause, HttpInvalidRequestError):
            return 3  # e.g. a redirect to a URL that is not http(s)
        if isinstance(cause, (HttpDataError, HttpError)):
            return 56
    return 1


def decompression_error_class() -> Optional[type]:
    # Only imported by --compressed: without it, this error cannot happen
    module = sys.modules.get('lowhaio_decompress')
    error = getattr(module, 'DecompressionError', None)
    return error if isinstance(error, type) else None


def causes(exception: Optional[BaseException]) -> Iterator[BaseException]:
    seen = set()
    while exception is not None and id(exception) not in seen:
        seen.add(id(exception))
        yield exception
        exception = exception.__cause__ or exception.__context__


def error_message(exception: BaseException) -> str:
    if isinstance(exception, CliError):
        return exception.message
    if isinstance(exception, asyncio.TimeoutError):
        return 'Operation timed out (--max-time)'
    nested = next((cause for cause in causes(exception) if isinstance(cause, CliError)), None)
    return nested.message if nested is not None else str(exception) or repr(exception)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); return the exit status."""
    show_error = True
    try:
        options = parse_options(argv)
        show_error = not options.silent or options.show_error
        asyncio.run(transfer(options))
        return 0
    except SystemExit as exit_:  # argparse: --help, or a usage error it already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    except KeyboardInterrupt:
        return 130
    except Exception as exception:  # every failure becomes an exit code and one line
        if any(isinstance(cause, BrokenPipeError) for cause in causes(exception)):
            # The reader of stdout went away (`lowhaio URL | head`): keep Python from
            # failing again when it flushes stdout at exit
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = exit_code_for(exception)
        if show_error:
            sys.stderr.write(f'lowhaio: ({code}) {error_message(exception)}\n')
        return code
