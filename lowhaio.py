"""lowhaio: a lean, streaming-first asyncio HTTP/1.1 client.

    request, close = Pool()
    code, headers, body = await request(b'GET', 'https://example.com/')
    async for chunk in body:
        ...
    await close()

The module has two layers. The parsing layer (status line, header block, framing decision,
chunked decoding) is pure: it takes bytes and returns values or raises an `HttpError`
subclass, and never touches a socket. The I/O layer above it (`_Connection`, `Pool`) only
moves bytes between asyncio transports and that parsing layer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import sys
import urllib.parse
from collections import OrderedDict, deque
from itertools import compress, count, repeat
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Protocol,
    TYPE_CHECKING,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from aiodnsresolver import (
    TYPES,
    DnsError,
    DnsRecordDoesNotExist,
    DnsTimeout,
    Resolver,
    parse_etc_hosts,
    ResolverLoggerAdapter,
)

__all__ = [
    'Pool',
    'streamed',
    'buffered',
    'timeout',
    'deadline',
    'PoolStatus',
    'ResponseHeaders',
    'empty_async_iterator',
    'HttpError',
    'HttpConnectionError',
    'HttpDnsError',
    'HttpTlsError',
    'HttpPoolTimeoutError',
    'HttpDataError',
    'HttpConnectionClosedError',
    'HttpConnectionClosedBeforeResponseError',
    'HttpHeaderTooLong',
    'HttpProtocolError',
    'HttpTimeoutError',
    'HttpInvalidRequestError',
    'HttpProxyError',
    'Headers',
    'Params',
    'BodyFunction',
    'BodyKwargs',
    'ResponseBody',
    'Response',
    'Request',
    'PoolRequest',
    'Close',
]

# ---------------------------------------------------------------------------------------------
# Public types, for code that calls or wraps `request` (the helper modules do both).
# ---------------------------------------------------------------------------------------------

Headers = Tuple[Tuple[bytes, bytes], ...]
Params = Sequence[Tuple[str, str]]
# A request body: an async generator function, called as body(*body_args, **dict(body_kwargs))
# for each attempt, so that a request can be replayed
BodyFunction = Callable[..., AsyncIterator[bytes]]
BodyKwargs = Union[Sequence[Tuple[str, Any]], Mapping[str, Any]]


class ResponseBody(Protocol):
    """A response body: an async iterator of bytes that can be closed before its end."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def __anext__(self) -> Awaitable[bytes]: ...

    def aclose(self) -> Awaitable[None]: ...


# (status code, headers, body), e.g. (b'200', ((b'content-type', b'text/plain'),), body)
Response = Tuple[bytes, Headers, ResponseBody]


class Request(Protocol):
    """`request` from `Pool()`, and what every helper takes and returns. Type checkers see
    the arguments after `url` as keyword-only, so that a wrapper can take them as **kwargs."""

    async def __call__(self, method: bytes, url: str, *, params: Params = (),
                       headers: Headers = (), body: BodyFunction = ...,
                       body_args: Sequence[Any] = (), body_kwargs: BodyKwargs = (),
                       ) -> Response: ...


class PoolRequest(Request, Protocol):
    """`request` as `Pool()` returns it: a `Request` that can also report the pool's state."""

    def status(self) -> PoolStatus: ...


class Close(Protocol):
    """`close` from `Pool()`."""

    async def __call__(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Exceptions. The split that matters to a caller is whether any of the request was sent:
# HttpConnectionError means nothing was, so any request may be retried; HttpDataError means
# something was, so only an idempotent request may be.
# ---------------------------------------------------------------------------------------------

class HttpError(Exception):
    """Base class of every error this module raises."""


class HttpConnectionError(HttpError):
    """No byte of the request was sent: retrying is safe for any method."""


class HttpDnsError(HttpConnectionError):
    """The host name could not be resolved."""


class HttpTlsError(HttpConnectionError):
    """The TLS handshake failed (including certificate verification)."""


class HttpPoolTimeoutError(HttpConnectionError):
    """No connection slot to the host became free within `pool_timeout`."""


class HttpDataError(HttpError):
    """Some of the request may have been sent: retry only an idempotent request."""


class HttpConnectionClosedError(HttpDataError):
    """The connection closed before the response was complete."""


class HttpConnectionClosedBeforeResponseError(HttpConnectionClosedError):
    """A reused keep-alive connection closed before any byte of the response arrived.

    The server did not process the request (it had closed the idle connection), so an
    idempotent request is safe to retry."""


class HttpHeaderTooLong(HttpDataError):
    """The response head exceeded `max_header_length` bytes or the header count limit."""


class HttpProtocolError(HttpDataError):
    """The server's response broke the HTTP/1.1 grammar or framing rules (RFC 9112)."""


class HttpTimeoutError(HttpDataError):
    """A deadline passed after the request was (partly) sent. The cause is an
    `asyncio.TimeoutError`."""


class HttpInvalidRequestError(HttpError, ValueError):
    """The caller's method, URL or headers are malformed: raised before connecting."""


# ---------------------------------------------------------------------------------------------
# Grammar (RFC 9110 §5, RFC 9112), written once and used everywhere.
# ---------------------------------------------------------------------------------------------

# token = 1*tchar (RFC 9110 §5.6.2)
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = _TCHAR + rb'+'
# field-vchar = VCHAR / obs-text; field values may also hold SP and HTAB (RFC 9110 §5.5).
# Every other control character, NUL, CR and LF included, is outside the grammar.
_FIELD_CHAR = rb'[\t !-~\x80-\xff]'
# field-line = field-name ":" OWS field-value OWS (RFC 9112 §5). No whitespace is allowed
# between the name and the colon (§5.1), and a line starting with whitespace is obs-fold.
# The value starts with a visible character, so that the leading OWS and the value can split
# a run of spaces in one way only: otherwise a line of spaces ending in a bad byte would be
# tried at every split, in time quadratic in its length. Trailing OWS is stripped after.
_FIELD_LINE = rb'(' + _TOKEN + rb'):[ \t]*((?:[!-~\x80-\xff]' + _FIELD_CHAR + rb'*)?)\r\n'

_TOKEN_RE = re.compile(_TOKEN)
_TCHAR_RE = re.compile(_TCHAR)
_FIELD_LINE_RE = re.compile(_FIELD_LINE)
# status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4);
# HTTP-version = "HTTP/" DIGIT "." DIGIT; a 1.x minor above 1 is treated as 1.1 (RFC 9110 §2.5).
_STATUS_LINE_RE = re.compile(rb'HTTP/1\.([0-9]) ([0-9]{3}) (' + _FIELD_CHAR + rb'*)\r\n')
# Content-Length = 1*DIGIT (RFC 9110 §8.6), bounded so that it stays a sane integer.
_CONTENT_LENGTH_RE = re.compile(rb'[0-9]{1,18}')
# chunk-size = 1*HEXDIG; chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# (RFC 9112 §7.1). Extensions are ignored, so only their characters are checked.
_CHUNK_SIZE_LINE_RE = re.compile(rb'([0-9A-Fa-f]{1,16})(?:[ \t]*;' + _FIELD_CHAR + rb'*)?\r\n')
# The CRLF that ends a chunk's data and the next chunk-size line, matched at once
_CRLF_CHUNK_SIZE_LINE_RE = re.compile(rb'\r\n' + _CHUNK_SIZE_LINE_RE.pattern)
# reg-name = *( unreserved / pct-encoded / sub-delims ) (RFC 3986 §3.2.2), as sent
_REG_NAME_RE = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=]+")
# Characters a request header value may not hold: they would end the line early or
# truncate it in some servers, letting a caller inject a second header or request.
_FORBIDDEN_IN_VALUE_RE = re.compile(rb'[\x00\r\n]')

_MAX_CHUNK_SIZE_LINE = 4096
# What a ChunkedDecoder expects next: module globals, which are cheaper to read than attributes
_CHUNKED_SIZE, _CHUNKED_DATA, _CHUNKED_DATA_END, _CHUNKED_TRAILER = range(4)
# What a ChunkedDecoder slices a chunk's data from: the bytes fed, or a view of them
_BytesOrView = TypeVar('_BytesOrView', bytes, memoryview)
# NamedTuple's generated __new__ runs Python code; on the hot path the C one is used instead.
_tuple_new = tuple.__new__
_MAX_INFORMATIONAL_RESPONSES = 16
_NO_BODY_STATUSES = frozenset((b'204', b'304'))


# ---------------------------------------------------------------------------------------------
# Parsing layer: pure functions of bytes.
# ---------------------------------------------------------------------------------------------

class ResponseHead(NamedTuple):
    """A parsed response head. `http_minor` is 0 for HTTP/1.0 and 1 for HTTP/1.1."""
    http_minor: int
    code: bytes
    reason: bytes
    headers: Headers
    length: int  # number of bytes of the head, including the final empty line


class ResponseHeaders(tuple):  # type: ignore[type-arg]
    """The response headers `request` returns: a tuple of (lowercased name, value) pairs, as
    in 0.0.89, that also says what the status line did: `reason` (the reason phrase, as sent)
    and `http_version` (b'HTTP/1.0' or b'HTTP/1.1'), for code that passes them on."""
    reason: bytes = b''
    http_version: bytes = b'HTTP/1.1'

    def __reduce__(self) -> Tuple[Any, ...]:
        # Those a Pool returns are of classes made for their status line (see
        # _headers_with_status), which pickle and copy cannot find by name: they are rebuilt
        # from what the status line said, and any attribute set on them.
        return (_headers_with_status, (tuple(self), self.reason, self.http_version),
                self.__dict__ or None)


_HTTP_VERSIONS = (b'HTTP/1.0', b'HTTP/1.1')
# Subclasses of ResponseHeaders by (reason, http_version), which they hold as class attributes:
# headers of one so need no attribute dict of their own, which would cost about as much to make
# as the tuple. Bounded (a server chooses its reason phrases); beyond it, each has its dict.
_headers_classes: Dict[Tuple[bytes, bytes], type[ResponseHeaders]] = {}
_MAX_HEADERS_CLASSES = 32


def _headers_with_status(fields: Sequence[Tuple[bytes, bytes]], reason: bytes,
                         http_version: bytes) -> ResponseHeaders:
    # ResponseHeaders(fields) with that reason and http_version
    headers_class = _headers_classes.get((reason, http_version))
    if headers_class is None:
        if len(_headers_classes) >= _MAX_HEADERS_CLASSES:
            headers = ResponseHeaders(fields)
            headers.reason = reason
            headers.http_version = http_version
            return headers
        headers_class = _headers_classes[reason, http_version] = cast(
            'type[ResponseHeaders]', type(ResponseHeaders.__name__, (ResponseHeaders,), {
                '__module__': __name__, '__doc__': ResponseHeaders.__doc__,
                'reason': reason, 'http_version': http_version}))
    return headers_class(fields)


def parse_response_head(data: bytes, max_header_length: int = 16384,
                        max_header_count: int = 100) -> Optional[ResponseHead]:
    """Parse a response head at the start of `data`.

    Returns None when more bytes are needed, a ResponseHead when the head is complete, or
    raises HttpHeaderTooLong / HttpProtocolError. Only the head is looked at: bytes after it
    (the body, or anything else) are left to the caller, via `ResponseHead.length`.
    """
    end = data.find(b'\r\n\r\n', 0, max_header_length)
    if end == -1:
        # A peer not speaking HTTP at all is told apart from a long head however the bytes
        # arrive: the status line is checked before the length.
        _check_partial_status_line(data)
        if len(data) >= max_header_length:
            raise HttpHeaderTooLong(
                'Response head longer than max_header_length (%d bytes)' % max_header_length)
        return None
    return _parse_response_head_ending_at(data, end, max_header_count)


def _parse_response_head_ending_at(data: bytes, end: int, max_header_count: int) \
        -> ResponseHead:
    # The head whose blank line starts at `end` (the first b'\r\n\r\n' in `data`, found within
    # max_header_length), for a caller that searched for it already.
    status_end = data.find(b'\r\n') + 2
    status_line = data[:status_end]
    status = _parsed_status_lines.get(status_line)
    if status is None:
        status = _parse_status_line(status_line)
    return _tuple_new(ResponseHead, (
        *status, parse_field_block(data[status_end:end + 2], max_header_count), end + 4))


# Status lines already parsed (http_minor, code, reason) by their bytes: a server sends few.
_parsed_status_lines: Dict[bytes, Tuple[int, bytes, bytes]] = {}
_MAX_MEMOISED_STATUS_LINES = 64


def _parse_status_line(line: bytes) -> Tuple[int, bytes, bytes]:
    status = _STATUS_LINE_RE.fullmatch(line)
    if status is None:
        raise HttpProtocolError('Malformed status line: %r' % (bytes(line[:-2]),))
    parsed = (0 if status[1] == b'0' else 1, status[2], status[3].rstrip(b' \t'))
    if len(_parsed_status_lines) >= _MAX_MEMOISED_STATUS_LINES:
        _parsed_status_lines.clear()
    _parsed_status_lines[line] = parsed
    return parsed


# The header fields a response's framing, and whether its connection persists, depend on
# (see response_framing)
_FRAMING_FIELDS = frozenset((b'content-length', b'transfer-encoding', b'connection'))


def _check_partial_status_line(data: bytes) -> None:
    # Reject a response that cannot become valid as soon as it is seen, rather than
    # waiting for max_header_length bytes of garbage (or for a timeout) first.
    prefix = data[:9]
    if not b'HTTP/1.x '.startswith(prefix[:5]) or \
            (len(prefix) > 5 and prefix[5:6] != b'1') or \
            (len(prefix) > 6 and prefix[6:7] != b'.'):
        raise HttpProtocolError('Response does not start with HTTP/1.x: %r' % (bytes(prefix),))


# Header lines already parsed, by their exact bytes: a server sends the same lines again and
# again (only a few, such as date or a request id, change), so most lines of a new head are
# found here. Bounded in lines and in bytes, so that the memory a server can make it hold is
# small; when full it is emptied, which costs one parse of each line that comes back.
# A line not found is parsed by the memo's __missing__, so that the lines of a block are all
# looked up by one C loop (map), and only the new ones cost Python code.
class _FieldLineMemo(Dict[bytes, Tuple[bytes, bytes]]):
    def __missing__(self, line: bytes) -> Tuple[bytes, bytes]:
        _memoised_bytes[2] += 1
        if _memoised_bytes[2] > _MAX_NEW_LINES_ONE_BY_ONE or \
                len(self) >= _MAX_MEMOISED_LINES or _memoised_bytes[0] >= _MAX_MEMOISED_BYTES:
            # Many new lines, or no room for this one (so that every line before it is found
            # in the memo again): the rest of the block is parsed at once.
            raise _NotOneByOne(line)
        field = _parse_field_line(line)
        self[line] = field
        _memoised_bytes[0] += len(line)
        return field


class _NotOneByOne(Exception):
    # A block with a bad line, or with more new lines than are parsed one by one: it is parsed
    # all at once instead, which raises the error for a bad line.
    pass


_parsed_field_lines = _FieldLineMemo()
_memoised_field = _parsed_field_lines.__getitem__  # the memo is emptied, never replaced
# bytes of the lines memoised; blocks that found it full since; new lines in this block
_memoised_bytes = [0, 0, 0]
_FULL_BLOCKS_BEFORE_EMPTYING = 64
_MAX_MEMOISED_LINES = 4096
_MAX_MEMOISED_BYTES = 1 << 20

# Tables for bytes.translate, whose table-only form is a C loop of a few instructions a byte:
# a cheaper way to check characters than a regular expression (tens of instructions a byte).
# Field names: tchar kept, A-Z lowercased, any other byte made a colon, which no name holds.
_NAME_TABLE = bytes(
    (byte | 0x20 if 0x41 <= byte <= 0x5a else byte) if _TCHAR_RE.fullmatch(bytes((byte,)))
    else 0x3a for byte in range(256))
# Field lines (RFC 9110 §5.5): HTAB, SP, VCHAR and obs-text kept, any other byte made a LF.
_LINE_TABLE = bytes(
    byte if byte == 0x09 or 0x20 <= byte <= 0x7e or byte >= 0x80 else 0x0a
    for byte in range(256))
# Field values: the same bytes kept, any other byte changed (made a NUL, and NUL a SOH).
_VALUE_TABLE = bytes(
    byte if _LINE_TABLE[byte] == byte != 0x0a else 0x01 if byte == 0 else 0
    for byte in range(256))
# Endless, so shareable: map() takes from them as many as there are lines.
_COLONS = repeat(b':')
_OWS = repeat(b' \t')


def parse_field_block(block: bytes, max_header_count: int = 100) -> Headers:
    """Parse header (or trailer) lines, each ending in CRLF, into (lowercased name, value)."""
    lines = block.split(b'\r\n')
    if lines.pop():  # what follows the last CRLF: a line without its CRLF
        raise HttpProtocolError(_describe_bad_field_block(block))
    if len(lines) > max_header_count:
        raise HttpHeaderTooLong('More than %d header lines' % max_header_count)
    _memoised_bytes[2] = 0
    try:
        fields = tuple(map(_memoised_field, lines))
    except _NotOneByOne as stop:
        if not stop.args:  # a bad line: the whole block is parsed, and the error raised
            return _parse_block_rest(lines, block)
        # The lines before the one that stopped are in the memo; the rest are parsed at once.
        index = lines.index(stop.args[0])
        try:
            known = tuple(map(_memoised_field, lines[:index]))
        except _NotOneByOne:  # emptied or filled meanwhile (by another thread)
            return _parse_block_rest(lines, block)
        return known + _parse_block_rest(lines[index:], block)
    if _memoised_bytes[2] and (len(_parsed_field_lines) >= _MAX_MEMOISED_LINES or
                               _memoised_bytes[0] >= _MAX_MEMOISED_BYTES):
        # Filled by this block, and lines that come back would be missing from it: start
        # again. (A block that finds it full is parsed at once: see _parse_block_rest.)
        _parsed_field_lines.clear()
        _memoised_bytes[:] = [0, 0, _memoised_bytes[2]]
    return fields


# A few new lines among known ones (a date, a request id) are parsed one by one; a block with
# more (a first response, or a server whose values are unique) is parsed all at once, which
# costs more for the block but less a line. Both are memoised while there is room; only the
# first empties the memo when it is full, since unique values would otherwise churn it.
_MAX_NEW_LINES_ONE_BY_ONE = 4


def _parse_block_rest(lines: List[bytes], block: bytes) -> Headers:
    fields = _parse_field_lines(lines, block)
    size = sum(map(len, lines))
    if len(_parsed_field_lines) >= _MAX_MEMOISED_LINES or \
            _memoised_bytes[0] + size > _MAX_MEMOISED_BYTES:
        # Full: emptied only after a while, so that a server whose values are unique does not
        # churn it, yet one that repeats its lines has them memoised again before long.
        _memoised_bytes[1] += 1
        if _memoised_bytes[1] < _FULL_BLOCKS_BEFORE_EMPTYING:
            return fields
        _parsed_field_lines.clear()
        _memoised_bytes[:] = [0, 0, 0]
    _parsed_field_lines.update(zip(lines, fields))
    _memoised_bytes[0] += size
    return fields


def _parse_field_line(line: bytes) -> Tuple[bytes, bytes]:
    # One line, without its CRLF, checked as _parse_field_lines checks many (the same rules),
    # with the same C loops on this line alone: cheaper than a regular expression.
    name, colon, value = line.partition(b':')
    lowered = name.translate(_NAME_TABLE)
    # A byte the tables change other than as lower() does is one outside the grammar. (Not
    # `in` nor find: bytes.__contains__ first tries its argument as an int, and the TypeError
    # it makes and clears costs more than the search; find parses its arguments by format.)
    if not colon or not name or lowered != name.lower() or \
            value.translate(_VALUE_TABLE) != value:
        raise _NotOneByOne()
    return lowered, value.strip(b' \t')


def _parse_field_lines(lines: List[bytes], block: bytes) -> Headers:
    # At least one line, each without its CRLF, checked and split with C loops over all of
    # them at once: field-name ":" OWS field-value OWS (RFC 9112 §5), no whitespace between the
    # name and the colon (§5.1), so a line starting with whitespace (obs-fold) is rejected too.
    # Any CR or LF left in a line is a bare one, changed by the table like any control byte.
    names, colons, values = zip(*map(bytes.partition, lines, _COLONS))
    lowered = b':'.join(names).translate(_NAME_TABLE).split(b':')
    joined = b''.join(lines)  # a byte outside the grammar in any line changes it
    if joined.translate(_VALUE_TABLE) != joined or \
            len(lowered) != len(lines) or b'' in lowered or b'' in colons:
        raise HttpProtocolError(_describe_bad_field_block(block))
    return tuple(zip(lowered, map(bytes.strip, values, _OWS)))


def _describe_bad_field_block(block: bytes) -> str:
    for line in block.split(b'\r\n')[:-1]:
        if _FIELD_LINE_RE.fullmatch(line + b'\r\n'):
            continue
        if line[:1] in (b' ', b'\t'):
            # RFC 9112 §5.2 lets a user agent replace obs-fold with spaces; we reject it
            # instead, since no modern server needs it and joining hides smuggling attempts.
            return 'Obsolete line folding (obs-fold) in header: %r' % (line,)
        name, colon, _ = line.partition(b':')
        if not colon:
            return 'Header line without a colon: %r' % (line,)
        if _TOKEN_RE.fullmatch(name) is None:
            return 'Invalid header name (whitespace or a non-token character): %r' % (name,)
        return 'Invalid character in header value: %r' % (line,)
    return 'Bare CR or LF in header block: %r' % (block,)


def list_elements(values: Sequence[bytes]) -> List[bytes]:
    """The elements of comma-separated list headers, empty ones dropped (RFC 9110 §5.6.1)."""
    return [
        element
        for value in values
        for element in (item.strip(b' \t') for item in value.split(b','))
        if element
    ]


def parse_content_length(value: bytes) -> int:
    """The Content-Length from its field value (repeated lines combined with commas).

    RFC 9112 §6.3 rule 5: an invalid Content-Length is an unrecoverable framing error. A list
    of identical values (from a proxy merging headers) is accepted as that value (RFC 9110 §8.6).
    """
    if _CONTENT_LENGTH_RE.fullmatch(value) is not None:
        return int(value)
    elements = set(list_elements([value]))
    if not elements:
        raise HttpProtocolError('Invalid Content-Length: %r' % (value,))
    if len(elements) != 1:
        raise HttpProtocolError('Conflicting Content-Length values: %r' % (value,))
    element = elements.pop()
    if _CONTENT_LENGTH_RE.fullmatch(element) is None:
        raise HttpProtocolError('Invalid Content-Length: %r' % (value,))
    return int(element)


NO_BODY = 0
CONTENT_LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3


class Framing(NamedTuple):
    """How the response body is delimited, and whether the connection may be reused after it."""
    kind: int  # NO_BODY, CONTENT_LENGTH, CHUNKED or UNTIL_CLOSE
    length: int  # the body length for CONTENT_LENGTH, else 0
    keep_alive: bool


