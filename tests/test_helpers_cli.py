"""The command-line client (`lowhaio`, `python -m lowhaio`), run as a subprocess against real
servers on loopback: aiohttp.web over HTTP and TLS, scripted raw-socket servers for broken
answers, and a dnslib DNS server. The servers run in an event loop on a background thread, so
the tests themselves are plain functions that run the client and wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from typing import Any, AsyncContextManager, Dict, Iterator, List, Optional, Sequence

import pytest
from aiohttp import web
from support import (
    Connection,
    ca,
    dns_server,
    responding,
    scripted_server,
    server_ssl_context,
    web_server,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = pathlib.Path(sys.executable).parent / 'lowhaio'
NAME = 'cli.lowhaio.test'   # covered by the TLS certificate, known to the DNS server
UNCOVERED_NAME = 'other.lowhaio.test'   # resolvable with --resolve, not in the certificate
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Servers, in an event loop on a background thread
# ---------------------------------------------------------------------------------------------

class BackgroundLoop:
    """An event loop on a thread, in which async context managers (servers) are entered."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @contextlib.contextmanager
    def entered(self, manager: AsyncContextManager[Any]) -> Iterator[Any]:
        value = self.run(manager.__aenter__())
        try:
            yield value
        finally:
            self.run(manager.__aexit__(None, None, None))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


BLOCK = hashlib.sha256(b'lowhaio').digest() * 2048   # 64 KiB


