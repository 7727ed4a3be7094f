"""lowhaio against broken and hostile servers: raw sockets that send exact bytes.

What a user relies on, whatever the server sends:

- the request returns the right body, or raises an `HttpError` subclass that names the problem,
  and does so within a bounded time;
- no file descriptor is leaked;
- nothing stale is pooled: the NEXT request on the same Pool gets its own, clean response. Every
  test below makes that second request and checks it got the server's next response (numbered,
  so a stale or replayed one cannot pass) and how many connections the server saw.

Each case is one scripted exchange: the server reads the request, then runs the case's steps
(writes, dribbles, pauses, FIN or RST). Requests after the scripted ones get a clean numbered
response on whatever connection they arrive on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
)

import pytest

from lowhaio import (
    HttpConnectionClosedBeforeResponseError,
    HttpConnectionClosedError,
    HttpDataError,
    HttpError,
    HttpHeaderTooLong,
    HttpProtocolError,
    HttpTimeoutError,
    Pool,
    buffered,
)
from support import Connection, ScriptedServer, open_fds, scripted_server, wait_for_fds

# No single request in this file may take longer than this, whatever the server does.
BOUND = 5.0
# The Pool's per-wait timeout in these tests: small, so that a test that waits is quick.
SOCKET_TIMEOUT = 1.0


# ---------------------------------------------------------------------------------------------
# The scripted server: steps a case runs after reading the request
# ---------------------------------------------------------------------------------------------

Step = Callable[[Connection], Awaitable[None]]


def send(data: bytes) -> Step:
    """Write `data` in one go."""
    async def step(conn: Connection) -> None:
        conn.write(data)
        await conn.drain()
    return step


def dribble(data: bytes, delay: float = 0.0, chunk_size: int = 1) -> Step:
    """Write `data` `chunk_size` bytes at a time, `delay` seconds apart."""
    async def step(conn: Connection) -> None:
        await conn.write_slowly(data, chunk_size=chunk_size, delay=delay)
    return step


def pause(seconds: float) -> Step:
    async def step(conn: Connection) -> None:
        await asyncio.sleep(seconds)
    return step


def fin() -> Step:
    """Close gracefully: everything written is delivered, then a FIN."""
    async def step(conn: Connection) -> None:
        await conn.drain()
        conn.close()
    return step


def rst() -> Step:
    """Close abortively: the client gets a RST."""
    async def step(conn: Connection) -> None:
        await conn.drain()
        conn.reset()
    return step


def hang() -> Step:
    """Never answer: wait for the client to give up and close its side."""
    async def step(conn: Connection) -> None:
        await conn.read_until_eof()
    return step


def fresh_body(number: int) -> bytes:
    """The body of the clean response to the server's `number`th request (counting from 1)."""
    return b'fresh-%d' % (number,)


def fresh_response(number: int) -> bytes:
    body = fresh_body(number)
    return b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s' % (len(body), body)


def serving(*exchanges: Sequence[Step]) -> Callable[[Connection], Awaitable[None]]:
    """A handler that runs each of `exchanges` for one request, in order across connections,
    then answers every further request with a clean `fresh_response`.

    A connection the steps leave open is read for its next request, so a client that wrongly
    reuses it sends that request there.
    """
    remaining = list(exchanges)
    requests_read = 0

    async def handler(conn: Connection) -> None:
        nonlocal requests_read
        try:
            while not conn.closed:
                if not await conn.read_request():
                    return
                requests_read += 1
                if remaining:
                    for step in remaining.pop(0):
                        await step(conn)
                else:
                    conn.write(fresh_response(requests_read))
                    await conn.drain()
        except (OSError, asyncio.IncompleteReadError):
            return  # the client hung up, as it should on a response it rejected

    return handler


# ---------------------------------------------------------------------------------------------
# Building responses
# ---------------------------------------------------------------------------------------------

def head(status_line: bytes, *header_lines: bytes) -> bytes:
    """A response head: the lines joined with CRLF and the empty line after them."""
    return b''.join(line + b'\r\n' for line in (status_line,) + header_lines) + b'\r\n'


OK = b'HTTP/1.1 200 OK'
HELLO = head(OK, b'content-length: 5') + b'hello'
CHUNKED_HELLO = head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n0\r\n\r\n'


def padded_head(total_length: int, *header_lines: bytes) -> bytes:
    """A head of exactly `total_length` bytes, made up to it with one x-pad header."""
    without_pad = head(OK, *header_lines, b'x-pad: ')
    return head(OK, *header_lines, b'x-pad: ' + b'a' * (total_length - len(without_pad)))