# A final head as a Pool keeps it parsed: its code, headers, and framing as a plain tuple
# (kind, length, keep_alive), which request() unpacks for every response (a Framing, a tuple
# subclass, is unpacked by iteration: about 400 instructions more)
_Parsed = Tuple[bytes, Headers, Tuple[int, int, bool]]


def response_framing(method: bytes, head: ResponseHead) -> Framing:
    """Decide how the body of a response is delimited: RFC 9112 §6.3, rule by rule."""
    http_minor, code, _, headers, _ = head  # unpacked at once: a tuple
    fields = dict(headers)
    if len(fields) != len(headers):
        fields = _combine_repeated_fields(headers)
    # The framing is a function of these alone, and servers answer with few combinations
    key = (method, code, http_minor, fields.get(b'content-length'),
           fields.get(b'transfer-encoding'), fields.get(b'connection'))
    framing = _framings.get(key)
    if framing is None:
        framing = _framing_of(*key)
        if len(_framings) >= _MAX_MEMOISED_FRAMINGS:
            _framings.clear()
        _framings[key] = framing
    return framing


# Framings by their inputs (see response_framing), bounded: content-length values vary
_framings: Dict[Tuple[bytes, bytes, int, Optional[bytes], Optional[bytes], Optional[bytes]],
                Framing] = {}
_MAX_MEMOISED_FRAMINGS = 256


def _framing_of(method: bytes, code: bytes, http_minor: int, content_length: Optional[bytes],
                transfer_encoding: Optional[bytes], connection: Optional[bytes]) -> Framing:
    keep_alive = _is_persistent(http_minor, connection)

    # Rule 1: a response to HEAD, and any 1xx, 204 or 304 response, ends at the empty line
    # after the header fields, whatever its headers say.
    if method == b'HEAD' or code[0] == 49 or code in _NO_BODY_STATUSES:  # 49: b'1'
        return _tuple_new(Framing, (NO_BODY, 0, keep_alive and code != b'101'))

    # Rule 2: a 2xx response to CONNECT turns the connection into a tunnel: its "body" is
    # everything until close, and the connection can never carry HTTP again.
    if method == b'CONNECT' and code[0] == 50:  # 50: b'2'
        return _tuple_new(Framing, (UNTIL_CLOSE, 0, False))

    if transfer_encoding is not None:
        codings = [coding.lower() for coding in list_elements([transfer_encoding])]
        # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means its framing is faulty.
        if http_minor == 0:
            raise HttpProtocolError('Transfer-Encoding in an HTTP/1.0 response')
        # Rule 3: Transfer-Encoding overrides Content-Length. Such a message may be an attempt
        # at request smuggling or response splitting, so the connection is closed after it.
        # Rule 4: chunked as the final coding delimits the body...
        if codings and codings[-1] == b'chunked':
            if b'chunked' in codings[:-1]:
                raise HttpProtocolError('chunked applied more than once: %r' % (codings,))
            return _tuple_new(Framing, (CHUNKED, 0, keep_alive and content_length is None))
        # ...otherwise a response is read until the server closes the connection.
        return _tuple_new(Framing, (UNTIL_CLOSE, 0, False))

    # Rules 5 and 6: a valid Content-Length gives the length; an invalid one is an error.
    if content_length is not None:
        return _tuple_new(Framing, (CONTENT_LENGTH, parse_content_length(content_length),
                                    keep_alive))

    # Rule 8: otherwise the body is everything until the server closes the connection.
    return _tuple_new(Framing, (UNTIL_CLOSE, 0, False))


def _combine_repeated_fields(headers: Headers) -> Dict[bytes, bytes]:
    # RFC 9110 §5.3: repeated field lines mean the same as one line with the values joined by
    # commas. (Not true of set-cookie, but framing looks only at list-valued fields.)
    fields: Dict[bytes, bytes] = {}
    for name, value in headers:
        fields[name] = fields[name] + b', ' + value if name in fields else value
    return fields


def _is_persistent(http_minor: int, connection: Optional[bytes]) -> bool:
    # RFC 9112 §9.3: HTTP/1.1 persists unless "close" is a connection option; HTTP/1.0
    # persists only with "keep-alive" as a connection option.
    if connection is None:
        return http_minor == 1
    options = connection.lower()
    if options == b'keep-alive' or options == b'close':  # the usual single option
        return options == b'keep-alive'
    elements = list_elements([options])
    return b'close' not in elements and (http_minor == 1 or b'keep-alive' in elements)


class ChunkedDecoder:
    """Decodes a chunked body (RFC 9112 §7.1), fed bytes in pieces of any size.

    `feed(data)` returns the body bytes found in `data`; `done` becomes True after the last
    chunk and the trailer section; `excess` counts bytes fed after that, which mean the
    connection cannot be reused. Trailer fields are validated and discarded.
    """
    __slots__ = ('done', 'excess', '_remaining', '_line', '_state', '_trailer_length',
                 '_max_trailer_length')

    _SIZE, _DATA, _DATA_END, _TRAILER = _CHUNKED_SIZE, _CHUNKED_DATA, _CHUNKED_DATA_END, \
        _CHUNKED_TRAILER

    def __init__(self, max_trailer_length: int = 16384) -> None:
        self.done = False
        self.excess = 0
        self._remaining = 0
        self._line = b''
        self._state = _CHUNKED_SIZE
        self._trailer_length = 0
        self._max_trailer_length = max_trailer_length

    def feed(self, data: bytes) -> List[bytes]:
        """The body bytes in `data`, in pieces."""
        return self._feed(data, data)

    def feed_joined(self, data: bytes) -> bytes:
        """The body bytes in `data`, as one bytes object: the data of several chunks is copied
        once, into it, and data that is all body is not copied at all."""
        if self._state == _CHUNKED_DATA and 0 < len(data) < self._remaining:
            self._remaining -= len(data)
            return data
        pieces = self._feed(data, memoryview(data))
        return bytes(pieces[0]) if len(pieces) == 1 else b''.join(pieces)

    def _feed(self, data: bytes, source: _BytesOrView) -> List[Union[bytes, _BytesOrView]]:
        # The pieces are sliced from `source`: `data` itself, or a view of it when they will
        # be joined, so that they are not copied twice.
        #
        # The fast path takes what a server usually sends, whole within `data`: the data of a
        # chunk, the CRLF after it and the next chunk-size line at once, by one match each. A
        # line that is split across reads, too long, or malformed goes the line-by-line way
        # (`_feed_line`), which gathers, bounds and judges it: so the fast path accepts only
        # what that way accepts, and every error comes from there.
        state = self._state
        length = len(data)
        if state == _CHUNKED_DATA and 0 < length < self._remaining:
            self._remaining -= length
            return [data]
        chunks: List[Union[bytes, _BytesOrView]] = []
        pos = 0
        while pos < length:
            if self.done:
                self.excess += length - pos
                break
            if state == _CHUNKED_DATA:
                # chunk after chunk, for as long as each is followed by a whole size line
                end = pos + self._remaining
                while end < length:
                    chunks.append(source[pos:end])
                    pos = end
                    match = _CRLF_CHUNK_SIZE_LINE_RE.match(data, pos)
                    if match is None:
                        state = _CHUNKED_DATA_END
                        break
                    end = match.end()
                    if end - pos > _MAX_CHUNK_SIZE_LINE + 2:
                        state = _CHUNKED_DATA_END
                        break
                    pos = end
                    remaining = int(match[1], 16)
                    if not remaining:
                        state = _CHUNKED_TRAILER
                        break
                    end = pos + remaining
                else:
                    # the data runs to the end of `data` or beyond it
                    if pos < length:
                        chunks.append(source[pos:] if pos else data)
                    self._remaining = end - length
                    if end == length:
                        self._state = _CHUNKED_DATA_END
                    return chunks
                self._remaining = 0
                self._state = state
            elif state == _CHUNKED_SIZE and not self._line:
                match = _CHUNK_SIZE_LINE_RE.match(data, pos)
                if match is None or match.end() - pos > _MAX_CHUNK_SIZE_LINE:
                    pos = self._feed_line(data, pos)
                    state = self._state
                    continue
                pos = match.end()
                self._remaining = remaining = int(match[1], 16)
                self._state = state = _CHUNKED_DATA if remaining else _CHUNKED_TRAILER
            elif state == _CHUNKED_TRAILER and not self._line and \
                    data.startswith(b'\r\n', pos) and \
                    self._trailer_length + 2 <= self._max_trailer_length:
                # the empty line that ends a trailer section (usually an empty one)
                self._trailer_length += 2
                self.done = True
                pos += 2
            else:
                pos = self._feed_line(data, pos)
                state = self._state
        return chunks

    def _feed_line(self, data: bytes, pos: int) -> int:
        # The lines (chunk-size, the CRLF after data, trailer fields) are short: gather each
        # whole before parsing, bounded so that a server cannot make us buffer without end.
        newline = data.find(b'\n', pos)
        end = len(data) if newline == -1 else newline + 1
        line = self._line + data[pos:end]
        limit = self._max_trailer_length if self._state == self._TRAILER else _MAX_CHUNK_SIZE_LINE
        if len(line) > limit:
            raise HttpProtocolError('Chunk-size line or trailer section too long')
        if newline == -1:
            self._line = line
            if self._state == self._DATA_END and line not in (b'', b'\r'):
                raise HttpProtocolError('Missing CRLF after chunk data: %r' % (line,))
            return end
        self._line = b''
        self._parse_line(line)
        return end

    def _parse_line(self, line: bytes) -> None:
        state = self._state
        if state == self._DATA_END:
            if line != b'\r\n':
                raise HttpProtocolError('Missing CRLF after chunk data: %r' % (line,))
            self._state = self._SIZE
        elif state == self._SIZE:
            match = _CHUNK_SIZE_LINE_RE.fullmatch(line)
            if match is None:
                raise HttpProtocolError('Malformed chunk-size line: %r' % (line,))
            self._remaining = int(match[1], 16)
            self._state = _CHUNKED_DATA if self._remaining else _CHUNKED_TRAILER
        else:
            self._trailer_length += len(line)
            if self._trailer_length > self._max_trailer_length:
                raise HttpProtocolError('Trailer section too long')
            if line == b'\r\n':
                self.done = True
            else:
                parse_field_block(line)


def _chunked_body_if_whole(data: bytes, max_trailer_length: int) -> Optional[Tuple[bytes, int]]:
    """The body of the chunked message at the start of `data` and the count of bytes after it,
    if `data` holds the whole message and it is well-formed; otherwise None (the body is then
    decoded as it arrives, which reports any error in it)."""
    decoder = ChunkedDecoder(max_trailer_length)
    try:
        body = decoder.feed_joined(data)
    except HttpError:
        return None
    return (body, decoder.excess) if decoder.done else None


# ---------------------------------------------------------------------------------------------
# Requests: validation and encoding of what the caller gives, before any connection is made.
# ---------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {'http': 80, 'https': 443}
# RFC 3986 §3.3 pchar plus "/" (and "%", so that an already percent-encoded path is kept).
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
# RFC 3986 §3.4: the query may also hold "/" and "?".
_QUERY_SAFE = _PATH_SAFE + '?'
_STRAY_PERCENT_RE = re.compile(r'%(?![0-9A-Fa-f]{2})')


class Target(NamedTuple):
    """Where a URL points: everything the request needs that depends only on the URL."""
    scheme: str
    host: str  # lowercased, IPv6 without brackets, no trailing dot
    port: int
    key: Tuple[str, str, int]  # the pool key
    ip_literal: bool
    host_line: bytes  # b'host: ...\r\n'
    path_and_query: bytes  # the request-target, percent-encoded
    has_query: bool


def _percent_encode(text: str, safe: str) -> str:
    return urllib.parse.quote(_STRAY_PERCENT_RE.sub('%25', text), safe=safe)


def parse_target(url: str) -> Target:
    """Split and encode a URL, raising HttpInvalidRequestError for anything unusable."""
    if not isinstance(url, str):
        raise HttpInvalidRequestError('URL must be a str, not %s' % (type(url).__name__,))
    try:
        parts = urllib.parse.urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError as exception:
        raise HttpInvalidRequestError('Invalid URL %r: %s' % (url, exception)) from exception
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise HttpInvalidRequestError('URL scheme must be http or https: %r' % (url,))
    if not hostname:
        raise HttpInvalidRequestError('URL has no host: %r' % (url,))
    if any(ord(char) < 33 or char in '\x7f<>"{}|\\^`' for char in hostname):
        raise HttpInvalidRequestError('Invalid character in URL host: %r' % (url,))

    host = hostname[:-1] if hostname.endswith('.') else hostname
    if not host or (not host.startswith('[') and '' in host.split('.')):
        raise HttpInvalidRequestError('URL host has an empty label: %r' % (url,))
    default_port = _DEFAULT_PORTS[scheme]
    if port == 0:
        raise HttpInvalidRequestError('URL port 0 cannot be connected to: %r' % (url,))
    port = default_port if port is None else port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None and '[' in parts.netloc:
        raise HttpInvalidRequestError('Invalid IP literal in URL: %r' % (url,))

    try:
        host_bytes = hostname.encode('ascii') if hostname.isascii() else hostname.encode('idna')
    except UnicodeError as exception:
        raise HttpInvalidRequestError('Host is not a valid IDNA name: %r' % (hostname,)) \
            from exception
    if address is None and not _REG_NAME_RE.fullmatch(host_bytes):
        # IDNA's nameprep maps Unicode spaces (U+00A0, U+3000...) to an ASCII space, which
        # no Host header may hold: the name is checked as it will be sent.
        raise HttpInvalidRequestError('Invalid character in URL host: %r' % (url,))
    if address is not None and address.version == 6:
        host_bytes = b'[' + host_bytes + b']'
    if port != default_port:
        host_bytes += b':%d' % (port,)

    path = _percent_encode(parts.path, _PATH_SAFE) or '/'
    query = _percent_encode(parts.query, _QUERY_SAFE)
    path_and_query = (path + '?' + query if query else path).encode('ascii')
    return Target(scheme, host, port, (scheme, host, port), address is not None,
                  b'host: ' + host_bytes + b'\r\n', path_and_query, bool(query))


class RequestHeaders(NamedTuple):
    """The caller's headers, validated and encoded once."""
    block: bytes  # b'name: value\r\n' lines
    has_host: bool
    content_length: Optional[int]  # None when not given, or when transfer-encoding is
    closes: bool  # the caller asked for "connection: close"
    # "expect: 100-continue" with a body that may not be empty: wait for 100 before sending it
    expects_continue: bool = False
    # content-length or transfer-encoding given: without either, a request's body is empty
    # (RFC 9112 §6.3), and any byte of one would be read as the start of another request
    framed: bool = False


def encode_request_headers(method: bytes, headers: Sequence[Tuple[bytes, bytes]]) \
        -> RequestHeaders:
    """Validate the method and headers, so that no caller input can end a line early."""
    if not isinstance(method, bytes) or _TOKEN_RE.fullmatch(method) is None:
        raise HttpInvalidRequestError('Method must be a token (bytes): %r' % (method,))
    lines = []
    has_host = False
    content_lengths = []
    chunked = False
    closes = False
    expects_continue = False
    for header in headers:
        try:
            name, value = header
        except (TypeError, ValueError) as exception:
            raise HttpInvalidRequestError('Header must be a (name, value) pair: %r'
                                          % (header,)) from exception
        if not isinstance(name, bytes) or _TOKEN_RE.fullmatch(name) is None:
            raise HttpInvalidRequestError('Header name must be a token (bytes): %r' % (name,))
        if not isinstance(value, bytes) or _FORBIDDEN_IN_VALUE_RE.search(value):
            raise HttpInvalidRequestError(
                'Header value must be bytes without CR, LF or NUL: %r: %r' % (name, value))
        lower = name.lower()
        if lower == b'host':
            if has_host:
                # RFC 9112 §3.2: a server must reject a request with more than one Host.
                raise HttpInvalidRequestError('More than one host header')
            has_host = True
        if lower == b'content-length':
            content_lengths.append(value.strip())
        elif lower == b'transfer-encoding':
            chunked = True
        elif lower == b'connection':
            closes = closes or b'close' in value.lower().replace(b' ', b'').split(b',')
        elif lower == b'expect':
            # RFC 9110 §10.1.1: 100-continue is the only expectation defined, case-insensitive
            expects_continue = value.strip(b' \t').lower() == b'100-continue'
        lines.append(b'%s: %s\r\n' % (name, value))

    content_length = None
    if content_lengths and not chunked:
        if len(set(content_lengths)) != 1 or \
                _CONTENT_LENGTH_RE.fullmatch(content_lengths[0]) is None:
            raise HttpInvalidRequestError('Invalid content-length: %r' % (content_lengths,))
        content_length = int(content_lengths[0])
    return RequestHeaders(b''.join(lines), has_host, content_length, closes,
                          expects_continue and content_length != 0,
                          chunked or bool(content_lengths))


# ---------------------------------------------------------------------------------------------
# Public helpers kept from 0.0.89.
# ---------------------------------------------------------------------------------------------

async def empty_async_iterator(*_: Any, **__: Any) -> AsyncIterator[bytes]:
    """The default request body: nothing."""
    while False:  # pylint: disable=while-used
        yield b''


def streamed(data: bytes) -> BodyFunction:
    """A body function that sends `data`."""
    async def _streamed(*_: Any, **__: Any) -> AsyncIterator[bytes]:
        yield data
    return _streamed


async def buffered(data: AsyncIterator[bytes]) -> bytes:
    """Read a whole body (or any async iterable of bytes) into one bytes object."""
    if type(data) is _BufferedBody:
        # A body that came whole with its head (the usual small response): its bytes, handed
        # over and ended as its __anext__ does, without the two awaits of iterating it
        whole = data._data
        data._data = b''
        data.__class__ = _EndedBody
        return whole
    if type(data) is _EndedBody:
        return b''
    return b''.join([chunk async for chunk in data])


def _cancelled_besides(task: Optional['asyncio.Task[Any]']) -> bool:
    # Whether, on 3.11+, more than one cancellation was asked for: another besides ours
    cancelling = getattr(task, 'cancelling', None)
    return cancelling is not None and cancelling() > 1


def _uncancel(task: Optional['asyncio.Task[Any]']) -> None:
    # Python 3.11+ counts cancellation requests: one we made and then turned into a
    # TimeoutError must be taken back, or asyncio.timeout() around the caller misbehaves.
    if task is not None and hasattr(task, 'uncancel'):
        task.uncancel()


@contextlib.contextmanager
def timeout(loop: asyncio.AbstractEventLoop, max_time: float) -> Iterator[Callable[[], None]]:
    """Raise asyncio.TimeoutError in the current task if the block takes over `max_time`
    seconds. Yields a function that restarts the clock."""
    task = asyncio.current_task()
    timed_out = False
    handle: asyncio.TimerHandle

    def cancel() -> None:
        nonlocal timed_out
        timed_out = True
        if task is not None:
            task.cancel()

    def reset() -> None:
        nonlocal handle
        handle.cancel()
        handle = loop.call_later(max_time, cancel)

    handle = loop.call_later(max_time, cancel)
    try:
        yield reset
    except asyncio.CancelledError:
        if timed_out:
            _uncancel(task)
            raise asyncio.TimeoutError() from None
        raise
    finally:
        handle.cancel()


if asyncio.TimeoutError is TimeoutError:  # type: ignore[comparison-overlap,unused-ignore]  # 3.11+
    _DeadlineExceeded = TimeoutError
else:
    # (typeshed makes the two bases one class, as they are on 3.11+: misc, there)
    class _DeadlineExceeded(asyncio.TimeoutError, TimeoutError):  # type: ignore[no-redef,misc,unused-ignore]
        """Raised by `deadline` before Python 3.11, where asyncio.TimeoutError and the
        built-in TimeoutError are different classes: it is both, as the one class is since."""


class _Deadline:
    """`deadline` before Python 3.11: a timer that cancels the task, and an exit that turns
    that cancellation, and only that one, into a TimeoutError."""

    __slots__ = ('_seconds', '_task', '_handle', '_fired')

    def __init__(self, seconds: Optional[float]) -> None:
        self._seconds = seconds
        self._task: Optional['asyncio.Task[Any]'] = None
        self._handle: Optional[asyncio.TimerHandle] = None
        self._fired = False

    async def __aenter__(self) -> '_Deadline':
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError('lowhaio.deadline() must be used inside a task')
        if self._task is not None:
            raise RuntimeError('a lowhaio.deadline() can be entered only once')
        self._task = task
        if self._seconds is not None:
            self._handle = asyncio.get_running_loop().call_later(
                max(self._seconds, 0), self._expire)
        return self

    def _expire(self) -> None:
        self._handle = None
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired and exc_type is asyncio.CancelledError:
            raise _DeadlineExceeded() from exc


def deadline(seconds: Optional[float]) -> Any:
    """An async context manager that raises TimeoutError if its block takes more than
    `seconds` (None: no limit), on every supported Python:

        async with lowhaio.deadline(5):
            code, headers, body = await request(b'GET', url)
            data = await buffered(body)

    On Python 3.11+ it is `asyncio.timeout(seconds)`. Before that, it cancels the task when
    time is up and raises an exception that is both `asyncio.TimeoutError` and the built-in
    `TimeoutError`. lowhaio is safe to cancel at any point: the connection in use is closed,
    its slot freed, and nothing is left behind."""
    if hasattr(asyncio, 'timeout'):
        return asyncio.timeout(seconds)  # type: ignore[attr-defined,unused-ignore]
    return _Deadline(seconds)


# ---------------------------------------------------------------------------------------------
# Logging, as in 0.0.89: adapters on the loggers "lowhaio" and "aiodnsresolver".
# ---------------------------------------------------------------------------------------------

class HttpLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> Tuple[Any, Any]:
        return \
            ('[http] %s' % (msg,), kwargs) if not self.extra else \
            ('[http:%s] %s' % (','.join(str(v) for v in self.extra.values()), msg), kwargs)


def get_logger_adapter_default(extra: Dict[str, Any]) -> logging.LoggerAdapter[Any]:
    return HttpLoggerAdapter(logging.getLogger('lowhaio'), extra)


def get_resolver_logger_adapter_default(http_extra: Dict[str, Any]) \
        -> Callable[[Dict[str, Any]], logging.LoggerAdapter[Any]]:
    def _get_resolver_logger_adapter_default(resolver_extra: Dict[str, Any]) \
            -> logging.LoggerAdapter[Any]:
        http_adapter = HttpLoggerAdapter(logging.getLogger('aiodnsresolver'), http_extra)
        return ResolverLoggerAdapter(http_adapter, resolver_extra)  # type: ignore[no-any-return]
    return _get_resolver_logger_adapter_default


# ---------------------------------------------------------------------------------------------
# Sockets and the 0.0.89 hooks.
# ---------------------------------------------------------------------------------------------

def get_nonblocking_sock(family: int = socket.AF_INET) -> socket.socket:
    """The default `get_sock`: a non-blocking TCP socket with Nagle's algorithm off."""
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_tcp_cork(sock: Any) -> None:
    """A `sock_pre_message` hook from 0.0.89 (the default now coalesces writes itself)."""
    # TCP_CORK is Linux-only: typeshed has it only when checking for Linux
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # type: ignore[attr-defined,unused-ignore]


