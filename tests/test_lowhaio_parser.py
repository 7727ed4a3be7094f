"""Specification of lowhaio's pure parsing layer: bytes in, values or an HttpError out.

Nothing here opens a socket. The helper `drive` feeds bytes to the pure functions the way the
I/O layer does (growing prefixes to `parse_response_head`, interim 1xx heads skipped, then the
rest to the body decoder that `response_framing` picks), so that each case can be checked fed
whole, one byte at a time, in random pieces, and with unrelated bytes after the message.

Sections follow what a caller relies on:
  1. status line
  2. header fields
  3. body framing, RFC 9112 §6.3 rule by rule, and connection persistence (§9.3)
  4. Content-Length
  5. chunked transfer coding and trailers (§7.1)
  6. interim (1xx) responses
  7. generated valid responses and fuzzed bytes (Hypothesis)
  8. request validation: method, header names and values, URL targets
"""

from __future__ import annotations

import random
import re
import string
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowhaio
from lowhaio import (
    CHUNKED,
    CONTENT_LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ChunkedDecoder,
    Framing,
    HttpError,
    HttpHeaderTooLong,
    HttpInvalidRequestError,
    HttpProtocolError,
    encode_request_headers,
    parse_content_length,
    parse_response_head,
    parse_target,
    response_framing,
)

Headers = Tuple[Tuple[bytes, bytes], ...]

# The I/O layer's bound on interim responses before the final one.
MAX_INFORMATIONAL = 16


# =============================================================================================
# Driving the pure layer like the I/O layer does
# =============================================================================================

class Response(NamedTuple):
    """Everything a caller (or the pool) learns from a response."""
    informational: Tuple[bytes, ...]  # codes of the interim heads before the final one
    http_minor: int
    code: bytes
    reason: bytes
    headers: Headers
    framing: Framing
    body: bytes
    complete: bool  # the framing says the message ended (always False for UNTIL_CLOSE)
    excess: int  # bytes received after the end of the message


class _BodyReader:
    """Applies a Framing to body bytes as they arrive."""

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.body: List[bytes] = []
        self.excess = 0
        self.remaining = framing.length
        self.decoder = ChunkedDecoder() if framing.kind == CHUNKED else None
        self.complete = framing.kind == NO_BODY or (
            framing.kind == CONTENT_LENGTH and framing.length == 0)

    def feed(self, data: bytes) -> None:
        kind = self.framing.kind
        if kind == UNTIL_CLOSE:
            self.body.append(data)
        elif kind == CHUNKED:
            assert self.decoder is not None
            self.body.extend(self.decoder.feed(data))
            self.complete = self.decoder.done
            self.excess = self.decoder.excess
        elif self.complete:
            self.excess += len(data)
        else:  # CONTENT_LENGTH, not yet complete
            taken = data[:self.remaining]
            self.body.append(taken)
            self.remaining -= len(taken)
            self.excess += len(data) - len(taken)
            self.complete = not self.remaining


def drive(pieces: Sequence[bytes], method: bytes = b'GET', max_header_length: int = 16384,
          max_header_count: int = 100) -> Optional[Response]:
    """Feed `pieces` as successive socket reads, then "close". None if no final head arrived."""
    data = b''
    informational: List[bytes] = []
    head = None
    reader: Optional[_BodyReader] = None
    for piece in pieces:
        if reader is not None:
            reader.feed(piece)
            continue
        data += piece
        while True:
            head = parse_response_head(data, max_header_length, max_header_count)
            if head is None:
                break
            assert 0 < head.length <= len(data)
            assert data[head.length - 4:head.length] == b'\r\n\r\n'
            data = data[head.length:]
            if head.code[:1] == b'1' and head.code != b'101':
                informational.append(head.code)
                if len(informational) > MAX_INFORMATIONAL:
                    raise HttpProtocolError('too many 1xx (raised by the test driver)')
                head = None
                continue
            reader = _BodyReader(response_framing(method, head))
            if data:
                reader.feed(data)
            break
    if head is None or reader is None:
        return None
    return Response(tuple(informational), head.http_minor, head.code, head.reason, head.headers,
                    reader.framing, b''.join(reader.body), reader.complete, reader.excess)