def many_headers(count: int) -> bytes:
    """A head with `count` header lines in all, one of them the content-length of 'hello'."""
    lines = [b'content-length: 5'] + [b'x-h%d: %d' % (i, i) for i in range(count - 1)]
    return head(OK, *lines)


def interim(count: int, code: bytes = b'100 Continue') -> bytes:
    return head(b'HTTP/1.1 ' + code) * count


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    steps: Tuple[Step, ...]
    # What the first request must give: the body (and code, and maybe exact headers)...
    body: Optional[bytes] = None
    code: bytes = b'200'
    headers: Optional[Tuple[Tuple[bytes, bytes], ...]] = None
    # ...or the error it must raise, whose message must match `match` (a regex, any case)
    error: Optional[Type[HttpError]] = None
    match: str = ''
    not_error: Optional[Type[HttpError]] = None
    method: bytes = b'GET'
    # How many connections the server has accepted once the second request is answered:
    # 1 means the first connection was rightly reused, 2 that it was rightly not.
    connections: int = 1
    pool: Tuple[Tuple[str, Any], ...] = ()
    # Seconds to wait between the requests, for scripts that act on the idle connection
    settle: float = 0.0
    # For deadlines: the first request must end within this many seconds (min, max)
    took: Optional[Tuple[float, float]] = None


def ok(id: str, *steps: Step, body: bytes = b'hello', connections: int = 1,
       **kwargs: Any) -> Case:
    return Case(id, steps, body=body, connections=connections, **kwargs)


def fails(id: str, error: Type[HttpError], match: str, *steps: Step, **kwargs: Any) -> Case:
    # A connection whose response failed is never reused, so the second request needs another
    return Case(id, steps, error=error, match=match, connections=kwargs.pop('connections', 2),
                **kwargs)


def case_params(cases: Sequence[Case]) -> List[Any]:
    ids = [case.id for case in cases]
    assert len(set(ids)) == len(ids), 'duplicate case ids'
    return [pytest.param(case, id=case.id) for case in cases]


MALFORMED_HEADS = [
    fails('status line HTTP/2', HttpProtocolError, r'HTTP/1|status line',
          send(b'HTTP/2 200 OK\r\ncontent-length: 5\r\n\r\nhello')),
    fails('status line HTTP/2.0', HttpProtocolError, r'HTTP/1|status line',
          send(head(b'HTTP/2.0 200 OK', b'content-length: 5') + b'hello')),
    fails('status line lowercase http', HttpProtocolError, r'HTTP/1|status line',
          send(head(b'http/1.1 200 OK', b'content-length: 5') + b'hello')),
    fails('status line garbage', HttpProtocolError, r'HTTP/1|status line',
          send(b'SSH-2.0-OpenSSH_9.6\r\n\r\n')),
    fails('status line garbage dribbled then left open', HttpProtocolError,
          r'HTTP/1|status line', dribble(b'<html><body>not http</body></html>', delay=0.01)),
    fails('status line missing SP before empty reason', HttpProtocolError, r'status line',
          send(head(b'HTTP/1.1 200', b'content-length: 5') + b'hello')),
    fails('status line missing SP before code', HttpProtocolError, r'status line',
          send(head(b'HTTP/1.1200 OK', b'content-length: 5') + b'hello')),
    fails('status line tab for SP', HttpProtocolError, r'status line',
          send(head(b'HTTP/1.1\t200 OK', b'content-length: 5') + b'hello')),
    fails('status line two-digit code', HttpProtocolError, r'status line',
          send(head(b'HTTP/1.1 20 OK', b'content-length: 5') + b'hello')),
    fails('status line four-digit code', HttpProtocolError, r'status line',
          send(head(b'HTTP/1.1 2000 OK', b'content-length: 5') + b'hello')),
    fails('status line non-digit code', HttpProtocolError, r'status line',
          send(head(b'HTTP/1.1 2x0 OK', b'content-length: 5') + b'hello')),
    fails('header name with space before colon', HttpProtocolError, r'header name',
          send(head(OK, b'content-length : 5') + b'hello')),
    fails('header name with tab before colon', HttpProtocolError, r'header name',
          send(head(OK, b'content-length\t: 5') + b'hello')),
    fails('header name with a non-token character', HttpProtocolError, r'header name',
          send(head(OK, b'x(y): 1', b'content-length: 5') + b'hello')),
    fails('header name empty', HttpProtocolError, r'header name',
          send(head(OK, b': 1', b'content-length: 5') + b'hello')),
    fails('header line without colon', HttpProtocolError, r'colon',
          send(head(OK, b'no-colon-here', b'content-length: 5') + b'hello')),
    fails('obs-fold with spaces', HttpProtocolError, r'obs-fold',
          send(head(OK, b'x-folded: a', b'   b', b'content-length: 5') + b'hello')),
    fails('obs-fold with tab', HttpProtocolError, r'obs-fold',
          send(head(OK, b'x-folded: a', b'\tb', b'content-length: 5') + b'hello')),
    fails('obs-fold of the first header line', HttpProtocolError, r'obs-fold',
          send(head(OK, b' x-folded: a', b'content-length: 5') + b'hello')),
    fails('NUL in header value', HttpProtocolError, r'character',
          send(head(OK, b'x-a: b\x00c', b'content-length: 5') + b'hello')),
    fails('CR in header value', HttpProtocolError, r'character|CR',
          send(head(OK, b'x-a: b\rc', b'content-length: 5') + b'hello')),
    fails('bare LF inside header block', HttpProtocolError, r'character|LF',
          send(head(OK, b'x-a: b\nx-b: c', b'content-length: 5') + b'hello')),
    fails('DEL in header value', HttpProtocolError, r'character',
          send(head(OK, b'x-a: b\x7fc', b'content-length: 5') + b'hello')),
    fails('interim response with malformed header', HttpProtocolError, r'colon',
          send(head(b'HTTP/1.1 100 Continue', b'broken') + HELLO)),
    # A head that never ends in CRLF CRLF is not a head: the close comes before one does
    fails('bare LF line endings then FIN', HttpConnectionClosedError, r'head',
          send(b'HTTP/1.1 200 OK\ncontent-length: 5\n\nhello'), fin()),
]

