"""lowhaio_decompress's gzip and deflate, decoded by either backend: the standard library's zlib,
and isal_zlib (python-isal, chosen when installed). Both must give the same bytes, stop the same
bombs, and catch the same truncated and corrupt streams, whatever the sizes of the reads.

The decoders are tested first on their own, fed in memory with every kind of split (they take
each read in slices, of ZLIB_SLICE or ISAL_SLICE bytes), then through lowhaio against real
servers."""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from typing import Any, Callable, Iterator, List, Tuple

import pytest
from aiohttp import web
from isal import isal_zlib
from support import web_server

import lowhaio_decompress
from lowhaio import Pool, buffered
from lowhaio_decompress import (
    OUTPUT_CHUNK,
    ISAL_SLICE,
    RATIO_FLOOR,
    ZLIB_PIECE,
    ZLIB_SLICE,
    DecompressionError,
    decoder_factories,
    decompressed,
)

BACKENDS = {'zlib': zlib, 'isal': isal_zlib}


def access_log(size: int) -> bytes:
    """Lines that differ from each other and compress about 5 to 1, as text bodies do."""
    lines = (b'%09d GET /items/%d?page=%d 200 %d bytes\n'
             % (n, n * 7919 % 100003, n % 97, n * 31 % 65536) for n in range(size // 20 + 1))
    return b''.join(lines)[:size]


TEXT = access_log(1 << 20)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def gzip_with_header_fields(data: bytes) -> bytes:
    """A gzip member whose header carries every optional field of RFC 1952 section 2.3:
    FEXTRA, FNAME, FCOMMENT and FHCRC (which gzip.compress never writes)."""
    flags = 0x04 | 0x08 | 0x10 | 0x02
    extra = b'ab' + struct.pack('<H', 4) + b'wxyz'
    header = b'\x1f\x8b\x08' + bytes([flags]) + struct.pack('<I', 0) + b'\x00\xff' + \
        struct.pack('<H', len(extra)) + extra + b'name.txt\x00' + b'a comment\x00'
    header += struct.pack('<H', zlib.crc32(header) & 0xFFFF)
    return header + raw_deflate(data) + struct.pack('<II', zlib.crc32(data), len(data))


# (coding, original, encoded): every form of gzip and deflate a server sends
@functools.lru_cache(maxsize=None)
def stream(form: str, size: int) -> Tuple[str, bytes, bytes]:
    original = access_log(size) if form != 'zeros' else bytes(size)
    if form == 'gzip members':
        middle = size // 3
        return 'gzip', original, gzip.compress(original[:middle]) + \
            gzip.compress(original[middle:])
    if form == 'gzip header fields':
        return 'gzip', original, gzip_with_header_fields(original)
    if form == 'zlib deflate':
        return 'deflate', original, zlib.compress(original)
    if form == 'raw deflate':
        return 'deflate', original, raw_deflate(original)
    return 'gzip', original, gzip.compress(original, 9 if form == 'zeros' else 6)


FORMS = ['gzip', 'gzip members', 'gzip header fields', 'zlib deflate', 'raw deflate']
# Decoded sizes around the pieces of each backend, where a call fills its output exactly
SIZES = [0, 1, ZLIB_PIECE - 1, ZLIB_PIECE, ZLIB_PIECE + 1, OUTPUT_CHUNK - 1, OUTPUT_CHUNK,
         OUTPUT_CHUNK + 1, 3 * OUTPUT_CHUNK, 1 << 20]
# Read sizes around the input slices of each backend, and as large as an asyncio read
READS = [7, ZLIB_SLICE - 1, ZLIB_SLICE, ZLIB_SLICE + 1, ISAL_SLICE - 1, ISAL_SLICE,
         ISAL_SLICE + 1, 100_000, 1 << 18, None]


def make_decoder(backend: str, coding: str) -> Any:
    return decoder_factories(None, None, BACKENDS[backend])[coding.encode()]()


def reads(encoded: bytes, size: Any) -> Iterator[bytes]:
    size = size or len(encoded) or 1
    for start in range(0, len(encoded), size):
        yield encoded[start:start + size]


def decode_all(decoder: Any, chunks: Any) -> List[bytes]:
    pieces = [piece for chunk in chunks for piece in decoder.feed(chunk)]
    decoder.end()
    return pieces


# ---------------------------------------------------------------------------------------------
# The decoders on their own
# ---------------------------------------------------------------------------------------------

def test_isal_decodes_by_default_when_installed():
    assert lowhaio_decompress.deflate_module() is isal_zlib
    _, original, encoded = stream('gzip', 3 * OUTPUT_CHUNK)
    decoder = lowhaio_decompress.DECODERS[b'gzip']()
    assert b''.join(decode_all(decoder, [encoded])) == original


def test_the_standard_library_decodes_when_isal_is_not_installed():
    # A fresh interpreter in which importing isal fails, as where it is not installed
    program = (
        'import sys, gzip, zlib\n'
        "sys.modules['isal'] = None\n"
        'import lowhaio_decompress as d\n'
        'assert d.deflate_module() is zlib, d.deflate_module()\n'
        "decoder = d.DECODERS[b'gzip']()\n"
        "assert b''.join(decoder.feed(gzip.compress(b'x' * 100000))) == b'x' * 100000\n"
        'decoder.end()\n'
        "print('zlib')\n"
    )
    out = subprocess.run([sys.executable, '-c', program], capture_output=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout == b'zlib\n', out.stderr


@pytest.mark.parametrize('read', READS)
@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('backend', BACKENDS)
def test_every_form_and_size_decodes_whatever_the_reads(backend, form, size, read):
    coding, original, encoded = stream(form, size)
    decoder = make_decoder(backend, coding)
    pieces = decode_all(decoder, reads(encoded, read))
    assert b''.join(pieces) == original
    assert all(0 < len(piece) <= OUTPUT_CHUNK for piece in pieces)
    # Every encoded byte was decoded, and counted for the ratio limit
    assert decoder.consumed == len(encoded)


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('backend', BACKENDS)
def test_byte_by_byte(backend, form):
    coding, original, encoded = stream(form, 5000)
    decoder = make_decoder(backend, coding)
    assert b''.join(decode_all(decoder, reads(encoded, 1))) == original
    assert decoder.consumed == len(encoded)


@pytest.mark.parametrize('backend', BACKENDS)
def test_the_consumed_count_follows_the_decoding_not_the_reads(backend):
    """The ratio limit compares decoded bytes with `consumed`: after each piece, `consumed` is
    at most what was fed, and enough to have produced the piece (zeros: over 1000 to 1)."""
    _, original, encoded = stream('zeros', 32 << 20)
    decoder = make_decoder(backend, 'gzip')
    decoded = 0
    for piece in decoder.feed(encoded):
        decoded += len(piece)
        assert decoded <= 1100 * decoder.consumed + OUTPUT_CHUNK
        assert decoder.consumed <= len(encoded)
    decoder.end()
    assert decoded == len(original)
    assert decoder.consumed == len(encoded)


@pytest.mark.parametrize('backend', BACKENDS)
def test_a_large_read_is_decoded_without_copies_of_it(backend):
    """A 1 MiB read of text decodes to 5 MiB in pieces, with at most a slice of input held back
    at a time: the decoder never copies the rest of the read for each piece."""
    _, original, encoded = stream('gzip', 5 << 20)
    chunk = encoded[:1 << 20]
    decoder = make_decoder(backend, 'gzip')
    tracemalloc.start()
    try:
        decoded = sum(len(piece) for piece in decoder.feed(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded > 4 << 20
    # The piece handed over, the next one being made (in zlib's blocks, then joined), and one
    # slice; not the rest of the 1 MiB read again, which takes the peak over 2 MiB
    assert peak < 4 * OUTPUT_CHUNK, f'{peak} bytes allocated at the peak'


def cuts(encoded: bytes) -> List[int]:
    """Where a stream can stop short: in the header, in the data, in the trailer."""
    return sorted({1, 5, 11, len(encoded) // 2, len(encoded) - 5, len(encoded) - 1})


@pytest.mark.parametrize('read', [7, ISAL_SLICE + 1, None])
@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('backend', BACKENDS)
def test_a_stream_cut_anywhere_raises(backend, form, read):
    coding, _, encoded = stream(form, 3 * OUTPUT_CHUNK)
    if form == 'gzip members':
        encoded = gzip.compress(TEXT[:3 * OUTPUT_CHUNK])
    for cut in cuts(encoded):
        decoder = make_decoder(backend, coding)
        with pytest.raises(DecompressionError, match='Truncated|Corrupt'):
            decode_all(decoder, reads(encoded[:cut], read))


def flipped(encoded: bytes, position: int, mask: int = 0xFF) -> bytes:
    return encoded[:position] + bytes([encoded[position] ^ mask]) + encoded[position + 1:]


def corruptions() -> List[Tuple[str, Callable[[bytes], bytes], str]]:
    return [
        ('gzip', lambda e: flipped(e, len(e) // 2), 'Corrupt gzip'),
        ('gzip', lambda e: flipped(e, len(e) - 8, 0x01), 'Corrupt gzip'),   # the CRC-32
        ('gzip', lambda e: flipped(e, len(e) - 4, 0x01), 'Corrupt gzip'),   # the length
        ('gzip', lambda e: flipped(e, 2), 'Corrupt gzip'),                  # the method
        ('gzip', lambda e: e + b'garbage after the end', 'Corrupt gzip'),
        ('gzip header fields', lambda e: flipped(e, 37, 0x01), 'Corrupt gzip'),  # header CRC
        ('gzip header fields', lambda e: e + e[:3], 'Truncated gzip'),  # a member's start
        ('zlib deflate', lambda e: flipped(e, len(e) - 1, 0x01), 'Corrupt deflate'),  # Adler-32
        ('zlib deflate', lambda e: flipped(e, len(e) // 2), 'Corrupt deflate'),
        ('zlib deflate', lambda e: e + b'x', 'Data after the end of the deflate stream'),
        ('raw deflate', lambda e: e + b'x', 'Data after the end of the deflate stream'),
        ('raw deflate', lambda e: b'\xff' * 20, 'Corrupt deflate'),
    ]


@pytest.mark.parametrize('read', [7, ISAL_SLICE + 1, None])
@pytest.mark.parametrize('form, corrupt, message', corruptions())
@pytest.mark.parametrize('backend', BACKENDS)
def test_a_corrupt_stream_raises(backend, form, corrupt, message, read):
    coding, _, encoded = stream(form, 3 * OUTPUT_CHUNK)
    decoder = make_decoder(backend, coding)
    with pytest.raises(DecompressionError, match=message):
        decode_all(decoder, reads(corrupt(encoded), read))


# ---------------------------------------------------------------------------------------------
# Through lowhaio, against real servers
# ---------------------------------------------------------------------------------------------

@pytest.fixture
async def served():
    """A server answering each path with (encoded body, content-encoding), in pieces of 64 KiB."""
    bodies = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        body, coding = bodies[request.path]
        response = web.StreamResponse(headers={'content-encoding': coding})
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start:start + 65536])
        return response

    app = web.Application()
    app.router.add_get('/{name}', handle)
    async with web_server(app) as server:
        yield bodies, server


@pytest.fixture
async def pool():
    request, close = Pool()
    yield request
    await close()


def through(pool: Any, backend: str, **limits: Any) -> Any:
    return decompressed(pool, decoders=decoder_factories(None, None, BACKENDS[backend]),
                        **limits)


def idle_connections(request: Any, server: Any) -> int:
    return request.status().get(('http', server.host, server.port), {}).get('idle', 0)


@pytest.mark.parametrize('size', [0, 1, 3_000_000])
@pytest.mark.parametrize('backend', BACKENDS)
async def test_nginx_gzip_decoded(nginx, pool, backend, size):
    name = f'backends-{size}.txt'
    (nginx.root / name).write_bytes(TEXT[:size] if size < len(TEXT) else access_log(size))
    code, headers, body = await through(pool, backend)(b'GET', nginx.url('/gzip/' + name))
    assert code == b'200'
    assert dict(headers)[b'content-encoding'] == b'gzip'
    assert await buffered(body) == (nginx.root / name).read_bytes()


@pytest.mark.parametrize('form', ['gzip', 'gzip members', 'raw deflate'])
@pytest.mark.parametrize('backend', BACKENDS)
async def test_served_forms_decoded(served, pool, backend, form):
    bodies, server = served
    coding, original, encoded = stream(form, 1 << 20)
    bodies['/data'] = (encoded, coding)
    _, _, body = await through(pool, backend)(b'GET', server.url('/data'))
    assert await buffered(body) == original
    assert idle_connections(pool, server) == 1


@pytest.mark.parametrize('coding', ['gzip', 'deflate'])
@pytest.mark.parametrize('backend', BACKENDS)
async def test_a_bomb_is_stopped_just_past_the_ratio_floor(served, pool, backend, coding):
    bodies, server = served
    data = bytes(64 << 20)
    bodies['/bomb'] = (gzip.compress(data, 9) if coding == 'gzip' else zlib.compress(data, 9),
                       coding)
    _, _, body = await through(pool, backend)(b'GET', server.url('/bomb'))
    decoded = 0
    with pytest.raises(DecompressionError, match='max_ratio=200'):
        async for piece in body:
            decoded += len(piece)
    assert RATIO_FLOOR - OUTPUT_CHUNK <= decoded <= RATIO_FLOOR + OUTPUT_CHUNK


@pytest.mark.parametrize('size, fails', [(1 << 20, False), ((1 << 20) + 1, True)])
@pytest.mark.parametrize('backend', BACKENDS)
async def test_max_size_is_exact(served, pool, backend, size, fails):
    bodies, server = served
    bodies['/data'] = (gzip.compress(TEXT[:1] * size), 'gzip')
    _, _, body = await through(pool, backend, max_size=1 << 20, max_ratio=None)(
        b'GET', server.url('/data'))
    if fails:
        with pytest.raises(DecompressionError, match='max_size'):
            await buffered(body)
    else:
        assert len(await buffered(body)) == size


@pytest.mark.parametrize('backend', BACKENDS)
async def test_memory_stays_bounded_while_a_large_body_is_decoded(served, pool, backend):
    bodies, server = served
    size = 64 << 20
    bodies['/zeros'] = (gzip.compress(bytes(size), 9), 'gzip')
    _, _, body = await through(pool, backend, max_size=None, max_ratio=None)(
        b'GET', server.url('/zeros'))
    tracemalloc.start()
    try:
        largest = total = 0
        async for piece in body:
            largest, total = max(largest, len(piece)), total + len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert largest <= OUTPUT_CHUNK
    assert peak < 8 << 20, f'{peak} bytes allocated at the peak, for a 64 MiB body'


@pytest.mark.parametrize('damage', ['truncated', 'checksum'])
@pytest.mark.parametrize('backend', BACKENDS)
async def test_a_damaged_stream_raises_and_its_connection_stays_usable(served, pool, backend,
                                                                       damage):
    bodies, server = served
    encoded = gzip.compress(TEXT)
    bodies['/bad'] = (encoded[:len(encoded) // 2] if damage == 'truncated' else
                      flipped(encoded, len(encoded) - 8, 0x01), 'gzip')
    _, _, body = await through(pool, backend)(b'GET', server.url('/bad'))
    with pytest.raises(DecompressionError, match='Truncated|Corrupt'):
        await buffered(body)
    # The HTTP response was whole: only the compressed stream was bad
    await asyncio.sleep(0)
    assert idle_connections(pool, server) == 1