def unset_tcp_cork(sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # type: ignore[attr-defined,unused-ignore]


def _no_op(_: Any) -> None:
    pass


def _never() -> bool:
    return False


async def send_all(loop: asyncio.AbstractEventLoop, sock: Any, socket_timeout: float,
                   data: bytes) -> None:
    """Send all of `data` on a connection given to a `send_header`/`send_body` hook."""
    if isinstance(sock, _Connection):
        sock.write(data)
        await sock.drain(socket_timeout)
    else:
        await asyncio.wait_for(loop.sock_sendall(sock, data), socket_timeout)


async def send_header_tuples_of_bytes(logger: Any, loop: asyncio.AbstractEventLoop, sock: Any,
                                      socket_timeout: float, http_version: bytes, method: bytes,
                                      parsed_url: urllib.parse.SplitResult,
                                      params: Sequence[Tuple[str, str]],
                                      headers: Headers) -> None:
    """The 0.0.89 `send_header` hook, for callers that wrap it: validates, then sends the head."""
    target = parse_target(urllib.parse.urlunsplit(parsed_url))
    encoded = encode_request_headers(method, headers)
    await send_all(loop, sock, socket_timeout,
                   _request_head(method, target, params, http_version, encoded))


async def send_body_async_gen_bytes(logger: Any, loop: asyncio.AbstractEventLoop, sock: Any,
                                    socket_timeout: float, body: BodyFunction,
                                    body_args: Sequence[Any],
                                    body_kwargs: Sequence[Tuple[str, Any]]) -> None:
    """The 0.0.89 `send_body` hook: sends each chunk the body function yields."""
    async for chunk in body(*body_args, **dict(body_kwargs)):
        await send_all(loop, sock, socket_timeout, chunk)


def _request_head(method: bytes, target: Target, params: Sequence[Tuple[str, str]],
                  http_version: bytes, headers: RequestHeaders) -> bytes:
    path = target.path_and_query
    if params:
        try:
            query = urllib.parse.urlencode(params, doseq=True).encode('ascii')
        except (TypeError, ValueError, UnicodeError) as exception:
            raise HttpInvalidRequestError('Invalid params: %r' % (params,)) from exception
        if query:
            path += (b'&' if target.has_query else b'?') + query
    return b'%s %s %s\r\n%s%s\r\n' % (
        method, path, http_version,
        b'' if headers.has_host else target.host_line, headers.block)


# ---------------------------------------------------------------------------------------------
# I/O layer: one connection.
# ---------------------------------------------------------------------------------------------

# The content length send_request is given for a body without content-length or
# transfer-encoding: any byte of it is an error (see RequestHeaders.framed)
_UNFRAMED = -1

_READ_HIGH_WATER = 262144
# How often, per socket_timeout, a send that waits checks whether bytes are still leaving.
_DRAIN_CHECKS_PER_TIMEOUT = 8
# How often the wait for the last bytes of a request to leave looks at the buffers.
_FLUSH_POLL_INTERVAL = 0.005
# Request body chunks shorter than this are not left queued behind others (see send_request).
_SMALL_CHUNK = 4096
# Writes of at least this many bytes over TCP (TLS or not) are corked together while the writer
# does not give way to the loop: see _Connection.write.
_CORK_MIN = 16 * 1024
# A body's later chunks shorter than this, written in a row, are gathered into one write of up
# to about _GATHER_UP_TO bytes: see _Connection.gather.
_GATHER_BELOW = 16 * 1024
_GATHER_UP_TO = 64 * 1024
_TCP_CORK: Optional[int] = getattr(socket, 'TCP_CORK', None)  # Linux only
# Bytes a transport may hold before the writer waits: asyncio's TCP default, and for TLS too,
# whose default is 512 KiB (see start_tls_on).
_WRITE_HIGH_WATER = 64 * 1024


# The most asyncio's socket transport reads at once: under glibc malloc's default mmap
# threshold, 128 KiB, with room for the bytes object's header (see connection_made)
_READ_SIZE = 128 * 1024 - 256
# Reads a response body makes straight from the socket before it lets the event loop run again
# (see _Connection.read_now): how long other tasks can wait behind a fast download, at most.
_READS_NOW_MAX = 16


def _read_what_the_socket_holds(sock: socket.socket, protocol: asyncio.Protocol) -> None:
    """For connection_lost with an error, on asyncio's own socket transport: hand `protocol`
    what the socket still holds.

    A server that will not take a body (413, 401) answers and closes, and the upload then fails
    with a reset or a broken pipe, often before the loop has read the answer. The kernel keeps
    what arrived before the reset readable (Linux does), and asyncio's socket transport closes
    its socket only after connection_lost: read now, the answer is not lost with the socket
    (RFC 9112 §9.6 has the client read it). Up to the read high-water mark, as any read.
    (uvloop closes the socket before it tells its protocol: there, what was read before the
    failure is what there is.)"""
    read = 0
    try:
        while read < _READ_HIGH_WATER:
            data = sock.recv(_READ_SIZE)
            if not data:
                return
            read += len(data)
            protocol.data_received(data)
    except OSError:
        pass  # nothing more to read (BlockingIOError), or the reset itself


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: a queue of received bytes, flow control both ways, and a
    single re-armed timer that serves every deadline, so that no timer is made per operation."""

    __slots__ = (
        'loop', 'transport', 'key', 'owner', 'peer_ip', 'fd', 'reused', 'idle', 'idle_since',
        'on_idle_close', '_poll', '_queue', '_queued', '_reading_paused', '_eof',
        '_eof_received', '_lost', '_lost_exception', '_waiter', '_drain_waiter',
        '_write_paused', '_deadline', '_timer', '_timer_when', '_keep_alive_timeout',
        'received_any', '_drain_timeout', '_drain_size', 'lower_transports', '_flushing',
        '_sock', '_unsent', '_cork_sock', '_burst', '_corked', '_gathered',
        '_read_transport', '_reads_now', '_last_full', '_answer_seen', '_answered',
        '_sender', '_interrupting',
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Tuple[str, str, int],
                 peer_ip: str, keep_alive_timeout: float) -> None:
        self.loop = loop
        self.transport: Any = None
        self.key = key
        # The pool's record of this connection's host, which counts it (see Pool)
        self.owner: Any = None
        self.peer_ip = peer_ip
        self.fd = -1
        self.reused = False
        self.idle = False
        self.idle_since = 0.0
        self.on_idle_close: Callable[['_Connection'], None] = _no_op
        self._poll: Any = None
        self.received_any = False
        self._queue: Deque[bytes] = deque()
        self._queued = 0
        self._reading_paused = False
        self._eof = False
        self._eof_received = False
        self._lost = False
        self._lost_exception: Optional[BaseException] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._drain_waiter: Optional[asyncio.Future[None]] = None
        self._write_paused = False
        self._deadline = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_when = 0.0
        self._keep_alive_timeout = keep_alive_timeout
        self._drain_timeout = 0.0
        self._drain_size = 0
        # Under TLS, the transports beneath `transport` (TCP; and TLS to a proxy, for TLS to
        # an origin through it): they hold bytes that the top one's buffer size does not count.
        self.lower_transports: Tuple[Any, ...] = ()
        self._flushing = False
        # Set when this connection sends on its socket itself (see connection_made), and the
        # part of a write the socket has not taken yet: the caller's own bytes, not a copy.
        self._sock: Any = None
        self._unsent: Optional[memoryview] = None
        # The TCP socket to cork (on Linux; under TLS too), whether a large write was made since
        # this connection's writer last gave way to the loop, and the socket corked since
        # then, if any (see write)
        self._cork_sock: Any = None
        self._burst = False
        self._corked: Any = None
        # A body's small chunks written since the burst began, not yet handed on (see gather)
        self._gathered: Optional[bytearray] = None
        # asyncio's own socket transport, from whose socket a response body reads directly
        # while it holds bytes; how many reads were made so since the body last waited; and
        # whether the last bytes taken filled a read (so the socket likely holds more)
        self._read_transport: Any = None
        self._reads_now = 0
        self._last_full = False
        # While a request's body is sent: how many of the received bytes (_queued) its sender
        # has looked at for an answer that ends the upload (see drain); -1 while no one looks.
        # And the function that looks (see Pool's answers_the_upload), the sender's task, and
        # whether that task was cancelled to end the upload while it waited for its body (see
        # _end_the_upload)
        self._answer_seen = -1
        self._answered: Callable[[], bool] = _never
        self._sender: Optional['asyncio.Task[Any]'] = None
        self._interrupting = False

    # asyncio.Protocol callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if getattr(transport, 'max_size', 0) > _READ_SIZE:
            # asyncio's own socket transport reads into a new bytes object of max_size
            # (256 KiB) each time. glibc's malloc maps a block that large afresh from the
            # kernel each time and unmaps it once the read shrinks it: two page faults for
            # every response even of 100 bytes, and one a page for large reads. Below the
            # threshold (128 KiB) the memory comes from the heap, already mapped. Measured:
            # system CPU per request at 64 concurrent small requests a third, and the same
            # user CPU. (uvloop and TLS transports read into a buffer they keep: not changed.)
            transport.max_size = _READ_SIZE
            if hasattr(transport, '_sock') and hasattr(transport, '_fatal_error'):
                self._read_transport = transport
        sock = transport.get_extra_info('socket')
        self.fd = sock.fileno() if sock is not None else -1
        if isinstance(getattr(transport, '_buffer', None), bytearray) and \
                hasattr(transport, '_closing') and hasattr(self.loop, '_add_writer') and \
                self.fd != -1:
            # asyncio's socket transport before Python 3.12 copies whatever the socket does
            # not take at once into a bytearray, and every write after it too until that is
            # empty. Writes go to the socket directly instead, and what it leaves waits, as
            # the caller's own bytes, for the selector to say there is room (as 0.0.89 did).
            # From 3.12 the transport keeps references to the bytes, and uvloop too. (write
            # reads its _closing flag directly, so only a transport that has one.)
            self._sock = getattr(transport, '_sock', None)
        if _TCP_CORK is not None and sock is not None and \
                sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio's own socket rather than its wrapper, which checks each call
            self._cork_sock = getattr(transport, '_sock', sock)
        if self.fd != -1 and hasattr(select, 'poll'):
            # Registered once, so the check before each reuse is a single system call.
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if type(data) is not bytes:
            # Windows' proactor loop hands over bytearray slices on Python 3.9 to 3.11 (and
            # another transport may too): everything above keeps and compares immutable bytes,
            # heads are looked up by them, and a buffer the transport reuses must not change
            # under a body not yet taken
            data = bytes(data)
        if self.idle:
            # RFC 9112 §9.3: nothing may arrive on an idle connection. Whatever it is, it
            # would be read as the start of the next response, so the connection is dropped.
            self.close()
            return
        self.received_any = True
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > _READ_HIGH_WATER and not self._reading_paused:
            # Bounded memory: stop reading from the socket until the consumer catches up.
            self._reading_paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif self._answer_seen >= 0:
            # Bytes while the body is sent: perhaps an answer to it, which a sender waiting for
            # room (from a server that no longer reads) must see; or, if it is not waiting for
            # room, one waiting for its body to make the next chunk
            if self._drain_waiter is not None:
                self._wake_drainer()
            else:
                self._answer_while_the_body_is_made()

    def eof_received(self) -> bool:
        self._eof = True
        self._eof_received = True
        if self.idle:
            self.close()
        elif self.buffered_size():
            # The server is done while the request is still being sent: a body it answered
            # (or refused) before reading it. Returning False has the transport close once
            # its buffer is sent, to a server that may never read it: dropped instead, so
            # the answer is returned at once (see answer_before_the_close)
            self.transport.abort()
        elif self._answer_seen >= 0 and self._drain_waiter is None:
            self._end_the_upload()
        self._wake_reader()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if exc is not None and not self.idle and self._read_transport is self.transport and \
                self._read_transport is not None:
            _read_what_the_socket_holds(self._read_transport._sock, self)
        self._lost = True
        self._eof = True
        self._lost_exception = exc
        self._cancel_timer()
        if self._unsent is not None:
            # Before asyncio closes the socket: the selector must not keep watching it
            self._unsent = None
            self.loop._remove_writer(self.fd)  # type: ignore[attr-defined]
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self._answer_seen >= 0:
            self._end_the_upload()
        if self.idle:
            self.idle = False
            self.on_idle_close(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainer()

    def _answer_while_the_body_is_made(self) -> None:
        # Bytes arrived while the sender waits for its body generator's next chunk, which may
        # never come (a stream, a pipe): an answer that ends the upload (see drain), or bytes
        # that are no response, end it there and then
        seen = self._answer_seen
        try:
            ends = self._answered()
        except HttpProtocolError:
            ends = True
        if ends:
            self._answer_seen = seen  # for the sender to look at (and meet any error) itself
            self._end_the_upload()

    def _end_the_upload(self) -> None:
        # The sender waits for its body (not for room, which drain watches): its task is
        # cancelled, which the CancelledError raised in the body generator's await ends, and
        # which send_request takes back. Once: the generator may be slow to let it through.
        task = self._sender
        if task is not None and not self._interrupting:
            self._interrupting = True
            task.cancel()

    def _wake_drainer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # Deadlines: one timer per connection, re-armed only when it fires or must fire sooner.

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        self._fire_by(deadline)

    def _fire_by(self, when: float) -> None:
        # The timer may be set for a later moment (an earlier deadline, or idle expiry): if so
        # it must move, since it re-arms itself for what is due only when it fires.
        if self._timer is None:
            self._arm_timer(when)
        elif self._timer_when > when:
            self._timer.cancel()
            self._arm_timer(when)

    def _arm_timer(self, when: float) -> None:
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self.idle:
            expiry = self.idle_since + self._keep_alive_timeout
            if now >= expiry:
                self.close()
            else:
                self._arm_timer(expiry)
            return
        if self._drain_waiter is not None:
            # A send times out after socket_timeout with no byte moving, however long the
            # whole chunk takes (0.0.89's rule): bytes that left the buffer restart the clock.
            # Checked a few times per socket_timeout, so a stall is seen soon after it is due.
            size = self.buffered_size()
            if self._flushing and not size:
                self._wake_drainer()
                return
            if size < self._drain_size:
                self._drain_size = size
                self._deadline = now + self._drain_timeout
            if now < self._deadline:
                check = self._drain_timeout / _DRAIN_CHECKS_PER_TIMEOUT
                # A flush also polls: nothing says when a TLS connection's TCP buffer empties
                self._arm_timer(min(self._deadline, now + (
                    min(check, _FLUSH_POLL_INTERVAL) if self._flushing else check)))
                return
        elif self._waiter is None:
            return
        elif now < self._deadline:
            self._arm_timer(self._deadline)
            return
        for waiter in (self._waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(asyncio.TimeoutError())
        self._waiter = None

    # Reading and writing, for the request coroutine

    def take(self) -> Optional[bytes]:
        """The bytes received since the last call, b'' at end of stream, None if neither yet."""
        queue = self._queue
        if not queue:
            return b'' if self._eof else None
        data = queue.popleft() if len(queue) == 1 else b''.join(queue)
        queue.clear()
        self._queued = 0
        self._last_full = len(data) >= _READ_SIZE
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def take_piece(self) -> Optional[bytes]:
        """As take(), but the oldest read alone while several wait, for a body: each read is
        handed on as it came rather than copied into one. (uvloop reads 256,000 bytes at a
        time, several times a turn: joining them copied 95% of a 1 GiB download.) Reading
        resumes once all are taken, so no more than the high-water mark and a read wait."""
        queue = self._queue
        if len(queue) < 2:
            return self.take()
        data = queue.popleft()
        self._queued -= len(data)
        # Handed on without the loop's turn, as read_now's reads are: counted with them
        self._reads_now += 1
        return data

    def read_now(self) -> Optional[bytes]:
        """The bytes the socket holds already, read at once rather than on the event loop's
        next turn, or None: if there are none, if the last read did not fill its buffer (the
        socket was drained then: waiting is likely anyway), if this is not asyncio's own plain
        socket transport (uvloop, or TLS started on it since), or if the body has read so
        _READS_NOW_MAX times since it last waited (other tasks get their turn).

        For a download from a server that is ahead, this skips per read what the loop does:
        a wait in epoll, data_received, a future and a step of the task. The end of the stream
        and errors are left to, or handed to, the transport, which reports them as ever."""
        transport = self._read_transport
        if not self._last_full or transport is not self.transport or transport is None or \
                self._reads_now >= _READS_NOW_MAX or transport.is_closing():
            return None
        try:
            data: bytes = transport._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exception:
            # What the transport does with an error it reads: the connection is lost with it
            # (so that a reset is never taken for an orderly end of the body)
            transport._fatal_error(exception, 'Fatal read error on socket transport')
            return None
        if not data:
            # An end of stream stays readable: the transport reads it and reports it itself
            return None
        self._reads_now += 1
        self._last_full = len(data) >= _READ_SIZE
        return data

    def readable(self, deadline: float) -> 'asyncio.Future[None]':
        """A future that is done when there is something to take, or that fails with
        asyncio.TimeoutError at `deadline`. (A bare future rather than a coroutine: one frame
        fewer to pass through each time the task resumes.)"""
        # _set_deadline and _fire_by, inlined: this runs for every response and body chunk
        self._deadline = deadline
        self._reads_now = 0
        if self._timer is None:
            self._arm_timer(deadline)
        elif self._timer_when > deadline:
            self._timer.cancel()
            self._arm_timer(deadline)
        waiter = self._waiter = self.loop.create_future()
        return waiter

    def write(self, data: Union[bytes, bytearray, memoryview]) -> bool:
        """Whether the writer must now drain() before writing more: most body chunks leave
        at once, and then no coroutine is made to find that out."""
        if self._lost:
            raise ConnectionResetError('Connection lost')
        # Once corked, nothing to do until the burst ends: no call for each chunk of it
        if self._corked is None and len(data) >= _CORK_MIN and self._cork_sock is not None:
            self._cork_unless_first()
        if self._gathered is not None:
            # Small chunks gathered before this write (see gather): first, in order
            self._send_gathered()
        sock = self._sock
        if sock is None:
            transport = self.transport
            if transport.is_closing():
                # It failed (or was closed), and reports that in connection_lost on the loop's
                # next turn: the bytes are dropped here, and drain() waits for that report.
                # Handed on, each would be dropped too, but asyncio logs a warning for every
                # write to a failed transport from the fifth on: dozens per failed upload.
                return True
            transport.write(data)
            return self._write_paused or self._lost
        # is_closing() without the call: self._sock is set only on asyncio's own transport
        if self.transport._closing:
            return True  # (as above)
        if self._unsent is not None:
            # Written before the last write left (a 0.0.89 hook's send() does not drain):
            # behind it, in order. Rare, so a copy.
            self._unsent = memoryview(b''.join((self._unsent, data)))
            return True
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._give_up_sending_directly(data)
            return self._write_paused or self._lost
        if sent == len(data):
            return False
        self._unsent = memoryview(data)[sent:]
        self.loop._add_writer(self.fd, self._send_unsent)  # type: ignore[attr-defined]
        return True

    def gather(self, data: bytes) -> bool:
        """write() for a body's small chunk after its first: when written in a row (the
        loop not running in between), such chunks are copied together and written when
        64 KiB have gathered, before a larger write, when the writer gives way to the loop, or
        when the body ends (flush). One system call for many (with TCP_NODELAY, otherwise a
        packet each too), and under TLS a few full records, not one a chunk."""
        if self._lost:
            raise ConnectionResetError('Connection lost')
        if not self._burst:
            # The first in a row is written at once: the loop may well run before the next.
            # The loop ran since the last (the burst ended): if bytes arrived meanwhile, the
            # sender must drain(), which looks at them (see drain). (Checked here, not for
            # every chunk: it would cost 2% of a 1 KiB chunk.)
            self._burst = True
            self.loop.call_soon(self._end_burst)
            return self.write(data) or self.bytes_unseen()
        gathered = self._gathered
        if gathered is None:
            self._gathered = bytearray(data)
            return False
        gathered += data
        if len(gathered) < _GATHER_UP_TO:
            return False
        self._gathered = None
        return self.write(gathered)

    def _send_unsent(self) -> None:
        """The selector says the socket has room: more of what it did not take."""
        unsent = self._unsent
        if unsent is None:
            return
        if self.transport.is_closing():
            self._unsent = None
            self.loop._remove_writer(self.fd)  # type: ignore[attr-defined]
            self._wake_drainer()
            return
        try:
            sent = self._sock.send(unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._unsent = None
            self.loop._remove_writer(self.fd)  # type: ignore[attr-defined]
            self._give_up_sending_directly(unsent)
            self._wake_drainer()
            return
        if sent == len(unsent):
            self._unsent = None
            self.loop._remove_writer(self.fd)  # type: ignore[attr-defined]
            self._wake_drainer()
        else:
            self._unsent = unsent[sent:]

    def _cork_unless_first(self) -> None:
        # A large chunk rarely fills its last TCP segment, which leaves short when the socket
        # is idle: over loopback (MSS 65,483) a 64 KiB chunk is two packets, one of 53 bytes,
        # each with the whole send and receive path. From the second large write in a row
        # (small chunks are gathered into large writes first: see gather), TCP_CORK lets each
        # chunk fill the last segment of the one before (as 0.0.89 corked whole requests).
        # What it holds back leaves as soon as the writer gives way to the loop (_end_burst),
        # so nothing waits on the body generator, and a body of one chunk, or chunks that
        # each wait for the generator, cost no system call.
        if not self._burst:
            self._burst = True
            self.loop.call_soon(self._end_burst)
        elif self._corked is None:
            sock = self._cork_sock
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
            except OSError:
                self._cork_sock = None  # not a TCP socket after all (or closed): not again
            else:
                self._corked = sock

    def _end_burst(self) -> None:
        if self._gathered is not None:
            self._send_gathered()
        self._burst = False
        sock = self._corked
        if sock is not None:
            self._corked = None
            # Not once closing: uvloop's socket object keeps the number of a descriptor that
            # may by now be another socket's (and a close sends what was held anyway)
            if not self._lost and not self.transport.is_closing():
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)  # sends what it held
                except OSError:
                    pass  # failed meanwhile: the transport reports it its own way

    def _send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered is not None and not self._lost and not self.transport.is_closing():
            # Not drained here: what the socket does not take waits like any unsent write,
            # and the writer's next write, or its flush, waits for it
            self.write(gathered)

    def _give_up_sending_directly(self, data: Any) -> None:
        # The socket failed: the transport gets the bytes, meets the same error, and reports
        # it its own way (connection_lost with the error), as if it had sent them itself.
        self._sock = None
        self.transport.write(data)

    async def drain(self, socket_timeout: float,
                    answered: Callable[[], bool] = _never) -> bool:
        """Wait until there is room to write more. With `answered`, also ask it, whenever bytes
        have arrived since it was last asked, whether they end the upload (an answer refusing
        the body, from a server that may never read it): if so, return True at once, with the
        room or not."""
        if self._lost:
            raise ConnectionResetError('Connection lost') from self._lost_exception
        if self.bytes_unseen() and answered():
            return True
        # A closing transport took nothing (see write): wait for connection_lost, rather than
        # let a body that never waits run on to its end first
        keep_deadline = False
        while self._unsent is not None or self._write_paused or self.transport.is_closing():
            await self._wait_for_writes(socket_timeout, keep_deadline)
            # Bytes that arrived moved none of ours: the next wait keeps the deadline
            keep_deadline = self.bytes_unseen()
            if keep_deadline and answered():
                return True
        return False

    def bytes_unseen(self) -> bool:
        """Whether bytes arrived, while a body is sent, that its sender has not looked at yet
        for an answer that ends the upload (see drain)."""
        return 0 <= self._answer_seen != self._queued

    async def _wait_for_writes(self, socket_timeout: float, keep_deadline: bool = False) -> None:
        now = self.loop.time()
        if not keep_deadline:
            self._drain_timeout = socket_timeout
            self._drain_size = self.buffered_size()
            self._deadline = now + socket_timeout
        self._fire_by(now + min(socket_timeout / _DRAIN_CHECKS_PER_TIMEOUT,
                                _FLUSH_POLL_INTERVAL if self._flushing else float('inf')))
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self._lost:
            raise ConnectionResetError('Connection lost') from self._lost_exception

    def buffered_size(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        size: int = self.transport.get_write_buffer_size()
        if self._unsent is not None:
            size += len(self._unsent)
        for transport in self.lower_transports:
            size += transport.get_write_buffer_size()
        return size

    def start_tls_on(self, tls_transport: Any) -> None:
        """`tls_transport`, started on this connection's transport, becomes the one used."""
        self.lower_transports += (self.transport,)
        self.transport = tls_transport
        self._sock = None  # the TLS transport writes to the socket now
        # _TlsLayer passes this on to the TCP transport, where its ciphertext waits. (asyncio's
        # own TLS transport kept up to 512 KiB, which then left as one bytes object above
        # glibc's mmap threshold: page faults each time, and 1 MiB more peak memory.)
        tls_transport.set_write_buffer_limits(_WRITE_HIGH_WATER)

    async def flush(self, socket_timeout: float,
                    answered: Callable[[], bool] = _never) -> bool:
        """Wait until every byte written has left for the kernel, with drain()'s rule: a
        timeout only after socket_timeout in which no byte moved. The request is sent only
        then, and so only then may the wait for the response head start (as in 0.0.89).
        `answered`, and what is returned, as for drain()."""
        if self._lost:
            raise ConnectionResetError('Connection lost') from self._lost_exception
        if self._gathered is not None:
            self._send_gathered()
        if not self.buffered_size():
            return False
        if self.bytes_unseen() and answered():
            return True
        # With no room allowed, the transport pauses while anything is buffered, and
        # resume_writing says when it is empty.
        self.transport.set_write_buffer_limits(0)
        self._flushing = True
        keep_deadline = False
        try:
            while self.buffered_size():
                await self._wait_for_writes(socket_timeout, keep_deadline)
                keep_deadline = self.bytes_unseen()  # as in drain()
                # All sent by now (a TLS flush learns it only when it looks): the answer is
                # then to a whole request, and is read as any
                if keep_deadline and self.buffered_size() and answered():
                    return True
            return False
        finally:
            self._flushing = False
            if not self._lost:
                self.transport.set_write_buffer_limits(_WRITE_HIGH_WATER)

    @property
    def ended_cleanly(self) -> bool:
        """The peer closed its side in order (FIN, or TLS close_notify), not with a reset.
        A connection lost without an error counts too: a transport may report an orderly
        close only so (asyncio's own TLS before 3.11 did, for a close_notify)."""
        return self._lost_exception is None and (self._eof_received or self._lost)

    @property
    def lost_exception(self) -> Optional[BaseException]:
        return self._lost_exception

    @property
    def tls_reason(self) -> str:
        """For an error's message: what TLS said when it ended the connection, if it did
        (' (TLS: TLSV13_ALERT_CERTIFICATE_REQUIRED)'), else ''. Under TLS 1.3 a server may
        refuse the client only after the request has gone, so its alert ends a connection that
        looks, without this, like one merely closed."""
        exception = self._lost_exception
        if isinstance(exception, ssl.SSLError):
            return ' (TLS: %s)' % (exception.reason or exception,)
        return ''

    def is_reusable(self) -> bool:
        """Whether an idle connection still looks open and silent. A zero-timeout poll catches
        a FIN (or stray bytes) that the kernel has but the event loop has not yet reported."""
        if self._eof or self._lost or self._queue:
            return False
        try:
            if self._poll is not None:
                return not self._poll.poll(0) or self.only_tls_records_were_waiting()
            readable, _, _ = select.select((self.fd,), (), (), 0)
        except (OSError, ValueError):
            return False
        return not readable

    def only_tls_records_were_waiting(self) -> bool:
        """For a connection taken for a request, before anything is sent on it, whose socket
        has something to read: under TLS, read it now through the TLS layers (as the loop
        would, only sooner) and tell whether all of it was TLS's own records, which carry no
        data and which a server may send at any time (RFC 8446 4.6: TLS 1.3 session tickets,
        KeyUpdate; RFC 5246 7.4.1.1: a TLS 1.2 renegotiation's HelloRequest, answered here as
        it would be later). Data, a close_notify or a FIN still mean the connection is done
        with. Without this, a server's record that arrived just before a reuse, unread as yet
        by the loop, would cost a new connection. Plain TCP: nothing may arrive (RFC 9112
        9.3), so False. The connection must no longer be idle: data read here is then queued
        (and the caller closes it), not closed on arrival with its slot freed behind the
        caller's back. The socket is read directly: the transport beneath hands each read to
        its protocol as it makes it, and keeps none."""
        if not self.lower_transports or self._poll is None:
            return False
        beneath = self.lower_transports[0]
        tls = beneath.get_protocol()
        try:
            while self._poll.poll(0):
                data = os.read(self.fd, _READ_SIZE)
                if not data:
                    return False  # a FIN
                tls.data_received(data)
                if self._eof or self._lost or self._queue or beneath.is_closing():
                    return False
        except (BlockingIOError, InterruptedError):
            pass  # nothing after all: the poll saw an event that was gone by the read
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        """Close at once (no TLS close_notify wait), so that the file descriptor is freed."""
        was_idle = self.idle
        self.idle = False
        self._cancel_timer()
        if self.transport is not None and not self._lost:
            # Not once connection_lost has run: asyncio's transport may then have let go of
            # its loop, and aborting it again would raise (a peer's FIN while sending, say).
            self.transport.abort()
        if was_idle:
            self.on_idle_close(self)

    # Socket-like methods, for the 0.0.89 hooks (sock_pre_message, send_header, ...)

    def send(self, data: bytes) -> int:
        self.write(data)
        return len(data)

    def fileno(self) -> int:
        return self.fd

    def setsockopt(self, *args: Any) -> None:
        sock = self.transport.get_extra_info('socket')
        if sock is not None:
            sock.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self.transport.get_extra_info('socket').getsockopt(*args)

    def getpeername(self) -> Any:
        return self.transport.get_extra_info('peername')