WELL_FORMED_HEADS = [
    ok('status line with empty reason after SP', send(head(b'HTTP/1.1 200 ',
                                                         b'content-length: 5') + b'hello')),
    ok('status code other than 200 with a body', send(head(b'HTTP/1.1 404 Not Found',
                                                           b'content-length: 5') + b'hello'),
       code=b'404'),
    ok('header value with obs-text and tabs',
       send(head(OK, b'x-a:\t\xe9t\xe9 \t', b'content-length: 5') + b'hello'),
       headers=((b'x-a', b'\xe9t\xe9'), (b'content-length', b'5'))),
    ok('header names lowercased, values kept', send(head(OK, b'X-Mixed-Case: MiXeD',
                                                         b'Content-Length: 5') + b'hello'),
       headers=((b'x-mixed-case', b'MiXeD'), (b'content-length', b'5'))),
    ok('HTTP/1.9 minor version treated as HTTP/1.1',
       send(head(b'HTTP/1.9 200 OK', b'content-length: 5') + b'hello')),
]

HEAD_SIZE_LIMITS = [
    ok('head of exactly max_header_length is accepted',
       send(padded_head(1024, b'content-length: 5') + b'hello'),
       pool=(('max_header_length', 1024),)),
    fails('head one byte over max_header_length in one write', HttpHeaderTooLong,
          r'max_header_length', send(padded_head(1025, b'content-length: 5') + b'hello'),
          pool=(('max_header_length', 1024),)),
    fails('head one byte over max_header_length dribbled one byte at a time',
          HttpHeaderTooLong, r'max_header_length',
          dribble(padded_head(1025, b'content-length: 5') + b'hello'),
          pool=(('max_header_length', 1024),)),
    fails('head far over max_header_length, never ending', HttpHeaderTooLong,
          r'max_header_length', send(OK + b'\r\nx-pad: ' + b'a' * 100000),
          pool=(('max_header_length', 1024),)),
    fails('head over the default max_header_length of 16384', HttpHeaderTooLong,
          r'max_header_length', send(padded_head(16385, b'content-length: 5') + b'hello')),
    ok('long body in the same write as a short head is not counted as head',
       send(head(OK, b'content-length: 3000') + b'b' * 3000), body=b'b' * 3000,
       pool=(('max_header_length', 1024),)),
    ok('100 header lines (the default limit) are accepted', send(many_headers(100) + b'hello')),
    fails('101 header lines are too many', HttpHeaderTooLong, r'header lines',
          send(many_headers(101) + b'hello')),
    fails('header lines over a lower max_header_count', HttpHeaderTooLong, r'header lines',
          send(many_headers(11) + b'hello'), pool=(('max_header_count', 10),)),
]