def pattern(size: int) -> bytes:
    """Deterministic bytes (repeats of a 64 KiB block), so a shifted or truncated copy differs."""
    return (BLOCK * (size // len(BLOCK) + 1))[:size]


def pattern_pieces(size: int) -> Iterator[bytes]:
    """pattern(size) in 64 KiB pieces, for servers to send large bodies without holding them."""
    for start in range(0, size, len(BLOCK)):
        yield BLOCK[:min(len(BLOCK), size - start)]


@functools.lru_cache(maxsize=None)
def zeros_gzipped(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)   # 31: the gzip container
    zeros = bytes(MIB)
    return b''.join([compressor.compress(zeros) for _ in range(size // MIB)] +
                    [compressor.flush()])


class Counters:
    def __init__(self) -> None:
        self.hits: Dict[str, int] = {}

    def hit(self, key: str) -> int:
        self.hits[key] = self.hits.get(key, 0) + 1
        return self.hits[key]


def cli_app(counters: Counters) -> web.Application:
    async def sized(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info['size'])
        response = web.StreamResponse(headers={'content-type': 'application/octet-stream'})
        response.content_length = size
        await response.prepare(request)
        for piece in pattern_pieces(size):
            await response.write(piece)
        await response.write_eof()
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info['size'])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in pattern_pieces(size):
            await response.write(piece)
        await response.write_eof()
        return response

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info['code'])
        return web.Response(status=code, body=b'' if code in (204, 304) else b'status %d' % code)

    async def echo(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        return web.json_response({
            'method': request.method, 'path': request.raw_path,
            'headers': [[name.decode('latin-1').lower(), value.decode('latin-1')]
                        for name, value in request.raw_headers],
            'length': length, 'sha256': digest.hexdigest(),
        })

    async def redirect(request: web.Request) -> web.Response:
        hops, code = int(request.match_info['hops']), int(request.match_info['code'])
        target = f'/redirect/{hops - 1}/{code}' if hops > 1 else \
            request.query.get('to', '/sized/10')
        await request.read()
        return web.Response(status=code, headers={'location': target}, body=b'moved')

    async def loop(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={'location': '/loop'})

    async def flaky(request: web.Request) -> web.Response:
        await request.read()
        count = counters.hit(request.match_info['key'])
        if count <= int(request.match_info['failures']):
            return web.Response(status=503, body=b'try again')
        return web.Response(body=b'ok after %d' % count)

    async def slow_head(request: web.Request) -> web.Response:
        counters.hit('slow-head')
        await asyncio.sleep(float(request.query.get('seconds', '5')))
        return web.Response(body=b'late')

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={'content-length': '1000'})
        await response.prepare(request)
        for _ in range(100):
            await response.write(b'x' * 10)
            await asyncio.sleep(0.1)
        return response

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(pattern(int(request.match_info['size']))),
                            headers={'content-encoding': 'gzip'})

    async def bad_gzip(request: web.Request) -> web.Response:
        return web.Response(body=b'this is not gzip at all', headers={'content-encoding': 'gzip'})

    async def unknown_coding(request: web.Request) -> web.Response:
        return web.Response(body=b'xyz', headers={'content-encoding': 'x-unheard-of'})

    async def zeros_gzip(request: web.Request) -> web.Response:
        # A decompression bomb, in a small way: 1000 times smaller on the wire than decoded
        return web.Response(body=zeros_gzipped(int(request.match_info['size'])),
                            headers={'content-encoding': 'gzip'})

    app = web.Application(client_max_size=1024 * MIB)
    app.add_routes([
        web.get('/sized/{size}', sized), web.get('/chunked/{size}', chunked),
        web.route('*', '/status/{code}', status), web.route('*', '/echo', echo),
        web.route('*', '/redirect/{hops}/{code}', redirect), web.get('/loop', loop),
        web.route('*', '/flaky/{key}/{failures}', flaky),
        web.get('/slow-head', slow_head), web.get('/slow-body', slow_body),
        web.get('/gzip/{size}', gzipped), web.get('/bad-gzip', bad_gzip),
        web.get('/unknown-coding', unknown_coding), web.get('/zeros-gzip/{size}', zeros_gzip),
    ])
    return app


class Servers:
    def __init__(self, background: BackgroundLoop, http: Any, https: Any, dns: Any,
                 counters: Counters, sni: List[Optional[str]], tmp: pathlib.Path) -> None:
        self.background = background
        self.http, self.https, self.dns = http, https, dns
        self.counters = counters
        self.sni = sni
        self.cacert = tmp / 'ca.pem'
        ca.cert_pem.write_to_path(str(self.cacert))

    def url(self, path: str) -> str:
        return self.http.url(path)

    def tls_url(self, path: str, host: str = NAME) -> str:
        return self.https.url_for(host, path)

    def scripted(self, handler: Any) -> AsyncContextManager[Any]:
        return self.background.entered(scripted_server(handler))  # type: ignore[return-value]


@pytest.fixture(scope='module')
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    background = BackgroundLoop()
    counters = Counters()
    sni: List[Optional[str]] = []
    tls_context = server_ssl_context(NAME)
    tls_context.sni_callback = lambda _socket, name, _context: sni.append(name)
    try:
        with background.entered(web_server(cli_app(counters))) as http, \
                background.entered(web_server(cli_app(counters), tls=True,
                                              ssl_context=tls_context)) as https, \
                background.entered(dns_server()) as dns:
            dns.set(NAME, ['127.0.0.1'])
            yield Servers(background, http, https, dns, counters, sni,
                          tmp_path_factory.mktemp('cli'))
    finally:
        background.stop()


# ---------------------------------------------------------------------------------------------
# Running the client
# ---------------------------------------------------------------------------------------------

def run_cli(*args: str, entry: str = 'module', stdin: Any = None,
            input_: Optional[bytes] = None, env: Optional[Dict[str, str]] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, '-m', 'lowhaio'] if entry == 'module' else [str(CONSOLE_SCRIPT)]
    return subprocess.run(
        command + list(args), cwd=REPO_ROOT, stdin=stdin, input=input_, capture_output=True,
        env={**os.environ, **(env or {})}, timeout=timeout)


def json_of(result: subprocess.CompletedProcess) -> Dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def header(echoed: Dict[str, Any], name: str) -> Optional[str]:
    values = [value for key, value in echoed['headers'] if key == name]
    assert len(values) <= 1, values
    return values[0] if values else None


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_tqdm(tmp_path: pathlib.Path) -> Dict[str, str]:
    """An environment in which `import tqdm` fails, as it does without the cli extra."""
    shim = tmp_path / 'shim' / 'tqdm'
    shim.mkdir(parents=True)
    (shim / '__init__.py').write_text("raise ImportError('tqdm is blocked for this test')\n")
    return {'PYTHONPATH': os.pathsep.join(filter(None, [str(shim.parent),
                                                        os.environ.get('PYTHONPATH')]))}


# ---------------------------------------------------------------------------------------------
# Entry points and --help
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('entry', ['module', 'console-script'])
def test_both_entry_points_download_a_body_to_stdout(servers: Servers, entry: str) -> None:
    result = run_cli(servers.url('/sized/100000'), entry=entry)
    assert (result.returncode, result.stdout, result.stderr) == (0, pattern(100000), b'')


@pytest.mark.parametrize('entry', ['module', 'console-script'])
def test_help_lists_every_exit_code(entry: str) -> None:
    import lowhaio_cli

    result = run_cli('--help', entry=entry)
    assert result.returncode == 0
    text = result.stdout.decode()
    for code, meaning in lowhaio_cli.EXIT_CODES:
        assert re.search(r'^\s+%d\s+%s' % (code, re.escape(meaning)), text, re.M), code
    for option in ('-X', '-H', '-d', '-o', '-i', '-L', '--retry', '--compressed', '--cacert',
                   '--resolve', '--connect-timeout', '--max-time', '--fail', '-v', '--progress'):
        assert re.search(r'(^|[ ,])%s[ ,]' % re.escape(option), text, re.M), option


def test_readme_lists_the_same_exit_codes() -> None:
    import lowhaio_cli

    section = (REPO_ROOT / 'README.md').read_text().split('\n## Command line\n')[1]
    section = section.split('\n## ')[0]
    listed = [int(code) for code in re.findall(r'^\| (\d+) \|', section, re.M)]
    assert listed == [code for code, _ in lowhaio_cli.EXIT_CODES]


def test_main_returns_the_exit_code_without_exiting(servers: Servers) -> None:
    import lowhaio_cli

    assert lowhaio_cli.main(['-s', f'http://127.0.0.1:{refused_port()}/']) == 7
    assert lowhaio_cli.main(['--no-such-option', servers.url('/')]) == 2


# ---------------------------------------------------------------------------------------------
# -X and -H
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('method', ['GET', 'DELETE', 'PUT', 'PATCH', 'OPTIONS', 'PROPFIND'])
def test_method_is_sent(servers: Servers, method: str) -> None:
    assert json_of(run_cli('-X', method, servers.url('/echo')))['method'] == method


@pytest.mark.parametrize('args, expected', [
    ((), {'user-agent': 'lowhaio/', 'accept': '*/*', 'x-a': None}),
    (('-H', 'x-a: 1'), {'x-a': '1', 'accept': '*/*'}),
    (('-H', 'X-A:   spaced value  '), {'x-a': 'spaced value'}),
    (('-H', 'user-agent: mine/1'), {'user-agent': 'mine/1'}),
    (('-H', 'Accept:'), {'accept': None, 'user-agent': 'lowhaio/'}),
    (('-H', 'x-empty;'), {'x-empty': ''}),
    (('-H', 'x-a: 1', '-H', 'x-b: 2', '-H', 'host: example.test'),
     {'x-a': '1', 'x-b': '2', 'host': 'example.test'}),
])
def test_headers(servers: Servers, args: Sequence[str], expected: Dict[str, Optional[str]]
                 ) -> None:
    echoed = json_of(run_cli(*args, servers.url('/echo')))
    for name, value in expected.items():
        seen = header(echoed, name)
        if value is None or not value.endswith('/'):
            assert seen == value, name
        else:
            assert seen is not None and seen.startswith(value), name
    if not any('host' in arg for arg in args):
        assert header(echoed, 'host') == f'127.0.0.1:{servers.http.port}'


def test_repeated_header_is_sent_each_time(servers: Servers) -> None:
    echoed = json_of(run_cli('-H', 'x-r: 1', '-H', 'x-r: 2', servers.url('/echo')))
    assert [value for name, value in echoed['headers'] if name == 'x-r'] == ['1', '2']


@pytest.mark.parametrize('bad', ['no colon', 'bad name: v', ': empty name', 'x-a: a\r\nb: c'])
def test_malformed_header_is_a_usage_error(servers: Servers, bad: str) -> None:
    result = run_cli('-H', bad, servers.url('/echo'))
    assert result.returncode == 2
    assert b'-H' in result.stderr


# ---------------------------------------------------------------------------------------------
# -d: literal, @file, @-, streamed
# ---------------------------------------------------------------------------------------------

SIZES = [0, 1, 65535, 65536, 65537, 3 * MIB + 5]


@pytest.mark.parametrize('size', SIZES)
def test_data_from_a_file_is_sent_with_its_length(servers: Servers, tmp_path: pathlib.Path,
                                                  size: int) -> None:
    path = tmp_path / 'upload'
    path.write_bytes(pattern(size))
    echoed = json_of(run_cli('-d', f'@{path}', servers.url('/echo')))
    assert echoed['method'] == 'POST'
    assert (echoed['length'], echoed['sha256']) == (size, hashlib.sha256(pattern(size)).hexdigest())
    assert header(echoed, 'content-length') == str(size)
    assert header(echoed, 'transfer-encoding') is None
    assert header(echoed, 'content-type') == 'application/x-www-form-urlencoded'


@pytest.mark.parametrize('size', SIZES)
def test_data_from_a_stdin_pipe_is_sent_chunked(servers: Servers, size: int) -> None:
    echoed = json_of(run_cli('-d', '@-', servers.url('/echo'), input_=pattern(size)))
    assert (echoed['length'], echoed['sha256']) == (size, hashlib.sha256(pattern(size)).hexdigest())
    assert header(echoed, 'transfer-encoding') == 'chunked'
    assert header(echoed, 'content-length') is None


@pytest.mark.parametrize('size', [0, 65537])
def test_data_from_stdin_redirected_from_a_file_is_sent_with_its_length(
        servers: Servers, tmp_path: pathlib.Path, size: int) -> None:
    path = tmp_path / 'upload'
    path.write_bytes(pattern(size))
    with open(path, 'rb') as stdin:
        echoed = json_of(run_cli('-d', '@-', servers.url('/echo'), stdin=stdin))
    assert (echoed['length'], header(echoed, 'content-length')) == (size, str(size))


def test_data_from_a_fifo_is_streamed_chunked(servers: Servers, tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    data = pattern(MIB)

    def feed() -> None:
        with open(fifo, 'wb') as writer:
            writer.write(data)
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        echoed = json_of(run_cli('-d', f'@{fifo}', servers.url('/echo')))
    finally:
        feeder.join(30)
    assert (echoed['length'], echoed['sha256']) == (len(data), hashlib.sha256(data).hexdigest())
    assert header(echoed, 'transfer-encoding') == 'chunked'


@pytest.mark.parametrize('args, body, method', [
    (('-d', 'a=1'), b'a=1', 'POST'),
    (('-d', 'a=1', '-d', 'b=2'), b'a=1&b=2', 'POST'),
    (('-d', ''), b'', 'POST'),
    (('-X', 'PUT', '-d', 'x'), b'x', 'PUT'),
    (('-d', 'a=1', '-H', 'content-type: text/plain'), b'a=1', 'POST'),
])
def test_literal_data(servers: Servers, args: Sequence[str], body: bytes, method: str) -> None:
    echoed = json_of(run_cli(*args, servers.url('/echo')))
    assert (echoed['method'], echoed['length'], echoed['sha256']) == \
        (method, len(body), hashlib.sha256(body).hexdigest())
    assert header(echoed, 'content-length') == str(len(body))
    expected_type = 'text/plain' if 'content-type: text/plain' in args else \
        'application/x-www-form-urlencoded'
    assert header(echoed, 'content-type') == expected_type


def test_literal_file_and_stdin_parts_are_joined(servers: Servers, tmp_path: pathlib.Path) -> None:
    path = tmp_path / 'part'
    path.write_bytes(b'b=2')
    echoed = json_of(run_cli('-d', 'a=1', '-d', f'@{path}', '-d', '@-', servers.url('/echo'),
                             input_=b'c=3'))
    assert echoed['sha256'] == hashlib.sha256(b'a=1&b=2&c=3').hexdigest()
    assert header(echoed, 'transfer-encoding') == 'chunked'   # stdin's length is not known


def test_chunked_when_asked_even_with_a_known_length(servers: Servers) -> None:
    echoed = json_of(run_cli('-d', 'abc', '-H', 'transfer-encoding: chunked',
                             servers.url('/echo')))
    assert (echoed['length'], header(echoed, 'transfer-encoding')) == (3, 'chunked')
    assert header(echoed, 'content-length') is None


def peak_rss_of_cli(*args: str, stdin: Any = None) -> int:
    """Run lowhaio_cli.main in a child and return its peak resident set size, in bytes.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the process that
    forked, so it would report this test process's own peak if that were higher.
    """
    code = ('import re, sys, lowhaio_cli\n'
            'status = lowhaio_cli.main(sys.argv[1:])\n'
            'with open("/proc/self/status") as file:\n'
            '    sys.stderr.write("peak-rss-kib=%s\\n" % '
            're.search(r"VmHWM:\\s*(\\d+)", file.read()).group(1))\n'
            'sys.exit(status)\n')
    result = subprocess.run([sys.executable, '-c', code, *args], cwd=REPO_ROOT, stdin=stdin,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(re.search(rb'peak-rss-kib=(\d+)', result.stderr).group(1)) * 1024  # type: ignore


def test_large_transfers_run_in_bounded_memory(servers: Servers, tmp_path: pathlib.Path) -> None:
    """128 MiB up from a pipe, up from a file, and down to a file: the client's peak memory
    grows by under 16 MiB over a transfer of a few bytes."""
    size = 128 * MIB
    baseline = peak_rss_of_cli('-s', '-o', os.devnull, servers.url('/sized/10'))
    source = tmp_path / 'large'
    with open(source, 'wb') as file:
        for _ in range(size // MIB):
            file.write(pattern(MIB))
    producer = subprocess.Popen(['cat', str(source)], stdout=subprocess.PIPE)
    try:
        from_pipe = peak_rss_of_cli('-s', '-o', os.devnull, '-d', '@-', servers.url('/echo'),
                                    stdin=producer.stdout)
    finally:
        producer.stdout.close()  # type: ignore[union-attr]
        producer.wait(30)
    from_file = peak_rss_of_cli('-s', '-o', os.devnull, '-d', f'@{source}', servers.url('/echo'))
    download = peak_rss_of_cli('-s', '-o', str(tmp_path / 'down'), servers.url(f'/sized/{size}'))
    assert (tmp_path / 'down').stat().st_size == size
    for peak in (from_pipe, from_file, download):
        assert peak - baseline < 16 * MIB, (baseline, from_pipe, from_file, download)


def test_a_missing_data_file_fails_before_connecting(servers: Servers) -> None:
    result = run_cli('-d', '@/nonexistent/lowhaio-data', f'http://127.0.0.1:{refused_port()}/')
    assert result.returncode == 26
    assert b'/nonexistent/lowhaio-data' in result.stderr


# ---------------------------------------------------------------------------------------------
# -o, -i, -I
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('path, expected', [
    ('/sized/0', b''), ('/sized/1', pattern(1)), ('/sized/300000', pattern(300000)),
    ('/chunked/300000', pattern(300000)), ('/status/204', b''), ('/status/404', b'status 404'),
])
def test_output_to_a_file(servers: Servers, tmp_path: pathlib.Path, path: str,
                          expected: bytes) -> None:
    target = tmp_path / 'out'
    result = run_cli('-s', '-o', str(target), servers.url(path))
    assert (result.returncode, result.stdout) == (0, b'')
    assert target.read_bytes() == expected


def test_output_dash_is_stdout(servers: Servers) -> None:
    result = run_cli('-o', '-', servers.url('/sized/1000'))
    assert (result.returncode, result.stdout, result.stderr) == (0, pattern(1000), b'')


def test_output_overwrites_an_existing_file(servers: Servers, tmp_path: pathlib.Path) -> None:
    target = tmp_path / 'out'
    target.write_bytes(b'old content that is longer than the new one' * 100)
    assert run_cli('-s', '-o', str(target), servers.url('/sized/10')).returncode == 0
    assert target.read_bytes() == pattern(10)


@pytest.mark.parametrize('to_file', [False, True])
def test_include_writes_the_head_then_the_body(servers: Servers, tmp_path: pathlib.Path,
                                               to_file: bool) -> None:
    target = tmp_path / 'out'
    result = run_cli('-i', *(['-s', '-o', str(target)] if to_file else []),
                     servers.url('/sized/20'))
    assert result.returncode == 0
    written = target.read_bytes() if to_file else result.stdout
    head, _, body = written.partition(b'\r\n\r\n')
    lines = head.split(b'\r\n')
    assert lines[0] == b'HTTP/1.1 200'
    assert b'content-length: 20' in lines[1:]
    assert body == pattern(20)


def test_include_with_location_shows_every_hop(servers: Servers) -> None:
    result = run_cli('-i', '-L', servers.url('/redirect/2/302'))
    assert result.returncode == 0
    status_lines = re.findall(rb'^HTTP/1.1 \d+', result.stdout, re.M)
    assert status_lines == [b'HTTP/1.1 302', b'HTTP/1.1 302', b'HTTP/1.1 200']
    assert result.stdout.endswith(b'\r\n\r\n' + pattern(10))


def test_head_request_writes_the_head_only(servers: Servers) -> None:
    result = run_cli('-I', servers.url('/sized/5000'))
    assert result.returncode == 0
    assert result.stdout.startswith(b'HTTP/1.1 200\r\n')
    assert result.stdout.endswith(b'\r\n\r\n')
    assert b'content-length: 5000' in result.stdout


# ---------------------------------------------------------------------------------------------
# -L
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('code', [301, 302, 303, 307, 308])
@pytest.mark.parametrize('hops', [1, 3])
def test_location_follows_redirects(servers: Servers, code: int, hops: int) -> None:
    result = run_cli('-L', servers.url(f'/redirect/{hops}/{code}'))
    assert (result.returncode, result.stdout) == (0, pattern(10))


@pytest.mark.parametrize('code', [301, 302, 307])
def test_without_location_the_redirect_itself_is_the_answer(servers: Servers, code: int) -> None:
    result = run_cli('-i', servers.url(f'/redirect/1/{code}'))
    assert result.returncode == 0
    assert result.stdout.startswith(b'HTTP/1.1 %d\r\n' % code)
    assert result.stdout.endswith(b'\r\n\r\nmoved')


@pytest.mark.parametrize('code, method, resent', [
    (307, 'POST', True), (308, 'POST', True), (303, 'POST', False), (302, 'POST', False),
    (307, 'PUT', True),
])
def test_redirected_upload_from_a_file_is_resent_or_dropped(
        servers: Servers, tmp_path: pathlib.Path, code: int, method: str, resent: bool) -> None:
    path = tmp_path / 'upload'
    path.write_bytes(pattern(200000))
    echoed = json_of(run_cli('-L', '-X', method, '-d', f'@{path}',
                             servers.url(f'/redirect/1/{code}?to=/echo')))
    if resent:
        assert (echoed['method'], echoed['length']) == (method, 200000)
        assert echoed['sha256'] == hashlib.sha256(pattern(200000)).hexdigest()
    else:
        assert (echoed['method'], echoed['length']) == ('GET', 0)


def test_too_many_redirects(servers: Servers) -> None:
    result = run_cli('-L', '--max-redirs', '3', servers.url('/loop'))
    assert (result.returncode, result.stdout) == (47, b'')
    assert run_cli('-L', '--max-redirs', '3', servers.url('/redirect/3/301')).returncode == 0
    assert run_cli('-L', '--max-redirs', '2', servers.url('/redirect/3/301')).returncode == 47


# ---------------------------------------------------------------------------------------------
# --retry
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('failures, retries, status, body', [
    (0, 0, 0, b'ok after 1'),
    (2, 2, 0, b'ok after 3'),
    (2, 5, 0, b'ok after 3'),
    (2, 1, 0, b'try again'),     # out of retries: the last answer, as it is
    (2, 0, 0, b'try again'),
])
@pytest.mark.parametrize('method', ['GET', 'POST'])
def test_retry_on_transient_statuses(servers: Servers, failures: int, retries: int, status: int,
                                     body: bytes, method: str) -> None:
    key = f'{method}-{failures}-{retries}'
    result = run_cli('--retry', str(retries), '--retry-delay', '0', '-X', method,
                     servers.url(f'/flaky/{key}/{failures}'))
    assert (result.returncode, result.stdout) == (status, body)
    assert servers.counters.hits[key] == min(failures, retries) + 1


def test_retry_then_fail_when_retries_run_out(servers: Servers) -> None:
    result = run_cli('-f', '--retry', '1', '--retry-delay', '0', servers.url('/flaky/f/5'))
    assert (result.returncode, result.stdout) == (22, b'')
    assert servers.counters.hits['f'] == 2


def test_max_time_bounds_retries_too(servers: Servers) -> None:
    started = time.monotonic()
    result = run_cli('--retry', '10', '--retry-delay', '0.4', '--max-time', '1.5',
                     servers.url('/flaky/max-time/100'))
    elapsed = time.monotonic() - started
    assert result.returncode == 28, result.stderr
    assert 1.5 <= elapsed < 6
    assert 2 <= servers.counters.hits['max-time'] <= 5


def test_retry_resends_a_file_body(servers: Servers, tmp_path: pathlib.Path) -> None:
    path = tmp_path / 'upload'
    path.write_bytes(b'payload')
    result = run_cli('--retry', '2', '--retry-delay', '0', '-d', f'@{path}',
                     servers.url('/flaky/file-body/1'))
    assert (result.returncode, result.stdout) == (0, b'ok after 2')


def test_retry_cannot_resend_a_stdin_pipe(servers: Servers) -> None:
    result = run_cli('--retry', '2', '--retry-delay', '0', '-d', '@-',
                     servers.url('/flaky/stdin-body/1'), input_=b'payload')
    assert result.returncode == 26
    assert b'stdin' in result.stderr


@pytest.mark.parametrize('retries', [0, 2])
def test_retry_on_dns_failure(servers: Servers, retries: int) -> None:
    name = f'missing-{retries}.lowhaio.test'
    result = run_cli('--retry', str(retries), '--retry-delay', '0',
                     '--dns-servers', f'127.0.0.1:{servers.dns.port}', f'http://{name}/')
    assert result.returncode == 6
    assert servers.dns.queries.count((name, 'A')) == retries + 1


def test_retry_waits_for_retry_after(servers: Servers) -> None:
    key = 'retry-after'

    async def handler(conn: Connection) -> None:
        await conn.read_request()
        conn.write(b'HTTP/1.1 503 No\r\nretry-after: 1\r\ncontent-length: 0\r\n'
                   b'connection: close\r\n\r\n')
        servers.counters.hit(key)
    with servers.scripted(handler) as server:
        started = time.monotonic()
        result = run_cli('--retry', '1', '--retry-delay', '0', server.url('/'))
        elapsed = time.monotonic() - started
    assert result.returncode == 0
    assert servers.counters.hits[key] == 2
    assert elapsed >= 1.0


# ---------------------------------------------------------------------------------------------
# TLS: --cacert, -k, --resolve and SNI
# ---------------------------------------------------------------------------------------------

def test_tls_with_cacert_and_resolve_checks_the_host_name(servers: Servers) -> None:
    before = len(servers.sni)
    result = run_cli('--cacert', str(servers.cacert),
                     '--resolve', f'{NAME}:{servers.https.port}:127.0.0.1',
                     servers.tls_url('/sized/1000'))
    assert (result.returncode, result.stdout) == (0, pattern(1000))
    assert servers.sni[before:] == [NAME]


@pytest.mark.parametrize('args, code', [
    ((), 60),                                  # the system's CAs do not know the test CA
    (('--cacert', 'CA'), 0),
    (('-k',), 0),
    (('--cacert', '/nonexistent/ca.pem'), 77),
    (('--cacert', 'GARBAGE'), 77),
])
def test_certificate_trust(servers: Servers, tmp_path: pathlib.Path, args: Sequence[str],
                           code: int) -> None:
    garbage = tmp_path / 'garbage.pem'
    garbage.write_text('-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n')
    args = [str(servers.cacert) if arg == 'CA' else str(garbage) if arg == 'GARBAGE' else arg
            for arg in args]
    result = run_cli(*args, servers.https.url('/sized/10'))
    assert result.returncode == code, result.stderr
    assert result.stdout == (pattern(10) if code == 0 else b'')


def test_certificate_for_another_name_fails_verification(servers: Servers) -> None:
    before = len(servers.sni)
    result = run_cli('--cacert', str(servers.cacert),
                     '--resolve', f'{UNCOVERED_NAME}:{servers.https.port}:127.0.0.1',
                     servers.tls_url('/sized/10', host=UNCOVERED_NAME))
    assert result.returncode == 60
    assert servers.sni[before:] == [UNCOVERED_NAME]
    # -k skips the name check, but SNI still carries the name
    insecure = run_cli('-k', '--resolve', f'{UNCOVERED_NAME}:{servers.https.port}:127.0.0.1',
                       servers.tls_url('/sized/10', host=UNCOVERED_NAME))
    assert (insecure.returncode, insecure.stdout) == (0, pattern(10))


def test_tls_to_a_plain_http_server_fails_the_handshake(servers: Servers) -> None:
    result = run_cli('--cacert', str(servers.cacert),
                     f'https://127.0.0.1:{servers.http.port}/sized/10')
    assert result.returncode == 35


@pytest.mark.parametrize('addresses', ['127.0.0.1', '[127.0.0.1]', '127.0.0.9,127.0.0.1'])
def test_resolve_addresses(servers: Servers, addresses: str) -> None:
    # 127.0.0.9 refuses, and the next address is tried
    result = run_cli('--resolve', f'Elsewhere.Lowhaio.Test.:{servers.http.port}:{addresses}',
                     servers.http.url_for('elsewhere.lowhaio.test', '/echo'))
    echoed = json_of(result)
    assert header(echoed, 'host') == f'elsewhere.lowhaio.test:{servers.http.port}'


def test_ipv6_literal_and_resolve_to_ipv6(servers: Servers) -> None:
    with servers.background.entered(web_server(cli_app(servers.counters), host='::1')) as v6:
        literal = run_cli(v6.url('/sized/10'))
        resolved = json_of(run_cli('--resolve', f'six.lowhaio.test:{v6.port}:[::1]',
                                   v6.url_for('six.lowhaio.test', '/echo')))
    assert (literal.returncode, literal.stdout) == (0, pattern(10))
    assert header(resolved, 'host') == f'six.lowhaio.test:{v6.port}'


@pytest.mark.parametrize('bad', ['host:80', 'host:port:127.0.0.1', ':80:127.0.0.1',
                                 'host:80:not-an-address'])
def test_malformed_resolve_is_a_usage_error(servers: Servers, bad: str) -> None:
    assert run_cli('--resolve', bad, servers.url('/')).returncode == 2


# ---------------------------------------------------------------------------------------------
# DNS: --dns-servers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dns_servers', ['127.0.0.1:PORT', '[127.0.0.1]:PORT',
                                         '127.0.0.1:REFUSED,127.0.0.1:PORT'])
def test_dns_servers_resolve_the_host(servers: Servers, dns_servers: str) -> None:
    dns_servers = dns_servers.replace('REFUSED', str(refused_port()))
    result = run_cli('--dns-servers', dns_servers.replace('PORT', str(servers.dns.port)),
                     servers.http.url_for(NAME, '/sized/10'))
    assert (result.returncode, result.stdout) == (0, pattern(10)), result.stderr
    assert (NAME, 'A') in servers.dns.queries


def test_unknown_host_is_exit_6(servers: Servers) -> None:
    result = run_cli('--dns-servers', f'127.0.0.1:{servers.dns.port}',
                     'http://nowhere.lowhaio.test/')
    assert result.returncode == 6
    assert b'nowhere.lowhaio.test' in result.stderr


@pytest.mark.parametrize('bad', ['not-an-address', '127.0.0.1:port', '127.0.0.1:', '[::1',
                                 '[::1]x', '[::1]:', '127.0.0.1,nope'])
def test_malformed_dns_servers_is_a_usage_error(servers: Servers, bad: str) -> None:
    assert run_cli('--dns-servers', bad, servers.url('/')).returncode == 2


# ---------------------------------------------------------------------------------------------
# Timeouts: --connect-timeout, --max-time
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def silent_dns_server() -> Iterator[int]:
    """A UDP port that receives queries and never answers them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]


@pytest.mark.serial  # bound 0.1 s under what would show the bug, subprocess start-up included
def test_connect_timeout_bounds_a_dns_lookup(servers: Servers) -> None:
    with silent_dns_server() as port:
        started = time.monotonic()
        result = run_cli('--connect-timeout', '0.5', '--dns-servers', f'127.0.0.1:{port}',
                         'http://slow.lowhaio.test/')
        elapsed = time.monotonic() - started
    assert result.returncode == 28, result.stderr
    assert elapsed < 2.4   # the resolver alone would try for 2.5 s


async def never_answer(conn: Connection) -> None:
    await asyncio.sleep(3600)


def test_connect_timeout_bounds_the_tls_handshake(servers: Servers) -> None:
    with servers.scripted(never_answer) as server:
        started = time.monotonic()
        result = run_cli('--connect-timeout', '0.5', f'https://127.0.0.1:{server.port}/')
        elapsed = time.monotonic() - started
    assert result.returncode == 28, result.stderr
    assert elapsed < 8


@pytest.mark.parametrize('path', ['/slow-head?seconds=5', '/slow-body'])
def test_max_time_bounds_the_whole_transfer(servers: Servers, path: str) -> None:
    started = time.monotonic()
    result = run_cli('--max-time', '0.7', servers.url(path))
    elapsed = time.monotonic() - started
    assert result.returncode == 28, result.stderr
    assert 0.7 <= elapsed < 5
    assert b'--max-time' in result.stderr


def test_max_time_bounds_a_stalled_stdin_upload(servers: Servers) -> None:
    reader, writer = os.pipe()
    try:
        os.write(writer, b'some data, then nothing more for a long time')
        started = time.monotonic()
        result = run_cli('--max-time', '0.7', '-d', '@-', servers.url('/echo'), stdin=reader)
        elapsed = time.monotonic() - started
    finally:
        os.close(reader)
        os.close(writer)
    assert result.returncode == 28, result.stderr
    assert elapsed < 5


def test_max_time_long_enough_changes_nothing(servers: Servers) -> None:
    result = run_cli('--max-time', '30', '--connect-timeout', '10', servers.url('/sized/500000'))
    assert (result.returncode, result.stdout) == (0, pattern(500000))


# ---------------------------------------------------------------------------------------------
# -f/--fail
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('code', [200, 204, 301, 399, 400, 404, 500])
@pytest.mark.parametrize('fail', [False, True])
def test_fail_on_error_statuses(servers: Servers, tmp_path: pathlib.Path, code: int,
                                fail: bool) -> None:
    target = tmp_path / 'out'
    result = run_cli(*(['-f'] if fail else []), '-s', '-S', '-o', str(target),
                     servers.url(f'/status/{code}'))
    failed = fail and code >= 400
    assert result.returncode == (22 if failed else 0)
    if failed:
        assert not target.exists()
        assert b'(22)' in result.stderr and str(code).encode() in result.stderr
    else:
        assert target.read_bytes() == (b'' if code == 204 else b'status %d' % code)


# ---------------------------------------------------------------------------------------------
# -v
# ---------------------------------------------------------------------------------------------

def test_verbose_shows_both_heads_on_stderr_only(servers: Servers) -> None:
    result = run_cli('-v', '-H', 'x-v: 1', servers.url('/sized/10?q=a b'))
    assert (result.returncode, result.stdout) == (0, pattern(10))
    err = result.stderr.decode()
    assert '> GET /sized/10?q=a%20b HTTP/1.1\n' in err
    assert f'> host: 127.0.0.1:{servers.http.port}\n' in err
    assert '> x-v: 1\n' in err
    assert '< HTTP/1.1 200\n' in err
    assert '< content-length: 10\n' in err
    assert err.index('> GET') < err.index('< HTTP/1.1 200')


def test_verbose_shows_every_request_of_a_redirect_chain(servers: Servers) -> None:
    result = run_cli('-v', '-L', servers.url('/redirect/2/307'))
    err = result.stderr.decode()
    assert re.findall(r'^> GET (\S+)', err, re.M) == ['/redirect/2/307', '/redirect/1/307',
                                                      '/sized/10']
    assert re.findall(r'^< HTTP/1.1 (\d+)', err, re.M) == ['307', '307', '200']


# ---------------------------------------------------------------------------------------------
# The progress bar, with and without the cli extra
# ---------------------------------------------------------------------------------------------

def last_bar(stderr: bytes) -> str:
    """The bar as last drawn: tqdm redraws it in place with carriage returns."""
    return re.split(r'[\r\n]+', stderr.decode().strip())[-1]


@pytest.mark.parametrize('path, known', [('/sized/3145728', True), ('/chunked/3145728', False)])
def test_progress_bar_when_writing_to_a_file(servers: Servers, tmp_path: pathlib.Path, path: str,
                                             known: bool) -> None:
    target = tmp_path / 'out.bin'
    result = run_cli('-o', str(target), servers.url(path))
    assert result.returncode == 0
    assert target.read_bytes() == pattern(3 * MIB)
    bar = last_bar(result.stderr)
    assert bar.startswith('out.bin')
    assert re.search(r'[\d.]+[kMG]?B/s', bar), bar             # speed
    if known:
        assert '100%' in bar and '3.00M/3.00M' in bar, bar     # size, and how far
        assert re.search(r'\d\d:\d\d<\d\d:\d\d', bar), bar     # elapsed<remaining: the ETA
    else:
        assert '%' not in bar and '3.00M' in bar, bar


@pytest.mark.parametrize('args, shown', [
    (('--progress',), True),          # asked for, though the body goes to stdout
    ((), False),                      # stdout only: nothing on stderr
    (('-s', '--progress'), False),    # silent wins
])
def test_progress_bar_on_stdout_only_when_asked(servers: Servers, args: Sequence[str],
                                                shown: bool) -> None:
    result = run_cli(*args, servers.url('/sized/100000'))
    assert (result.returncode, result.stdout) == (0, pattern(100000))
    assert ('100%' in last_bar(result.stderr) if shown else result.stderr == b''), result.stderr


def test_silent_file_download_has_no_bar(servers: Servers, tmp_path: pathlib.Path) -> None:
    result = run_cli('-s', '-o', str(tmp_path / 'out'), servers.url('/sized/100000'))
    assert (result.returncode, result.stderr) == (0, b'')


@pytest.mark.parametrize('args, note', [
    (('-o', 'FILE'), False),            # implied: plain output, nothing said
    (('-o', 'FILE', '--progress'), True),
    (('--progress',), True),
])
def test_without_the_extra_output_is_plain(servers: Servers, tmp_path: pathlib.Path,
                                           no_tqdm: Dict[str, str], args: Sequence[str],
                                           note: bool) -> None:
    target = tmp_path / 'out'
    args = [str(target) if arg == 'FILE' else arg for arg in args]
    result = run_cli(*args, servers.url('/sized/300000'), env=no_tqdm)
    assert result.returncode == 0
    body = target.read_bytes() if 'FILE' in args or str(target) in args else result.stdout
    assert body == pattern(300000)
    if note:
        assert result.stderr == b'lowhaio: no progress bar without tqdm: ' \
                                b'pip install "lowhaio[cli]"\n'
    else:
        assert result.stderr == b''
    # The shim really blocks the import in that environment
    check = subprocess.run([sys.executable, '-c', 'import tqdm'], env={**os.environ, **no_tqdm},
                           capture_output=True)
    assert check.returncode == 1 and b'blocked for this test' in check.stderr


# ---------------------------------------------------------------------------------------------
# --compressed
# ---------------------------------------------------------------------------------------------

def test_without_compressed_the_body_is_written_as_received(servers: Servers) -> None:
    result = run_cli(servers.url('/gzip/100000'))
    assert (result.returncode, gzip.decompress(result.stdout)) == (0, pattern(100000))


@pytest.mark.parametrize('size', [0, 100000, 3 * MIB])
def test_compressed_response_is_decompressed(servers: Servers, size: int) -> None:
    result = run_cli('--compressed', '-v', servers.url(f'/gzip/{size}'))
    assert (result.returncode, result.stdout) == (0, pattern(size)), result.stderr
    assert re.search(rb'^> accept-encoding: .*gzip', result.stderr, re.M), result.stderr


def test_compressed_with_an_uncompressed_answer(servers: Servers) -> None:
    result = run_cli('--compressed', servers.url('/sized/1000'))
    assert (result.returncode, result.stdout) == (0, pattern(1000))


def test_compressed_progress_bar_counts_decoded_bytes(servers: Servers,
                                                      tmp_path: pathlib.Path) -> None:
    target = tmp_path / 'out.bin'
    result = run_cli('--compressed', '-o', str(target), servers.url(f'/gzip/{3 * MIB}'))
    assert result.returncode == 0
    assert target.read_bytes() == pattern(3 * MIB)
    bar = last_bar(result.stderr)
    # content-length is the gzip length, so the decoded length is not known in advance
    assert '%' not in bar and '3.00M' in bar, bar


def test_decompressing_a_large_body_needs_no_more_memory(servers: Servers,
                                                         tmp_path: pathlib.Path) -> None:
    baseline = peak_rss_of_cli('-s', '-o', os.devnull, servers.url('/sized/10'))
    peak = peak_rss_of_cli('--compressed', '-s', '-o', os.devnull,
                           servers.url(f'/zeros-gzip/{256 * MIB}'))
    assert peak - baseline < 16 * MIB, (baseline, peak)


@pytest.mark.parametrize('path', ['/bad-gzip', '/unknown-coding'])
def test_undecodable_response_is_exit_61(servers: Servers, path: str) -> None:
    result = run_cli('--compressed', servers.url(path))
    assert result.returncode == 61, result.stderr
    assert result.stderr.startswith(b'lowhaio: (61) ')


# ---------------------------------------------------------------------------------------------
# Exit codes for broken servers and bad input
# ---------------------------------------------------------------------------------------------

HEAD_100 = b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n'
CHUNKED = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
UNTIL_CLOSE = b'HTTP/1.1 200 OK\r\n\r\n'


@pytest.mark.parametrize('response, then, code', [
    (b'', 'close', 56),                                         # closed before any answer
    (b'', 'reset', 56),
    (b'HTTP/1.1 200 OK\r\ncontent-', 'close', 56),              # closed in the head
    (b'HTTP/1.1 200OK\r\n\r\n', 'close', 8),                    # malformed status line
    (b'HTTP/1.1 200 OK\r\nbad header\r\n\r\n', 'close', 8),
    (b'HTTP/1.1 200 OK\r\nx: ' + b'a' * 20000 + b'\r\n\r\n', 'close', 8),   # head too long
    (b'HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n', 'close', 8),
    (CHUNKED + b'zz\r\n', 'close', 8),                          # bad chunk size, in the body
    (HEAD_100 + b'x' * 10, 'close', 18),                        # body cut short by a FIN
    (CHUNKED + b'5\r\nhello\r\n', 'close', 18),                 # no last chunk
    (HEAD_100 + b'x' * 10, 'reset', 56),                        # body cut short by a reset
    (UNTIL_CLOSE + b'x' * 10, 'reset', 56),
    (UNTIL_CLOSE + b'x' * 10, 'close', 0),                      # read until close: complete
    (HEAD_100 + b'x' * 100, 'close', 0),
])
def test_broken_servers(servers: Servers, response: bytes, then: str, code: int) -> None:
    with servers.scripted(responding(response, then=then)) as server:
        result = run_cli(server.url('/'))
    assert result.returncode == code, result.stderr
    if code:
        assert result.stderr.startswith(b'lowhaio: (%d) ' % code), result.stderr
    else:
        assert result.stdout == response.partition(b'\r\n\r\n')[2]


@pytest.mark.parametrize('url, code', [
    ('ftp://127.0.0.1/', 1),
    ('http://[::1/', 3),
    ('http:///path', 3),
    ('http://127.0.0.1:99999/', 3),
    ('http://127.0.0.1:REFUSED/', 7),
])
def test_bad_urls_and_refused_connections(url: str, code: int) -> None:
    result = run_cli(url.replace('REFUSED', str(refused_port())))
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(b'lowhaio: (%d) ' % code)


def test_url_without_a_scheme_is_http(servers: Servers) -> None:
    result = run_cli(f'127.0.0.1:{servers.http.port}/sized/10')
    assert (result.returncode, result.stdout) == (0, pattern(10))


def test_unwritable_output_is_exit_23(servers: Servers) -> None:
    result = run_cli('-o', '/nonexistent/dir/out', servers.url('/sized/10'))
    assert result.returncode == 23
    assert b'/nonexistent/dir/out' in result.stderr


def test_closed_stdout_reader_is_exit_23_without_a_traceback(servers: Servers) -> None:
    process = subprocess.Popen([sys.executable, '-m', 'lowhaio', servers.url(f'/sized/{8 * MIB}')],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(1000)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(30) == 23
    assert b'Traceback' not in stderr and b'(23)' in stderr


@pytest.mark.parametrize('args', [['--no-such-option'], ['--retry', '-1'], ['--retry', 'x'],
                                  ['--max-time', 'soon'], []])
def test_usage_errors_are_exit_2(servers: Servers, args: List[str]) -> None:
    result = run_cli(*args, *([servers.url('/')] if args else []))
    assert result.returncode == 2
    assert result.stdout == b''


def test_silent_hides_errors_and_show_error_shows_them() -> None:
    url = f'http://127.0.0.1:{refused_port()}/'
    silent = run_cli('-s', url)
    shown = run_cli('-s', '-S', url)
    assert (silent.returncode, silent.stderr) == (7, b'')
    assert shown.returncode == 7 and shown.stderr.startswith(b'lowhaio: (7) ')


def restore_default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_is_exit_130(servers: Servers) -> None:
    """Ctrl-C during a transfer (the server stalls the head), three times over."""
    for _ in range(3):
        before = servers.counters.hits.get('slow-head', 0)
        process = subprocess.Popen(
            [sys.executable, '-m', 'lowhaio', servers.url('/slow-head?seconds=30')],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # A shell starts background jobs with SIGINT ignored, and children inherit that:
            # Ctrl-C is then ignored by Python itself, whatever the CLI does
            preexec_fn=restore_default_sigint)
        deadline = time.monotonic() + 20
        while servers.counters.hits.get('slow-head', 0) == before and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert b'Traceback' not in stderr