# ---------------------------------------------------------------------------------------------
# TLS: a layer of its own between the TCP transport and _Connection.
# ---------------------------------------------------------------------------------------------
# asyncio's TLS transport (sslproto.py) cost about a fifth of a small https request (cProfile,
# Python 3.11): its write path (_write_appdata, _do_write, _process_outgoing, flow control of
# its own) and its read path (get_buffer, buffer_updated, _do_read, a state machine) are a
# dozen Python calls around the two that do the work, SSLObject.write and .read. This layer
# makes those two calls and little else. It is the protocol of the transport beneath (TCP, or
# this layer again for TLS through an https:// proxy, which asyncio before 3.11 cannot do) and
# the transport of the _Connection above, whose TCP transport stays in lower_transports (its
# buffer counts as unsent, and cork still works on its socket). Instructions per https request
# (callgrind, tls-small-seq, Python 3.11): 135.3k with asyncio's TLS, 100.2k-101.1k with this
# layer; the floor (a minimal Protocol client over asyncio's TLS) 129.1k-129.5k. Under uvloop:
# see _start_tls.

_TLS_RECORD = 16 * 1024  # the most plaintext one TLS record holds: one read takes it all


class _TlsLayer(asyncio.Protocol):
    """TLS, with ssl's in-memory SSLObject, over `transport` for `protocol`."""

    __slots__ = ('loop', 'transport', 'protocol', '_sslobj', '_incoming', '_outgoing',
                 '_handshake', '_backlog', '_backlog_size', '_paused_beneath',
                 '_paused_above', '_closing', '_error', '_context', 'socket_beneath')

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: Any, protocol: Any,
                 context: ssl.SSLContext, server_hostname: str) -> None:
        self.loop = loop
        self.transport = transport
        self.protocol = protocol
        self._context = context
        # The socket of the transport beneath when that is asyncio's own, which is still open
        # in connection_lost (see _read_what_the_socket_holds)
        self.socket_beneath: Optional[socket.socket] = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The context's own wrap_bio: its sslobject_class, SNI and host name checks
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing,
                                        server_hostname=server_hostname)
        self._handshake: Optional['asyncio.Future[None]'] = None
        # Plaintext the SSLObject could not take yet (a TLS 1.2 renegotiation in progress)
        self._backlog: List[bytes] = []
        self._backlog_size = 0
        # The protocol above is told to pause while the transport beneath is paused, or while
        # the backlog is above the high-water mark: without the latter, an upload whose
        # writer never waits would pile up in the backlog for as long as the renegotiation
        # takes (a renegotiation's ClientHello waits behind all the ciphertext already sent,
        # megabytes on loopback: the rest of a 16 MiB upload was seen held here)
        self._paused_beneath = False
        self._paused_above = False
        self._closing = False
        # Why this layer gave up on the connection, for the protocol's connection_lost
        self._error: Optional[BaseException] = None

    async def handshake(self, timeout: float, early: bytes) -> None:
        """Become the transport's protocol and complete the handshake within `timeout`,
        raising what asyncio's start_tls raises: the ssl module's error, ConnectionResetError
        for a connection closed during it, ConnectionAbortedError when `timeout` passes.
        `early`: what arrived before, for the protocol that was the transport's."""
        waiter = self._handshake = self.loop.create_future()
        self.transport.set_protocol(self)
        self._incoming.write(early)
        self._step_handshake()
        timer = self.loop.call_later(timeout, self._handshake_timed_out, timeout)
        try:
            await waiter
        finally:
            timer.cancel()

    def _step_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except Exception as exception:
            self._flush()  # the alert that says why, if any
            self._end_handshake(exception)
            return
        self._flush()
        self._end_handshake(None)

    def _end_handshake(self, exception: Optional[BaseException]) -> None:
        waiter = self._handshake
        self._handshake = None
        if exception is not None:
            # Nothing above was connected: as with asyncio, it hears nothing of this
            self.protocol = None
            self._closing = True
            self.transport.abort()
        if waiter is not None and not waiter.done():
            if exception is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exception)

    def _handshake_timed_out(self, timeout: float) -> None:
        if self._handshake is not None:
            self._end_handshake(ConnectionAbortedError(
                'TLS handshake took longer than %s seconds' % (timeout,)))

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.transport.write(self._outgoing.read())

    # The transport beneath's protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._handshake is not None:
            self._step_handshake()
            if self._handshake is not None or self._closing:
                return
        # Every record that arrived, handed up in one piece: one call per read beneath
        sslobj = self._sslobj
        incoming = self._incoming
        chunks: List[bytes] = []
        ended = False
        try:
            while True:
                chunk = sslobj.read(_TLS_RECORD)
                if not chunk:
                    ended = True  # close_notify
                    break
                chunks.append(chunk)
                if not incoming.pending and not sslobj.pending():
                    # All read: OpenSSL takes from the BIO only the record it decrypts, so
                    # nothing is left anywhere. Not read again to find that out, since the
                    # SSLWantReadError it would raise costs more than decrypting a small
                    # record (4.6 us against 6.1 us to encrypt and decrypt one of 100 bytes)
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            ended = True
        except Exception as exception:
            self._fail(exception)
            return
        # Anything the reads made the SSLObject answer: a TLS 1.3 KeyUpdate, a renegotiation
        if self._outgoing.pending:
            self.transport.write(self._outgoing.read())
        if chunks:
            self.protocol.data_received(chunks[0] if len(chunks) == 1 else b''.join(chunks))
        if self._backlog and not self._closing:
            self._write_backlog()
        if ended and not self._closing:
            self._closed_by_peer()

    def _closed_by_peer(self) -> None:
        # close_notify: an end of file for the protocol (asyncio's meaning too), answered in
        # kind, then the TCP connection closed
        self.protocol.eof_received()
        if self._closing:
            return
        if self._backlog or self.transport.get_write_buffer_size():
            # Still sending: a body the server answered (or refused) before reading it, and
            # will not read now. Our close_notify would wait behind it, and a server that waits
            # for that before it closes (asyncio's own, before Python 3.11) would wait as long
            # as we, until the send timed out: the connection is dropped instead.
            self.abort()
        else:
            self.close()

    def eof_received(self) -> bool:
        if self._handshake is not None:
            self._end_handshake(ConnectionResetError('Connection closed during the TLS '
                                                     'handshake'))
            return False
        if self._closing:
            return False
        # A FIN without close_notify: asyncio reports it as an end of file too (a truncated
        # body is still told by its framing), and so does this layer
        self.protocol.eof_received()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if exc is not None and self.socket_beneath is not None and not self._closing and \
                self._handshake is None and self.protocol is not None:
            _read_what_the_socket_holds(self.socket_beneath, self)
        self._closing = True
        if self._handshake is not None:
            self._end_handshake(exc or ConnectionResetError('Connection lost during the TLS '
                                                            'handshake'))
            return
        if self.protocol is not None:
            self.protocol.connection_lost(self._error or exc)

    def pause_writing(self) -> None:
        self._paused_beneath = True
        self._pause_above()

    def resume_writing(self) -> None:
        self._paused_beneath = False
        self._resume_above_if_room()

    def _pause_above(self) -> None:
        if not self._paused_above:
            self._paused_above = True
            self.protocol.pause_writing()

    def _resume_above_if_room(self) -> None:
        if self._paused_above and not self._paused_beneath and \
                self._backlog_size <= self.transport.get_write_buffer_limits()[0]:
            self._paused_above = False
            self.protocol.resume_writing()

    def _fail(self, exception: BaseException) -> None:
        # As asyncio does: the connection is dropped, and the error given as the reason
        if self._error is None:
            self._error = exception
        self.abort()

    # The protocol above's transport

    def write(self, data: Any) -> None:
        if not data or self._closing:
            return
        if self._backlog:
            self._hold_back(data)
            return
        try:
            self._sslobj.write(data)
        except ssl.SSLWantReadError:
            self._hold_back(data)
        except Exception as exception:
            self._fail(exception)
            return
        self.transport.write(self._outgoing.read())

    def _hold_back(self, data: Any) -> None:
        # A copy, unless immutable: the caller may refill a buffer once it is written (a
        # reader of a file with readinto does), and this holds it past that
        self._backlog.append(data if type(data) is bytes else bytes(data))
        self._backlog_size += len(data)
        if self._backlog_size > self.transport.get_write_buffer_limits()[1]:
            self._pause_above()

    def _write_backlog(self) -> None:
        backlog = self._backlog
        while backlog:
            try:
                self._sslobj.write(backlog[0])
            except ssl.SSLWantReadError:
                break
            except Exception as exception:
                self._fail(exception)
                return
            self._backlog_size -= len(backlog[0])
            del backlog[0]
        self._flush()
        self._resume_above_if_room()

    def is_closing(self) -> bool:
        return self._closing or self.transport.is_closing()

    def close(self) -> None:
        """Send close_notify, then close the connection beneath once its buffer is sent."""
        if self._closing:
            return
        self._closing = True
        try:
            self._sslobj.unwrap()
        except Exception:  # the peer's close_notify has not arrived, or cannot now
            pass
        self._flush()
        self.transport.close()

    def abort(self) -> None:
        self._closing = True
        self.transport.abort()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        # Ciphertext goes beneath at once: the transport beneath counts it (lower_transports)
        return self._backlog_size

    def set_write_buffer_limits(self, high: Optional[int] = None,
                                low: Optional[int] = None) -> None:
        self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> Tuple[int, int]:
        limits: Tuple[int, int] = self.transport.get_write_buffer_limits()
        return limits

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._sslobj
        if name == 'ssl_object':
            return sslobj
        if name == 'sslcontext':
            return self._context
        if name == 'peercert':
            return sslobj.getpeercert()
        if name == 'cipher':
            return sslobj.cipher()
        if name == 'compression':
            return sslobj.compression()
        return self.transport.get_extra_info(name, default)


async def _start_tls(loop: asyncio.AbstractEventLoop, conn: '_Connection',
                     context: ssl.SSLContext, server_hostname: str, timeout: float) -> None:
    """TLS on `conn`'s transport, with `context` and `server_hostname`, in `timeout`."""
    # Under uvloop too, although its own TLS is compiled: per https request (callgrind,
    # tls-small-seq) 64.3k instructions with it, 63.3k and 64.3k with this layer in two runs
    # (the uvloop floor, over uvloop's TLS, 61.8k-62.5k): the same. And uvloop's (0.23) loses
    # the last records of a stream that ends while reading is paused: a large body closed by
    # the server came short (16 KiB of 1 MiB missing), silently so when the close delimits
    # it (see test_lowhaio_tls_layer).
    # A TLS server never speaks first, but one that is not a TLS server may, before the
    # handshake starts (uvloop reads as soon as connected): the handshake sees those bytes,
    # and fails on them at once rather than at the deadline
    early = conn.take()
    layer = _TlsLayer(loop, conn.transport, conn, context, server_hostname)
    if conn._read_transport is not None and conn._read_transport is conn.transport:
        layer.socket_beneath = conn._read_transport._sock
    await layer.handshake(timeout, early or b'')
    conn.start_tls_on(layer)


# ---------------------------------------------------------------------------------------------
# Connecting: RFC 8305 "happy eyeballs", with callbacks rather than a task per attempt.
# ---------------------------------------------------------------------------------------------

def _interleave_families(addresses: Sequence[str]) -> List[str]:
    # RFC 8305 §4: alternate address families, starting with the first one given (IPv6 first
    # when the resolver returned both), so that one broken family costs one delay, not all.
    v6 = [address for address in addresses if ':' in address]
    v4 = [address for address in addresses if ':' not in address]
    first, second = (v6, v4) if addresses and ':' in addresses[0] else (v4, v6)
    ordered: List[str] = []
    for i in range(max(len(first), len(second))):
        ordered.extend(family[i] for family in (first, second) if i < len(family))
    return ordered


def _accepts_argument(func: Callable[..., Any]) -> bool:
    import inspect
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD,
                           parameter.VAR_POSITIONAL)
        for parameter in parameters
    )


_CONNECT_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN, errno.EWOULDBLOCK)


def _connect_again(sock: socket.socket, sockaddr: Tuple[Any, ...]) -> int:
    """The outcome of a non-blocking connect that has just said it is in progress, asked at
    once: over loopback the handshake is done by the time the first call returns, so the
    connection is made (or refused) without waiting for the loop to report it writable.
    0 if connected, EALREADY if still in progress, else the error."""
    err = sock.connect_ex(sockaddr)
    return 0 if err == errno.EISCONN else err