INTERIM_RESPONSES = [
    ok('100 Continue skipped', send(interim(1) + HELLO),
       headers=((b'content-length', b'5'),)),
    ok('103 Early Hints with headers skipped',
       send(head(b'HTTP/1.1 103 Early Hints', b'link: </style.css>; rel=preload') + HELLO),
       headers=((b'content-length', b'5'),)),
    ok('100, 102 and 103 in a row skipped',
       send(interim(1) + interim(1, b'102 Processing') + interim(1, b'103 Early Hints') +
            HELLO)),
    ok('interim responses in separate delayed writes skipped',
       send(interim(1)), pause(0.05), send(interim(1, b'103 Early Hints')), pause(0.05),
       send(HELLO)),
    ok('interim and final response dribbled one byte at a time',
       dribble(interim(2) + HELLO)),
    ok('16 interim responses (the limit) skipped', send(interim(16) + HELLO)),
    fails('17 interim responses are too many', HttpProtocolError, r'informational',
          send(interim(17) + HELLO)),
    fails('endless interim responses in separate writes', HttpProtocolError, r'informational',
          *[send(interim(1)) for _ in range(20)]),
    ok('101 Switching Protocols is final, bodiless and never reused',
       send(head(b'HTTP/1.1 101 Switching Protocols', b'upgrade: x', b'connection: upgrade')),
       code=b'101', body=b'', connections=2),
]

NO_BODY_RESPONSES = [
    ok('HEAD with content-length but no body', send(head(OK, b'content-length: 5')),
       method=b'HEAD', body=b''),
    ok('HEAD with chunked transfer-encoding but no body',
       send(head(OK, b'transfer-encoding: chunked')), method=b'HEAD', body=b''),
    ok('HEAD 404 with content-length but no body',
       send(head(b'HTTP/1.1 404 Not Found', b'content-length: 9')), method=b'HEAD', body=b'',
       code=b'404'),
    ok('204 with content-length but no body', send(head(b'HTTP/1.1 204 No Content',
                                                        b'content-length: 5')),
       body=b'', code=b'204'),
    ok('204 with chunked transfer-encoding but no body',
       send(head(b'HTTP/1.1 204 No Content', b'transfer-encoding: chunked')), body=b'',
       code=b'204'),
    ok('204 with no headers', send(head(b'HTTP/1.1 204 No Content')), body=b'', code=b'204'),
    ok('304 with content-length but no body', send(head(b'HTTP/1.1 304 Not Modified',
                                                        b'content-length: 100')),
       body=b'', code=b'304'),
    ok('304 with chunked transfer-encoding but no body',
       send(head(b'HTTP/1.1 304 Not Modified', b'transfer-encoding: chunked')), body=b'',
       code=b'304'),
    ok('HEAD response in slow pieces', dribble(head(OK, b'content-length: 5'), delay=0.002),
       method=b'HEAD', body=b''),
]

TRANSFER_ENCODING = [
    ok('transfer-encoding and content-length: read as chunked, connection not reused',
       send(head(OK, b'transfer-encoding: chunked', b'content-length: 100') +
            b'5\r\nhello\r\n0\r\n\r\n'), connections=2),
    ok('content-length before transfer-encoding: read as chunked, connection not reused',
       send(head(OK, b'content-length: 2', b'transfer-encoding: chunked') +
            b'5\r\nhello\r\n0\r\n\r\n'), connections=2),
    ok('transfer-encoding Chunked in any case', send(head(OK, b'transfer-encoding: ChUnKeD') +
                                                     b'5\r\nhello\r\n0\r\n\r\n')),
    ok('transfer-encoding over two lines ending in chunked',
       send(head(OK, b'transfer-encoding: gzip', b'transfer-encoding: chunked') +
            b'5\r\nhello\r\n0\r\n\r\n')),
    ok('transfer-encoding not ending in chunked: read until close',
       send(head(OK, b'transfer-encoding: gzip') + b'raw bytes'), pause(0.02),
       send(b' until close'), fin(), body=b'raw bytes until close', connections=2),
    ok('transfer-encoding chunked then gzip: read until close',
       send(head(OK, b'transfer-encoding: chunked, gzip') + b'5\r\nhello\r\n0\r\n\r\n'), fin(),
       body=b'5\r\nhello\r\n0\r\n\r\n', connections=2),
    fails('transfer-encoding in HTTP/1.0', HttpProtocolError, r'HTTP/1\.0',
          send(head(b'HTTP/1.0 200 OK', b'transfer-encoding: chunked') +
               b'5\r\nhello\r\n0\r\n\r\n')),
    fails('chunked applied twice', HttpProtocolError, r'chunked',
          send(head(OK, b'transfer-encoding: chunked, chunked') +
               b'5\r\nhello\r\n0\r\n\r\n')),
]

