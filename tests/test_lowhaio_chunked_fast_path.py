"""What the chunked decoder's fast path must never change.

`ChunkedDecoder.feed` takes the usual case (a chunk's data, the CRLF after it and the next
chunk-size line, all within one read) by one regular-expression match, and anything else
line by line. Whatever the bytes and however they are split across reads, it must deliver
the same body bytes from the same `feed` call, end at the same byte, count the same excess,
and reject the same input with the same exception, as the line-by-line decoder it replaced,
kept here as the reference. `feed_joined` (what a response body uses) must give the same
bytes in one piece, and always bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from typing import AsyncIterator, Iterator, List, Optional, Tuple, Union

import pytest

import lowhaio
import support
from lowhaio import ChunkedDecoder, HttpError, HttpProtocolError, parse_field_block


class ReferenceChunkedDecoder:
    """lowhaio's ChunkedDecoder as it was before the fast path: every line is gathered whole,
    bounded, then parsed."""

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self, max_trailer_length: int = 16384) -> None:
        self.done = False
        self.excess = 0
        self.remaining = 0
        self.line = b''
        self.state = self.SIZE
        self.trailer_length = 0
        self.max_trailer_length = max_trailer_length

    def feed(self, data: bytes) -> List[bytes]:
        chunks: List[bytes] = []
        pos = 0
        length = len(data)
        while pos < length:
            if self.done:
                self.excess += length - pos
                break
            if self.state == self.DATA:
                end = min(length, pos + self.remaining)
                chunks.append(data[pos:end] if pos or end != length else data)
                self.remaining -= end - pos
                pos = end
                if not self.remaining:
                    self.state = self.DATA_END
            else:
                pos = self.feed_line(data, pos)
        return chunks

    def feed_line(self, data: bytes, pos: int) -> int:
        newline = data.find(b'\n', pos)
        end = len(data) if newline == -1 else newline + 1
        line = self.line + data[pos:end]
        limit = self.max_trailer_length if self.state == self.TRAILER else 4096
        if len(line) > limit:
            raise HttpProtocolError('Chunk-size line or trailer section too long')
        if newline == -1:
            self.line = line
            if self.state == self.DATA_END and line not in (b'', b'\r'):
                raise HttpProtocolError('Missing CRLF after chunk data: %r' % (line,))
            return end
        self.line = b''
        self.parse_line(line)
        return end

    def parse_line(self, line: bytes) -> None:
        if self.state == self.DATA_END:
            if line != b'\r\n':
                raise HttpProtocolError('Missing CRLF after chunk data: %r' % (line,))
            self.state = self.SIZE
        elif self.state == self.SIZE:
            match = re.fullmatch(
                rb'([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t !-~\x80-\xff]*)?\r\n', line)
            if match is None:
                raise HttpProtocolError('Malformed chunk-size line: %r' % (line,))
            self.remaining = int(match[1], 16)
            self.state = self.DATA if self.remaining else self.TRAILER
        else:
            self.trailer_length += len(line)
            if self.trailer_length > self.max_trailer_length:
                raise HttpProtocolError('Trailer section too long')
            if line == b'\r\n':
                self.done = True
            else:
                parse_field_block(line)


# What a decoder did with a sequence of reads: the chunks each feed returned (or the error it
# raised, which ends the sequence), then `done` and `excess`.
Outcome = Tuple[List[Union[List[bytes], Tuple[type, str]]], bool, int]


def outcome(decoder: Union[ChunkedDecoder, ReferenceChunkedDecoder],
            pieces: List[bytes]) -> Outcome:
    fed: List[Union[List[bytes], Tuple[type, str]]] = []
    for piece in pieces:
        try:
            fed.append(decoder.feed(piece))
        except HttpError as error:
            fed.append((type(error), str(error)))
            break
    return fed, decoder.done, decoder.excess


def joined_outcome(pieces: List[bytes]) -> Outcome:
    """The outcome of `feed_joined`, each result as a one-piece list (an empty one for b'')."""
    decoder = ChunkedDecoder()
    fed: List[Union[List[bytes], Tuple[type, str]]] = []
    for piece in pieces:
        try:
            joined = decoder.feed_joined(piece)
        except HttpError as error:
            fed.append((type(error), str(error)))
            break
        assert type(joined) is bytes
        fed.append([joined] if joined else [])
    return fed, decoder.done, decoder.excess


def joined(result: Outcome) -> Outcome:
    """`result` with each feed's pieces joined into one (none for no bytes)."""
    fed, done, excess = result
    return [[piece for piece in [b''.join(chunks)] if piece] if isinstance(chunks, list)
            else chunks for chunks in fed], done, excess