def random_pieces(data: bytes, rng: random.Random) -> List[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8)))) \
        if len(data) > 1 else []
    bounds = [0] + cuts + [len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


def every_split(data: bytes, seed: int = 0) -> Dict[str, List[bytes]]:
    rng = random.Random(seed)
    splits = {
        'whole': [data],
        'bytewise': [data[i:i + 1] for i in range(len(data))],
    }
    for attempt in range(3):
        splits['random%d' % attempt] = random_pieces(data, rng)
    return splits


TRAILING = b'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n'  # e.g. a pipelined next response


def parse(data: bytes, method: bytes = b'GET', **limits: int) -> Response:
    """The response in `data`, checked to be the same however the bytes arrive, and with
    bytes after it reported as excess (for framings that can tell where the message ends)."""
    results = {name: drive(pieces, method, **limits)
               for name, pieces in every_split(data).items()}
    whole = results['whole']
    assert whole is not None, 'head never completed'
    for name, result in results.items():
        assert result == whole, name

    if whole.framing.kind != UNTIL_CLOSE and whole.complete:
        for name, pieces in every_split(data + TRAILING, seed=1).items():
            followed = drive(pieces, method, **limits)
            assert followed == whole._replace(excess=whole.excess + len(TRAILING)), name
    return whole


def parse_error(data: bytes, match: str, method: bytes = b'GET',
                error: type = HttpProtocolError, **limits: int) -> HttpError:
    """The error `data` raises, checked to be the same class, with a message matching `match`
    (case-insensitive), however the bytes arrive and whatever follows them."""
    raised = {}
    for trailing in (b'', TRAILING):
        for name, pieces in every_split(data + trailing).items():
            with pytest.raises(HttpError) as info:
                drive(pieces, method, **limits)
            assert type(info.value) is error, (name, trailing, info.value)
            assert re.search(match, str(info.value), re.IGNORECASE), (name, str(info.value))
            raised[name, trailing] = info.value
    return raised['whole', b'']


def response(status: bytes = b'HTTP/1.1 200 OK', headers: Sequence[bytes] = (),
             body: bytes = b'') -> bytes:
    return status + b'\r\n' + b''.join(line + b'\r\n' for line in headers) + b'\r\n' + body


def with_header(line: bytes) -> bytes:
    return response(headers=[b'content-length: 2', line], body=b'ok')


# =============================================================================================
# 1. Status line: HTTP-version SP 3DIGIT SP [reason] CRLF (RFC 9112 §4)
# =============================================================================================

class TestStatusLine:

    @pytest.mark.parametrize('status, minor, code, reason', [
        pytest.param(b'HTTP/1.1 200 OK', 1, b'200', b'OK', id='http-1.1'),
        pytest.param(b'HTTP/1.0 200 OK', 0, b'200', b'OK', id='http-1.0'),
        # RFC 9110 §2.5: a higher minor version is understood as the highest we implement
        pytest.param(b'HTTP/1.2 200 OK', 1, b'200', b'OK', id='http-1.2-treated-as-1.1'),
        pytest.param(b'HTTP/1.9 404 Not Found', 1, b'404', b'Not Found', id='http-1.9'),
        pytest.param(b'HTTP/1.1 200 ', 1, b'200', b'', id='empty-reason-with-sp'),
        pytest.param(b'HTTP/1.1 418 I\'m a  teapot\t!', 1, b'418', b'I\'m a  teapot\t!',
                     id='reason-inner-whitespace-kept'),
        pytest.param(b'HTTP/1.1 200 OK  \t', 1, b'200', b'OK', id='reason-trailing-ws-dropped'),
        pytest.param(b'HTTP/1.1 200 Gr\xc3\xbc\xc3\x9fe', 1, b'200', b'Gr\xc3\xbc\xc3\x9fe',
                     id='reason-obs-text'),
        pytest.param(b'HTTP/1.1 599 x', 1, b'599', b'x', id='code-599'),
    ])
    def test_valid_status_lines(self, status: bytes, minor: int, code: bytes,
                                reason: bytes) -> None:
        result = parse(response(status, [b'content-length: 2'], b'hi'))
        assert (result.http_minor, result.code, result.reason, result.body) == \
            (minor, code, reason, b'hi')

    @pytest.mark.parametrize('status', [
        pytest.param(b'HTTP/1.1 200', id='missing-sp-after-code'),
        pytest.param(b'HTTP/1.1 20 OK', id='2-digit-code'),
        pytest.param(b'HTTP/1.1 2000 OK', id='4-digit-code'),
        pytest.param(b'HTTP/1.1 2x0 OK', id='non-digit-code'),
        pytest.param(b'HTTP/1.1  200 OK', id='two-sp-before-code'),
        pytest.param(b'HTTP/1.1\t200 OK', id='htab-instead-of-sp'),
        pytest.param(b'HTTP/1.1 200\tOK', id='htab-after-code'),
        pytest.param(b'HTTP/1.10 200 OK', id='2-digit-minor'),
        pytest.param(b'HTTP/1. 200 OK', id='missing-minor'),
        pytest.param(b'HTTP/1.1 200 O\x01K', id='ctl-in-reason'),
        pytest.param(b'HTTP/1.1 200 O\x7fK', id='del-in-reason'),
        pytest.param(b'HTTP/1.1 200 O\rK', id='bare-cr-in-reason'),
        pytest.param(b'HTTP/1.1 200 O\x00K', id='nul-in-reason'),
    ])
    def test_malformed_status_line(self, status: bytes) -> None:
        parse_error(response(status, [b'content-length: 0']), 'status line')

    @pytest.mark.parametrize('status', [
        pytest.param(b'HTTP/2.0 200 OK', id='http-2.0'),
        pytest.param(b'HTTP/2 200', id='http-2'),
        pytest.param(b'HTTP/0.9 200 OK', id='http-0.9'),
        pytest.param(b'http/1.1 200 OK', id='lowercase-http'),
        pytest.param(b'Http/1.1 200 OK', id='mixed-case-http'),
        pytest.param(b' HTTP/1.1 200 OK', id='leading-space'),
        pytest.param(b'\tHTTP/1.1 200 OK', id='leading-htab'),
        pytest.param(b'\r\nHTTP/1.1 200 OK', id='leading-empty-line'),
        pytest.param(b'\x00HTTP/1.1 200 OK', id='leading-nul'),
        pytest.param(b'SSH-2.0-OpenSSH_9.6', id='not-http-at-all'),
        pytest.param(b'HTTP/1,1 200 OK', id='comma-in-version'),
        pytest.param(b'HTTPS/1.1 200 OK', id='https-as-protocol'),
        pytest.param(b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', id='tls-record'),
    ])
    def test_not_http_1x(self, status: bytes) -> None:
        # Whole, the status line is malformed; in pieces, it is rejected from its first bytes.
        parse_error(response(status, [b'content-length: 0']), r'status line|HTTP/1\.x')

    @pytest.mark.parametrize('garbage', [b'X', b'HTTX', b'HTTP/2', b'HTTP/1,', b'<html>'])
    def test_garbage_rejected_without_waiting_for_the_whole_head(self, garbage: bytes) -> None:
        # Otherwise a non-HTTP peer would hold the request until max_header_length or a timeout.
        with pytest.raises(HttpProtocolError, match='HTTP/1.x'):
            parse_response_head(garbage)

    @pytest.mark.parametrize('garbage', [
        pytest.param(b'<html>' + b'x' * 20000, id='html'),
        pytest.param(b'\x00' * 20000, id='nuls'),
    ])
    def test_long_garbage_is_a_protocol_error_however_it_arrives(self, garbage: bytes) -> None:
        # Not "head too long": the peer is not speaking HTTP/1.x, whatever the read sizes.
        parse_error(garbage, r'HTTP/1\.x')

    @pytest.mark.parametrize('code', [b'000', b'099', b'600', b'999'])
    def test_codes_outside_100_to_599_are_returned_as_final(self, code: bytes) -> None:
        # RFC 9110 §15: the client treats them like a 5xx; deciding that is the caller's job.
        result = parse(response(b'HTTP/1.1 ' + code + b' x', [b'content-length: 2'], b'ok'))
        assert (result.informational, result.code, result.body) == ((), code, b'ok')

    @pytest.mark.parametrize('prefix', [b'', b'H', b'HTTP/', b'HTTP/1.', b'HTTP/1.1 ',
                                        b'HTTP/1.1 200 OK\r\n', b'HTTP/1.1 200 OK\r\na: b\r\n'])
    def test_incomplete_head_needs_more_bytes(self, prefix: bytes) -> None:
        assert parse_response_head(prefix) is None

    def test_bare_lf_line_endings_never_end_the_head(self) -> None:
        # Rejected by never being found: the head is incomplete until it is too long.
        lf_only = b'HTTP/1.1 200 OK\ncontent-length: 0\n\n'
        assert parse_response_head(lf_only) is None
        assert drive([lf_only]) is None
        with pytest.raises(HttpHeaderTooLong, match='max_header_length'):
            parse_response_head(lf_only + b'x' * 100, max_header_length=100)

    def test_head_length_and_following_bytes_untouched(self) -> None:
        head_bytes = response(headers=[b'content-length: 5'])
        head = parse_response_head(head_bytes + b'hello')
        assert head is not None
        assert head.length == len(head_bytes)
        assert (head.http_minor, head.code, head.reason, head.headers) == \
            (1, b'200', b'OK', ((b'content-length', b'5'),))


# =============================================================================================
# 2. Header fields: field-name ":" OWS field-value OWS (RFC 9112 §5, RFC 9110 §5.5)
# =============================================================================================

class TestHeaderFields:

    def test_names_lowercased_order_and_repeats_kept(self) -> None:
        result = parse(response(headers=[
            b'Content-Length: 0', b'Set-Cookie: a=1', b'X-Thing: 1', b'SET-COOKIE: b=2']))
        assert result.headers == ((b'content-length', b'0'), (b'set-cookie', b'a=1'),
                                  (b'x-thing', b'1'), (b'set-cookie', b'b=2'))

    def test_no_headers_at_all(self) -> None:
        result = parse(b'HTTP/1.1 204 No Content\r\n\r\n')
        assert (result.code, result.headers, result.body, result.complete) == \
            (b'204', (), b'', True)

    @pytest.mark.parametrize('line, value', [
        pytest.param(b'x-a: v', b'v', id='one-sp'),
        pytest.param(b'x-a:v', b'v', id='no-ows'),
        pytest.param(b'x-a: \t v \t ', b'v', id='ows-both-sides-trimmed'),
        pytest.param(b'x-a: a  b\tc', b'a  b\tc', id='inner-whitespace-kept'),
        pytest.param(b'x-a:', b'', id='empty-value'),
        pytest.param(b'x-a:   \t', b'', id='only-whitespace-value'),
        pytest.param(b'x-a: \x80\xff caf\xc3\xa9', b'\x80\xff caf\xc3\xa9', id='obs-text'),
        pytest.param(b'x-a: "quoted; a=b, c" (comment)', b'"quoted; a=b, c" (comment)',
                     id='vchar-punctuation'),
        pytest.param(b'x-a: a:b: c', b'a:b: c', id='colons-in-value'),
    ])
    def test_field_values(self, line: bytes, value: bytes) -> None:
        assert parse(with_header(line)).headers[1] == (b'x-a', value)

    @pytest.mark.parametrize('name', [
        b"!#$%&'*+-.^_`|~", b'X-0123456789', b'a', b'UPPER',
    ])
    def test_any_token_is_a_name(self, name: bytes) -> None:
        assert parse(with_header(name + b': v')).headers[1] == (name.lower(), b'v')

    @pytest.mark.parametrize('line, match', [
        pytest.param(b'x-a : v', 'header name', id='space-before-colon'),
        pytest.param(b'x-a\t: v', 'header name', id='htab-before-colon'),
        pytest.param(b': v', 'header name', id='empty-name'),
        pytest.param(b'x@a: v', 'header name', id='non-token-name'),
        pytest.param(b'x"a: v', 'header name', id='dquote-in-name'),
        pytest.param(b'caf\xc3\xa9: v', 'header name', id='non-ascii-name'),
        pytest.param(b'x-a v', 'colon', id='no-colon'),
        pytest.param(b' folded', 'obs-fold', id='obs-fold-sp'),
        pytest.param(b'\tfolded', 'obs-fold', id='obs-fold-htab'),
        pytest.param(b'x-a: a\x00b', 'value', id='nul-in-value'),
        pytest.param(b'x-a: a\rb', 'value', id='bare-cr-in-value'),
        pytest.param(b'x-a: a\nb: c', 'value', id='bare-lf-in-value'),
        pytest.param(b'x-a: a\x01b', 'value', id='soh-in-value'),
        pytest.param(b'x-a: a\x1bb', 'value', id='esc-in-value'),
        pytest.param(b'x-a: a\x7fb', 'value', id='del-in-value'),
        pytest.param(b'x-a: \x0b', 'value', id='vt-in-value'),
        pytest.param(b'x-a: v\r', 'value', id='cr-before-crlf'),
    ])
    def test_invalid_field_lines(self, line: bytes, match: str) -> None:
        parse_error(with_header(line), match)

    def test_obs_fold_after_first_header(self) -> None:
        data = response(headers=[b'content-length: 0', b'x-a: one', b'  two'])
        parse_error(data, 'obs-fold')

    def test_empty_line_with_bare_lf_inside_head(self) -> None:
        parse_error(b'HTTP/1.1 200 OK\r\n\nx: y\r\n\r\n', 'colon|bare|name')

    def test_header_count_limit(self) -> None:
        lines = [b'content-length: 0'] + [b'x-%d: v' % i for i in range(99)]
        assert len(parse(response(headers=lines)).headers) == 100
        error = parse_error(response(headers=lines + [b'x-last: v']), '100',
                            error=HttpHeaderTooLong)
        assert 'header' in str(error).lower()

    def test_header_count_limit_is_configurable(self) -> None:
        lines = [b'content-length: 0', b'a: 1', b'b: 2']
        assert len(parse(response(headers=lines), max_header_count=3).headers) == 3
        parse_error(response(headers=lines), 'more than 2', error=HttpHeaderTooLong,
                    max_header_count=2)

    @pytest.mark.parametrize('max_length', [64, 100, 16384])
    def test_max_header_length_exact_boundary(self, max_length: int) -> None:
        base = len(response(headers=[b'content-length: 0', b'x-pad: ']))

        def head_of(size: int) -> bytes:
            head = response(headers=[b'content-length: 0', b'x-pad: ' + b'p' * (size - base)])
            assert len(head) == size
            return head

        exact = parse(head_of(max_length), max_header_length=max_length)
        assert exact.complete and exact.headers[1] == (b'x-pad', b'p' * (max_length - base))
        # One more byte, fed whole or byte by byte, and with the next bytes already there
        parse_error(head_of(max_length + 1), 'max_header_length', error=HttpHeaderTooLong,
                    max_header_length=max_length)

    def test_head_too_long_detected_without_its_end(self) -> None:
        # A server that never ends its head must not make us buffer without bound.
        endless = b'HTTP/1.1 200 OK\r\n' + b'x: yyyyyyy\r\n' * 100
        with pytest.raises(HttpHeaderTooLong):
            drive([endless[i:i + 1] for i in range(len(endless))], max_header_length=500)
        with pytest.raises(HttpHeaderTooLong):
            parse_response_head(endless[:500], max_header_length=500)
        assert parse_response_head(endless[:499], max_header_length=500) is None


class TestHeaderBlocks:
    """A block is parsed line by line where its lines were seen before and all at once where
    most are new: every check holds in both, for a bad line in any place of a block of any
    size, and the parse is the same as one line at a time."""

    INVALID_LINES = [
        pytest.param(b'x-a : v', 'header name', id='space-before-colon'),
        pytest.param(b'x-a\t: v', 'header name', id='htab-before-colon'),
        pytest.param(b': v', 'header name', id='empty-name'),
        pytest.param(b'x@a: v', 'header name', id='non-token-name'),
        pytest.param(b'caf\xc3\xa9: v', 'header name', id='non-ascii-name'),
        pytest.param(b'x\x00a: v', 'header name', id='nul-in-name'),
        pytest.param(b'x\ra: v', 'header name', id='bare-cr-in-name'),
        pytest.param(b'x-a v', 'colon', id='no-colon'),
        pytest.param(b'', 'colon', id='empty-line'),
        pytest.param(b' folded', 'obs-fold', id='obs-fold-sp'),
        pytest.param(b'\tfolded: v', 'obs-fold', id='obs-fold-htab'),
        pytest.param(b'x-a: a\x00b', 'value', id='nul-in-value'),
        pytest.param(b'x-a: a\rb', 'value', id='bare-cr-in-value'),
        pytest.param(b'x-a: a\nb: c', 'value', id='bare-lf-in-value'),
        pytest.param(b'x-a: a\x1fb', 'value', id='us-in-value'),
        pytest.param(b'x-a: a\x7fb', 'value', id='del-in-value'),
        pytest.param(b'x-a: v\r', 'value', id='cr-before-crlf'),
        pytest.param(b'x-a:' + b' ' * 3000 + b'\x00', 'value', id='spaces-then-nul'),
    ]
    SIZES = [1, 4, 5, 6, 12, 100]
    PLACES = ['first', 'middle', 'last']

    counter = 0

    @classmethod
    def unique(cls) -> bytes:
        # Lines no earlier test has parsed, so that they are new to the memo.
        cls.counter += 1
        return b'%d-%s' % (cls.counter, ''.join(random.choices(string.hexdigits, k=16)).encode())

    @classmethod
    def lines(cls, size: int, known: bool) -> List[bytes]:
        tag = b'known' if known else cls.unique()
        return [b'X-Field-%d: value %d %s' % (i, i, tag) for i in range(size)]

    @staticmethod
    def one_at_a_time(lines: Sequence[bytes]) -> Headers:
        """The parse of each line on its own, the way the grammar reads (an oracle)."""
        fields = []
        for line in lines:
            name, _, value = line.partition(b':')
            fields.append((name.lower(), value.strip(b' \t')))
        return tuple(fields)

    @staticmethod
    def with_bad_line(lines: List[bytes], bad: bytes, place: str) -> List[bytes]:
        index = {'first': 0, 'middle': len(lines) // 2, 'last': len(lines)}[place]
        return lines[:index] + [bad] + lines[index:]

    @pytest.mark.parametrize('known', [False, True], ids=['new-lines', 'known-lines'])
    @pytest.mark.parametrize('place', PLACES)
    @pytest.mark.parametrize('size', SIZES)
    @pytest.mark.parametrize('bad, match', INVALID_LINES)
    def test_a_bad_line_anywhere_in_any_block_is_rejected(
            self, bad: bytes, match: str, size: int, place: str, known: bool) -> None:
        lines = self.lines(size, known)
        if known:
            lowhaio.parse_field_block(b''.join(line + b'\r\n' for line in lines))
        block = b''.join(line + b'\r\n' for line in self.with_bad_line(lines, bad, place))
        for attempt in range(2):  # and again, once the good lines are memoised
            with pytest.raises(HttpError) as info:
                lowhaio.parse_field_block(block, max_header_count=1000)
            assert type(info.value) is HttpProtocolError, (attempt, info.value)
            assert re.search(match, str(info.value), re.IGNORECASE), (attempt, str(info.value))

    @pytest.mark.parametrize('known_share', [0, 0.5, 0.9, 1], ids=lambda share: 'known-%s' % share)
    @pytest.mark.parametrize('size', SIZES)
    def test_valid_blocks_parse_as_one_line_at_a_time(self, size: int,
                                                      known_share: float) -> None:
        known = self.lines(size, True)
        lowhaio.parse_field_block(b''.join(line + b'\r\n' for line in known), 1000)
        new = [b'%s:%s%s\t ' % (b'X-New-%d' % i, b' \t' * (i % 3), self.unique())
               for i in range(size)]
        lines = [known[i] if random.random() < known_share else new[i] for i in range(size)]
        block = b''.join(line + b'\r\n' for line in lines)
        expected = self.one_at_a_time(lines)
        assert lowhaio.parse_field_block(block, 1000) == expected
        assert lowhaio.parse_field_block(block, 1000) == expected  # memoised by now

    @pytest.mark.parametrize('size', SIZES)
    def test_values_keep_their_own_case_and_inner_whitespace(self, size: int) -> None:
        lines = [b'X-%d-%s:  Mixed Case \t %d: \x80\xff  ' % (i, self.unique(), i)
                 for i in range(size)]
        fields = lowhaio.parse_field_block(b''.join(line + b'\r\n' for line in lines), 1000)
        assert [value for _, value in fields] == \
            [b'Mixed Case \t %d: \x80\xff' % i for i in range(size)]
        assert all(name == name.lower() and name.startswith(b'x-') for name, _ in fields)

    @pytest.mark.parametrize('size', [50, 100])
    def test_memo_stays_bounded_when_every_value_is_unique(self, size: int) -> None:
        # A server whose every header value is unique must not make the memo grow without
        # bound (nor keep it from being emptied for servers that repeat their lines).
        for _ in range(200):
            lines = self.lines(size, known=False)
            assert lowhaio.parse_field_block(b''.join(line + b'\r\n' for line in lines),
                                             1000) == self.one_at_a_time(lines)
            assert len(lowhaio._parsed_field_lines) <= lowhaio._MAX_MEMOISED_LINES + size
            assert sum(map(len, lowhaio._parsed_field_lines)) <= lowhaio._MAX_MEMOISED_BYTES
        # A server that repeats its lines, met afterwards, has them memoised before long.
        base = self.lines(8, known=False)
        for _ in range(lowhaio._FULL_BLOCKS_BEFORE_EMPTYING + 1):
            block_lines = base + [b'x-request-id: ' + self.unique()]
            assert lowhaio.parse_field_block(
                b''.join(line + b'\r\n' for line in block_lines)) == \
                self.one_at_a_time(block_lines)
        assert all(line in lowhaio._parsed_field_lines for line in base)


    @pytest.mark.parametrize('new_count', [1, 2, 4, 5])
    @pytest.mark.parametrize('room', [0, 1, 3])
    def test_a_memo_that_fills_within_a_block_parses_it_the_same(
            self, monkeypatch: pytest.MonkeyPatch, room: int, new_count: int) -> None:
        # The memo is emptied by the new line that finds it full, in the middle of a block
        # whose earlier lines were found in it: the block's later lines are new again.
        monkeypatch.setattr(lowhaio, '_MAX_MEMOISED_LINES', 8)
        lowhaio._parsed_field_lines.clear()
        known = self.lines(8 - room, known=False)
        lowhaio.parse_field_block(b''.join(line + b'\r\n' for line in known), 1000)
        for _ in range(3):
            lines = known[:4] + [b'x-id-%d: %s' % (i, self.unique()) for i in range(new_count)] \
                + known[4:]
            block = b''.join(line + b'\r\n' for line in lines)
            assert lowhaio.parse_field_block(block, 1000) == self.one_at_a_time(lines)
            assert len(lowhaio._parsed_field_lines) <= 8 + len(lines)
        lowhaio._parsed_field_lines.clear()
        lowhaio._memoised_bytes[:] = [0, 0, 0]


class TestOneNewLine:
    """A single new line among memoised ones is checked on its own: every byte is accepted
    or rejected in a name and in a value exactly as the grammar says."""

    TCHAR = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    FIELD_BYTES = {0x09} | set(range(0x20, 0x7f)) | set(range(0x80, 0x100))
    KNOWN = [b'server: one-new-line', b'content-type: text/plain']

    @pytest.mark.parametrize('where', ['name', 'value'])
    def test_every_byte_in_the_only_new_line(self, where: str) -> None:
        known = b''.join(line + b'\r\n' for line in self.KNOWN)
        lowhaio.parse_field_block(known)
        for byte in range(256):
            if where == 'name' and byte == 0x3a:
                continue  # a colon ends the name: no byte of it
            char = bytes((byte,))
            line = (b'x-%d-' % byte + char + b'y: v' if where == 'name' else
                    b'x-%d: a' % byte + char + b'b')
            valid = byte in (self.TCHAR if where == 'name' else self.FIELD_BYTES)
            block = known + line + b'\r\n'
            if byte in (0x0a, 0x0d) or not valid:
                with pytest.raises(HttpProtocolError):
                    lowhaio.parse_field_block(block)
            else:
                name, _, value = line.partition(b':')
                assert lowhaio.parse_field_block(block) == (
                    (b'server', b'one-new-line'), (b'content-type', b'text/plain'),
                    (name.lower(), value.strip(b' \t')))


class TestStatusLineMemo:
    """Status lines are memoised by their bytes: a memoised one parses as it did afresh."""

    @pytest.mark.parametrize('line', [
        b'HTTP/1.1 200 OK', b'HTTP/1.0 200 OK', b'HTTP/1.1 404 Not Found', b'HTTP/1.1 204 ',
        b'HTTP/1.1 200 OK \t', b'HTTP/1.9 200 Fine', b'HTTP/1.1 500 \xe9\xff x'])
    def test_a_memoised_status_line_parses_as_afresh(self, line: bytes) -> None:
        lowhaio._parsed_status_lines.clear()
        first = parse_response_head(line + b'\r\ncontent-length: 0\r\n\r\n')
        second = parse_response_head(line + b'\r\ncontent-length: 0\r\n\r\n')
        assert first == second
        assert first is not None and first.code == line[9:12]
        assert first.http_minor == (0 if line[7:8] == b'0' else 1)
        assert first.reason == line[13:].rstrip(b' \t')

    @pytest.mark.parametrize('line', [b'HTTP/1.1 20 OK', b'HTTP/1.1 200 O\x00K',
                                      b'HTTP/2.0 200 OK', b'HTTP/1.1  200 OK'])
    def test_a_bad_status_line_is_rejected_every_time(self, line: bytes) -> None:
        for _ in range(2):
            with pytest.raises(HttpProtocolError, match='status line'):
                parse_response_head(line + b'\r\ncontent-length: 0\r\n\r\n')
        assert line + b'\r\n' not in lowhaio._parsed_status_lines

    def test_the_memo_stays_bounded(self) -> None:
        for code in range(100, 600):
            head = parse_response_head(b'HTTP/1.1 %d x\r\n\r\n' % code)
            assert head is not None and head.code == b'%d' % code
            assert len(lowhaio._parsed_status_lines) <= lowhaio._MAX_MEMOISED_STATUS_LINES


class TestFramingMemo:
    """Framings are memoised by what decides them: a memoised framing is the one computed
    afresh, for every method, status and framing header, in any order, errors included."""

    METHODS = [b'GET', b'HEAD', b'CONNECT', b'POST']
    STATUSES = [b'HTTP/1.1 200 OK', b'HTTP/1.0 200 OK', b'HTTP/1.1 101 Switching',
                b'HTTP/1.1 103 Early', b'HTTP/1.1 204 No Content', b'HTTP/1.1 304 Not Modified',
                b'HTTP/1.1 404 Not Found']
    HEADER_SETS = [
        [], [b'content-length: 5'], [b'content-length: 7'], [b'content-length: 5, 5'],
        [b'content-length: 5', b'content-length: 6'], [b'content-length: x'],
        [b'transfer-encoding: chunked'], [b'transfer-encoding: gzip'],
        [b'transfer-encoding: chunked, chunked'],
        [b'transfer-encoding: chunked', b'content-length: 5'],
        [b'connection: close', b'content-length: 5'],
        [b'connection: keep-alive', b'content-length: 5'],
        [b'connection: Keep-Alive, Upgrade'], [b'connection: close', b'connection: x'],
        [b'x-request-id: 1', b'content-length: 5'], [b'x-request-id: 2', b'content-length: 5'],
    ]

    @staticmethod
    def outcome(method: bytes, head: bytes) -> object:
        parsed = parse_response_head(head)
        assert parsed is not None
        try:
            return response_framing(method, parsed)
        except HttpError as error:
            return type(error), str(error)

    def test_memoised_framings_are_those_computed_afresh(self) -> None:
        cases = [(method, response(status, headers)) for method in self.METHODS
                 for status in self.STATUSES for headers in self.HEADER_SETS]
        fresh = {}
        for case in cases:
            lowhaio._framings.clear()
            fresh[case] = self.outcome(*case)
        for order in range(3):
            random.Random(order).shuffle(cases)
            for case in cases:
                assert self.outcome(*case) == fresh[case], case
        assert len(lowhaio._framings) <= lowhaio._MAX_MEMOISED_FRAMINGS


# =============================================================================================
# 3. Framing, RFC 9112 §6.3 rule by rule, and persistence, RFC 9112 §9.3
# =============================================================================================

class TestFramingRule1NoBody:
    """A response to HEAD, and any 1xx, 204 or 304, ends at the empty line after the head."""

    @pytest.mark.parametrize('method, status, headers', [
        pytest.param(b'HEAD', b'HTTP/1.1 200 OK', [b'content-length: 10'], id='head-with-cl'),
        pytest.param(b'HEAD', b'HTTP/1.1 200 OK', [b'transfer-encoding: chunked'],
                     id='head-with-te'),
        pytest.param(b'HEAD', b'HTTP/1.0 200 OK', [b'transfer-encoding: chunked'],
                     id='head-http-1.0-with-te'),
        pytest.param(b'HEAD', b'HTTP/1.1 200 OK', [b'content-length: x'],
                     id='head-invalid-cl-ignored'),
        pytest.param(b'GET', b'HTTP/1.1 204 No Content', [b'content-length: 10'],
                     id='204-with-cl'),
        pytest.param(b'GET', b'HTTP/1.1 204 No Content', [b'transfer-encoding: chunked'],
                     id='204-with-te'),
        pytest.param(b'GET', b'HTTP/1.1 304 Not Modified', [b'content-length: 1234'],
                     id='304-with-cl'),
        pytest.param(b'GET', b'HTTP/1.1 304 Not Modified', [], id='304-bare'),
        pytest.param(b'POST', b'HTTP/1.1 204 ', [], id='204-empty-reason'),
    ])
    def test_no_body_whatever_headers_say(self, method: bytes, status: bytes,
                                          headers: List[bytes]) -> None:
        result = parse(response(status, headers), method=method)
        assert result.framing == Framing(NO_BODY, 0, status.startswith(b'HTTP/1.1'))
        assert (result.body, result.complete, result.excess) == (b'', True, 0)

    def test_bytes_after_a_no_body_response_are_excess_not_body(self) -> None:
        result = drive([response(b'HTTP/1.1 304 Not Modified', [b'content-length: 5'],
                                 b'hello')])
        assert result is not None
        assert (result.body, result.complete, result.excess) == (b'', True, 5)

    @pytest.mark.parametrize('code', [b'100', b'102', b'103', b'199'])
    def test_1xx_heads_have_no_body(self, code: bytes) -> None:
        head = parse_response_head(response(b'HTTP/1.1 ' + code + b' x',
                                            [b'content-length: 5']))
        assert head is not None
        assert response_framing(b'GET', head).kind == NO_BODY

    def test_101_is_final_with_no_body_and_not_reusable(self) -> None:
        result = parse(response(b'HTTP/1.1 101 Switching Protocols',
                                [b'upgrade: websocket', b'connection: upgrade']))
        assert (result.informational, result.code) == ((), b'101')
        assert result.framing == Framing(NO_BODY, 0, False)


class TestFramingRule2Connect:

    def test_2xx_to_connect_is_a_tunnel(self) -> None:
        result = parse(response(b'HTTP/1.1 200 Connection Established',
                                [b'content-length: 5']) + b'tunnel bytes', method=b'CONNECT')
        assert result.framing == Framing(UNTIL_CLOSE, 0, False)
        assert result.body == b'tunnel bytes'

    def test_non_2xx_to_connect_is_framed_normally(self) -> None:
        result = parse(response(b'HTTP/1.1 407 Proxy Auth', [b'content-length: 2'], b'no'),
                       method=b'CONNECT')
        assert result.framing == Framing(CONTENT_LENGTH, 2, True)
        assert result.body == b'no'


class TestFramingRules3And4TransferEncoding:

    def test_te_overrides_cl_and_connection_is_not_reused(self) -> None:
        # Both headers may be a smuggling attempt: the chunked framing is believed, the
        # connection is not trusted for another response.
        result = parse(response(headers=[b'content-length: 100', b'connection: keep-alive',
                                         b'transfer-encoding: chunked'],
                                body=b'3\r\nabc\r\n0\r\n\r\n'))
        assert result.framing == Framing(CHUNKED, 0, False)
        assert (result.body, result.complete) == (b'abc', True)

    def test_te_overrides_invalid_cl(self) -> None:
        result = parse(response(headers=[b'content-length: nonsense',
                                         b'transfer-encoding: chunked'],
                                body=b'0\r\n\r\n'))
        assert result.framing.kind == CHUNKED and not result.framing.keep_alive

    def test_te_in_http_1_0_is_an_error(self) -> None:
        parse_error(response(b'HTTP/1.0 200 OK', [b'transfer-encoding: chunked'],
                             b'0\r\n\r\n'), 'HTTP/1.0')

    @pytest.mark.parametrize('values', [
        pytest.param([b'chunked'], id='chunked'),
        pytest.param([b'Chunked'], id='case-insensitive'),
        pytest.param([b'CHUNKED'], id='upper'),
        pytest.param([b'gzip, chunked'], id='gzip-then-chunked'),
        pytest.param([b'gzip,chunked'], id='no-space-list'),
        pytest.param([b'gzip', b'chunked'], id='two-lines'),
        pytest.param([b'gzip, , chunked'], id='empty-list-element'),
    ])
    def test_chunked_last_means_chunked(self, values: List[bytes]) -> None:
        result = parse(response(headers=[b'transfer-encoding: ' + v for v in values],
                                body=b'2\r\nok\r\n0\r\n\r\n'))
        assert result.framing == Framing(CHUNKED, 0, True)
        assert result.body == b'ok'

    @pytest.mark.parametrize('values', [
        pytest.param([b'gzip'], id='gzip'),
        pytest.param([b'chunked, gzip'], id='chunked-not-last'),
        pytest.param([b'chunked', b'gzip'], id='chunked-not-last-two-lines'),
        pytest.param([b'identity'], id='identity'),
        pytest.param([b'chunkedx'], id='lookalike'),
    ])
    def test_te_not_ending_in_chunked_reads_until_close(self, values: List[bytes]) -> None:
        body = b'2\r\nok\r\n0\r\n\r\n'
        result = parse(response(headers=[b'content-length: 3'] +
                                [b'transfer-encoding: ' + v for v in values], body=body))
        assert result.framing == Framing(UNTIL_CLOSE, 0, False)
        assert (result.body, result.complete) == (body, False)

    @pytest.mark.parametrize('values', [
        pytest.param([b'chunked, chunked'], id='one-line'),
        pytest.param([b'chunked', b'chunked'], id='two-lines'),
        pytest.param([b'chunked, gzip, chunked'], id='with-gzip-between'),
    ])
    def test_chunked_twice_is_an_error(self, values: List[bytes]) -> None:
        parse_error(response(headers=[b'transfer-encoding: ' + v for v in values],
                             body=b'0\r\n\r\n'), 'chunked')


class TestFramingRule8UntilClose:

    @pytest.mark.parametrize('status, connection', [
        (b'HTTP/1.1 200 OK', []),
        (b'HTTP/1.1 200 OK', [b'connection: keep-alive']),
        (b'HTTP/1.0 200 OK', [b'connection: keep-alive']),
        (b'HTTP/1.0 200 OK', []),
    ])
    def test_neither_te_nor_cl_means_until_close_and_not_reusable(
            self, status: bytes, connection: List[bytes]) -> None:
        result = parse(response(status, connection, b'everything\r\n\r\nuntil close'))
        assert result.framing == Framing(UNTIL_CLOSE, 0, False)
        assert result.body == b'everything\r\n\r\nuntil close'
        assert not result.complete and result.excess == 0


class TestPersistence:
    """Whether the connection may carry another request after this response (RFC 9112 §9.3)."""

    @pytest.mark.parametrize('minor, lines, keep_alive', [
        pytest.param(1, [], True, id='1.1-default-persistent'),
        pytest.param(0, [], False, id='1.0-default-close'),
        pytest.param(1, [b'connection: close'], False, id='1.1-close'),
        pytest.param(1, [b'Connection: CLOSE'], False, id='1.1-close-case'),
        pytest.param(1, [b'connection: keep-alive'], True, id='1.1-keep-alive'),
        pytest.param(1, [b'connection: upgrade, close'], False, id='1.1-close-in-list'),
        pytest.param(1, [b'connection: te,close,x'], False, id='1.1-close-in-tight-list'),
        pytest.param(1, [b'connection: x-close'], True, id='1.1-close-lookalike'),
        pytest.param(1, [b'connection: foo', b'connection: close'], False,
                     id='1.1-close-on-second-line'),
        pytest.param(1, [b'connection: keep-alive, close'], False, id='1.1-close-wins'),
        pytest.param(0, [b'connection: keep-alive'], True, id='1.0-keep-alive'),
        pytest.param(0, [b'Connection: Keep-Alive'], True, id='1.0-keep-alive-case'),
        pytest.param(0, [b'connection: foo, keep-alive'], True, id='1.0-keep-alive-in-list'),
        pytest.param(0, [b'connection: foo', b'connection: keep-alive'], True,
                     id='1.0-keep-alive-second-line'),
        pytest.param(0, [b'connection: keep-alive, close'], False, id='1.0-close-wins'),
        pytest.param(0, [b'connection: keep-alivex'], False, id='1.0-lookalike'),
        pytest.param(0, [b'keep-alive: timeout=5'], False, id='1.0-keep-alive-header-only'),
        pytest.param(2, [], True, id='1.2-like-1.1'),
    ])
    def test_keep_alive(self, minor: int, lines: List[bytes], keep_alive: bool) -> None:
        result = parse(response(b'HTTP/1.%d 200 OK' % minor,
                                [b'content-length: 2'] + lines, b'ok'))
        assert result.framing == Framing(CONTENT_LENGTH, 2, keep_alive)


# =============================================================================================
# 4. Content-Length (RFC 9110 §8.6, RFC 9112 §6.3 rules 5 and 6)
# =============================================================================================

class TestContentLength:

    @pytest.mark.parametrize('lines, length', [
        pytest.param([b'content-length: 5'], 5, id='plain'),
        pytest.param([b'Content-Length:5'], 5, id='no-ows'),
        pytest.param([b'content-length:  5'], 5, id='leading-ows'),
        pytest.param([b'content-length: 5 \t'], 5, id='trailing-ows'),
        pytest.param([b'content-length: 00005'], 5, id='leading-zeros'),
        pytest.param([b'content-length: 5, 5'], 5, id='identical-list'),
        pytest.param([b'content-length: 5,5 ,  5'], 5, id='identical-list-ows'),
        pytest.param([b'content-length: 5', b'content-length: 5'], 5, id='two-lines-same'),
    ])
    def test_valid(self, lines: List[bytes], length: int) -> None:
        result = parse(response(headers=lines, body=b'hello'))
        assert result.framing == Framing(CONTENT_LENGTH, length, True)
        assert (result.body, result.complete) == (b'hello', True)

    def test_zero(self) -> None:
        result = parse(response(headers=[b'content-length: 0']))
        assert (result.framing.kind, result.body, result.complete) == \
            (CONTENT_LENGTH, b'', True)

    def test_18_digits_is_the_maximum(self) -> None:
        result = parse(response(headers=[b'content-length: ' + b'9' * 18], body=b'partial'))
        assert result.framing.length == 10 ** 18 - 1
        assert (result.body, result.complete) == (b'partial', False)

    @pytest.mark.parametrize('value', [
        pytest.param(b'+5', id='plus-sign'),
        pytest.param(b'-1', id='negative'),
        pytest.param(b'0x5', id='hex'),
        pytest.param(b'0_5', id='underscore'),
        pytest.param(b'5.0', id='decimal-point'),
        pytest.param(b'5e0', id='exponent'),
        pytest.param(b'5 5', id='inner-space'),
        pytest.param(b'1' * 19, id='19-digits'),
        pytest.param(b'\xd9\xa5', id='non-ascii-digit'),
        pytest.param(b'five', id='word'),
        pytest.param(b'', id='empty'),
        pytest.param(b',', id='only-comma'),
    ])
    def test_invalid_is_an_error(self, value: bytes) -> None:
        parse_error(response(headers=[b'content-length: ' + value], body=b'hello'),
                    'content-length')

    @pytest.mark.parametrize('lines', [
        pytest.param([b'content-length: 5, 6'], id='list'),
        pytest.param([b'content-length: 5', b'content-length: 6'], id='two-lines'),
        pytest.param([b'content-length: 5', b'content-length: 05'],
                     id='same-number-written-differently'),
        pytest.param([b'content-length: 5, x'], id='valid-and-invalid'),
    ])
    def test_conflicting_values_are_an_error(self, lines: List[bytes]) -> None:
        parse_error(response(headers=lines, body=b'hello'), 'content-length')

    def test_body_stops_at_length_and_the_rest_is_excess(self) -> None:
        result = drive([response(headers=[b'content-length: 3'], body=b'abcdef')])
        assert result is not None
        assert (result.body, result.complete, result.excess) == (b'abc', True, 3)

    def test_short_body_is_incomplete(self) -> None:
        result = parse(response(headers=[b'content-length: 10'], body=b'abc'))
        assert (result.body, result.complete) == (b'abc', False)

    def test_parse_content_length_directly(self) -> None:
        assert parse_content_length(b'0') == 0
        assert parse_content_length(b'123') == 123
        assert parse_content_length(b'7, 7') == 7
        with pytest.raises(HttpProtocolError, match='(?i)content-length'):
            parse_content_length(b'7, 8')


# =============================================================================================
# 5. Chunked transfer coding (RFC 9112 §7.1)
# =============================================================================================

def chunked_response(body: bytes, minor: int = 1) -> bytes:
    return response(b'HTTP/1.%d 200 OK' % minor, [b'transfer-encoding: chunked'], body)


def decode_chunked(data: bytes, **options: int) -> Tuple[bytes, bool, int]:
    """(body, done, excess) from a ChunkedDecoder fed `data` in every way, checked to agree."""
    results = set()
    for pieces in every_split(data).values():
        decoder = ChunkedDecoder(**options)
        body = b''.join(b''.join(decoder.feed(piece)) for piece in pieces)
        results.add((body, decoder.done, decoder.excess))
    assert len(results) == 1, results
    return results.pop()


def chunked_error(data: bytes, match: str, **options: int) -> None:
    for pieces in every_split(data).values():
        decoder = ChunkedDecoder(**options)
        with pytest.raises(HttpProtocolError, match='(?i)' + match):
            for piece in pieces:
                decoder.feed(piece)


class TestChunked:

    @pytest.mark.parametrize('encoded, body', [
        pytest.param(b'0\r\n\r\n', b'', id='empty-body'),
        pytest.param(b'5\r\nhello\r\n0\r\n\r\n', b'hello', id='one-chunk'),
        pytest.param(b'5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n', b'hello world',
                     id='three-chunks'),
        pytest.param(b'a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n', b'0123456789' * 2,
                     id='hex-case'),
        pytest.param(b'1f\r\n' + b'x' * 31 + b'\r\n1F\r\n' + b'y' * 31 + b'\r\n0\r\n\r\n',
                     b'x' * 31 + b'y' * 31, id='hex-two-digits-both-cases'),
        pytest.param(b'000000000000000a\r\n0123456789\r\n0\r\n\r\n', b'0123456789',
                     id='16-hex-digits'),
        pytest.param(b'00005\r\nhello\r\n000\r\n\r\n', b'hello', id='leading-zeros'),
        pytest.param(b'2\r\n\r\n\r\n0\r\n\r\n', b'\r\n', id='crlf-as-data'),
        pytest.param(b'4\r\n0\r\n\r\r\n0\r\n\r\n', b'0\r\n\r', id='last-chunk-lookalike-data'),
    ])
    def test_valid(self, encoded: bytes, body: bytes) -> None:
        assert decode_chunked(encoded) == (body, True, 0)
        result = parse(chunked_response(encoded))
        assert (result.body, result.complete, result.excess) == (body, True, 0)

    @pytest.mark.parametrize('size_line', [
        b'5;name', b'5;name=value', b'5; name = value', b'5 ;name', b'5\t;name',
        b'5;a="quoted; \\"semicolon\\""', b'5;a=1;b=2;c', b'5;' + b'x' * 4000,
        b'5;\x80\xff',
    ])
    def test_chunk_extensions_ignored(self, size_line: bytes) -> None:
        encoded = size_line + b'\r\nhello\r\n0;last=1\r\n\r\n'
        assert decode_chunked(encoded) == (b'hello', True, 0)

    @pytest.mark.parametrize('encoded, match', [
        pytest.param(b'00000000000000005\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='17-hex-digits'),
        pytest.param(b'fffffffffffffffff\r\n', 'chunk-size', id='17-hex-digits-huge'),
        pytest.param(b'\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='empty-size'),
        pytest.param(b'-5\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='negative'),
        pytest.param(b'+5\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='plus'),
        pytest.param(b'0x5\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='0x-prefix'),
        pytest.param(b'g\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='not-hex'),
        pytest.param(b' 5\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='leading-space'),
        pytest.param(b'5 \r\nhello\r\n0\r\n\r\n', 'chunk-size', id='trailing-space'),
        pytest.param(b'5\nhello\r\n0\r\n\r\n', 'chunk-size', id='bare-lf-after-size'),
        pytest.param(b'5\rhello\r\n0\r\n\r\n', 'chunk-size', id='bare-cr-after-size'),
        pytest.param(b'5;a\x00b\r\nhello\r\n0\r\n\r\n', 'chunk-size', id='nul-in-extension'),
        pytest.param(b'5;' + b'x' * 5000 + b'\r\nhello\r\n0\r\n\r\n', 'too long',
                     id='size-line-too-long'),
        pytest.param(b'5\r\nhelloXY\r\n0\r\n\r\n', 'missing crlf', id='data-longer-than-size'),
        pytest.param(b'5\r\nhello0\r\n\r\n', 'missing crlf', id='no-crlf-after-data'),
        pytest.param(b'5\r\nhello\n0\r\n\r\n', 'missing crlf', id='bare-lf-after-data'),
        pytest.param(b'5\r\nhello\r0\r\n\r\n', 'missing crlf', id='bare-cr-after-data'),
        pytest.param(b'3\r\nhello\r\n0\r\n\r\n', 'missing crlf', id='data-longer-than-size-2'),
    ])
    def test_malformed(self, encoded: bytes, match: str) -> None:
        chunked_error(encoded, match)
        parse_error(chunked_response(encoded), match)

    def test_trailers_parsed_and_discarded(self) -> None:
        encoded = b'5\r\nhello\r\n0\r\nx-checksum: abc\r\nExpires: never\r\n\r\n'
        assert decode_chunked(encoded) == (b'hello', True, 0)
        result = parse(chunked_response(encoded))
        assert result.headers == ((b'transfer-encoding', b'chunked'),)
        assert (result.body, result.complete) == (b'hello', True)

    @pytest.mark.parametrize('trailer, match', [
        pytest.param(b'no colon', 'colon', id='no-colon'),
        pytest.param(b'x : y', 'name', id='space-before-colon'),
        pytest.param(b' folded', 'obs-fold', id='obs-fold'),
        pytest.param(b'x: a\x00b', 'value', id='nul-in-value'),
        pytest.param(b'x: a\x01b', 'value', id='ctl-in-value'),
        pytest.param(b'x: a\rb', 'value', id='bare-cr-in-value'),
    ])
    def test_invalid_trailer_is_an_error(self, trailer: bytes, match: str) -> None:
        chunked_error(b'0\r\n' + trailer + b'\r\n\r\n', match)

    def test_bare_lf_ends_nothing_in_trailers(self) -> None:
        chunked_error(b'0\r\n\n', 'colon|bare|value')
        chunked_error(b'0\r\nx: y\n\r\n', 'value|bare')

    def test_trailer_section_length_limit(self) -> None:
        def with_trailer_section_of(size: int) -> bytes:
            line = b'x: ' + b'y' * (size - 7) + b'\r\n'  # plus the final CRLF
            assert len(line) + 2 == size
            return b'0\r\n' + line + b'\r\n'

        assert decode_chunked(with_trailer_section_of(200), max_trailer_length=200) == \
            (b'', True, 0)
        chunked_error(with_trailer_section_of(201), 'trailer', max_trailer_length=200)
        many_lines = b'0\r\n' + b'x: y\r\n' * 40 + b'\r\n'
        chunked_error(many_lines, 'trailer', max_trailer_length=200)
        # ...and the I/O-layer default bounds an endless trailer section
        decoder = ChunkedDecoder()
        decoder.feed(b'0\r\n')
        with pytest.raises(HttpProtocolError, match='(?i)trailer'):
            for _ in range(10000):
                decoder.feed(b'x-trailer: some value\r\n')

    def test_endless_size_line_is_bounded(self) -> None:
        decoder = ChunkedDecoder()
        with pytest.raises(HttpProtocolError, match='(?i)too long'):
            for _ in range(10000):
                decoder.feed(b'0000')

    def test_truncated_stream_is_not_done(self) -> None:
        encoded = b'5;ext\r\nhello\r\n3\r\nabc\r\n0\r\nx: y\r\n\r\n'
        for end in range(len(encoded)):
            body, done, excess = decode_chunked(encoded[:end])
            assert not done, end
            assert excess == 0
            assert b'helloabc'.startswith(body)
            result = drive([chunked_response(encoded[:end])])
            assert result is not None and not result.complete

    def test_data_is_delivered_as_it_arrives(self) -> None:
        decoder = ChunkedDecoder()
        assert b''.join(decoder.feed(b'a\r\n01234')) == b'01234'
        assert b''.join(decoder.feed(b'56789\r\n')) == b'56789'
        assert not decoder.done

    def test_bytes_after_the_last_chunk_are_excess(self) -> None:
        assert decode_chunked(b'2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n') == (b'ok', True, 17)
        result = drive([chunked_response(b'2\r\nok\r\n0\r\n\r\n' + b'extra')])
        assert result is not None
        assert (result.body, result.complete, result.excess) == (b'ok', True, 5)


# =============================================================================================
# 6. Interim (1xx) responses (RFC 9110 §15.2)
# =============================================================================================

class TestInformational:

    def test_100_continue_then_final(self) -> None:
        data = b'HTTP/1.1 100 Continue\r\n\r\n' + \
            response(headers=[b'content-length: 2'], body=b'ok')
        result = parse(data)
        assert (result.informational, result.code, result.body) == ((b'100',), b'200', b'ok')
        assert result.headers == ((b'content-length', b'2'),)

    def test_103_early_hints_headers_do_not_leak_into_the_final_response(self) -> None:
        data = response(b'HTTP/1.1 103 Early Hints', [b'link: </a.css>; rel=preload',
                                                      b'content-length: 99']) + \
            response(headers=[b'content-length: 2'], body=b'ok')
        result = parse(data)
        assert (result.informational, result.headers, result.body) == \
            ((b'103',), ((b'content-length', b'2'),), b'ok')

    def test_several_in_a_row(self) -> None:
        data = b'HTTP/1.1 100 Continue\r\n\r\n' + \
            b'HTTP/1.1 102 Processing\r\n\r\n' * 3 + \
            response(b'HTTP/1.1 103 Early Hints', [b'link: </s.js>']) + \
            response(b'HTTP/1.1 201 Created', [b'transfer-encoding: chunked'],
                     b'2\r\nok\r\n0\r\n\r\n')
        result = parse(data)
        assert result.informational == (b'100', b'102', b'102', b'102', b'103')
        assert (result.code, result.body, result.complete) == (b'201', b'ok', True)

    def test_interim_head_errors_are_errors(self) -> None:
        parse_error(b'HTTP/1.1 100 Continue\r\nbad line\r\n\r\n' +
                    response(headers=[b'content-length: 0']), 'colon')

    def test_interim_heads_are_bounded(self) -> None:
        parse_error(b'HTTP/1.1 100 Continue\r\n\r\n' * (MAX_INFORMATIONAL + 1) +
                    response(headers=[b'content-length: 0']), '1xx')


# =============================================================================================
# 7. Generated valid responses, and fuzzed bytes (Hypothesis)
# =============================================================================================

TCHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
FRAMING_NAMES = {b'content-length', b'transfer-encoding', b'connection'}
VCHAR_OBS = [bytes([b]) for b in list(range(0x21, 0x7f)) + list(range(0x80, 0x100))]
VALUE_INNER = VCHAR_OBS + [b' ', b'\t']
OWS = st.sampled_from([b'', b' ', b'\t', b'  ', b' \t '])

field_names = st.text(TCHARS, min_size=1, max_size=12).map(str.encode).filter(
    lambda name: name.lower() not in FRAMING_NAMES)
field_values = st.one_of(
    st.just(b''),
    st.sampled_from(VCHAR_OBS),
    st.tuples(st.sampled_from(VCHAR_OBS),
              st.lists(st.sampled_from(VALUE_INNER), max_size=20).map(b''.join),
              st.sampled_from(VCHAR_OBS)).map(b''.join),
)


@st.composite
def field_lines(draw: Callable, max_size: int = 6) -> Tuple[bytes, Headers]:
    """(wire bytes, expected parsed headers) for a few random header lines."""
    wire, parsed = [], []
    for name, value in draw(st.lists(st.tuples(field_names, field_values), max_size=max_size)):
        wire.append(name + b':' + draw(OWS) + value + draw(OWS) + b'\r\n')
        parsed.append((name.lower(), value))
    return b''.join(wire), tuple(parsed)


reasons = st.lists(st.sampled_from(VALUE_INNER), max_size=15).map(b''.join)


@st.composite
def chunked_bodies(draw: Callable, body: bytes) -> bytes:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6))))
    bounds = [0] + [cut for cut in cuts if cut < len(body)] + [len(body)]
    chunks = [body[start:end] for start, end in zip(bounds, bounds[1:]) if end > start]
    extension = st.sampled_from([b'', b';a', b';a=b', b' ; name="x;y"', b';\x80'])

    def size_line(size: int) -> bytes:
        digits = draw(st.sampled_from(['%x', '%X', '000%x']), label='hex') % size
        return digits.encode() + draw(extension) + b'\r\n'

    wire = b''.join(size_line(len(chunk)) + chunk + b'\r\n' for chunk in chunks)
    trailers, _ = draw(field_lines(max_size=3))
    return wire + size_line(0) + trailers + b'\r\n'


class Generated(NamedTuple):
    wire: bytes
    method: bytes
    informational: Tuple[bytes, ...]
    code: bytes
    headers: Headers
    body: bytes
    kind: int
    keep_alive: bool


@st.composite
def valid_responses(draw: Callable) -> Generated:
    method = draw(st.sampled_from([b'GET', b'POST', b'HEAD']))
    wire = b''
    informational = draw(st.lists(st.sampled_from([b'100', b'102', b'103']), max_size=4))
    for code in informational:
        lines, _ = draw(field_lines(max_size=2))
        wire += b'HTTP/1.1 ' + code + b' ' + draw(reasons) + b'\r\n' + lines + b'\r\n'

    chunked = draw(st.booleans())
    minor = draw(st.sampled_from([1, 1, 2, 9] if chunked else [0, 1, 1, 2]))
    code = b'%d' % draw(st.integers(200, 599))
    body = draw(st.binary(max_size=300))
    lines, headers = draw(field_lines())
    connection = draw(st.sampled_from([None, b'close', b'keep-alive', b'Keep-Alive, x']))
    if connection is None:
        keep_alive = minor != 0
    else:
        lines += b'connection: ' + connection + b'\r\n'
        headers += ((b'connection', connection),)
        keep_alive = b'close' not in connection and (minor != 0 or b'eep-' in connection)

    no_body = method == b'HEAD' or code in (b'204', b'304')
    if chunked:
        lines += b'Transfer-Encoding: chunked\r\n'
        headers += ((b'transfer-encoding', b'chunked'),)
        encoded = draw(chunked_bodies(body))
    else:
        lines += b'Content-Length: %d\r\n' % len(body)
        headers += ((b'content-length', b'%d' % len(body)),)
        encoded = body
    kind = NO_BODY if no_body else CHUNKED if chunked else CONTENT_LENGTH
    wire += b'HTTP/1.%d ' % minor + code + b' ' + draw(reasons) + b'\r\n' + lines + b'\r\n'
    wire += b'' if no_body else encoded
    return Generated(wire, method, tuple(informational), code, headers,
                     b'' if no_body else body, kind, keep_alive)


def split_by(data: bytes, cuts: List[int]) -> List[bytes]:
    bounds = [0] + sorted({cut % (len(data) + 1) for cut in cuts}) + [len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


VALID_EXAMPLES = 500
FUZZ_EXAMPLES = 2000
# Deterministic in CI (derandomize), and not at the mercy of a busy machine (no deadline)
COMMON_SETTINGS = settings(derandomize=True, database=None, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.data_too_large])


def test_generated_valid_responses_parse_the_same_however_split() -> None:
    runs = []

    @settings(COMMON_SETTINGS, max_examples=VALID_EXAMPLES)
    @given(valid_responses(), st.lists(st.integers(0, 10 ** 6), max_size=12),
           st.binary(max_size=40))
    def check(generated: Generated, cuts: List[int], trailing: bytes) -> None:
        runs.append(1)
        expected = (generated.informational, generated.code, generated.headers,
                    generated.body, generated.kind, generated.keep_alive, True, 0)
        wire = generated.wire
        for pieces in ([wire], [wire[i:i + 1] for i in range(len(wire))], split_by(wire, cuts)):
            result = drive(pieces, generated.method)
            assert result is not None
            assert (result.informational, result.code, result.headers, result.body,
                    result.framing.kind, result.framing.keep_alive, result.complete,
                    result.excess) == expected
        # whatever follows a complete message is excess, never body
        followed = drive(split_by(wire + trailing, cuts), generated.method)
        assert followed is not None
        assert (followed.body, followed.complete, followed.excess) == \
            (generated.body, True, len(trailing))

    check()
    print('\ngenerated valid responses checked: %d' % len(runs))
    assert len(runs) == VALID_EXAMPLES


MUTATION_TOKENS = [b'\r\n', b'\n', b'\r', b'\r\n\r\n', b':', b' ', b'\t', b'\x00', b'0', b'ff',
                   b'chunked', b'content-length: ', b'transfer-encoding: chunked\r\n', b',',
                   b';', b'HTTP/1.1 100 Continue\r\n\r\n', b'1', b'\xff', b'-']


@st.composite
def mutated_responses(draw: Callable) -> Tuple[bytes, bytes]:
    generated = draw(valid_responses())
    data = bytearray(generated.wire)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(
            ['flip', 'insert', 'delete', 'token', 'duplicate', 'case', 'case']))
        if operation == 'case':
            # often still valid: exercises the case-insensitive paths with arbitrary bytes
            data[position:position + 8] = bytes(data[position:position + 8]).swapcase()
        elif operation == 'flip' and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif operation == 'insert':
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif operation == 'delete':
            del data[position:position + draw(st.integers(1, 8))]
        elif operation == 'token':
            data[position:position] = draw(st.sampled_from(MUTATION_TOKENS))
        else:
            data[position:position] = data[position:position + draw(st.integers(1, 30))]
    return bytes(data), generated.method


random_inputs = st.tuples(
    st.one_of(
        mutated_responses(),
        mutated_responses(),
        mutated_responses(),
        st.tuples(st.sampled_from([b'', b'HTTP/1.1 ', b'HTTP/1.1 200 OK\r\n']),
                  st.binary(max_size=200)).map(b''.join),
    ).map(lambda x: x if isinstance(x, tuple) else (x, b'GET')),
    st.lists(st.integers(0, 10 ** 6), max_size=12),
)


def outcome(pieces: List[bytes], method: bytes) -> object:
    """A result, or the class of HttpError raised; any other exception propagates."""
    try:
        return drive(pieces, method, max_header_length=2048)
    except HttpError as error:
        return type(error)


def test_fuzzed_bytes_raise_only_http_errors_whatever_the_split() -> None:
    runs = []
    kinds: Dict[str, int] = {}

    @settings(COMMON_SETTINGS, max_examples=FUZZ_EXAMPLES)
    @given(random_inputs)
    def check(case: Tuple[Tuple[bytes, bytes], List[int]]) -> None:
        (data, method), cuts = case
        runs.append(1)
        whole = outcome([data], method)
        kind = whole.__name__ if isinstance(whole, type) else \
            'incomplete head' if whole is None else 'parsed'
        kinds[kind] = kinds.get(kind, 0) + 1
        assert outcome([data[i:i + 1] for i in range(len(data))], method) == whole
        assert outcome(split_by(data, cuts), method) == whole
        if isinstance(whole, Response) and whole.framing.kind == CONTENT_LENGTH:
            assert len(whole.body) <= whole.framing.length
            assert whole.complete == (len(whole.body) == whole.framing.length)

    check()
    print('\nfuzzed inputs run: %d, outcomes: %r' % (len(runs), kinds))
    assert len(runs) == FUZZ_EXAMPLES
    # the generator must reach both sides, or the test proves little
    assert kinds.get('parsed', 0) > 50 and kinds.get('HttpProtocolError', 0) > 50


# =============================================================================================
# 8. Request validation, before anything is sent
# =============================================================================================

class TestRequestMethod:

    @pytest.mark.parametrize('method', [b'GET', b'HEAD', b'POST', b'PROPFIND', b'M-SEARCH',
                                        b"!#$%&'*+-.^_`|~"])
    def test_token_methods_accepted(self, method: bytes) -> None:
        assert encode_request_headers(method, ()).block == b''

    @pytest.mark.parametrize('method', [
        pytest.param(b'GET /x', id='space'),
        pytest.param(b'G\r\nET', id='crlf'),
        pytest.param(b'GET\n', id='lf'),
        pytest.param(b'', id='empty'),
        pytest.param(b'GET\x00', id='nul'),
        pytest.param(b'G:T', id='colon'),
        pytest.param(b'G\xc3\x89T', id='non-ascii'),
        pytest.param('GET', id='str'),
        pytest.param(None, id='none'),
    ])
    def test_non_token_methods_rejected(self, method: object) -> None:
        with pytest.raises(HttpInvalidRequestError, match='(?i)method'):
            encode_request_headers(method, ())  # type: ignore[arg-type]

    def test_invalid_request_error_is_a_value_error_and_an_http_error(self) -> None:
        with pytest.raises(ValueError):
            encode_request_headers(b'', ())
        assert issubclass(HttpInvalidRequestError, HttpError)
        assert not issubclass(HttpInvalidRequestError, lowhaio.HttpDataError)
        assert not issubclass(HttpInvalidRequestError, lowhaio.HttpConnectionError)


class TestRequestHeaders:

    def test_encoding(self) -> None:
        encoded = encode_request_headers(b'PUT', (
            (b'Host', b'example.com'), (b'content-length', b'3'), (b'X-Empty', b''),
            (b'x-tab', b'a\tb c'), (b'x-obs', b'\xff')))
        assert encoded.block == (b'Host: example.com\r\ncontent-length: 3\r\nX-Empty: \r\n'
                                 b'x-tab: a\tb c\r\nx-obs: \xff\r\n')
        assert (encoded.has_host, encoded.content_length, encoded.closes) == (True, 3, False)

    def test_no_host_no_length(self) -> None:
        encoded = encode_request_headers(b'GET', ((b'accept', b'*/*'),))
        assert (encoded.has_host, encoded.content_length, encoded.closes) == \
            (False, None, False)

    @pytest.mark.parametrize('value, closes', [
        (b'close', True), (b'Close', True), (b'keep-alive, close', True),
        (b'te,close', True), (b'keep-alive', False), (b'x-close', False),
    ])
    def test_connection_close_noticed(self, value: bytes, closes: bool) -> None:
        assert encode_request_headers(b'GET', ((b'Connection', value),)).closes is closes

    @pytest.mark.parametrize('name', [
        pytest.param(b'', id='empty'),
        pytest.param(b'x y', id='space'),
        pytest.param(b'x:y', id='colon'),
        pytest.param(b'x\r\ny', id='crlf'),
        pytest.param(b'x\x00', id='nul'),
        pytest.param(b'caf\xc3\xa9', id='non-ascii'),
        pytest.param(b'x ', id='trailing-space'),
        pytest.param('x-str', id='str'),
    ])
    def test_non_token_names_rejected(self, name: object) -> None:
        with pytest.raises(HttpInvalidRequestError, match='(?i)name'):
            encode_request_headers(b'GET', ((name, b'v'),))  # type: ignore[arg-type]

    @pytest.mark.parametrize('value', [
        pytest.param(b'a\r\nx-injected: 1', id='crlf'),
        pytest.param(b'a\rb', id='cr'),
        pytest.param(b'a\nb', id='lf'),
        pytest.param(b'a\x00b', id='nul'),
        pytest.param(b'\r\n\r\nGET /smuggled HTTP/1.1', id='request-smuggling'),
        pytest.param('str value', id='str'),
    ])
    def test_values_that_could_end_a_line_rejected(self, value: object) -> None:
        with pytest.raises(HttpInvalidRequestError, match='(?i)value'):
            encode_request_headers(b'GET', ((b'x-a', value),))  # type: ignore[arg-type]

    @pytest.mark.parametrize('header', [(b'x',), (b'x', b'y', b'z'), b'xy', None])
    def test_non_pairs_rejected(self, header: object) -> None:
        # (b'xy' unpacks into two ints, which are then not names)
        with pytest.raises(HttpInvalidRequestError, match='(?i)pair|name'):
            encode_request_headers(b'GET', (header,))  # type: ignore[arg-type]

    @pytest.mark.parametrize('values', [
        pytest.param([b'abc'], id='word'),
        pytest.param([b'-1'], id='negative'),
        pytest.param([b'+5'], id='plus'),
        pytest.param([b'0x5'], id='hex'),
        pytest.param([b'5.0'], id='decimal'),
        pytest.param([b''], id='empty'),
        pytest.param([b'1' * 19], id='19-digits'),
        pytest.param([b'5', b'6'], id='two-different'),
    ])
    def test_invalid_content_length_rejected(self, values: List[bytes]) -> None:
        with pytest.raises(HttpInvalidRequestError, match='(?i)content-length'):
            encode_request_headers(b'POST', [(b'content-length', v) for v in values])

    @pytest.mark.parametrize('values, length', [
        ([b'5'], 5), ([b' 5 '], 5), ([b'5', b'5'], 5), ([b'0'], 0), ([b'9' * 18], 10 ** 18 - 1),
    ])
    def test_valid_content_length(self, values: List[bytes], length: int) -> None:
        encoded = encode_request_headers(b'POST', [(b'Content-Length', v) for v in values])
        assert encoded.content_length == length

    def test_transfer_encoding_means_no_content_length(self) -> None:
        encoded = encode_request_headers(b'POST', ((b'transfer-encoding', b'chunked'),))
        assert encoded.content_length is None

    @settings(COMMON_SETTINGS, max_examples=200)
    @given(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=4))
    def test_any_accepted_block_is_well_formed(self, headers: List[Tuple[bytes, bytes]]) -> None:
        # Whatever the caller passes, either it is refused or each header is one clean line.
        try:
            encoded = encode_request_headers(b'GET', headers)
        except HttpInvalidRequestError:
            return
        lines = encoded.block.split(b'\r\n')
        assert lines[-1] == b'' and len(lines) == len(headers) + 1
        for line in lines[:-1]:
            assert b'\n' not in line and b'\r' not in line and b'\x00' not in line
            assert re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: .*", line, re.DOTALL)


class TestRequestTarget:

    @pytest.mark.parametrize('url, path_and_query', [
        pytest.param('http://example.com', b'/', id='empty-path-is-slash'),
        pytest.param('http://example.com?x=1', b'/?x=1', id='empty-path-with-query'),
        pytest.param('http://example.com/a/b?x=1&y=2', b'/a/b?x=1&y=2', id='query-kept'),
        pytest.param('http://example.com/a?', b'/a', id='empty-query'),
        pytest.param('http://example.com/a%20b?c=%2F', b'/a%20b?c=%2F', id='no-double-encoding'),
        pytest.param('http://example.com/%7Euser', b'/%7Euser', id='encoded-unreserved-kept'),
        pytest.param('http://example.com/a b?c d', b'/a%20b?c%20d', id='spaces-encoded'),
        pytest.param('http://example.com/a\x01\x7fb', b'/a%01%7Fb', id='ctl-encoded'),
        pytest.param('http://example.com/caf\u00e9', b'/caf%C3%A9', id='non-ascii-utf8'),
        pytest.param('http://example.com/100%', b'/100%25', id='stray-percent'),
        pytest.param('http://example.com/%zz', b'/%25zz', id='invalid-escape'),
        pytest.param('http://example.com/a"<>', b'/a%22%3C%3E', id='unsafe-ascii'),
        pytest.param("http://example.com/:@!$&'()*+,;=-._~", b"/:@!$&'()*+,;=-._~",
                     id='pchar-kept'),
        pytest.param('http://example.com/p?a=/?&b', b'/p?a=/?&b', id='query-slash-question'),
        pytest.param('http://example.com/p#frag', b'/p', id='fragment-not-sent'),
    ])
    def test_path_and_query(self, url: str, path_and_query: bytes) -> None:
        target = parse_target(url)
        assert target.path_and_query == path_and_query
        assert target.has_query == (b'?' in path_and_query)

    @pytest.mark.parametrize('url, host, port, host_line', [
        pytest.param('http://example.com/', 'example.com', 80, b'example.com',
                     id='http-default-port'),
        pytest.param('https://example.com/', 'example.com', 443, b'example.com',
                     id='https-default-port'),
        pytest.param('http://example.com:80/', 'example.com', 80, b'example.com',
                     id='explicit-default-port-omitted'),
        pytest.param('https://example.com:443/', 'example.com', 443, b'example.com',
                     id='explicit-https-default-port-omitted'),
        pytest.param('http://example.com:443/', 'example.com', 443, b'example.com:443',
                     id='other-scheme-default-kept'),
        pytest.param('http://example.com:8080/', 'example.com', 8080, b'example.com:8080',
                     id='port-kept'),
        pytest.param('HTTP://EXAMPLE.com/', 'example.com', 80, b'example.com',
                     id='case-insensitive'),
        pytest.param('http://127.0.0.1:8080/', '127.0.0.1', 8080, b'127.0.0.1:8080',
                     id='ipv4'),
        pytest.param('http://[::1]/', '::1', 80, b'[::1]', id='ipv6-brackets'),
        pytest.param('http://[::1]:8080/', '::1', 8080, b'[::1]:8080', id='ipv6-port'),
        pytest.param('https://[2001:DB8::1]:443/', '2001:db8::1', 443, b'[2001:db8::1]',
                     id='ipv6-default-port'),
        pytest.param('http://b\u00fccher.example/', 'b\u00fccher.example', 80,
                     b'xn--bcher-kva.example', id='idna'),
        pytest.param('http://user:pw@example.com/', 'example.com', 80, b'example.com',
                     id='userinfo-not-in-host'),
    ])
    def test_host_and_port(self, url: str, host: str, port: int, host_line: bytes) -> None:
        target = parse_target(url)
        assert (target.host, target.port) == (host, port)
        assert target.key == (target.scheme, host, port)
        assert target.host_line == b'host: ' + host_line + b'\r\n'
        assert target.ip_literal == (host[0].isdigit() or ':' in host)

    def test_trailing_dot(self) -> None:
        # The absolute form names the same host: it shares the pool key and the name looked
        # up; the Host header keeps the name as written, as browsers send it.
        target = parse_target('http://example.com./')
        assert (target.host, target.key) == ('example.com', ('http', 'example.com', 80))
        assert target.host_line == b'host: example.com.\r\n'

    @pytest.mark.parametrize('url, match', [
        pytest.param('ftp://example.com/', 'scheme', id='ftp'),
        pytest.param('ws://example.com/', 'scheme', id='ws'),
        pytest.param('example.com/path', 'scheme', id='no-scheme'),
        pytest.param('/path', 'scheme', id='relative'),
        pytest.param('', 'scheme', id='empty'),
        pytest.param('http:///path', 'host', id='no-host'),
        pytest.param('http://example.com:99999/', 'port', id='port-out-of-range'),
        pytest.param('http://example.com:-1/', 'port', id='negative-port'),
        pytest.param('http://example.com:http/', 'port', id='non-numeric-port'),
        pytest.param('http://example.com:80:80/', 'port', id='two-ports'),
        pytest.param('http://[::1/', 'ipv6|url', id='unclosed-bracket'),
        pytest.param('http://[example.com]/', 'ip|url', id='name-in-brackets'),
        pytest.param('http://exa mple.com/', 'host', id='space-in-host'),
        pytest.param('http://exa<mple.com/', 'host', id='angle-in-host'),
        pytest.param('http://\u2028.example/', 'host|idna|url', id='unicode-separator-host'),
    ])
    def test_invalid_urls_rejected(self, url: str, match: str) -> None:
        with pytest.raises(HttpInvalidRequestError, match='(?i)' + match):
            parse_target(url)

    def test_non_str_url_rejected(self) -> None:
        with pytest.raises(HttpInvalidRequestError, match='(?i)str'):
            parse_target(b'http://example.com/')  # type: ignore[arg-type]

    @settings(COMMON_SETTINGS, max_examples=300)
    @given(st.text(max_size=30), st.text(max_size=20))
    def test_target_never_holds_whitespace_or_controls(self, path: str, query: str) -> None:
        try:
            target = parse_target('http://example.com/' + path + '?' + query)
        except HttpInvalidRequestError:
            return
        assert re.fullmatch(rb'/[\x21-\x7e]*', target.path_and_query)
        assert b'#' not in target.path_and_query
        # Encoding is idempotent: an encoded target is sent as it is.
        again = parse_target('http://example.com' + target.path_and_query.decode())
        assert again.path_and_query == target.path_and_query