CONTENT_LENGTH = [
    *[
        fails('content-length %r' % (value,), HttpProtocolError, r'content-length',
              send(head(OK, b'content-length: ' + value) + b'hello'))
        for value in (b'+5', b'-5', b'0x5', b'5.0', b'5 5', b'five', b'5, 6', b'5,,6',
                      b'1' * 19)
    ],
    fails('content-length empty', HttpProtocolError, r'content-length',
          send(head(OK, b'content-length:') + b'hello')),
    fails('content-length on two lines that differ', HttpProtocolError, r'content-length',
          send(head(OK, b'content-length: 5', b'content-length: 6') + b'hello')),
    ok('content-length list of identical values', send(head(OK, b'content-length: 5, 5') +
                                                       b'hello')),
    ok('content-length on two identical lines', send(head(OK, b'content-length: 5',
                                                          b'content-length: 5') + b'hello')),
    ok('content-length with leading zeros', send(head(OK, b'content-length: 005') + b'hello')),
    ok('content-length 0', send(head(OK, b'content-length: 0')), body=b''),
    ok('content-length with a large body in pieces',
       send(head(OK, b'content-length: 300000')), *[send(b'x' * 30000) for _ in range(10)],
       body=b'x' * 300000),
]

CONNECTION_REUSE = [
    ok('HTTP/1.1 without length or chunking: body until FIN, not reused',
       send(head(OK) + b'hello'), pause(0.02), send(b' world'), fin(),
       body=b'hello world', connections=2),
    ok('HTTP/1.1 without length, server keeps writing slowly then FINs',
       send(head(OK)), dribble(b'0123456789', delay=0.01), fin(),
       body=b'0123456789', connections=2),
    ok('HTTP/1.1 without length, empty body then FIN', send(head(OK)), fin(), body=b'',
       connections=2),
    ok('HTTP/1.0 without length: body until FIN', send(head(b'HTTP/1.0 200 OK') + b'hello'),
       fin(), connections=2),
    ok('connection: close with content-length: not reused although the server keeps it',
       send(head(OK, b'connection: close', b'content-length: 5') + b'hello'), connections=2),
    ok('connection: keep-alive, close: not reused',
       send(head(OK, b'connection: keep-alive, close', b'content-length: 5') + b'hello'),
       connections=2),
    ok('HTTP/1.0 with content-length: not reused without keep-alive',
       send(head(b'HTTP/1.0 200 OK', b'content-length: 5') + b'hello'), connections=2),
    ok('HTTP/1.0 with content-length and connection: keep-alive: reused',
       send(head(b'HTTP/1.0 200 OK', b'connection: Keep-Alive', b'content-length: 5') +
            b'hello')),
]