async def _open_first(loop: asyncio.AbstractEventLoop, addresses: Sequence[str], port: int,
                      make_sock: Callable[[int], socket.socket], delay: float,
                      connect_timeout: float, more: 'Optional[asyncio.Future[Any]]' = None,
                      ) -> Tuple[socket.socket, str]:
    """Connect to the first of `addresses` that accepts, starting a new attempt every `delay`
    seconds or as soon as one fails. Returns the connected socket and its address. `more`, a
    DNS lookup still running, adds its addresses to the attempts when it completes."""
    done: asyncio.Future[Tuple[socket.socket, str]] = loop.create_future()
    pending = list(addresses)
    attempts: Dict[int, Tuple[socket.socket, str]] = {}
    errors: List[BaseException] = []
    next_attempt: Optional[asyncio.TimerHandle] = None
    more_to_come = more is not None

    def start_next() -> None:
        nonlocal next_attempt
        next_attempt = None
        while pending and not done.done():
            address = pending.pop(0)
            family = socket.AF_INET6 if ':' in address else socket.AF_INET
            try:
                sock = make_sock(family)
                sock.setblocking(False)
            except OSError as exception:
                errors.append(exception)
                continue
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            try:
                err = sock.connect_ex(sockaddr)
                if err in _CONNECT_IN_PROGRESS:
                    err = _connect_again(sock, sockaddr)
            except OSError as exception:
                err = exception.errno or errno.EINVAL
            if err == 0:
                succeed(sock, address)
                return
            if err not in _CONNECT_IN_PROGRESS:
                sock.close()
                errors.append(OSError(err, 'Connect to %s:%d failed: %s'
                                      % (address, port, errno.errorcode.get(err, err))))
                continue
            fd = sock.fileno()
            attempts[fd] = (sock, address)
            loop.add_writer(fd, on_writable, fd)
            if pending:
                next_attempt = loop.call_later(delay, start_next)
            return
        if not attempts and not done.done() and not more_to_come:
            fail()

    def on_more_addresses(_: Any) -> None:
        nonlocal next_attempt, more_to_come
        if not more_to_come or done.done():
            return
        more_to_come = False
        assert more is not None
        if _succeeded(more):
            # Next in line, since an address of the other family was the last one tried
            pending[:] = _interleave_families(
                [str(result) for result in more.result()] + pending)
        elif more.cancelled():
            # Only the deadline (or the pool closing) cancels the lookup: out of time, which
            # must not depend on which of the two timers ran first.
            on_timeout()
            return
        else:
            errors.append(more.exception())  # type: ignore[arg-type]
        if not attempts:
            start_next()
        elif pending and next_attempt is None:
            next_attempt = loop.call_later(delay, start_next)

    def on_writable(fd: int) -> None:
        nonlocal next_attempt
        loop.remove_writer(fd)
        sock, address = attempts.pop(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            succeed(sock, address)
            return
        sock.close()
        errors.append(OSError(err, 'Connect to %s:%d failed: %s'
                              % (address, port, errno.errorcode.get(err, err))))
        # RFC 8305 §5: a failed attempt starts the next one at once.
        if next_attempt is not None:
            next_attempt.cancel()
        start_next()

    def succeed(sock: socket.socket, address: str) -> None:
        if not done.done():
            done.set_result((sock, address))
        else:
            sock.close()

    def fail() -> None:
        if not done.done():
            exception = OSError('All connection attempts failed: %s'
                                % '; '.join(str(error) for error in errors)) \
                if len(errors) != 1 else errors[0]
            done.set_exception(exception)

    def on_timeout() -> None:
        if not done.done():
            done.set_exception(asyncio.TimeoutError())

    if more is not None:
        if _succeeded(more):  # its addresses are here already: they join the first attempts
            more_to_come = False
            pending[:] = _interleave_families(
                pending + [str(result) for result in more.result()])
        else:
            more.add_done_callback(on_more_addresses)
    start_next()
    # Armed only if the first attempt did not connect at once: a connection made without
    # waiting needs no timer, and a timer armed and cancelled still moves a test's fake clock
    # (aiofastforward's) to its deadline, as if the connect had taken that long.
    timeout_handle = None if done.done() else loop.call_later(connect_timeout, on_timeout)
    try:
        return await done
    except BaseException:
        # Cancelled just after an attempt won: that socket is ours to close too.
        if done.done() and not done.cancelled() and done.exception() is None:
            done.result()[0].close()
        raise
    finally:
        if timeout_handle is not None:
            timeout_handle.cancel()
        if more is not None:
            more.remove_done_callback(on_more_addresses)
        if next_attempt is not None:
            next_attempt.cancel()
        for fd, (sock, _) in attempts.items():
            loop.remove_writer(fd)
            sock.close()


# ---------------------------------------------------------------------------------------------
# Proxies: forwarding, CONNECT tunnels, SOCKS5. A pool made with `proxy=` routes each request
# here first: `route` picks the proxy for the request's origin and builds the request head,
# and `connect_through_proxy` opens a connection to the proxy and, for a tunnel, the tunnel.
# A pool without a proxy never comes here.
# ---------------------------------------------------------------------------------------------

class HttpProxyError(HttpConnectionError):
    """The proxy refused or broke the connection set-up (a CONNECT answered with 407, 403,
    502…, a SOCKS reply with an error code, a malformed reply, a close during the handshake).
    Nothing of the request was sent. `code` is the HTTP proxy's status (b'407') and
    `socks_reply` the SOCKS5 reply code, or None when the proxy sent none."""

    def __init__(self, message: str, code: Optional[bytes] = None,
                 socks_reply: Optional[int] = None) -> None:
        super().__init__(message)
        self.code: Optional[bytes] = code
        self.socks_reply: Optional[int] = socks_reply


_PROXY_DEFAULT_PORTS = {'http': 80, 'https': 443, 'socks5': 1080, 'socks5h': 1080}
# The userinfo of a URL, with or without a scheme before it
_USERINFO_RE = re.compile(r'^((?:[^/?#@]*//)?)[^/?#]*@')
# Enough for any proxy's error page; a longer one is abandoned, as the connection is closed.
_MAX_PROXY_ERROR_BODY = 65536
_SOCKS_REPLIES = {
    1: 'general SOCKS server failure',
    2: 'connection not allowed by ruleset',
    3: 'network unreachable',
    4: 'host unreachable',
    5: 'connection refused',
    6: 'TTL expired',
    7: 'command not supported',
    8: 'address type not supported',
}
# Reply codes after which another of the origin's addresses may still work
_SOCKS_TRY_NEXT_ADDRESS = frozenset((3, 4, 5, 6, 8))


def _redact_userinfo(url: str) -> str:
    return _USERINFO_RE.sub(r'\1***@', url)


class Proxy:
    """A parsed proxy URL. Its repr, and `label`, never show the password."""

    __slots__ = ('scheme', 'host', 'port', 'ip_literal', 'username', 'password', 'label',
                 'authorization')

    def __init__(self, scheme: str, host: str, port: int, ip_literal: bool,
                 username: Optional[str], password: Optional[str]) -> None:
        self.scheme: str = scheme
        self.host: str = host
        self.port: int = port
        self.ip_literal: bool = ip_literal
        self.username: Optional[str] = username
        self.password: Optional[str] = password
        bracketed = '[%s]' % (host,) if ':' in host else host
        user = '' if username is None else \
            urllib.parse.quote(username, safe='') + (':***' if password else '') + '@'
        self.label: str = '%s://%s%s:%d' % (scheme, user, bracketed, port)
        # RFC 9110 §11.7.1 with the Basic scheme of RFC 7617 (user-id and password in UTF-8)
        self.authorization: bytes = \
            b'' if username is None else b'proxy-authorization: Basic %s\r\n' % (
            base64.b64encode(('%s:%s' % (username, password or '')).encode('utf-8')),)

    def _identity(self) -> Tuple[Any, ...]:
        return (self.scheme, self.host, self.port, self.username, self.password)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proxy) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return 'Proxy(%r)' % (self.label,)


def parse_proxy_url(url: str) -> Proxy:
    """Parse `http://`, `https://`, `socks5://` or `socks5h://[user:password@]host[:port]`.

    Raises HttpInvalidRequestError, whose message never holds the password."""
    if not isinstance(url, str):
        raise HttpInvalidRequestError('Proxy URL must be a str, not %s' % (type(url).__name__,))
    shown = _redact_userinfo(url)
    try:
        parts = urllib.parse.urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        # Not chained: the cause's message may quote the URL, password included
        raise HttpInvalidRequestError('Invalid proxy URL %r' % (shown,)) from None
    scheme = parts.scheme.lower()
    if scheme not in _PROXY_DEFAULT_PORTS:
        raise HttpInvalidRequestError(
            'Proxy URL scheme must be http, https, socks5 or socks5h: %r' % (shown,))
    if not hostname or any(ord(char) < 33 or char in '\x7f<>"{}|\\^`' for char in hostname):
        raise HttpInvalidRequestError('Proxy URL has no valid host: %r' % (shown,))
    if parts.path not in ('', '/') or parts.query or parts.fragment:
        raise HttpInvalidRequestError(
            'Proxy URL must not have a path, query or fragment: %r' % (shown,))
    if port == 0:
        raise HttpInvalidRequestError('Proxy URL port 0 cannot be connected to: %r' % (shown,))
    host = hostname[:-1] if hostname.endswith('.') else hostname
    try:
        ipaddress.ip_address(host)
        ip_literal = True
    except ValueError:
        ip_literal = False
    username = None if parts.username is None else urllib.parse.unquote(parts.username)
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    if scheme.startswith('socks') and username is not None and (
            not 0 < len(username.encode('utf-8')) < 256 or
            not 0 < len((password or '').encode('utf-8')) < 256):
        # RFC 1929 §2: each is 1 to 255 bytes
        raise HttpInvalidRequestError(
            'A SOCKS5 username and password must each be 1 to 255 bytes: %r' % (shown,))
    return Proxy(scheme, host, _PROXY_DEFAULT_PORTS[scheme] if port is None else port,
                 ip_literal, username, password)


class ProxiedTarget(NamedTuple):
    """A Target routed through a proxy. Its first fields mean what Target's do, for the pool:
    `host`, `port` and `ip_literal` are what connections are made to and checked against the
    DNS answers of (the proxy, or for socks5:// the origin, whose address the pool resolves);
    `key` holds the proxy's label; `path_and_query` is the absolute form when forwarding."""
    scheme: str
    host: str
    port: int
    key: Tuple[Any, ...]
    ip_literal: bool
    host_line: bytes
    path_and_query: bytes
    has_query: bool
    origin: Target
    proxy: Proxy
    forwarding: bool  # plain http through an HTTP proxy: no tunnel, absolute-form requests


def _route_through(target: Target, proxy: Proxy) -> ProxiedTarget:
    if proxy.scheme in ('http', 'https') and target.scheme == 'http':
        # RFC 9112 §3.2.2: to a proxy, the absolute form. One connection serves every origin.
        authority = target.host_line[6:-2]  # b'host: ' ... b'\r\n'
        return ProxiedTarget(
            target.scheme, proxy.host, proxy.port, ('http', '*', 0, proxy.label),
            proxy.ip_literal, target.host_line, b'http://' + authority + target.path_and_query,
            target.has_query, target, proxy, True)
    key = target.key + (proxy.label,)
    if proxy.scheme == 'socks5':
        # Names resolved here, so the pool's DNS check applies to the origin's address
        return ProxiedTarget(target.scheme, target.host, target.port, key, target.ip_literal,
                             target.host_line, target.path_and_query, target.has_query,
                             target, proxy, False)
    return ProxiedTarget(target.scheme, proxy.host, proxy.port, key, proxy.ip_literal,
                         target.host_line, target.path_and_query, target.has_query, target,
                         proxy, False)


def _forwarded_head(method: bytes, target: ProxiedTarget, params: Sequence[Tuple[str, str]],
                    http_version: bytes, headers: RequestHeaders) -> bytes:
    head = _request_head(method, target, params, http_version, headers)  # type: ignore[arg-type]
    authorization = target.proxy.authorization
    if not authorization:
        return head
    line_end = head.index(b'\r\n') + 2
    return head[:line_end] + authorization + head[line_end:]


def _connect_authority(target: Target) -> bytes:
    # RFC 9110 §9.3.6: CONNECT's target is host:port, the port always given
    authority = target.host_line[6:-2]
    return authority if target.port != _DEFAULT_PORTS[target.scheme] else \
        authority + b':%d' % (target.port,)


async def _receive(conn: _Connection, deadline: float, during: str) -> bytes:
    """The next bytes from the proxy, by `deadline` (then asyncio.TimeoutError)."""
    data = conn.take()
    while data is None:
        await conn.readable(deadline)
        data = conn.take()
    if not data:
        raise HttpProxyError('The proxy closed the connection during %s' % (during,)) \
            from conn.lost_exception
    return data


async def _receive_exactly(conn: _Connection, buffer: bytearray, count: int, deadline: float,
                           during: str) -> bytes:
    while len(buffer) < count:
        buffer += await _receive(conn, deadline, during)
    data = bytes(buffer[:count])
    del buffer[:count]
    return data


async def _open_connect_tunnel(conn: _Connection, proxy: Proxy, origin: Target,
                               deadline: float, max_header_length: int,
                               max_header_count: int) -> bytes:
    """Ask an HTTP proxy for a tunnel to `origin` (RFC 9110 §9.3.6). Returns the bytes that
    followed the proxy's 2xx head: they came through the tunnel."""
    authority = _connect_authority(origin)
    conn.write(b'CONNECT %s HTTP/1.1\r\nhost: %s\r\n%s\r\n' % (
        authority, authority, proxy.authorization))
    data = b''
    while True:
        data += await _receive(conn, deadline, 'the CONNECT response head')
        head = parse_response_head(data, max_header_length, max_header_count)
        while head is not None and head.code[0] == 49:  # 1xx: interim, the final one follows
            data = data[head.length:]
            head = parse_response_head(data, max_header_length, max_header_count) \
                if data else None
        if head is not None:
            break
    if head.code[0] == 50:  # 2xx: the tunnel is open
        return data[head.length:]
    await _discard_proxy_error_body(conn, head, data[head.length:], deadline)
    raise HttpProxyError('The proxy %s refused to CONNECT to %s: %s %s' % (
        proxy.label, authority.decode('ascii'), head.code.decode('ascii'),
        head.reason.decode('latin-1')), code=head.code)


async def _discard_proxy_error_body(conn: _Connection, head: ResponseHead, data: bytes,
                                    deadline: float) -> None:
    # Read so that the proxy is not reset mid-write, but only so much and so long: the
    # connection is closed afterwards whatever happens here.
    deadline = min(deadline, conn.loop.time() + 0.25)
    try:
        framing = response_framing(b'CONNECT', head)
        decoder = ChunkedDecoder() if framing.kind == CHUNKED else None
        received = 0
        while received <= _MAX_PROXY_ERROR_BODY:
            received += len(data)
            if framing.kind == NO_BODY or \
                    (framing.kind == CONTENT_LENGTH and received >= framing.length):
                return
            if decoder is not None:
                decoder.feed(data)
                if decoder.done:
                    return
            data = await _receive(conn, deadline, 'the body of its error response')
    except (HttpError, asyncio.TimeoutError):
        return


async def _socks5_handshake(conn: _Connection, proxy: Proxy, origin: Target,
                            address: Optional[str], deadline: float) -> bytes:
    """Open a SOCKS5 connection to `origin` (RFC 1928), authenticating with RFC 1929 when the
    proxy URL has credentials: to `address`, or to the origin's name when it is None (the
    proxy resolves it). Returns the bytes that followed the reply: they came through the
    tunnel."""
    during = 'the SOCKS5 handshake'
    buffer = bytearray()
    methods = b'\x00\x02' if proxy.username is not None else b'\x00'
    conn.write(b'\x05%c%s' % (len(methods), methods))
    version, method = await _receive_exactly(conn, buffer, 2, deadline, during)
    if version != 5:
        raise HttpProxyError('The SOCKS proxy %s replied with version %d, not 5'
                             % (proxy.label, version))
    if method == 2 and proxy.username is not None:
        username = proxy.username.encode('utf-8')
        password = (proxy.password or '').encode('utf-8')
        conn.write(b'\x01%c%s%c%s' % (len(username), username, len(password), password))
        auth_version, status = await _receive_exactly(conn, buffer, 2, deadline, during)
        if auth_version != 1:
            raise HttpProxyError('The SOCKS proxy %s replied to authentication with version %d, '
                                 'not 1' % (proxy.label, auth_version))
        if status != 0:
            raise HttpProxyError('The SOCKS proxy %s rejected the username and password'
                                 % (proxy.label,))
    elif method != 0:
        raise HttpProxyError('The SOCKS proxy %s accepts none of the offered authentication '
                             'methods%s' % (proxy.label, '' if proxy.username is not None else
                                            ' (it may require a username and password)'))

    conn.write(b'\x05\x01\x00' + _socks5_address(origin, address) +
               origin.port.to_bytes(2, 'big'))
    version, reply, reserved, address_type = await _receive_exactly(
        conn, buffer, 4, deadline, during)
    if version != 5:
        raise HttpProxyError('The SOCKS proxy %s replied with version %d, not 5'
                             % (proxy.label, version))
    if reply != 0:
        raise HttpProxyError('The SOCKS proxy %s could not connect to %s:%d: %s' % (
            proxy.label, address or origin.host, origin.port,
            _SOCKS_REPLIES.get(reply, 'unknown reply code %d' % (reply,))), socks_reply=reply)
    if reserved != 0 or address_type not in (1, 3, 4):
        raise HttpProxyError('The SOCKS proxy %s sent a malformed reply' % (proxy.label,))
    if address_type == 3:
        length = (await _receive_exactly(conn, buffer, 1, deadline, during))[0]
    else:
        length = 4 if address_type == 1 else 16
    await _receive_exactly(conn, buffer, length + 2, deadline, during)  # bound address, port
    return bytes(buffer)


def _socks5_address(origin: Target, address: Optional[str]) -> bytes:
    # RFC 1928 §5: ATYP then the address: 1 IPv4, 4 IPv6, 3 a length-prefixed name
    literal = address if address is not None else origin.host if origin.ip_literal else None
    if literal is not None:
        packed = ipaddress.ip_address(literal).packed
        return (b'\x01' if len(packed) == 4 else b'\x04') + packed
    name = origin.host_line[6:-2].rsplit(b':', 1)[0] \
        if origin.port != _DEFAULT_PORTS[origin.scheme] else origin.host_line[6:-2]
    if len(name) > 255:
        raise HttpInvalidRequestError('Host name too long for SOCKS5: %r' % (origin.host,))
    return b'\x03%c%s' % (len(name), name)


def _proxy_layer(
        proxy: Any, *, loop: asyncio.AbstractEventLoop,
        resolve: Callable[[str, float], Awaitable[Any]],
        make_sock: Callable[[int], socket.socket],
        get_ssl_context: Callable[[], ssl.SSLContext], happy_eyeballs_delay: float,
        keep_alive_timeout: float, max_header_length: int, max_header_count: int,
        has_send_header_hook: bool, logger: Any,
) -> Tuple[Callable[..., Tuple[Any, bytes]], Callable[..., Awaitable[_Connection]]]:
    """`route(method, target, params, http_version, headers) -> (target, head)` and
    `connect_through_proxy(target, answer, deadline) -> connection`, for Pool."""
    ssl_context: Optional[ssl.SSLContext] = None
    parsed: Dict[str, Proxy] = {}
    routes: Dict[Tuple[Target, Proxy], ProxiedTarget] = {}

    if isinstance(proxy, str):
        fixed = parse_proxy_url(proxy)

        def choose(target: Target) -> Optional[Proxy]:
            return fixed
    elif callable(proxy):
        def choose(target: Target) -> Optional[Proxy]:
            url = proxy(target.scheme, target.host, target.port)
            if url is None:
                return None
            chosen = parsed.get(url)
            if chosen is None:
                chosen = parse_proxy_url(url)
                if len(parsed) >= 256:
                    parsed.clear()
                parsed[url] = chosen
            return chosen
    else:
        raise HttpInvalidRequestError(
            'proxy must be None, a proxy URL or a function, not %s' % (type(proxy).__name__,))

    def route(method: bytes, target: Target, params: Sequence[Tuple[str, str]],
              http_version: bytes, headers: RequestHeaders) -> Tuple[Any, bytes]:
        chosen = choose(target)
        if chosen is None:
            return target, _request_head(method, target, params, http_version, headers)
        routed = routes.get((target, chosen))
        if routed is None:
            routed = _route_through(target, chosen)
            if len(routes) >= 1024:
                routes.clear()
            routes[target, chosen] = routed
        if not routed.forwarding:
            return routed, _request_head(method, target, params, http_version, headers)
        if has_send_header_hook:
            raise HttpInvalidRequestError(
                'A send_header hook sends the origin form, which an HTTP proxy cannot forward')
        return routed, _forwarded_head(method, routed, params, http_version, headers)

    def context() -> ssl.SSLContext:
        nonlocal ssl_context
        if ssl_context is None:
            ssl_context = get_ssl_context()
        return ssl_context

    async def connect_through_proxy(target: ProxiedTarget, answer: Any,
                                    deadline: float) -> _Connection:
        proxy, origin = target.proxy, target.origin
        if proxy.scheme != 'socks5':
            return await connect_once(target, answer, None, deadline)
        # socks5://: the pool resolved the origin; the proxy is asked for one address after
        # another while it answers that an address cannot be reached.
        addresses = (origin.host,) if answer is None else answer.addresses
        proxy_answer = None if proxy.ip_literal else await resolve(proxy.host, deadline)
        for index, address in enumerate(addresses):
            try:
                return await connect_once(target, proxy_answer, address, deadline)
            except HttpProxyError as exception:
                if exception.socks_reply not in _SOCKS_TRY_NEXT_ADDRESS or \
                        index == len(addresses) - 1:
                    raise
        raise AssertionError('unreachable')  # pragma: no cover

    async def connect_once(target: ProxiedTarget, proxy_answer: Any,
                           origin_address: Optional[str], deadline: float) -> _Connection:
        proxy, origin = target.proxy, target.origin
        addresses = (proxy.host,) if proxy_answer is None else proxy_answer.addresses
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('Connecting to %s through the proxy at %s', target.key, addresses)
        try:
            sock, address = await _open_first(loop, addresses, proxy.port, make_sock,
                                               happy_eyeballs_delay,
                                               max(deadline - loop.time(), 0))
        except asyncio.TimeoutError as exception:
            raise HttpConnectionError('Timed out connecting to the proxy %s'
                                      % (proxy.label,)) from exception
        except OSError as exception:
            raise HttpConnectionError('Could not connect to the proxy %s: %s'
                                      % (proxy.label, exception)) from exception

        conn = _Connection(loop, target.key, origin_address or address, keep_alive_timeout)
        step = 'Connection to the proxy %s' % (proxy.label,)
        try:
            await loop.create_connection(lambda: conn, sock=sock)
            if proxy.scheme == 'https':
                step = 'TLS handshake with the proxy %s' % (proxy.label,)
                await _start_tls(loop, conn, context(), proxy.host,
                                 max(deadline - loop.time(), 0.001))
            if target.forwarding:
                return conn
            if proxy.scheme.startswith('socks'):
                step = 'SOCKS5 handshake with %s' % (proxy.label,)
                tunnelled = await _socks5_handshake(conn, proxy, origin, origin_address,
                                                    deadline)
            else:
                step = 'CONNECT through %s' % (proxy.label,)
                tunnelled = await _open_connect_tunnel(conn, proxy, origin, deadline,
                                                       max_header_length, max_header_count)
            conn.received_any = False
            if origin.scheme == 'http':
                if tunnelled:
                    conn.data_received(tunnelled)
                return conn
            if tunnelled:
                # A TLS server never speaks first: these are not the origin's
                raise HttpProxyError('Bytes arrived through the tunnel from %s before the TLS '
                                     'handshake began' % (proxy.label,))
            step = 'TLS handshake with %s:%d through %s' % (origin.host, origin.port,
                                                            proxy.label)
            await start_origin_tls(conn, origin, deadline)
            return conn
        except BaseException as exception:
            sock.close()
            if conn.transport is not None:
                conn.transport.abort()
            if not isinstance(exception, Exception) or \
                    isinstance(exception, (asyncio.CancelledError, HttpConnectionError)):
                raise
            if _deadline_passed(loop, exception, deadline):
                error = HttpTlsError if step.startswith('TLS') else HttpConnectionError
                raise error('Timed out during the %s' % (step[0].lower() + step[1:],)) \
                    from _as_timeout(exception)
            if isinstance(exception, HttpError):  # from the parser: the proxy's reply
                raise HttpProxyError('Malformed reply during the %s: %s' % (
                    step[0].lower() + step[1:], exception)) from exception
            error = HttpTlsError if step.startswith('TLS') else HttpConnectionError
            raise error('%s failed: %r' % (step, exception)) from exception

    async def start_origin_tls(conn: _Connection, origin: Target, deadline: float) -> None:
        # TLS to the origin over the tunnel: SNI and certificate checks for the origin
        await _start_tls(loop, conn, context(), origin.host, max(deadline - loop.time(), 0.001))

    return route, connect_through_proxy


# ---------------------------------------------------------------------------------------------
# The response body handed to the caller.
# ---------------------------------------------------------------------------------------------