def splits(data: bytes, seed: int) -> Iterator[List[bytes]]:
    """The ways the bytes may arrive: whole; in two reads at every position (for a long body,
    at every position near a CR, LF or the end of a chunk-size line); byte by byte; in three
    reads at every pair of positions for a short body; and in random pieces."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    if len(data) <= 300:
        positions = range(1, len(data))
    else:
        near = set()
        for match in re.finditer(rb'[\r\n;]', data):
            near.update(range(match.start() - 2, match.start() + 3))
        positions = range(1, len(data)) if not near else \
            sorted(p for p in near if 0 < p < len(data))  # type: ignore[assignment]
    for position in positions:
        yield [data[:position], data[position:]]
    if len(data) <= 40:
        for first, second in itertools.combinations(range(1, len(data)), 2):
            yield [data[:first], data[first:second], data[second:]]
    rng = random.Random(seed)
    for _ in range(5):
        pieces = []
        pos = 0
        while pos < len(data):
            step = rng.randint(1, max(1, len(data) // 3))
            pieces.append(data[pos:pos + step])
            pos += step
        yield pieces


def assert_same_as_reference(data: bytes, **options: int) -> Outcome:
    """The new decoder's outcome, checked equal to the reference's for every split."""
    whole = None
    for number, pieces in enumerate(splits(data, seed=len(data))):
        expected = outcome(ReferenceChunkedDecoder(**options), pieces)
        actual = outcome(ChunkedDecoder(**options), pieces)
        assert actual == expected, (number, pieces)
        if not options:
            assert joined_outcome(pieces) == joined(expected), (number, pieces)
        if whole is None:
            whole = actual
    assert whole is not None
    return whole


def encode(sizes: List[int], extension: bytes = b'', trailer: bytes = b'',
           spelling: str = '%x') -> Tuple[bytes, bytes]:
    """(the chunked encoding, the body) of chunks of `sizes` bytes, each size line written
    with `spelling` and followed by `extension`."""
    body = bytes(random.Random(len(sizes)).randrange(256) for _ in range(sum(sizes)))
    lines = []
    pos = 0
    for size in sizes:
        lines.append((spelling % size).encode() + extension + b'\r\n' +
                     body[pos:pos + size] + b'\r\n')
        pos += size
    return b''.join(lines) + (spelling % 0).encode() + extension + b'\r\n' + trailer + \
        b'\r\n', body


SIZES = {
    'no chunk': [],
    'one byte': [1],
    'one chunk': [5],
    'sixteen': [16],
    'three chunks': [1, 2, 3],
    'data of CRLFs': [2, 4],
    'nginx-like': [4096, 4096],
}
SPELLINGS = {'lower hex': '%x', 'upper hex': '%X', 'leading zeros': '%05x',
             'sixteen digits': '%016x'}
EXTENSIONS = {
    'none': b'',
    'name': b';a',
    'name=value': b';a=b',
    'whitespace before ;': b' \t;x',
    'quoted, with ; inside': b'; y="q;\\"r"',
    'obs-text': b';\x80\xff',
    # with 16 hex digits and the CRLF, the size line is 4,096 bytes: the most that is allowed
    'line at the limit': b';' + b'e' * (4096 - 16 - 2 - 1),
}
TRAILERS = {'none': b'', 'one field': b'x-sum: abc\r\n', 'two fields': b'a: 1\r\nB: two\r\n'}


class TestSameAsReference:

    @pytest.mark.parametrize('spelling', SPELLINGS.values(), ids=list(SPELLINGS))
    @pytest.mark.parametrize('sizes', SIZES.values(), ids=list(SIZES))
    def test_chunk_sizes_and_spellings(self, sizes: List[int], spelling: str) -> None:
        data, body = encode(sizes, spelling=spelling)
        fed, done, excess = assert_same_as_reference(data)
        assert (b''.join(itertools.chain(*fed)), done, excess) == (body, True, 0)  # type: ignore

    @pytest.mark.parametrize('trailer', TRAILERS.values(), ids=list(TRAILERS))
    @pytest.mark.parametrize('extension', EXTENSIONS.values(), ids=list(EXTENSIONS))
    @pytest.mark.parametrize('sizes', [[], [3], [1, 2, 3]], ids=['none', 'one', 'three'])
    def test_extensions_and_trailers(self, sizes: List[int], extension: bytes,
                                     trailer: bytes) -> None:
        data, body = encode(sizes, extension, trailer, spelling='%016x')
        fed, done, excess = assert_same_as_reference(data)
        assert (b''.join(itertools.chain(*fed)), done, excess) == (body, True, 0)  # type: ignore

    @pytest.mark.parametrize('after', [b'H', b'HTTP/1.1 200 OK\r\n', b'0\r\n\r\n'])
    @pytest.mark.parametrize('sizes', [[], [3], [4096, 4096]], ids=['none', 'one', 'two'])
    def test_bytes_after_the_end_are_excess(self, sizes: List[int], after: bytes) -> None:
        data, body = encode(sizes)
        fed, done, excess = assert_same_as_reference(data + after)
        assert (b''.join(itertools.chain(*fed)), done, excess) == \
            (body, True, len(after))  # type: ignore

    @pytest.mark.parametrize('max_trailer_length', [1, 2, 13, 14, 15])
    @pytest.mark.parametrize('trailer', TRAILERS.values(), ids=list(TRAILERS))
    def test_trailer_section_limit(self, trailer: bytes, max_trailer_length: int) -> None:
        data, _ = encode([3], trailer=trailer)
        fed, done, _ = assert_same_as_reference(data, max_trailer_length=max_trailer_length)
        # the limit counts the trailer fields and the empty line that ends them
        assert done == (len(trailer) + 2 <= max_trailer_length)


# Malformed chunk-size lines, each tried as the first line and as the line after a chunk
BAD_SIZE_LINES = {
    'empty': b'\r\n',
    'not hex': b'g\r\n',
    'seventeen digits': b'0' * 16 + b'5\r\n',
    'negative': b'-5\r\n',
    '0x prefix': b'0x5\r\n',
    'leading space': b' 5\r\n',
    'trailing space': b'5 \r\n',
    'bare LF': b'5\n',
    'bare CR': b'5\rhello\r\n',
    'CR CR LF': b'5\r\r\n',
    'NUL in extension': b'5;a\x00b\r\n',
    'LF in extension': b'5;a\nb\r\n',
    'line one over the limit': b'0' * 15 + b'5;' + b'e' * (4096 - 16 - 2) + b'\r\n',
    'line far over the limit': b'5;' + b'e' * 9000 + b'\r\n',
    'endless line': b'5;' + b'e' * 9000,
}
# What may follow a chunk's 5 bytes of data instead of CRLF
BAD_DATA_ENDS = {
    'data longer than its size': b'XY\r\n0\r\n\r\n',
    'no CRLF': b'0\r\n\r\n',
    'bare LF': b'\n0\r\n\r\n',
    'bare CR': b'\r0\r\n\r\n',
    'CR CR LF': b'\r\r\n0\r\n\r\n',
    'LF CR': b'\n\r0\r\n\r\n',
}
BAD_TRAILERS = {
    'no colon': b'no colon\r\n',
    'space before colon': b'x : y\r\n',
    'obs-fold': b'x: y\r\n folded\r\n',
    'NUL in value': b'x: a\x00b\r\n',
    'bare LF ends the section': b'\n',
    'bare LF ends a field': b'x: y\n',
    'bare CR in value': b'x: a\rb\r\n',
    'longer than the default limit': b'x: ' + b'y' * 16384 + b'\r\n',
}


class TestRejectsTheSameAsReference:

    @pytest.mark.parametrize('position', ['first', 'after a chunk'])
    @pytest.mark.parametrize('line', BAD_SIZE_LINES.values(), ids=list(BAD_SIZE_LINES))
    def test_malformed_chunk_size_line(self, line: bytes, position: str) -> None:
        data = (b'' if position == 'first' else b'3\r\nabc\r\n') + line + b'hello\r\n0\r\n\r\n'
        fed, done, _ = assert_same_as_reference(data)
        assert isinstance(fed[-1], tuple) and fed[-1][0] is HttpProtocolError
        assert not done

    @pytest.mark.parametrize('position', ['first chunk', 'second chunk'])
    @pytest.mark.parametrize('end', BAD_DATA_ENDS.values(), ids=list(BAD_DATA_ENDS))
    def test_missing_crlf_after_data(self, end: bytes, position: str) -> None:
        data = (b'' if position == 'first chunk' else b'3\r\nabc\r\n') + b'5\r\nhello' + end
        fed, done, _ = assert_same_as_reference(data)
        assert fed[-1] == (HttpProtocolError, 'Missing CRLF after chunk data: %r' % (
            re.match(rb'[^\n]*\n?', end)[0],))  # type: ignore[index]
        assert not done

    @pytest.mark.parametrize('trailer', BAD_TRAILERS.values(), ids=list(BAD_TRAILERS))
    def test_malformed_trailer(self, trailer: bytes) -> None:
        fed, done, _ = assert_same_as_reference(b'3\r\nabc\r\n0\r\n' + trailer + b'\r\n')
        assert isinstance(fed[-1], tuple) and issubclass(fed[-1][0], HttpProtocolError)
        assert not done

    @pytest.mark.parametrize('sizes', [[1], [4096, 4096]], ids=['short', 'nginx-like'])
    def test_truncated_anywhere_is_not_done(self, sizes: List[int]) -> None:
        data, body = encode(sizes, b';e=1', b'x: y\r\n')
        for end in range(len(data)):
            if len(data) > 300 and not re.search(rb'[\r\n;]', data[max(0, end - 3):end + 3]):
                continue
            decoder = ChunkedDecoder()
            reference = ReferenceChunkedDecoder()
            assert decoder.feed(data[:end]) == reference.feed(data[:end])
            assert not decoder.done and not reference.done
            assert decoder.feed(data[end:]) == reference.feed(data[end:])
            assert decoder.done and reference.done


class TestLongChunks:

    def test_pieces_inside_a_chunk_are_handed_over_uncopied(self) -> None:
        size = 1 << 20
        decoder = ChunkedDecoder()
        assert decoder.feed(b'%x\r\n' % size) == []
        pieces = [bytes([n]) * 65536 for n in range(size // 65536)]
        for piece in pieces[:-1]:
            chunks = decoder.feed(piece)
            assert len(chunks) == 1 and chunks[0] is piece
        assert decoder.feed(pieces[-1] + b'\r\n0\r\n\r\n') == [pieces[-1]]
        assert decoder.done and decoder.excess == 0

    def test_joined_pieces_inside_a_chunk_are_not_copied(self) -> None:
        decoder = ChunkedDecoder()
        assert decoder.feed_joined(b'30000\r\n') == b''
        first, second, last = b'a' * 65536, b'b' * 65536, b'c' * 65536
        assert decoder.feed_joined(first) is first
        assert decoder.feed_joined(second) is second
        assert decoder.feed_joined(last) is last  # the chunk ends with it
        assert decoder.feed_joined(b'\r\n0\r\n\r\n') == b''
        assert decoder.done and decoder.excess == 0

    @pytest.mark.parametrize('read_size', [1, 7, 4095, 4096, 4097, 65536])
    def test_chunks_of_every_size_across_reads(self, read_size: int) -> None:
        sizes = [1, 4095, 4096, 4097, 65536, 3]
        data, body = encode(sizes, b';x=y', b'x: y\r\n')
        pieces = [data[i:i + read_size] for i in range(0, len(data), read_size)]
        expected = outcome(ReferenceChunkedDecoder(), pieces)
        actual = outcome(ChunkedDecoder(), pieces)
        assert actual == expected
        assert joined_outcome(pieces) == joined(expected)
        assert b''.join(itertools.chain(*actual[0])) == body  # type: ignore[arg-type]

    def test_empty_reads_give_nothing(self) -> None:
        decoder = ChunkedDecoder()
        reference = ReferenceChunkedDecoder()
        for data in (b'', b'5\r\nhe', b'', b'llo\r\n', b'', b'0\r\n\r\n', b''):
            chunks = decoder.feed(data)
            assert chunks == reference.feed(data)
            if not data:
                assert chunks == []
        assert decoder.done and decoder.excess == 0


def test_reference_matches_the_grammar_lowhaio_uses() -> None:
    # The reference spells the chunk-size grammar out again: it must be lowhaio's own
    assert lowhaio._CHUNK_SIZE_LINE_RE.pattern == \
        rb'([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t !-~\x80-\xff]*)?\r\n'
    assert lowhaio._MAX_CHUNK_SIZE_LINE == 4096



# =============================================================================================
# A chunked body that arrived whole with its head is handed over as bytes, its connection
# back in the pool at once: the same body, the same errors and the same reuse as when it is
# decoded as it streams.
# =============================================================================================

CHUNKED_HEAD = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'

# name: (the body's encoding, sent with the head in one write; what the body gives, or the
# exception class iterating it raises; whether the connection can be used again)
WHOLE_BODIES = {
    'several chunks': (b'3\r\nabc\r\n5;x=y\r\nhello\r\n0\r\n\r\n', b'abchello', True),
    'no chunk': (b'0\r\n\r\n', b'', True),
    'trailer fields': (b'2\r\nok\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n', b'ok', True),
    'data ending in blank lines': (b'4\r\n\r\n\r\n\r\n0\r\n\r\n', b'\r\n\r\n', True),
    'bytes after the end': (b'2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n', b'ok', False),
    'malformed size line': (b'zz\r\nhello\r\n0\r\n\r\n', HttpProtocolError, False),
    'no CRLF after data': (b'2\r\nokX\r\n0\r\n\r\n', HttpProtocolError, False),
    'malformed trailer': (b'0\r\nno colon\r\n\r\n', HttpProtocolError, False),
    # ends as a whole body would, but the last chunk is yet to come; then the server closes
    'cut short at a blank line': (b'4\r\n\r\n\r\n\r\n', lowhaio.HttpConnectionClosedError,
                                  False),
}


def answering_with(encoded: bytes):  # type: ignore[no-untyped-def]
    async def answer(conn: support.Connection) -> None:
        while await conn.read_request():
            conn.write(CHUNKED_HEAD + encoded)
            await conn.drain()
            if encoded.endswith(b'4\r\n\r\n\r\n\r\n'):
                return  # cut short: the connection is closed
    return answer


async def read_body(body: AsyncIterator[bytes]) -> Union[bytes, type]:
    try:
        return b''.join([piece async for piece in body])
    except HttpError as error:
        return type(error)


@pytest.mark.parametrize('recv_bufsize', [None, 1], ids=['whole pieces', 'recv_bufsize=1'])
@pytest.mark.parametrize('encoded, expected, reusable', WHOLE_BODIES.values(),
                         ids=list(WHOLE_BODIES))
async def test_a_whole_chunked_body_reads_as_when_streamed(
        encoded: bytes, expected: Union[bytes, type], reusable: bool,
        recv_bufsize: Optional[int]) -> None:
    async with support.scripted_server(answering_with(encoded)) as server:
        request, close = lowhaio.Pool(recv_bufsize=recv_bufsize)
        try:
            for _ in range(3):
                code, _, body = await request(b'GET', server.url())
                assert code == b'200'
                assert await read_body(body) == expected
        finally:
            await close()
        assert server.connections == (1 if reusable else 3)
        assert not server.errors


async def test_a_whole_chunked_body_frees_its_connection_before_it_is_read() -> None:
    async with support.scripted_server(answering_with(WHOLE_BODIES['several chunks'][0])) \
            as server:
        request, close = lowhaio.Pool()
        try:
            bodies = []
            for _ in range(3):
                _, _, body = await request(b'GET', server.url())
                bodies.append(body)
            assert server.connections == 1  # each request reused the one connection
            assert [await read_body(body) for body in bodies] == [b'abchello'] * 3
        finally:
            await close()


def answering_in_pieces(head: bytes, encoded: bytes, whole: bool):  # type: ignore[no-untyped-def]
    async def answer(conn: support.Connection) -> None:
        while await conn.read_request():
            if whole:
                conn.write(head + encoded)
                await conn.drain()
            else:
                conn.write(head)
                await conn.drain()
                await asyncio.sleep(0.02)  # the head is read on its own, the body streamed
                conn.write(encoded)
                await conn.drain()
    return answer


def trailer_section(length: int) -> bytes:
    """Trailer fields and the blank line after them: `length` bytes in all."""
    return b'x-pad: ' + b'y' * (length - len(b'x-pad: \r\n\r\n')) + b'\r\n\r\n'


# max_header_length bounds a chunked body's trailer section as it bounds the head, whether the
# body arrived whole with its head (decoded at once) or after it (decoded as it streams)
@pytest.mark.parametrize('whole', [True, False], ids=['with the head', 'after the head'])
@pytest.mark.parametrize('trailer_length, accepted', [
    (200, True), (256, True), (258, False), (1010, False),
], ids=['well under', 'at the limit', 'just over', 'far over'])
async def test_max_header_length_bounds_the_trailer_section(
        trailer_length: int, accepted: bool, whole: bool) -> None:
    encoded = b'2\r\nok\r\n0\r\n' + trailer_section(trailer_length)
    async with support.scripted_server(answering_in_pieces(CHUNKED_HEAD, encoded, whole)) \
            as server:
        request, close = lowhaio.Pool(max_header_length=256)
        try:
            code, _, body = await request(b'GET', server.url())
            assert code == b'200'
            assert await read_body(body) == (b'ok' if accepted else HttpProtocolError)
        finally:
            await close()