CHUNKED = [
    ok('chunk extensions ignored',
       send(head(OK, b'transfer-encoding: chunked') +
            b'2;name=value\r\nhe\r\n3 ; quoted="a;b c"\r\nllo\r\n0;last\r\n\r\n')),
    ok('trailers discarded',
       send(head(OK, b'transfer-encoding: chunked') +
            b'5\r\nhello\r\n0\r\nx-trailer: 1\r\nx-other: two\r\n\r\n'),
       headers=((b'transfer-encoding', b'chunked'),)),
    ok('hex chunk sizes in either case, with leading zeros',
       send(head(OK, b'transfer-encoding: chunked') +
            b'000a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n'),
       body=b'0123456789abcdefghij'),
    ok('chunked body dribbled one byte at a time', dribble(CHUNKED_HELLO, delay=0.001)),
    ok('chunked body in pieces split inside every line',
       dribble(CHUNKED_HELLO, chunk_size=3, delay=0.005)),
    fails('missing CRLF after chunk data', HttpProtocolError, r'CRLF',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhelloXX0\r\n\r\n')),
    fails('bare LF after chunk data', HttpProtocolError, r'CRLF',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\n0\r\n\r\n')),
    fails('chunk data longer than its size', HttpProtocolError, r'CRLF',
          send(head(OK, b'transfer-encoding: chunked') + b'3\r\nhello\r\n0\r\n\r\n')),
    fails('chunk size not hex', HttpProtocolError, r'chunk',
          send(head(OK, b'transfer-encoding: chunked') + b'zz\r\nhello\r\n0\r\n\r\n')),
    fails('chunk size negative', HttpProtocolError, r'chunk',
          send(head(OK, b'transfer-encoding: chunked') + b'-5\r\nhello\r\n0\r\n\r\n')),
    fails('chunk size line empty', HttpProtocolError, r'chunk',
          send(head(OK, b'transfer-encoding: chunked') + b'\r\nhello\r\n0\r\n\r\n')),
    fails('chunk size of 17 hex digits', HttpProtocolError, r'chunk',
          send(head(OK, b'transfer-encoding: chunked') + b'1' * 17 + b'\r\nhello')),
    fails('chunk size line longer than 4096 bytes', HttpProtocolError, r'too long',
          send(head(OK, b'transfer-encoding: chunked') + b'5;x=' + b'a' * 5000 + b'\r\n')),
    fails('malformed trailer', HttpProtocolError, r'header name',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n0\r\nx y: 1\r\n\r\n')),
    fails('endless trailers', HttpProtocolError, r'too long',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n0\r\n' +
               b'x-t: aaaaaaaaaaaaaaaa\r\n' * 2000)),
]

TRUNCATED = [
    fails('FIN before any byte of the response', HttpConnectionClosedError, r'closed',
          fin(), not_error=HttpConnectionClosedBeforeResponseError),
    fails('RST before any byte of the response', HttpDataError, r'closed|reset',
          rst(), not_error=HttpConnectionClosedBeforeResponseError),
    fails('FIN in the middle of the head', HttpConnectionClosedError, r'head',
          send(b'HTTP/1.1 200 OK\r\ncontent-'), fin()),
    fails('RST in the middle of the head', HttpDataError, r'closed|reset',
          send(b'HTTP/1.1 200 OK\r\ncontent-'), rst()),
    fails('FIN after the status line', HttpConnectionClosedError, r'head',
          send(b'HTTP/1.1 200 OK\r\n'), fin()),
    fails('FIN after an interim response', HttpConnectionClosedError, r'head',
          send(interim(1)), fin()),
    fails('content-length body cut short by FIN', HttpConnectionClosedError, r'missing',
          send(head(OK, b'content-length: 10') + b'hello'), fin()),
    fails('content-length body cut short by RST', HttpDataError, r'closed|reset',
          send(head(OK, b'content-length: 10') + b'hello'), rst()),
    fails('content-length body cut short by FIN after a slow start',
          HttpConnectionClosedError, r'missing',
          send(head(OK, b'content-length: 10')), pause(0.02), send(b'hel'), pause(0.02),
          send(b'lo'), fin()),
    fails('content-length body cut short by RST after a slow start', HttpDataError, r'closed|reset',
          send(head(OK, b'content-length: 10')), pause(0.02), send(b'hello'), pause(0.02),
          rst()),
    fails('content-length head then FIN with no body', HttpConnectionClosedError, r'missing',
          send(head(OK, b'content-length: 5')), fin()),
    fails('chunked ending before the last chunk by FIN', HttpConnectionClosedError,
          r'last chunk', send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n'),
          fin()),
    fails('chunked ending before the last chunk by RST', HttpDataError, r'closed|reset',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n'), pause(0.02),
          rst()),
    fails('chunked ending inside chunk data by FIN', HttpConnectionClosedError, r'closed',
          send(head(OK, b'transfer-encoding: chunked') + b'a\r\nhello'), fin()),
    fails('chunked ending inside chunk data by RST', HttpDataError, r'closed|reset',
          send(head(OK, b'transfer-encoding: chunked') + b'a\r\nhello'), pause(0.02), rst()),
    fails('chunked ending inside a chunk-size line', HttpConnectionClosedError, r'closed',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n0'), fin()),
    fails('chunked ending after the last chunk, before the trailer end',
          HttpConnectionClosedError, r'closed',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n0\r\n'), fin()),
    fails('chunked ending inside a trailer', HttpConnectionClosedError, r'closed',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n0\r\nx-t: 1\r\n'),
          fin()),
    # With no length, only a graceful close marks the end: a reset may have cut the body short
    fails('body until close ended by RST rather than FIN', HttpDataError, r'closed|reset',
          send(head(OK) + b'hello'), pause(0.02), rst()),
]

EXCESS_BYTES = [
    ok('garbage after a content-length body in the same write',
       send(HELLO + b'GARBAGE'), connections=2),
    ok('garbage after a content-length body, body arriving after the head',
       send(head(OK, b'content-length: 5')), pause(0.02), send(b'helloGARBAGE'),
       connections=2),
    ok('a whole unrequested response after the body in the same write',
       send(HELLO + b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE'), connections=2),
    ok('garbage after the end of a chunked body in the same write',
       send(CHUNKED_HELLO + b'GARBAGE'), connections=2),
    ok('garbage after the end of a chunked body, arriving with its last chunk',
       send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n'), pause(0.02),
       send(b'0\r\n\r\nGARBAGE'), connections=2),
    ok('HEAD answered with a body anyway', send(HELLO), method=b'HEAD', body=b'',
       connections=2),
    ok('204 followed by bytes', send(head(b'HTTP/1.1 204 No Content') + b'hello'), code=b'204',
       body=b'', connections=2),
    ok('304 followed later by a body, while idle',
       send(head(b'HTTP/1.1 304 Not Modified', b'content-length: 5')), pause(0.05),
       send(b'hello'), code=b'304', body=b'', connections=2, settle=0.3),
    ok('garbage arriving on the idle connection after a delay',
       send(HELLO), pause(0.05), send(b'GARBAGE'), connections=2, settle=0.3),
    ok('a whole unrequested response arriving on the idle connection',
       send(HELLO), pause(0.05), send(b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE'),
       connections=2, settle=0.3),
    ok('server closing the idle connection with FIN: next request on a fresh one',
       send(HELLO), pause(0.05), fin(), connections=2, settle=0.3),
    ok('server closing the idle connection with RST: next request on a fresh one',
       send(HELLO), pause(0.05), rst(), connections=2, settle=0.3),
    ok('server closing the connection with FIN right after the body',
       send(HELLO), fin(), connections=2, settle=0.1),
]

SLOW_WRITES = [
    ok('content-length response one byte at a time', dribble(HELLO, delay=0.002)),
    ok('content-length response two bytes at a time, splitting CRLF CRLF',
       dribble(HELLO, chunk_size=2, delay=0.005)),
    ok('head and body in separate delayed writes',
       send(head(OK, b'content-length: 5')), pause(0.05), send(b'hel'), pause(0.05),
       send(b'lo')),
    ok('body until close one byte at a time', dribble(head(OK) + b'hello', delay=0.002), fin(),
       connections=2),
]

TIMEOUTS = [
    fails('server that never answers: socket_timeout', HttpTimeoutError, r'timed out',
          hang(), pool=(('socket_timeout', 0.5),), took=(0.4, 1.5)),
    fails('head dribbled past response_head_timeout: the total deadline', HttpTimeoutError,
          r'timed out', dribble(padded_head(200, b'content-length: 5'), delay=0.05),
          pool=(('response_head_timeout', 0.5),), took=(0.4, 1.5)),
    fails('head stalling after the status line', HttpTimeoutError, r'timed out',
          send(b'HTTP/1.1 200 OK\r\n'), hang(), pool=(('socket_timeout', 0.5),),
          took=(0.4, 1.5)),
    fails('content-length body stalling', HttpTimeoutError, r'timed out',
          send(head(OK, b'content-length: 10') + b'hello'), hang(),
          pool=(('socket_timeout', 0.5),), took=(0.4, 1.5)),
    fails('chunked body stalling before the last chunk', HttpTimeoutError, r'timed out',
          send(head(OK, b'transfer-encoding: chunked') + b'5\r\nhello\r\n'), hang(),
          pool=(('socket_timeout', 0.5),), took=(0.4, 1.5)),
    fails('body until close stalling', HttpTimeoutError, r'timed out',
          send(head(OK) + b'hello'), hang(), pool=(('socket_timeout', 0.5),),
          took=(0.4, 1.5)),
]


# ---------------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------------

async def fetch(request: Any, url: str, method: bytes = b'GET') -> Tuple[
        bytes, Tuple[Tuple[bytes, bytes], ...], bytes]:
    """A request with its whole body read, bounded in time whatever the server does."""
    async def whole() -> Tuple[bytes, Tuple[Tuple[bytes, bytes], ...], bytes]:
        code, headers, body = await request(method, url)
        return code, headers, await buffered(body)
    return await asyncio.wait_for(whole(), BOUND)


@contextlib.asynccontextmanager
async def leak_checked_pool(**options: Any) -> AsyncIterator[Any]:
    """A Pool that must leave no file descriptor open once closed.

    Call it after the server listens: the count includes the server's sockets, and its
    handlers end when the client closes, so a socket lowhaio forgot keeps both ends open.
    """
    baseline = open_fds()
    request, close = Pool(**{'socket_timeout': SOCKET_TIMEOUT, **options})
    try:
        yield request
    finally:
        await close()
    remaining = await wait_for_fds(baseline)
    assert remaining <= baseline, 'file descriptors leaked: %d open, %d before the Pool' % (
        remaining, baseline)


async def assert_next_request_is_clean(request: Any, server: ScriptedServer,
                                       number: int, connections: int) -> None:
    """The `number`th request gets the server's own fresh response, on the expected
    connection, and afterwards only that one clean connection is idle in the pool."""
    code, _, body = await fetch(request, server.url('/next'))
    assert (code, body) == (b'200', fresh_body(number))
    assert server.connections == connections
    assert request.status()[('http', server.host, server.port)] == {
        'idle': 1, 'in_use': 0, 'waiting': 0}


async def run_case(case: Case) -> None:
    async with scripted_server(serving(case.steps)) as server:
        async with leak_checked_pool(**dict(case.pool)) as request:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if case.error is None:
                code, headers, body = await fetch(request, server.url('/first'), case.method)
                assert (code, body) == (case.code, case.body)
                if case.headers is not None:
                    assert headers == case.headers
            else:
                with pytest.raises(case.error, match='(?i)' + case.match) as raised:
                    await fetch(request, server.url('/first'), case.method)
                if case.not_error is not None:
                    assert not isinstance(raised.value, case.not_error)
                if case.error is HttpTimeoutError:
                    assert isinstance(raised.value.__cause__, asyncio.TimeoutError)
            if case.took is not None:
                shortest, longest = case.took
                assert shortest <= loop.time() - started <= longest

            await asyncio.sleep(case.settle)
            await assert_next_request_is_clean(request, server, 2, case.connections)
        assert not server.errors


@pytest.mark.parametrize('case', case_params(MALFORMED_HEADS))
async def test_malformed_head_is_rejected(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(WELL_FORMED_HEADS))
async def test_well_formed_head_is_accepted(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(HEAD_SIZE_LIMITS))
async def test_head_size_is_bounded(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(INTERIM_RESPONSES))
async def test_interim_responses_are_skipped_up_to_a_limit(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(NO_BODY_RESPONSES))
async def test_bodiless_response_leaves_the_connection_reusable(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(TRANSFER_ENCODING))
async def test_transfer_encoding_framing(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(CONTENT_LENGTH))
async def test_content_length_framing(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(CONNECTION_REUSE))
async def test_connection_reused_only_when_the_response_allows(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(CHUNKED))
async def test_chunked_framing(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(TRUNCATED))
async def test_truncated_response_is_an_error_never_a_short_body(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(EXCESS_BYTES))
async def test_unexpected_bytes_never_reach_the_next_request(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(SLOW_WRITES))
async def test_slow_partial_writes_give_the_whole_body(case: Case) -> None:
    await run_case(case)


@pytest.mark.parametrize('case', case_params(TIMEOUTS))
async def test_silent_or_slow_server_times_out(case: Case) -> None:
    await run_case(case)


# ---------------------------------------------------------------------------------------------
# A reused connection that dies when given the next request
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('close', [fin, rst], ids=['FIN', 'RST'])
async def test_reused_connection_dying_before_any_response_byte(
        close: Callable[[], Step]) -> None:
    """The server closed a keep-alive connection just as the next request went out: that
    request was never processed, which the error's class says, so an idempotent request
    may be retried; and the retry gets a new connection."""
    async with scripted_server(serving((send(HELLO),), (close(),))) as server:
        async with leak_checked_pool() as request:
            assert (await fetch(request, server.url('/first')))[2] == b'hello'
            with pytest.raises(HttpConnectionClosedBeforeResponseError):
                await fetch(request, server.url('/second'))
            assert server.connections == 1
            await assert_next_request_is_clean(request, server, 3, connections=2)
        assert not server.errors


@pytest.mark.parametrize('close', [fin, rst], ids=['FIN', 'RST'])
async def test_reused_connection_dying_after_part_of_the_head(
        close: Callable[[], Step]) -> None:
    """Once any byte of the response arrived, the server did process the request: not the
    retry-safe error."""
    async with scripted_server(serving((send(HELLO),),
                                       (send(b'HTTP/1.1 2'), pause(0.02), close()))) as server:
        async with leak_checked_pool() as request:
            assert (await fetch(request, server.url('/first')))[2] == b'hello'
            with pytest.raises(HttpDataError) as raised:
                await fetch(request, server.url('/second'))
            assert not isinstance(raised.value, HttpConnectionClosedBeforeResponseError)
            await assert_next_request_is_clean(request, server, 3, connections=2)
        assert not server.errors


@pytest.mark.timeout(10)
async def test_garbage_the_loop_has_not_yet_reported_is_caught_before_reuse() -> None:
    """Bytes already in the kernel's buffer when the next request starts, before the event
    loop has run its read callback: the connection must still not be reused."""
    written = asyncio.Event()

    async def write_garbage_and_tell(conn: Connection) -> None:
        conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE')
        await conn.drain()
        written.set()

    async with scripted_server(serving((send(HELLO), pause(0.05), write_garbage_and_tell))) \
            as server:
        async with leak_checked_pool() as request:
            assert (await fetch(request, server.url('/first')))[2] == b'hello'
            await written.wait()
            # Loopback delivers at once; give it a moment without running the loop. Then the
            # request is made in this task, not via wait_for's new one, so that lowhaio takes
            # the idle connection before the loop runs again and reports the bytes.
            time.sleep(0.05)
            code, _, body = await request(b'GET', server.url('/next'))
            assert (code, await asyncio.wait_for(buffered(body), BOUND)) == (
                b'200', fresh_body(2))
            assert server.connections == 2
        assert not server.errors