class _ResponseBody:
    """An async iterator over the response body. Reading it to the end returns the
    connection to the pool (if reusable); `aclose()` before the end, or dropping it, closes
    the connection."""

    __slots__ = ('_conn', '_release', '_framing', '_first', '_remaining', '_decoder',
                 '_socket_timeout', '_loop', '_done', '__weakref__')

    def __init__(self, conn: Optional[_Connection], release: Callable[[_Connection, bool], None],
                 framing: Framing, first: bytes, socket_timeout: float,
                 loop: asyncio.AbstractEventLoop, max_trailer_length: int = 16384) -> None:
        self._conn = conn
        self._release = release
        self._framing = framing
        self._first = first
        self._remaining = framing.length
        self._decoder = ChunkedDecoder(max_trailer_length) if framing.kind == CHUNKED else None
        self._socket_timeout = socket_timeout
        self._loop = loop
        self._done = False

    def __aiter__(self) -> '_ResponseBody':
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._first:
                data, self._first = self._first, b''
            elif self._done:
                raise StopAsyncIteration
            else:
                conn = self._conn
                assert conn is not None
                taken = conn.take_piece()
                if taken is None:
                    taken = conn.read_now()
                if taken is None:
                    # Waiting on the bare future here, not in a helper coroutine: this runs
                    # once per chunk of a download.
                    try:
                        await conn.readable(self._loop.time() + self._socket_timeout)
                    except BaseException as exception:
                        self._finish(reusable=False)
                        if isinstance(exception, asyncio.TimeoutError):
                            raise HttpTimeoutError('Timed out reading the response body') \
                                from exception
                        raise
                    taken = conn.take_piece()
                data = taken or self._at_end_of_stream()
            if self._framing.kind == CONTENT_LENGTH and len(data) < self._remaining:
                self._remaining -= len(data)
                return data
            chunk = self._take(data)
            if chunk:
                return chunk

    def _at_end_of_stream(self) -> bytes:
        conn = self._conn
        assert conn is not None
        kind = self._framing.kind
        self._finish(reusable=False)
        # RFC 9112 §6.3 rule 8: only an orderly close ends a body read until close; a reset
        # may have cut it short.
        if kind == UNTIL_CLOSE and conn.ended_cleanly:
            return b''
        raise HttpConnectionClosedError(
            'Connection closed before the end of the response body' +
            (' (%d bytes missing)' % self._remaining if kind == CONTENT_LENGTH else
             ' (no last chunk)' if kind == CHUNKED else ' (reset, not an orderly close)') +
            conn.tls_reason
        ) from conn.lost_exception

    def _take(self, data: bytes) -> bytes:
        """The body bytes in `data`, finishing when the framing says the body is complete."""
        kind = self._framing.kind
        if kind == CONTENT_LENGTH:
            # Only the last piece gets here (__anext__ hands over the others): any bytes past
            # the promised length mean the connection cannot be reused.
            remaining = self._remaining
            excess = len(data) > remaining
            self._remaining = 0
            self._finish(reusable=not excess)
            return data[:remaining] if excess else data
        if kind == CHUNKED:
            decoder = self._decoder
            assert decoder is not None
            try:
                body = decoder.feed_joined(data)
            except HttpError:
                self._finish(reusable=False)
                raise
            if decoder.done:
                self._finish(reusable=not decoder.excess)
            return body
        return data  # UNTIL_CLOSE

    def _finish(self, reusable: bool) -> None:
        self._done = True
        conn = self._conn
        if conn is not None:
            self._conn = None
            # What the body's reads said is not true of the next body's: its head was taken
            # without them (see request()), and its reads start their own count
            conn._last_full = False
            conn._reads_now = 0
            self._release(conn, reusable and self._framing.keep_alive)

    async def aclose(self) -> None:
        """Stop reading: an unfinished connection is closed, never pooled."""
        self._first = b''
        if not self._done:
            self._finish(reusable=False)

    def __del__(self) -> None:
        # Abandoned before the end: the rest of the body is still on the wire.
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._release(conn, False)


# ---------------------------------------------------------------------------------------------
# The pool.
# ---------------------------------------------------------------------------------------------

# A request's target, encoded headers, head, content-length and "connection: close" (see Pool)
_Prepared = Tuple[Target, RequestHeaders, bytes, Optional[int], bool]


class _BufferedBody:
    """A response body that arrived whole with its head: its connection is already back in
    the pool, so iterating it only hands over the bytes. Made by _whole_body, or as it does:
    without an __init__, the call of the class is all C."""

    __slots__ = ('_data',)

    _data: bytes

    def __aiter__(self) -> '_BufferedBody':
        return self

    # A coroutine function, even for the end: `anext(body, default)` needs the end raised
    # from the awaitable, not from __anext__ itself (which crashes CPython 3.11's anext)
    async def __anext__(self) -> bytes:
        data = self._data
        if data:
            self._data = b''
            # The end, asked for next by every `async for`, comes from C from now on
            self.__class__ = _EndedBody
            return data
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._data = b''


def _whole_body(data: bytes) -> _BufferedBody:
    body = _BufferedBody()
    body._data = data
    return body


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b''  # pragma: no cover - makes this an async generator


# An async generator run to its end: each __anext__() of it is a new awaitable, made in C, that
# raises StopAsyncIteration when awaited (not when made, as anext(body, default) needs), and
# that asyncio takes as a coroutine (create_task, wait_for). Ending an `async for` so costs a
# third of what a coroutine of our own raising it does.
_ENDED_CHUNKS: Any = _no_chunks()
try:
    _ENDED_CHUNKS.asend(None).send(None)
except StopAsyncIteration:
    pass


class _EndedBody(_BufferedBody):
    """A _BufferedBody whose bytes were handed over: what is left of it is its end."""

    __slots__ = ()

    # Found on the class but not bound to the instance (a builtin method, not a function)
    __anext__ = _ENDED_CHUNKS.__anext__


class _CappedBody:
    """A response body whose pieces are at most `cap` bytes (the caller's `recv_bufsize`):
    longer pieces are handed over in slices, each copied once."""

    __slots__ = ('_body', '_cap', '_piece', '_offset')

    def __init__(self, body: Any, cap: int) -> None:
        self._body = body
        self._cap = cap
        self._piece = b''
        self._offset = 0

    def __aiter__(self) -> '_CappedBody':
        return self

    async def __anext__(self) -> bytes:
        if self._offset >= len(self._piece):
            self._piece = await self._body.__anext__()
            self._offset = 0
            if len(self._piece) <= self._cap:
                self._offset = len(self._piece)
                return self._piece
        start = self._offset
        self._offset = start + self._cap
        return self._piece[start:self._offset]

    async def aclose(self) -> None:
        self._piece = b''
        await self._body.aclose()


# A request waiting for a connection: the host it is for, and the future that hands it either
# a connection (released by another request to that host) or None (a slot to connect in).
_Waiter = Tuple['_HostConnections', 'asyncio.Future[Optional[_Connection]]']


class _HostConnections:
    """The connections of one (scheme, host, port): idle ones, and a count of all of them.

    `waiters` is the host's own FIFO queue when only `max_connections_per_host` limits it; with
    a global `max_connections`, every host shares one queue, so that requests to all hosts are
    served in the order they arrived."""
    __slots__ = ('idle', 'total', 'waiters', 'closed')

    def __init__(self, waiters: Optional[Deque[_Waiter]] = None) -> None:
        self.idle: List[_Connection] = []
        self.total = 0  # idle + in use + connecting
        self.waiters: Deque[_Waiter] = deque() if waiters is None else waiters
        self.closed = False  # the pool was closed: its connections are not taken back


class PoolStatus(Dict[Tuple[str, str, int], Dict[str, int]]):
    """What `request.status()` returns: for each (scheme, host, port), the counts of `idle`
    and `in_use` connections and of requests `waiting`; and in `totals`, the same three counts
    for the whole pool, taken at the same moment.

    The totals are an attribute rather than a key so that the mapping keeps only host keys:
    code that iterates over it, sums its values or compares it with a dict is unaffected."""

    totals: Dict[str, int]


def _read_etc_hosts() -> Dict[str, Tuple[str, ...]]:
    # /etc/hosts, both address families at once, as the system resolver reads it ("files"
    # before "dns"): a name listed there for IPv4 only must not be sent to DNS for IPv6.
    try:
        by_type = parse_etc_hosts()
    except (OSError, ValueError, UnicodeError):
        return {}
    hosts: Dict[str, Tuple[str, ...]] = {}
    for qtype in (TYPES.AAAA, TYPES.A):
        for name, address in by_type.get(qtype, {}).items():
            key = name.decode('ascii', 'replace').lower().rstrip('.')
            hosts[key] = hosts.get(key, ()) + (str(address),)
    return hosts


def _special_use_addresses(host: str) -> Optional[Tuple[str, ...]]:
    # RFC 6761 §6.3: "localhost" and names below it are loopback, and never sent to DNS.
    if host == 'localhost' or host.endswith('.localhost'):
        return ('::1', '127.0.0.1')
    return None


# RFC 8305 §3: how long an A answer waits for the AAAA answer, so that IPv6 is still preferred.
_RESOLUTION_DELAY = 0.05
# How soon a DNS lookup that was cancelled, and goes on, is cancelled again (see _end_lookup).
_CANCEL_REPEAT_INTERVAL = 0.001


# How early an event loop may run a timer, as its clock reads: uvloop counts in milliseconds.
_CLOCK_SLACK = 0.005


def _deadline_passed(loop: asyncio.AbstractEventLoop, exception: BaseException,
                     deadline: float) -> bool:
    """Whether a connect step failed because its deadline passed: asyncio ends a TLS
    handshake that takes too long with a ConnectionAbortedError, not a TimeoutError."""
    return isinstance(exception, asyncio.TimeoutError) or \
        loop.time() >= deadline - _CLOCK_SLACK


def _as_timeout(exception: BaseException) -> asyncio.TimeoutError:
    """The cause to give for a deadline that passed: an asyncio.TimeoutError, so that callers
    can tell a timeout from a refusal, with what asyncio raised for it (a ConnectionAbortedError,
    for a TLS handshake) behind it."""
    if isinstance(exception, asyncio.TimeoutError):
        return exception
    timed_out = asyncio.TimeoutError('connect_timeout passed')
    timed_out.__cause__ = exception
    return timed_out


def _end_lookup(lookup: 'asyncio.Future[Any]') -> None:
    """Cancel a DNS lookup for good. aiodnsresolver times out an attempt by cancelling its
    own task, and takes any CancelledError that arrives with its timer due as that timeout,
    going on with the next attempt: one cancel() can be lost. So it is repeated until the
    lookup ends; and whatever it ends with is retrieved, since no one else will look."""
    if lookup.done():
        return
    lookup.cancel()
    loop = lookup.get_loop()
    retry = loop.call_later(_CANCEL_REPEAT_INTERVAL, _end_lookup, lookup)
    lookup.add_done_callback(lambda _: retry.cancel())
    lookup.add_done_callback(_retrieve_outcome)


def _retrieve_outcome(lookup: 'asyncio.Future[Any]') -> None:
    if not lookup.cancelled():
        lookup.exception()


def _succeeded(lookup: 'asyncio.Future[Any]') -> bool:
    """A DNS lookup that is done and gave at least one address."""
    return lookup.done() and not lookup.cancelled() and lookup.exception() is None and \
        bool(lookup.result())


def _dns_cause(errors: Sequence[BaseException]) -> BaseException:
    """The error that best says why neither family resolved: our deadline passing, or the
    resolver's own timeout, above all (as an asyncio.TimeoutError, so that callers can tell a
    timeout from an answer); then an error other than "no such record" (SERVFAIL, say),
    since NXDOMAIN or NODATA for one family is ordinary; else the last error."""
    for error in errors:
        if isinstance(error, asyncio.TimeoutError):
            return error
    for error in errors:
        if isinstance(error, DnsTimeout):
            timeout_error = asyncio.TimeoutError('DNS lookup timed out')
            timeout_error.__cause__ = error
            return timeout_error
    return next((error for error in errors if not isinstance(error, DnsRecordDoesNotExist)),
                errors[-1] if errors else DnsError('No addresses'))


class _DnsAnswer(NamedTuple):
    addresses: Tuple[str, ...]
    address_set: frozenset  # type: ignore[type-arg]
    expires_at: float
    # When AAAA answered first (and is used at once), the A lookup still running: its
    # addresses join the connection attempts and the cached answer when it completes.
    more: 'Optional[asyncio.Future[Any]]' = None


def _dns_layer(loop: asyncio.AbstractEventLoop, dns_resolve: Callable[..., Any]) -> Tuple[
        Callable[[str, float], Awaitable[_DnsAnswer]], Dict[str, _DnsAnswer],
        Callable[[], None]]:
    """A pool's DNS: `resolve(host, deadline)`, the answers it caches (which the pool reads
    to reuse connections only to current addresses), and a function that forgets them and
    ends the lookups still going on. A layer of its own, out of Pool, since RFC 8305's rules
    for two lookups racing (and the resolver's quirks) are a whole subject by themselves."""
    dns_answers: Dict[str, _DnsAnswer] = {}
    lookups_going_on: 'set[asyncio.Future[Any]]' = set()  # see answer_meanwhile
    etc_hosts = _read_etc_hosts()

    async def resolve(host: str, deadline: float) -> _DnsAnswer:
        """The addresses of `host`: cached while their TTL lasts, looked up by the deadline."""
        answer = dns_answers.get(host)
        if answer is not None and loop.time() < answer.expires_at:
            return answer
        fixed = etc_hosts.get(host) or _special_use_addresses(host)
        if fixed is not None:
            answer = dns_answers[host] = _DnsAnswer(fixed, frozenset(fixed), float('inf'))
            return answer

        # AAAA and A at once (RFC 8305 §3), each in a task of its own. Only on a cache miss;
        # and aiodnsresolver times out by cancelling the task it runs in, so this way its
        # timeouts never touch the caller's task.
        aaaa, a = lookups = [asyncio.ensure_future(dns_resolve(host, qtype))
                             for qtype in (TYPES.AAAA, TYPES.A)]
        for lookup in lookups:
            # Read below, unless the request is cancelled first: a failed lookup must not then
            # be logged as "exception was never retrieved"
            lookup.add_done_callback(_retrieve_outcome)
        try:
            await _wait_for_addresses(aaaa, a, deadline)
        finally:
            for lookup in lookups:
                if not lookup.done() and not (lookup is a and _succeeded(aaaa)):
                    _end_lookup(lookup)
        if _succeeded(aaaa) and not a.done():
            return answer_meanwhile(host, aaaa, a, deadline)

        results: List[Any] = []
        errors: List[BaseException] = []
        for lookup in lookups:
            if not lookup.done() or lookup.cancelled():  # cancelled above: out of time
                errors.append(asyncio.TimeoutError(
                    'DNS lookup of %s not answered within connect_timeout' % (host,)))
            elif lookup.exception() is not None:
                errors.append(lookup.exception())  # type: ignore[arg-type,unused-ignore]
            else:
                results.extend(lookup.result())
        if not results:
            raise HttpDnsError('Could not resolve %s: %r' % (host, _dns_cause(errors))) \
                from _dns_cause(errors)
        addresses = tuple(_interleave_families([str(result) for result in results]))
        expires_at = min(getattr(result, 'expires_at', 0) for result in results)
        answer = _DnsAnswer(addresses, frozenset(addresses), expires_at)
        dns_answers[host] = answer
        return answer

    def answer_meanwhile(host: str, aaaa: 'asyncio.Future[Any]', a: 'asyncio.Future[Any]',
                         deadline: float) -> _DnsAnswer:
        """The AAAA answer, to connect to at once, with the A lookup going on (RFC 8305 §3:
        "the client SHOULD NOT wait" for it). Its addresses, when they come by the deadline,
        are added to the cached answer and to connection attempts already under way."""
        addresses = tuple(str(result) for result in aaaa.result())
        expires_at = min(getattr(result, 'expires_at', 0) for result in aaaa.result())
        answer = dns_answers[host] = _DnsAnswer(addresses, frozenset(addresses), expires_at, a)
        give_up = loop.call_at(deadline, _end_lookup, a)
        lookups_going_on.add(a)

        def on_a_done(_: Any) -> None:
            give_up.cancel()
            lookups_going_on.discard(a)
            if _succeeded(a) and dns_answers.get(host) is answer:
                both = addresses + tuple(str(result) for result in a.result())
                dns_answers[host] = _DnsAnswer(
                    both, frozenset(both),
                    min([expires_at] + [getattr(result, 'expires_at', 0)
                                        for result in a.result()]))
            elif not a.cancelled():
                a.exception()  # retrieved: a failed A lookup is ordinary here
        a.add_done_callback(on_a_done)
        return answer

    async def _wait_for_addresses(aaaa: 'asyncio.Future[Any]', a: 'asyncio.Future[Any]',
                                  deadline: float) -> None:
        """Wait, by `deadline`, for the lookups as RFC 8305 §3 says: an AAAA answer is used at
        once; an A answer that comes first waits up to 50 ms more ("Resolution Delay") for
        AAAA; a lookup that fails (no such record, SERVFAIL...) ends nothing while the other
        is still running. Returns with the unfinished lookups still running."""
        pending = {aaaa, a}
        resolution_delay_ends = float('inf')
        while pending:
            wait_until = min(deadline, resolution_delay_ends)
            now = loop.time()
            if now >= wait_until:
                return
            _, pending = await asyncio.wait(pending, timeout=wait_until - now,
                                            return_when=asyncio.FIRST_COMPLETED)
            if _succeeded(aaaa):
                return
            if _succeeded(a) and resolution_delay_ends == float('inf'):
                resolution_delay_ends = loop.time() + _RESOLUTION_DELAY

    def end_lookups() -> None:
        dns_answers.clear()
        for lookup in list(lookups_going_on):
            _end_lookup(lookup)

    return resolve, dns_answers, end_lookups


def _makes_plain_futures(loop_class: type) -> bool:
    """Whether the loop's create_future is asyncio's or uvloop's: asyncio.Future(loop=self)."""
    create_future = getattr(loop_class, 'create_future', None)
    return create_future is asyncio.BaseEventLoop.create_future or (
        getattr(create_future, '__module__', None) == 'uvloop.loop' and
        getattr(create_future, '__qualname__', None) == 'Loop.create_future')


def _future_maker(loop: asyncio.AbstractEventLoop) -> Callable[[], 'asyncio.Future[None]']:
    """What makes the future a request waits on: loop.create_future(), or the same future
    made without the Python method that asyncio's own loops and uvloop's wrap it in."""
    if not _makes_plain_futures(type(loop)):
        return loop.create_future  # a loop's own futures stay its own
    if sys.version_info >= (3, 12):
        # No argument: the running loop, request()'s and so the pool's, is taken in C
        return asyncio.Future
    # Before 3.12, C's lookup of the running loop also compares the process id, and glibc
    # no longer caches it: a getpid system call for every future made without its loop
    return functools.partial(asyncio.Future, loop=loop)


def Pool(
        get_dns_resolver: Callable[..., Any] = Resolver,
        get_sock: Callable[..., socket.socket] = get_nonblocking_sock,
        get_ssl_context: Callable[[], ssl.SSLContext] = ssl.create_default_context,
        sock_pre_message: Optional[Callable[[Any], None]] = None,
        sock_post_message: Optional[Callable[[Any], None]] = None,
        send_header: Optional[Callable[..., Awaitable[None]]] = None,
        send_body: Optional[Callable[..., Awaitable[None]]] = None,
        http_version: bytes = b'HTTP/1.1',
        keep_alive_timeout: float = 15,
        recv_bufsize: Optional[int] = None,
        max_header_length: int = 16384,
        socket_timeout: float = 10,
        get_logger_adapter: Callable[[Dict[str, Any]], Any] = get_logger_adapter_default,
        get_resolver_logger_adapter: Callable[..., Any] = get_resolver_logger_adapter_default,
        *,
        connect_timeout: Optional[float] = None,
        happy_eyeballs_delay: float = 0.25,
        response_head_timeout: float = 60,
        max_connections_per_host: Optional[int] = None,
        pool_timeout: Optional[float] = None,
        max_header_count: int = 100,
        proxy: Any = None,
        max_connections: Optional[int] = None,
        max_idle_per_host: Optional[int] = None,
        expect_continue_timeout: float = 1,
) -> Tuple[PoolRequest, Close]:
    """Make a connection pool. Must be called inside a running event loop.

    Returns `(request, close)`. See README.md for every option; in short:
    `connect_timeout` (default `socket_timeout`) bounds DNS-to-TLS connection set-up,
    `response_head_timeout` bounds the wait for the whole response head, `socket_timeout`
    bounds each wait for the socket, and `max_connections_per_host` and `max_connections`
    (across hosts) queue requests (FIFO, up to `pool_timeout` seconds) beyond that many
    connections; `max_idle_per_host` closes a released connection beyond that many idle ones.
    `expect_continue_timeout` is how long a request with "expect: 100-continue" waits for the
    server's go-ahead before sending its body anyway.
    """
    for name, value, least in (('max_connections_per_host', max_connections_per_host, 1),
                               ('max_connections', max_connections, 1),
                               ('max_idle_per_host', max_idle_per_host, 0),
                               ('recv_bufsize', recv_bufsize, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or
                                  value < least):
            raise HttpInvalidRequestError(
                '%s must be None or a whole number >= %d, not %r' % (name, least, value))
    loop = asyncio.get_running_loop()
    ssl_context: Optional[ssl.SSLContext] = None
    logger = get_logger_adapter({})
    pool_logger_adapter = get_logger_adapter  # (request's default: see request_logger)
    # The adapter's isEnabledFor only forwards to its logger's: call that one directly.
    debug_enabled = getattr(getattr(logger, 'logger', None), 'isEnabledFor', logger.isEnabledFor)
    # logging.Logger.isEnabledFor answers from a dict of the levels it has looked up, which
    # logging clears whenever a level changes: a False there is its answer, so a request with
    # debug logging off looks there without calling it. (Not for other loggers: an empty dict.)
    debug_answers: Dict[int, bool] = {}
    if getattr(debug_enabled, '__func__', None) is logging.Logger.isEnabledFor and \
            isinstance(getattr(debug_enabled.__self__, '_cache', None), dict):
        debug_answers = debug_enabled.__self__._cache
    dns_resolve, dns_clear_cache = get_dns_resolver(
        get_logger_adapter=get_resolver_logger_adapter({}),
    )
    if connect_timeout is None:
        connect_timeout = socket_timeout
    first_head_wait = min(socket_timeout, response_head_timeout)
    keep_alive = keep_alive_timeout > 0
    custom_send = not (sock_pre_message is None and sock_post_message is None and
                       send_header is None and send_body is None)
    pre_message = sock_pre_message or _no_op
    post_message = sock_post_message or _no_op
    header_sender = send_header or send_header_tuples_of_bytes
    body_sender = send_body or send_body_async_gen_bytes
    get_sock_takes_family = _accepts_argument(get_sock)
    new_future = _future_maker(loop)
    # See send_request: only asyncio's own transports from 3.12 keep one buffer per write
    one_small_chunk_at_a_time = sys.version_info >= (3, 12) and \
        not type(loop).__module__.startswith('uvloop')

    hosts: Dict[Tuple[str, str, int], _HostConnections] = {}
    open_total = 0  # connections open or opening, across all hosts
    # Only under max_connections: one queue of waiting requests for every host, and the idle
    # connections of every host, oldest first, to close one when another host needs room.
    shared_waiters: Optional[Deque[_Waiter]] = None if max_connections is None else deque()
    idle_by_age: Optional['OrderedDict[_Connection, None]'] = \
        None if max_connections is None else OrderedDict()
    resolve, dns_answers, end_dns_lookups = _dns_layer(loop, dns_resolve)
    targets: Dict[str, Target] = {}
    encoded_headers: Dict[Tuple[bytes, Any], RequestHeaders] = {}

    def cached_target(url: str) -> Target:
        target = targets.get(url)
        if target is None:
            target = parse_target(url)
            if len(targets) >= 1024:
                targets.clear()
            targets[url] = target
        return target

    def cached_headers(method: bytes, headers: Any) -> RequestHeaders:
        try:
            key = (method, headers)
            encoded = encoded_headers.get(key)
        except TypeError:  # unhashable: a list of pairs, say
            return encode_request_headers(method, headers)
        if encoded is None:
            encoded = encode_request_headers(method, headers)
            # Memoised for callers that send the same headers again, which is most; large
            # blocks are not, so that unique ones (signatures, cookies) cannot fill memory.
            if len(encoded.block) <= 4096:
                if len(encoded_headers) >= 1024:
                    encoded_headers.clear()
                encoded_headers[key] = encoded
        return encoded

    def make_sock(family: int) -> socket.socket:
        if get_sock_takes_family:
            return get_sock(family)
        sock = get_sock()
        if sock.family != family:
            # A 0.0.89-style get_sock makes IPv4 sockets only: use the default for IPv6.
            sock.close()
            return get_nonblocking_sock(family)
        return sock

    # Pool bookkeeping. Each connection holds a slot from the moment it starts connecting
    # until it is closed: one in its host's `total`, and one in `open_total` for the pool.

    def host_connections(key: Tuple[str, str, int]) -> _HostConnections:
        connections = hosts.get(key)
        if connections is None:
            connections = hosts[key] = _HostConnections(shared_waiters)
        return connections

    def on_idle_close(conn: _Connection) -> None:
        connections = conn.owner
        with contextlib.suppress(ValueError):
            connections.idle.remove(conn)
        if idle_by_age is not None:
            idle_by_age.pop(conn, None)
        free_slot(connections)

    def has_room(connections: _HostConnections) -> bool:
        """Whether both limits allow one more connection to this host."""
        return (max_connections_per_host is None or
                connections.total < max_connections_per_host) and \
            (max_connections is None or open_total < max_connections)

    def take_slot(connections: _HostConnections) -> None:
        nonlocal open_total
        connections.total += 1
        open_total += 1

    def free_slot(connections: _HostConnections) -> None:
        nonlocal open_total
        connections.total -= 1
        open_total -= 1
        waiters = connections.waiters
        if waiters:
            # The oldest request that both limits now let connect gets the slot. Only one
            # can: a single slot was freed.
            index = next_waiter(waiters, None)
            if index != -1:
                waiter_connections, waiter = waiters[index]
                del waiters[index]
                take_slot(waiter_connections)
                waiter.set_result(None)

    def next_waiter(waiters: Deque[_Waiter], releasing: Optional[_HostConnections]) -> int:
        """The position of the oldest waiting request that can go ahead now (-1 if none): one
        for the host of a connection being released, which can take it over, or one whose host
        is below max_connections_per_host, which can connect once the pool has room. Requests
        cancelled or timed out while waiting are dropped from the front as they are met."""
        while waiters and waiters[0][1].done():
            waiters.popleft()
        for index, (connections, waiter) in enumerate(waiters):
            if waiter.done():
                continue
            if connections is releasing or (
                    (max_connections_per_host is None or
                     connections.total < max_connections_per_host) and
                    (releasing is not None or max_connections is None or
                     open_total < max_connections)):
                return index
        return -1

    def release(conn: _Connection, reusable: bool) -> None:
        """Take back a connection whose response is finished."""
        connections: _HostConnections = conn.owner
        if not reusable or not keep_alive or conn._lost or conn._queue or \
                connections.closed:  # the last: the pool was closed meanwhile
            conn.close()
            free_slot(connections)
            return
        waiters = connections.waiters
        if waiters:
            index = next_waiter(waiters, connections)
            if index != -1:
                waiter_connections, waiter = waiters[index]
                if waiter_connections is not connections:
                    # An older request, to another host, waits for room under max_connections:
                    # this connection is closed to make that room (free_slot hands it over).
                    conn.close()
                    free_slot(connections)
                    return
                del waiters[index]
                conn.reused = True
                waiter.set_result(conn)
                return
        if max_idle_per_host is not None and len(connections.idle) >= max_idle_per_host:
            conn.close()
            free_slot(connections)
            return
        # The connection becomes idle until its keep-alive timeout; the timer, armed for the
        # response's own deadline, is usually due before that expiry already (this runs after
        # every response, hence the check before re-arming it)
        conn.idle = conn.reused = True
        conn.received_any = False
        now = conn.idle_since = loop.time()
        expiry = now + conn._keep_alive_timeout
        if conn._timer is None or conn._timer_when > expiry:
            conn._fire_by(expiry)
        connections.idle.append(conn)
        if idle_by_age is not None:
            idle_by_age[conn] = None

    def take_idle_fast(target: Target) -> Optional[_Connection]:
        # Without awaiting anything: an IP literal, or a host whose DNS answer is still fresh.
        connections = hosts.get(target.key)
        if connections is None or not connections.idle:
            return None
        if target.ip_literal:
            answer = None
        else:
            answer = dns_answers.get(target.host)
            if answer is None or loop.time() >= answer.expires_at:
                return None
        idle = connections.idle
        conn = idle[-1]
        # take_idle's first turn, inlined for the usual case (the newest idle connection is
        # fine): the same stale-connection poll and DNS check, then the same bookkeeping
        if idle_by_age is None and conn._poll is not None and \
                not (conn._eof or conn._queue) and \
                (answer is None or conn.peer_ip in answer.address_set):
            try:
                polled: Any = conn._poll.poll(0)
            except (OSError, ValueError):
                polled = True
            if not polled:
                idle.pop()
                conn.idle = False
                return conn
            # Readable: take_idle decides, from this poll (a connection's poll is a system
            # call, and a server that closes idle connections makes one at every request)
            return take_idle(connections, answer, polled)
        return take_idle(connections, answer)

    def take_idle(connections: _HostConnections, answer: Optional[_DnsAnswer],
                  newest_polled: Any = None) -> Optional[_Connection]:
        # newest_polled: what the newest idle connection's poll just said, if it was polled
        idle = connections.idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if idle_by_age is not None:
                del idle_by_age[conn]
            if newest_polled is not None:
                reusable = (newest_polled is not True and
                            conn.only_tls_records_were_waiting())
                newest_polled = None
            # Inline of conn.is_reusable(), on the path of every reuse
            elif not (conn._eof or conn._queue) and conn._poll is not None:
                try:
                    reusable = not conn._poll.poll(0) or conn.only_tls_records_were_waiting()
                except (OSError, ValueError):
                    reusable = False
            else:
                reusable = conn.is_reusable()
            if reusable and (answer is None or conn.peer_ip in answer.address_set):
                return conn
            # Closed by the server, or its address is no longer among the host's current DNS
            # answers: drop it and look at the next.
            conn.close()
            free_slot(connections)
        return None

    def close_oldest_idle() -> bool:
        """Under max_connections, close the connection idle the longest, whatever its host, so
        that a request to another host can connect: otherwise a pool full of idle connections
        to one host would keep every other host waiting until they expire."""
        if not idle_by_age:
            return False
        next(iter(idle_by_age)).close()  # on_idle_close frees its slot
        return True

    async def acquire(target: Target) -> _Connection:
        connections = host_connections(target.key)
        # connect_timeout bounds the whole connect phase: DNS, TCP and TLS
        deadline = loop.time() + connect_timeout
        answer = None if target.ip_literal else await resolve(target.host, deadline)
        conn = take_idle(connections, answer)
        if conn is not None:
            return conn
        if not has_room(connections) and not (
                has_host_room(connections) and close_oldest_idle() and has_room(connections)):
            waited_from = loop.time()
            conn = await wait_for_slot(connections)
            deadline += loop.time() - waited_from  # waiting for a slot is not connecting
            if conn is not None:
                if conn.is_reusable() and (answer is None or conn.peer_ip in answer.address_set):
                    conn.idle = False
                    return conn
                conn.close()  # the slot stays ours: open a new connection in it
        else:
            take_slot(connections)
        try:
            conn = await connect(target, answer, deadline)
            conn.owner = connections
            # Called only while the connection is idle (see release)
            conn.on_idle_close = on_idle_close
            return conn
        except BaseException:
            free_slot(connections)
            raise

    def has_host_room(connections: _HostConnections) -> bool:
        return max_connections_per_host is None or connections.total < max_connections_per_host

    async def wait_for_slot(connections: _HostConnections) -> Optional[_Connection]:
        waiter: asyncio.Future[Optional[_Connection]] = loop.create_future()
        connections.waiters.append((connections, waiter))

        def on_timeout() -> None:
            if not waiter.done():
                waiter.set_exception(asyncio.TimeoutError())
        handle = None if pool_timeout is None else loop.call_later(pool_timeout, on_timeout)
        try:
            return await waiter
        except asyncio.TimeoutError as exception:
            raise HttpPoolTimeoutError(
                'No connection became free within %s seconds' % (pool_timeout,)) from exception
        except BaseException:
            # Cancelled after being handed a slot or a connection: pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                conn = waiter.result()
                if conn is not None:
                    release(conn, True)
                else:
                    free_slot(connections)
            raise
        finally:
            if handle is not None:
                handle.cancel()

    async def connect(target: Target, answer: Optional[_DnsAnswer],
                      deadline: float) -> _Connection:
        nonlocal ssl_context
        if proxied and target.__class__ is ProxiedTarget:  # type: ignore[comparison-overlap]
            return await connect_through_proxy(target, answer, deadline)
        addresses = (target.host,) if answer is None else answer.addresses
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('Connecting to %s at %s', target.key, addresses)
        try:
            sock, address = await _open_first(loop, addresses, target.port, make_sock,
                                               happy_eyeballs_delay,
                                               max(deadline - loop.time(), 0),
                                               None if answer is None else answer.more)
        except asyncio.TimeoutError as exception:
            raise HttpConnectionError('Timed out connecting to %s:%d'
                                      % (target.host, target.port)) from exception
        except OSError as exception:
            raise HttpConnectionError('Could not connect to %s:%d: %s'
                                      % (target.host, target.port, exception)) from exception

        conn = _Connection(loop, target.key, address, keep_alive_timeout)
        tls = target.scheme == 'https'
        try:
            await loop.create_connection(lambda: conn, sock=sock)
            if tls:
                if ssl_context is None:
                    ssl_context = get_ssl_context()
                # TLS started on the TCP transport, rather than asked of create_connection,
                # so that the TCP transport stays reachable: its buffer counts as unsent.
                await _start_tls(loop, conn, ssl_context, target.host,
                                 max(deadline - loop.time(), 0.001))
        except BaseException as exception:
            sock.close()
            if conn.transport is not None:
                conn.transport.abort()
            if not isinstance(exception, Exception) or \
                    isinstance(exception, asyncio.CancelledError):
                raise
            error = HttpTlsError if tls else HttpConnectionError
            if _deadline_passed(loop, exception, deadline):
                raise error('%s with %s:%d timed out' % (
                    'TLS handshake' if tls else 'Connection', target.host, target.port)) \
                    from _as_timeout(exception)
            raise error('%s with %s:%d failed: %r' % (
                'TLS handshake' if tls else 'Connection', target.host, target.port,
                exception)) from exception
        return conn

    # Proxies (see _proxy_layer): nothing of this runs for a pool without one
    proxied = proxy is not None
    if proxied:
        route, connect_through_proxy = _proxy_layer(
            proxy, loop=loop, resolve=resolve, make_sock=make_sock,
            get_ssl_context=get_ssl_context, happy_eyeballs_delay=happy_eyeballs_delay,
            keep_alive_timeout=keep_alive_timeout, max_header_length=max_header_length,
            max_header_count=max_header_count, has_send_header_hook=send_header is not None,
            logger=logger)

    # Sending and receiving

    async def send_request(conn: _Connection, method: bytes, head: bytes, body: BodyFunction,
                           body_args: Sequence[Any], body_kwargs: Any,
                           content_length: Optional[int]) \
            -> Optional[Tuple[Tuple[bytes, Headers, Framing], bytes]]:
        """Send the head (if not sent yet: b'') and the body. Return None once all is sent;
        or, if the server answered meanwhile so as to end the upload (see answers_the_upload),
        that answer's parsed head and the bytes after it, the rest of the body unsent."""
        chunks = body(*body_args, **dict(body_kwargs))
        sent = 0
        pending = head
        answered = conn._answered = answers_the_upload(conn)
        stopped = False
        interrupted = False
        conn._sender = sender = asyncio.current_task()
        conn._answer_seen = conn._queued
        try:
            async for chunk in chunks:
                size = len(chunk)
                sent += size
                if content_length is not None and sent > content_length:
                    if content_length != _UNFRAMED:
                        raise HttpDataError('Body longer than its content-length (%d)'
                                            % (content_length,))
                    if size:  # (the first byte: the head is held back for it, see pending)
                        raise HttpInvalidRequestError(
                            'A body needs a content-length or transfer-encoding header: '
                            'without either, its bytes would be read as another request '
                            '(RFC 9112 §6.3)')
                if pending:
                    # Head and first chunk in one write: one packet for a small request.
                    if size < 65536:
                        chunk, pending = pending + chunk, b''
                    else:
                        conn.write(pending)
                        pending = b''
                    must_drain = conn.write(chunk)
                elif size < _GATHER_BELOW:
                    must_drain = conn.gather(chunk)  # (or bytes arrived: see gather)
                else:
                    # Or bytes arrived (while the loop ran: seldom between two chunks), which
                    # drain() looks at
                    must_drain = conn.write(chunk) or conn.bytes_unseen()
                if one_small_chunk_at_a_time and size < _SMALL_CHUNK and \
                        conn._gathered is None and conn.buffered_size():
                    # A small chunk queued behind others is sent before the next is taken:
                    # asyncio 3.12+ keeps one buffer per write and sends at most 1,024 of them
                    # at a time, and a stream of tiny chunks stalled there (1-byte chunks).
                    # Not one gathered (see gather): it is in no transport's queue, and waiting
                    # here for each undid the gathering (1 KiB chunks, 3.13: 2.8 -> 1.8 us)
                    if await conn.flush(socket_timeout, answered):
                        stopped = True
                        break
                elif must_drain:
                    if await conn.drain(socket_timeout, answered):
                        stopped = True
                        break
            else:
                if pending:
                    conn.write(pending)
                if content_length is not None and sent != content_length and \
                        content_length != _UNFRAMED:
                    raise HttpDataError('Body shorter (%d bytes) than its content-length (%d)'
                                        % (sent, content_length))
                stopped = await conn.flush(socket_timeout, answered)
        except asyncio.CancelledError:
            # Ours (see _Connection._end_the_upload) unless the caller's came too
            if not conn._interrupting or _cancelled_besides(sender):
                raise
            interrupted = True
        finally:
            conn._answer_seen = -1
            conn._answered = _never
            conn._sender = None
            if conn._interrupting:
                conn._interrupting = False
                _uncancel(sender)
            aclose = getattr(chunks, 'aclose', None)
            if aclose is not None:
                await aclose()
        if interrupted:
            # An answer that ends the upload came while the body was being made; or the
            # server closed then, which is met as if in the next write (see request)
            stopped = answered()
            if not stopped:
                raise ConnectionResetError('Connection closed by the server while the body '
                                           'was being made')
        if not stopped:
            return None
        conn._gathered = None  # the body ends here: its small chunks not written yet, too
        return await answer_that_came(conn, method, conn.take() or b'')

    def answers_the_upload(conn: _Connection) -> Callable[[], bool]:
        """For a request whose body is being sent: a function that tells, when bytes have
        arrived, whether they hold a whole final response that ends the upload, of status 300
        or more (a refusal such as 413 or 401, a redirect). A server may send one as soon as it
        has the head, and then never read the body: without this the upload would wait for
        room until socket_timeout, with the answer in hand. RFC 9112 §9.6 has the client
        watch for such an answer while it sends, and stop (curl stops so too). 1xx responses
        are skipped; a 2xx does not end the upload (the server answers as it reads), and after
        one the bytes are not looked at again."""
        final_seen = False

        def answered() -> bool:
            nonlocal final_seen
            conn._answer_seen = conn._queued
            if final_seen:
                return False
            data = b''.join(conn._queue)
            for _ in range(_MAX_INFORMATIONAL_RESPONSES + 1):
                head = parse_response_head(data, max_header_length, max_header_count)
                if head is None:
                    return False
                if head.code[0] != 49 or head.code == b'101':  # 49: b'1', as in receive_head
                    final_seen = head.code[0] < 51  # 51: b'3'
                    return not final_seen
                data = data[head.length:]
            # (As receive_head would, later; and each arrival parses them all again)
            raise HttpProtocolError('More than %d informational (1xx) responses'
                                    % (_MAX_INFORMATIONAL_RESPONSES,))
        return answered

    async def send_expecting_continue(
            conn: _Connection, method: bytes, head: bytes, body: BodyFunction,
            body_args: Sequence[Any], body_kwargs: Any, content_length: Optional[int]) \
            -> Optional[Tuple[Tuple[bytes, Headers, Framing], bytes]]:
        """Send the head alone, then wait up to expect_continue_timeout for the server's
        answer (RFC 9110 §10.1.1). On 100 Continue, or no answer in time, send the body and
        return None: the final response is read as usual. On a final status instead, return
        its parsed head and the bytes after it, the body unsent."""
        conn.write(head)
        await conn.drain(socket_timeout)
        started = loop.time()
        continue_by = started + expect_continue_timeout
        head_by = started + response_head_timeout
        data = b''
        informational = 0
        while True:
            if data:
                response_head = parse_response_head(data, max_header_length, max_header_count)
                if response_head is not None:
                    data = data[response_head.length:]
                    code = response_head.code
                    if code[0] != 49 or code == b'101':  # 49: b'1'
                        return (code, response_head.headers,
                                response_framing(method, response_head)), data
                    informational += 1
                    if informational > _MAX_INFORMATIONAL_RESPONSES:
                        raise HttpProtocolError('More than %d informational (1xx) responses'
                                                % (_MAX_INFORMATIONAL_RESPONSES,))
                    if code == b'100' and not data:
                        break
                    # Another 1xx (103 Early Hints, say) is not the go-ahead: wait on for 100,
                    # and bytes after a 100 are a response on its way: read it first.
                    continue
            if not conn._queue and not conn._eof:
                now = loop.time()
                try:
                    await conn.readable(min(now + socket_timeout, head_by) if data else
                                        continue_by)
                except asyncio.TimeoutError as exception:
                    if data:  # a response head arriving too slowly
                        raise HttpTimeoutError('Timed out reading the response head while '
                                               'waiting for 100 Continue; the body was not '
                                               'sent') from exception
                    break  # no answer in time: RFC 9110 §10.1.1 lets the client go on
            received = conn.take()
            if not received:
                raise early_close_error(conn, data)
            data += received
        return await send_request(conn, method, b'', body, body_args, body_kwargs,
                                  content_length)

    def early_close_error(conn: _Connection, data: bytes) -> HttpError:
        if not data and conn.reused and not conn.received_any:
            error: HttpError = HttpConnectionClosedBeforeResponseError(
                'Reused connection closed before any byte of the response, while waiting for '
                '100 Continue; the body was not sent, and the server did not process the '
                'request')
        else:
            error = HttpConnectionClosedError(
                'Connection closed while waiting for 100 Continue (%d bytes of a response '
                'received); the body was not sent' % (len(data),))
        error.__cause__ = conn.lost_exception
        return error

    def response_without_sending_body(conn: _Connection,
                                      parsed: Tuple[bytes, Headers, Framing], rest: bytes) \
            -> Response:
        """The response to a request whose body was not sent, or not all, as the server
        answered before 100 Continue or while it was sent (see answers_the_upload), or before
        it closed (answer_before_the_close). The connection is closed once the response is
        read: the server may read the body it still expects from the connection (RFC 9110
        §10.1.1 lets it choose between that and closing, and a missing "connection: close" is
        only a SHOULD), so the next request would be taken for that body. RFC 9112 §9.6, too,
        has a client that sees the server refuse the body stop sending it and close."""
        code, response_headers, framing = parsed
        if framing.kind == NO_BODY or (framing.kind == CONTENT_LENGTH and
                                       len(rest) >= framing.length):
            release(conn, False)
            return code, response_headers, _whole_body(
                rest[:framing.length] if framing.kind == CONTENT_LENGTH else b'')
        return code, response_headers, _ResponseBody(
            conn, release, _tuple_new(Framing, (framing.kind, framing.length, False)), rest,
            socket_timeout, loop, max_header_length)

    async def answer_before_the_close(conn: _Connection, method: bytes) -> Optional[Response]:
        """When sending the request failed as the connection closed: the response the server
        sent before it closed, if a whole head of one arrived, else None. A server that will
        not take a body (413, 401, ...) may answer before reading it and close, and the body
        then meets a reset; RFC 9112 §9.6 has the client watch for that answer while it
        sends, and stop. The connection is not reused, as for a body refused after 100-continue."""
        if not conn._lost:
            if not conn.transport.is_closing():
                return None  # the connection is fine: the error was not the server's
            # The transport failed, and tells on the loop's next turn; what it read by then
            # (and, for asyncio's own transports, what the socket still held) is all there is
            deadline = loop.time() + socket_timeout
            while not conn._lost:
                try:
                    await conn.readable(deadline)
                except asyncio.TimeoutError:
                    return None
        data = conn.take()
        if not data:
            return None
        try:
            # The connection is lost: this reads nothing more, and fails on a partial head
            answer = await answer_that_came(conn, method, data)
        except HttpError:
            return None
        return response_without_sending_body(conn, *answer)

    async def answer_that_came(conn: _Connection, method: bytes, data: bytes) \
            -> Tuple[Tuple[bytes, Headers, Framing], bytes]:
        """The final head at the start of `data`, parsed (more read if need be), and the bytes
        after it: for an answer that came before the request was all sent."""
        (code, response_headers, framing), rest = await receive_head(
            conn, method, data, loop.time() + response_head_timeout)
        return (code, response_headers, _tuple_new(Framing, framing)), rest

    async def send_request_with_hooks(conn: _Connection, method: bytes, url: str, params: Any,
                                      headers: Headers, body: BodyFunction,
                                      body_args: Sequence[Any], body_kwargs: Any,
                                      request_logger: Any) -> None:
        parsed_url = urllib.parse.urlsplit(url)
        pre_message(conn)
        await header_sender(request_logger, loop, conn, socket_timeout, http_version, method,
                            parsed_url, params, headers)
        await body_sender(request_logger, loop, conn, socket_timeout, body, body_args,
                          body_kwargs)
        post_message(conn)
        await conn.flush(socket_timeout)

    # Final response heads already parsed, keyed by their exact bytes. A server repeats its
    # head byte for byte from one response to the next (Date changes once a second), and
    # parsing is a pure function of those bytes, so a repeat skips no check: the same bytes
    # were checked before. Not for HEAD or CONNECT, whose framing differs for the same bytes;
    # nor for heads over 4 KiB, so that the memory a server can make it hold stays small.
    parsed_heads: Dict[bytes, _Parsed] = {}
    # The last final head parsed or found there (b'': none yet; never one to HEAD or CONNECT),
    # which the next response most often repeats, or repeats but for a line or two (a request
    # id, the date); and its lines (None: not split yet), for the latter. (While try_changing
    # with changing_value, the last head is changing_value's bytes before and after the value
    # around changing_last: last_head is made so only when try_changing ends.)
    last_head = b''
    last_parsed: _Parsed = (b'', (), (NO_BODY, 0, False))
    last_lines: Optional[List[bytes]] = None
    # What changed from one head to the next, the last time a head was parsed like the one
    # before it (see parse_like_last). A server that sends a request id changes the same line
    # each time: the next head is then checked against this by one comparison, with no
    # search, split nor hash of it. One line changed: its value alone, after a name and colon
    # the next head must repeat; remembered are the bytes before and after it, where it starts
    # and ends, the field's name, the fields (a list, of which that field's is replaced each
    # time: the headers are made from it with no tuple between) and its index there, the
    # headers' class, the code and the framing.
    changing_value: Optional[Tuple[bytes, bytes, int, int, bytes, List[Tuple[bytes, bytes]],
                                   int, type[ResponseHeaders], bytes, Tuple[int, int, bool]]] = None
    # More lines changed: the bytes before and after them, where they start and end, those
    # lines, the index of the field of the first, and that head's parse
    changing_lines: Optional[Tuple[bytes, bytes, int, int, List[bytes], int,
                                   _Parsed]] = None
    # Whether the last head was taken as like the one before it, with what changed changed
    # again, so that the next is tried so first, even before the comparison with last_head
    # (a server that sends a request id sends no head twice): not after a head found in
    # parsed_heads (a server that alternates between a few heads, each memoised there, is not
    # made to try first what does not apply to it), nor after one taken so that repeated the
    # last (a server whose date changes once a second then repeats its head: see
    # parse_like_changing).
    try_changing = False
    # The value of the changing_value field in last_head, while try_changing
    changing_last = b''

    def parse_final_head(method: bytes, head: ResponseHead, head_bytes: bytes) \
            -> _Parsed:
        nonlocal last_head, last_parsed, last_lines
        http_minor, code, reason, fields, _ = head  # unpacked at once: a tuple
        headers = _headers_with_status(fields, reason, _HTTP_VERSIONS[http_minor])
        kind, length, keep_alive = response_framing(method, head)
        parsed = (code, headers, (kind, length, keep_alive))
        if method != b'HEAD' and method != b'CONNECT':
            last_head, last_parsed, last_lines = head_bytes, parsed, None
        # Not a head with a line new to the line memo (a request id, a new date): such a head
        # is seldom sent again, and if it is, its lines are known by then and it is memoised.
        if method != b'HEAD' and method != b'CONNECT' and len(head_bytes) <= 4096 and \
                not _memoised_bytes[2]:
            if len(parsed_heads) >= 256:
                parsed_heads.clear()
            parsed_heads[head_bytes] = parsed
        return parsed

    def parse_like_last(head_bytes: bytes) -> Optional[_Parsed]:
        """What parsing `head_bytes`, a whole final head, would give, when it has last_head's
        lines but for some that neither frame the response nor say whether the connection
        persists; else None, to have it parsed in full. Each changed line is checked by the
        parser's own check of a single line: any doubt is a full parse, which gives its error."""
        nonlocal last_head, last_parsed, last_lines
        # Both end at their first blank line: split so, the lines are the parser's, and the
        # status line, fields and blank line of the one match those of the other one by one.
        lines = head_bytes.split(b'\r\n')
        previous_lines = last_lines
        if previous_lines is None:
            previous_lines = last_lines = last_head.split(b'\r\n')
        if len(lines) != len(previous_lines):
            return None
        changed = list(compress(count(), map(bytes.__ne__, lines, previous_lines)))
        if not changed:
            return last_parsed
        if changed[0] == 0:  # the status line
            return None
        parsed = with_lines_replaced(last_parsed, lines, changed, -1)
        if parsed is None:
            return None
        remember_changing(head_bytes, 0, lines, changed, -1, parsed)
        last_head, last_parsed, last_lines = head_bytes, parsed, lines
        # Memoised as parse_final_head memoises: a server alternating between a few heads sends
        # each like the one before it. (The head of a request id is seldom sent again, but
        # this is not the usual path for those: see parse_like_changing.)
        if len(head_bytes) <= 4096:
            if len(parsed_heads) >= 256:
                parsed_heads.clear()
            parsed_heads[head_bytes] = parsed
        return parsed

    def parse_like_changing(data: bytes) -> Optional[bytes]:
        """As parse_like_last, of the head at the start of `data`, when it is the head
        remembered in changing_value or changing_lines but for what changed last time: every
        byte before and after that is compared, and what is between is checked as
        parse_like_last checks a changed line. The head is then last_head, its parse
        last_parsed, and the bytes after it are returned; None: not so, or in doubt."""
        nonlocal last_head, last_parsed, last_lines, changing_lines, changing_last, try_changing
        # The bytes up to what changed, then from its end to the end of the head: the head then
        # has the same length, ends at the same blank line (nothing changed holds a CR or LF:
        # see _parse_field_line), and has the same lines elsewhere. (Several lines: slices
        # compared, cheaper than startswith, whose arguments are parsed by format.)
        if changing_value is not None:
            before, after, start, end, name, fields, index, headers_class, code, framing = \
                changing_value
            # The head, if it is that one with as many bytes between: data starts with it
            # only if so (a value cut short by data's end leaves no room for `after`), and
            # removeprefix then also cuts off what follows (one slice, a join and a comparison,
            # instead of three slices: each costs about as much as the join)
            value = data[start:end]
            head = b''.join((before, value, after))
            rest = data.removeprefix(head)
            if rest is data:  # (data is bytes, as transports hand them on)
                return None
            # The value of one field, after the same name, colon and whitespace, checked as
            # _parse_field_line checks a value. Neither the field nor the one it replaces
            # frames the response: the name is the same, and was not one of those.
            if value == changing_last:  # the last head again: the next is compared with it
                try_changing = False
                last_head, last_lines = head, None
                return rest
            field_value = value
            # Letters and digits only, as most request ids: nothing to check nor strip
            if not value.isalnum():
                if value.translate(_VALUE_TABLE) != value:
                    return None
                field_value = value.strip(b' \t')
            # The last head: changing_last in it, which request() puts in last_head if the next
            # is not taken so (a head that repeats it is found above, with no new headers)
            changing_last = value
            fields[index] = (name, field_value)
            last_parsed = (code, headers_class(fields), framing)
            return rest
        assert changing_lines is not None
        before, after, start, end, previous_lines, first, previous = changing_lines
        head_length = end + len(after)
        if data[:start] != before or data[end:head_length] != after:
            return None
        lines = data[start:end].split(b'\r\n')
        if len(lines) != len(previous_lines):
            return None
        changed = list(compress(count(), map(bytes.__ne__, lines, previous_lines)))
        head_bytes = data[:head_length]
        if not changed:  # the head of changing_lines again (last_head: as above)
            try_changing = False
            parsed: Optional[_Parsed] = previous
        else:
            parsed = with_lines_replaced(previous, lines, changed, first)
            if parsed is None:
                return None
            if len(changed) == len(lines):  # the same lines changed: they stay remembered
                changing_lines = (before, after, start, end, lines, first, parsed)
            else:
                remember_changing(head_bytes, start, lines, changed, first, parsed)
        assert parsed is not None
        last_head, last_parsed, last_lines = head_bytes, parsed, None
        return data[head_length:]

    def with_lines_replaced(parsed: _Parsed, lines: List[bytes],
                            changed: List[int], first: int) \
            -> Optional[_Parsed]:
        # `parsed` with the fields of lines[index] for each changed index (the field of
        # lines[0] being parsed's field `first`), each line checked as the parser checks one;
        # None if one is not a valid field line, or frames the response, or replaces one that
        # did (those are parsed in full, which gives their errors and framing).
        code, previous_headers, framing = parsed
        fields = list(previous_headers)
        for index in changed:
            try:
                field = _parse_field_line(lines[index])
            except _NotOneByOne:
                return None
            if field[0] in _FRAMING_FIELDS or fields[first + index][0] in _FRAMING_FIELDS:
                return None
            fields[first + index] = field
        # Of the same status line: of its class (see _headers_with_status)
        headers = type(previous_headers)(fields)
        if type(headers) is ResponseHeaders:  # beyond those classes: the status in its dict
            headers.reason = previous_headers.reason  # type: ignore[attr-defined]
            headers.http_version = previous_headers.http_version  # type: ignore[attr-defined]
        return code, headers, framing

    def remember_changing(head_bytes: bytes, start: int, lines: List[bytes],
                          changed: List[int], first: int,
                          parsed: _Parsed) -> None:
        # changing_value or changing_lines for head_bytes, whose lines from offset `start` on
        # are `lines`, of which those at the indexes `changed` (in order) changed: the value of
        # the one, or the lines from the first to the last.
        nonlocal changing_value, changing_lines, try_changing, changing_last
        try_changing = True
        first_changed, last_changed = changed[0], changed[-1]
        changed_start = start + sum(map(len, lines[:first_changed])) + 2 * first_changed
        code, headers, framing = parsed
        if first_changed == last_changed and type(headers) is not ResponseHeaders:
            # (A ResponseHeaders itself holds its status line in its dict: see
            # with_lines_replaced, which copies it.)
            # The value from after the whitespace that follows the colon: a next value with
            # none of its own needs no strip
            line = lines[first_changed]
            name, _, value = line.partition(b':')
            value_start = changed_start + len(name) + 1 + len(value) - \
                len(value.lstrip(b' \t'))
            changed_end = changed_start + len(line)
            index = first + first_changed
            changing_last = head_bytes[value_start:changed_end]
            changing_value = (head_bytes[:value_start], head_bytes[changed_end:], value_start,
                              changed_end, headers[index][0], list(headers), index,
                              cast('type[ResponseHeaders]', type(headers)), code, framing)
            changing_lines = None
            return
        changed_lines = lines[first_changed:last_changed + 1]
        changed_end = changed_start + sum(map(len, changed_lines)) + 2 * len(changed_lines) - 2
        changing_value = None
        changing_lines = (head_bytes[:changed_start], head_bytes[changed_end:], changed_start,
                          changed_end, changed_lines, first + first_changed, parsed)

    async def receive_head(conn: _Connection, method: bytes, data: bytes,
                           head_deadline: float, end: int = -1) \
            -> Tuple[_Parsed, bytes]:
        """Parse `data` (what was read so far: b'' if the connection ended before any byte),
        reading more until a final (non-1xx) head is complete. Return its code, headers and
        framing, and the bytes after it. `end`: where the first head's blank line starts in
        `data`, when the caller found it (-1: not searched, or not there)."""
        informational = 0
        received_total = len(data)
        while data:
            # request() looked the single-read case up in parsed_heads already; what gets
            # here (a head in pieces, after a 1xx, or new) is parsed, and then memoised.
            if end == -1:
                head = parse_response_head(data, max_header_length, max_header_count)
            else:
                head = _parse_response_head_ending_at(data, end, max_header_count)
                end = -1
            if head is None:
                received = await read_more(conn, head_deadline, received_total)
                received_total += len(received)
                data += received
                continue
            # RFC 9110 §15.2: 1xx responses are interim; the final one follows. A 101
            # would switch protocols, which we never ask for, so it is returned as final.
            if head.code[0] != 49 or head.code == b'101':  # 49: b'1'
                return parse_final_head(method, head, data[:head.length]), data[head.length:]
            data = data[head.length:]
            informational += 1
            if informational > _MAX_INFORMATIONAL_RESPONSES:
                raise HttpProtocolError('More than %d informational (1xx) responses'
                                        % (_MAX_INFORMATIONAL_RESPONSES,))
            if not data:
                data = await read_more(conn, head_deadline, received_total)
                received_total += len(data)
        if conn.reused and not conn.received_any:
            raise HttpConnectionClosedBeforeResponseError(
                'Reused connection closed before any byte of the response; the server did '
                'not process the request') from conn.lost_exception
        raise HttpConnectionClosedError(
            'Connection closed before any byte of the response head' + conn.tls_reason) \
            from conn.lost_exception

    async def read_more(conn: _Connection, head_deadline: float, received_total: int) -> bytes:
        """The next bytes of a response head, by the head's deadline."""
        now = loop.time()
        if now >= head_deadline:
            raise asyncio.TimeoutError()
        if not conn._queue and not conn._eof:
            await conn.readable(min(now + socket_timeout, head_deadline))
        received = conn.take()
        if not received:
            raise HttpConnectionClosedError(
                'Connection closed before the response head was complete (%d bytes received)'
                % (received_total,) + conn.tls_reason) from conn.lost_exception
        return received

    # The target, encoded headers and request head of a request without params nor proxy (a
    # proxy function is asked on every request), by (method, url, headers): most callers
    # repeat the same few, and the head is then built once. The key holds the caller's headers
    # as the encoded_headers cache does, and as that one it is not used for unhashable headers,
    # nor for heads over 4 KiB (so that unique ones cannot fill memory), and is cleared at 1024
    # entries.
    # (Its fields that every request reads are in the tuple too: a tuple is unpacked at once,
    # where each field of a NamedTuple is an attribute lookup.)
    prepared: Dict[Tuple[bytes, str, Any], _Prepared] = {}

    def prepare(method: bytes, url: str, params: Sequence[Tuple[str, str]], headers: Any) \
            -> _Prepared:
        target = targets.get(url) or cached_target(url)
        try:
            encoded = encoded_headers[method, headers]
        except (KeyError, TypeError):
            encoded = cached_headers(method, headers)
        if proxied:
            target, head = route(method, target, params, http_version, encoded)
        elif params:
            head = _request_head(method, target, params, http_version, encoded)
        else:
            head = b'%s %s %s\r\n%s%s\r\n' % (
                method, target.path_and_query, http_version,
                b'' if encoded.has_host else target.host_line, encoded.block)
        if not params and not proxied and len(head) <= 4096:
            try:
                if len(prepared) >= 1024:
                    prepared.clear()
                prepared[method, url, headers] = (
                    target, encoded, head, encoded.content_length, encoded.closes)
            except TypeError:  # unhashable headers
                pass
        return target, encoded, head, encoded.content_length, encoded.closes

    async def request(method: bytes, url: str, params: Sequence[Tuple[str, str]] = (),
                      headers: Headers = (), body: BodyFunction = empty_async_iterator,
                      body_args: Sequence[Any] = (), body_kwargs: Any = (),
                      get_logger_adapter: Callable[[Dict[str, Any]], Any] = get_logger_adapter,
                      get_resolver_logger_adapter: Callable[..., Any] =
                      get_resolver_logger_adapter,
                      ) -> Response:
        nonlocal last_head, last_parsed, last_lines, try_changing
        if params:
            target, encoded, head, content_length, closes = prepare(method, url, params, headers)
        else:
            try:
                target, encoded, head, content_length, closes = prepared[method, url, headers]
            except (KeyError, TypeError):
                target, encoded, head, content_length, closes = prepare(method, url, params,
                                                                        headers)
        bodiless = body is empty_async_iterator
        if bodiless and content_length:
            raise HttpInvalidRequestError(
                'content-length is %d but there is no body' % (content_length,))
        conn = take_idle_fast(target) or await acquire(target)

        request_logger = logger
        if get_logger_adapter is not pool_logger_adapter:
            # A logger of this request's own, as 0.0.89 took: its own level decides
            request_logger = get_logger_adapter({'lowhaio_method': method.decode(),
                                                 'lowhaio_url': url})
            if request_logger.isEnabledFor(logging.DEBUG):
                request_logger.debug('%s connection to %s', 'Reusing' if conn.reused else
                                     'New', conn.peer_ip)
        elif debug_answers.get(logging.DEBUG) is not False and debug_enabled(logging.DEBUG):
            request_logger = get_logger_adapter({'lowhaio_method': method.decode(),
                                                 'lowhaio_url': url})
            request_logger.debug('%s connection to %s', 'Reusing' if conn.reused else 'New',
                                 conn.peer_ip)
        sending = True
        try:
            if custom_send:
                await send_request_with_hooks(conn, method, url, params, headers, body,
                                              body_args, body_kwargs, request_logger)
            elif bodiless:
                conn.transport.write(head)
            else:
                final = await (send_expecting_continue if encoded.expects_continue else
                               send_request)(conn, method, head, body, body_args,
                                             body_kwargs, encoded.content_length
                                             if encoded.framed else _UNFRAMED)
                if final is not None:
                    refused = response_without_sending_body(conn, *final)
                    return refused if recv_bufsize is None else \
                        (refused[0], refused[1], _CappedBody(refused[2], recv_bufsize))
            # The usual case without a further coroutine: the whole head arrives in one read,
            # and is one seen before (see parsed_heads).
            sending = False
            # loop.time looked up at each use, not kept: a test's fake clock (aiofastforward)
            # may replace it after the pool is made, and its timers then run on that clock
            started = loop.time()
            queue = conn._queue
            if not queue and not conn._eof:
                # conn.readable(), inlined (this wait is in every request): the same deadline
                # on the connection's one timer, and the same bare future
                head_wait = conn._deadline = started + first_head_wait
                if conn._timer is None or conn._timer_when > head_wait:
                    conn._fire_by(head_wait)
                waiter = conn._waiter = new_future()
                await waiter
            if len(queue) == 1 and not conn._reading_paused:
                # conn.take(), inlined for the usual single read
                data = queue.popleft()
                conn._queued = 0
            else:
                data = conn.take() or b''
            if try_changing and method != b'HEAD' and method != b'CONNECT' and \
                    (after_changing := parse_like_changing(data)) is not None:
                # The head just before but for a request id, again: two comparisons
                parsed, rest = last_parsed, after_changing
            elif last_head and (after_last := data.removeprefix(last_head)) is not data and \
                    method != b'HEAD' and method != b'CONNECT':
                # The head just before, again (a head ends at its first blank line, and
                # last_head is one whole head): a comparison instead of a search and a hash,
                # which also cuts off what follows (a new object only if it was there: data
                # is bytes, as transports hand them on)
                parsed, rest = last_parsed, after_last
            else:
                if try_changing and changing_value is not None:
                    # The last head, in full, for what follows (the comparison with last_head
                    # above cannot find the head it is now: parse_like_changing takes that)
                    last_head, last_lines = \
                        changing_value[0] + changing_last + changing_value[1], None
                try_changing = False
                end = data.find(b'\r\n\r\n', 0, max_header_length)
                memoised = None
                if end != -1 and method != b'HEAD' and method != b'CONNECT':
                    head_bytes = data[:end + 4]
                    memoised = parsed_heads.get(head_bytes)
                    if memoised is not None:
                        last_head, last_parsed, last_lines = head_bytes, memoised, None
                    elif last_head:
                        # Most often last_head but for a request id or the date
                        memoised = parse_like_last(head_bytes)
                if memoised is None:
                    parsed, rest = await receive_head(conn, method, data,
                                                      started + response_head_timeout, end)
                else:
                    parsed = memoised
                    rest = data[end + 4:]
            code, response_headers, framing = parsed
        except BaseException as exception:
            if sending and isinstance(exception, ConnectionError):
                try:
                    answer = await answer_before_the_close(conn, method)
                except BaseException:
                    release(conn, False)
                    raise
                if answer is not None:
                    return answer if recv_bufsize is None else \
                        (answer[0], answer[1], _CappedBody(answer[2], recv_bufsize))
            release(conn, False)
            if isinstance(exception, HttpError) or not isinstance(exception, Exception) or \
                    isinstance(exception, asyncio.CancelledError):
                raise
            if isinstance(exception, asyncio.TimeoutError):
                raise HttpTimeoutError(
                    'Timed out sending the request: no byte left for %s seconds'
                    % (socket_timeout,) if sending else
                    'Timed out waiting for the response head') from exception
            if isinstance(exception, (ConnectionError, OSError)) and conn.reused and \
                    not conn.received_any:
                raise HttpConnectionClosedBeforeResponseError(
                    'Reused connection failed before any byte of the response: %r'
                    % (exception,)) from exception
            raise HttpDataError('Request failed: %r' % (exception,)) from exception

        kind, length, keeps_alive = framing
        keep = keeps_alive and not closes
        if kind == CONTENT_LENGTH and len(rest) == length:
            # The usual case of the next branch, in fewer steps: the body, exactly, came whole
            release(conn, keep)
            # _whole_body(rest), without its frame; an empty body is ended from the start, so
            # that iterating it costs only the end, made in C
            buffered_body = _BufferedBody() if rest else _EndedBody()
            buffered_body._data = rest
            response_body: ResponseBody = buffered_body
        elif kind == NO_BODY or (kind == CONTENT_LENGTH and len(rest) >= length):
            # The whole body is already here: the connection goes back to the pool before the
            # caller even starts reading, and the body iterator holds only bytes.
            body_bytes = rest[:length] if kind == CONTENT_LENGTH else b''
            release(conn, keep and len(rest) == len(body_bytes))
            buffered_body = _BufferedBody() if body_bytes else _EndedBody()  # (as above)
            buffered_body._data = body_bytes
            response_body = buffered_body
        elif kind == CHUNKED and rest.endswith(b'\r\n\r\n') and \
                (whole := _chunked_body_if_whole(rest, max_header_length)) is not None:
            # As above, for a chunked body that arrived whole with its head. (A whole one ends
            # so; one that has more to come seldom does, so it is seldom decoded twice.)
            release(conn, keep and not whole[1])
            response_body = _whole_body(whole[0])
        else:
            response_body = _ResponseBody(
                conn, release, _tuple_new(Framing, (kind, length, keep)), rest,
                socket_timeout, loop, max_header_length)
        if recv_bufsize is not None:
            response_body = _CappedBody(response_body, recv_bufsize)
        return code, response_headers, response_body

    async def close(get_logger_adapter: Callable[[Dict[str, Any]], Any] = get_logger_adapter,
                    get_resolver_logger_adapter: Callable[..., Any] =
                    get_resolver_logger_adapter) -> None:
        """Close every idle connection, cancel their timers and clear the DNS cache.
        Connections in use are closed when their response is finished."""
        nonlocal open_total
        await dns_clear_cache(get_logger_adapter=get_resolver_logger_adapter({}))
        end_dns_lookups()
        for connections in list(hosts.values()):
            connections.closed = True
            for conn in list(connections.idle):
                conn.on_idle_close = _no_op
                conn.close()
            open_total -= len(connections.idle)
            connections.idle.clear()
            for _, waiter in connections.waiters:
                if not waiter.done():
                    waiter.set_exception(HttpPoolTimeoutError('Pool closed'))
            connections.waiters.clear()
        if idle_by_age is not None:
            idle_by_age.clear()
        hosts.clear()

    def status() -> PoolStatus:
        """For each (scheme, host, port): idle and in-use (or connecting) connections, and
        requests waiting for a connection; and the same for the whole pool in `.totals`."""
        waiting: Dict[int, int] = {}  # by id() of the host's record
        for connections in hosts.values():
            for waiter_connections, waiter in connections.waiters:
                if not waiter.done():
                    waiting[id(waiter_connections)] = waiting.get(id(waiter_connections), 0) + 1
            if connections.waiters is shared_waiters:
                break  # one queue for every host: counted once
        by_host = PoolStatus(
            (key, {'idle': len(connections.idle),
                   'in_use': connections.total - len(connections.idle),
                   'waiting': waiting.get(id(connections), 0)})
            for key, connections in hosts.items())
        by_host.totals = {
            'idle': sum(counts['idle'] for counts in by_host.values()),
            'in_use': sum(counts['in_use'] for counts in by_host.values()),
            'waiting': sum(waiting.values()),
        }
        return by_host

    request.status = status  # type: ignore[attr-defined]
    if TYPE_CHECKING:  # the function itself must be a Request: cast() would not check that
        _: Request = request
    return cast(PoolRequest, request), close


if __name__ == '__main__':  # python -m lowhaio: the command-line client
    import lowhaio_cli
    raise SystemExit(lowhaio_cli.main())
