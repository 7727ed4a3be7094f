"""lowhaio_decompress: response bodies decoded as a stream, bombs and broken streams stopped,
against real servers (aiohttp.web serving pre-encoded bytes, nginx encoding with `gzip on`), and
the decoded bytes compared with what httpx and aiohttp make of the same responses."""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import random
import tracemalloc
import zlib
from typing import Dict, List, Sequence, Tuple

import aiohttp
import brotli
import brotlicffi
import httpx
import pytest
import zstandard
from aiohttp import web
from support import scripted_server, web_server

import lowhaio_decompress
from lowhaio import HttpConnectionClosedError, HttpDataError, Pool, buffered
from lowhaio_decompress import (
    RATIO_FLOOR,
    DecompressionError,
    decompressed,
    decoder_factories,
)
from lowhaio_redirect import redirectable
from lowhaio_retry import retry


@functools.lru_cache(maxsize=None)
def text_and_noise(size: int, seed: int) -> bytes:
    """Data that compresses as real bodies do: words, some repeated, and stretches of noise."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(2, 9)).hex().encode() for _ in range(500)]
    parts: List[bytes] = []
    while sum(map(len, parts)) < size:
        parts.append(rnd.randbytes(200) if rnd.random() < 0.05 else b' '.join(
            rnd.choice(words) for _ in range(20)))
    return b''.join(parts)[:size]


ORIGINAL = text_and_noise(300_000, seed=1)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


ENCODERS = {
    'gzip': gzip.compress,
    'x-gzip': gzip.compress,
    'deflate': zlib.compress,
    'br': functools.partial(brotli.compress, quality=6),
    'zstd': zstandard.ZstdCompressor(write_checksum=True).compress,
}


@functools.lru_cache(maxsize=None)
def encode(data: bytes, codings: str) -> bytes:
    """Apply the codings of a content-encoding value in order, as a server does."""
    for coding in codings.split(','):
        data = ENCODERS[coding.strip().lower()](data)
    return data


@functools.lru_cache(maxsize=None)
def noise_encoded(coding: str) -> bytes:
    """32 MiB that do not compress, quickly encoded: more than the socket buffers between the
    server and the client hold, so the server is still writing when the client stops."""
    data = random.Random(2).randbytes(32 << 20)
    if coding == 'gzip':
        return gzip.compress(data, 0)
    if coding == 'br':
        return brotli.compress(data, quality=0)
    return zstandard.ZstdCompressor(level=1).compress(data)


async def until_server_done(responses: Responses) -> List[bool]:
    for _ in range(500):
        if responses.aborted:
            break
        await asyncio.sleep(0.01)
    return responses.aborted


@functools.lru_cache(maxsize=None)
def zeros_encoded(coding: str, size: int) -> bytes:
    """A bomb: `size` zero bytes, at the coding's best ratio."""
    data = bytes(size)
    if coding == 'gzip':
        return gzip.compress(data, 9)
    if coding == 'deflate':
        return zlib.compress(data, 9)
    if coding == 'br':
        return brotli.compress(data, quality=5)
    return zstandard.ZstdCompressor(level=19).compress(data)


# ---------------------------------------------------------------------------------------------
# A server answering with whatever bytes and content-encoding the test registers
# ---------------------------------------------------------------------------------------------

class Responses:
    """Each path serves (encoded bytes, content-encoding lines), written `piece` bytes at a
    time, with content-length framing or chunked. Requests' headers are kept, and whether each
    connection was closed by the client before its response was all written."""

    def __init__(self) -> None:
        self.bodies: Dict[str, Tuple[bytes, Sequence[str]]] = {}
        self.seen_headers: List[Dict[str, str]] = []
        self.aborted: List[bool] = []

    def add(self, path: str, body: bytes, *encodings: str) -> str:
        self.bodies[path] = (body, encodings)
        return path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen_headers.append(dict(request.headers))
        body, encodings = self.bodies[request.path]
        piece = int(request.query.get('piece', len(body) or 1))
        response = web.StreamResponse(status=int(request.query.get('status', 200)))
        for encoding in encodings:
            response.headers.add('content-encoding', encoding)
        if request.query.get('framing') != 'chunked':
            response.content_length = len(body)
        try:
            await response.prepare(request)
            if request.method != 'HEAD':
                for start in range(0, len(body), piece):
                    await response.write(body[start:start + piece])
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            self.aborted.append(True)
            raise
        self.aborted.append(False)
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route('*', '/{tail:.*}', self.handle)
        return app


@pytest.fixture
async def served():
    responses = Responses()
    async with web_server(responses.app()) as server:
        yield responses, server


@pytest.fixture
async def pool():
    request, close = Pool()
    yield request
    await close()


def idle_connections(request, server) -> int:
    return request.status().get(('http', server.host, server.port), {}).get('idle', 0)


async def read_pieces(body) -> List[bytes]:
    return [piece async for piece in body]


# ---------------------------------------------------------------------------------------------
# What is sent
# ---------------------------------------------------------------------------------------------

def test_accept_encoding_lists_what_this_machine_decodes():
    assert lowhaio_decompress.accept_encoding(lowhaio_decompress.DECODERS) == \
        b'gzip, deflate, br, zstd'
    assert lowhaio_decompress.accept_encoding(decoder_factories(None, None)) == \
        b'gzip, deflate'
    assert lowhaio_decompress.accept_encoding(decoder_factories(brotlicffi, None)) == \
        b'gzip, deflate, br'


@pytest.mark.parametrize('caller_headers, expected', [
    ((), 'gzip, deflate, br, zstd'),
    (((b'accept-encoding', b'identity'),), 'identity'),
    (((b'Accept-Encoding', b'gzip'),), 'gzip'),
    (((b'ACCEPT-ENCODING', b'br;q=1, *;q=0'),), 'br;q=1, *;q=0'),
])
async def test_accept_encoding_sent_unless_the_caller_sets_it(served, pool, caller_headers,
                                                               expected):
    responses, server = served
    path = responses.add('/plain', b'plain')
    code, _, body = await decompressed(pool)(b'GET', server.url(path), headers=caller_headers)
    assert (code, await buffered(body)) == (b'200', b'plain')
    # aiohttp joins repeated lines with ', ': one value means the header was sent once
    assert responses.seen_headers[-1]['Accept-Encoding'] == expected


# ---------------------------------------------------------------------------------------------
# Decoding: every coding and stack of codings, however the bytes arrive
# ---------------------------------------------------------------------------------------------

CODINGS = ['gzip', 'x-gzip', 'deflate', 'br', 'zstd', 'GZip', 'gzip, br', 'br, gzip',
           'deflate, zstd', 'zstd, gzip, deflate', 'identity, gzip', 'gzip,,identity']


@pytest.mark.parametrize('framing', ['content-length', 'chunked'])
@pytest.mark.parametrize('piece', [1, 1000, None])
@pytest.mark.parametrize('codings', CODINGS)
async def test_each_coding_decoded_however_the_bytes_arrive(served, pool, codings, piece,
                                                            framing):
    responses, server = served
    # Byte by byte only for a small body: the point is that every split position works
    original = ORIGINAL[:3000] if piece == 1 else ORIGINAL
    encoded = encode(original, codings.replace('identity', '').strip(', ').replace(',,', ','))
    path = responses.add('/data', encoded, codings)
    query = f'?framing={framing}' + (f'&piece={piece}' if piece else '')
    code, headers, body = await decompressed(pool)(b'GET', server.url(path + query))
    assert code == b'200'
    assert await buffered(body) == original
    # Headers as received: they still describe the encoded body
    assert dict(headers)[b'content-encoding'] == codings.encode()
    if framing == 'content-length':
        assert dict(headers)[b'content-length'] == b'%d' % len(encoded)


async def test_codings_on_separate_header_lines_are_one_list(served, pool):
    responses, server = served
    path = responses.add('/data', encode(ORIGINAL, 'gzip, br, zstd'), 'gzip', 'br, zstd')
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    assert await buffered(body) == ORIGINAL


@pytest.mark.parametrize('coding, encoded', [
    ('deflate', raw_deflate(ORIGINAL)),                       # raw deflate, as some servers do
    ('gzip', gzip.compress(ORIGINAL[:100_000]) + gzip.compress(ORIGINAL[100_000:])),  # members
    ('zstd', ENCODERS['zstd'](ORIGINAL[:100_000]) + ENCODERS['zstd'](ORIGINAL[100_000:])),
])
@pytest.mark.parametrize('piece', [1, 7, None])
async def test_raw_deflate_gzip_members_and_zstd_frames(served, pool, coding, encoded, piece):
    responses, server = served
    path = responses.add('/data', encoded, coding)
    query = f'?piece={piece}' if piece else ''
    _, _, body = await decompressed(pool)(b'GET', server.url(path + query))
    assert await buffered(body) == ORIGINAL


@pytest.mark.parametrize('module', [brotli, brotlicffi])
async def test_brotli_through_either_library(served, pool, module):
    responses, server = served
    path = responses.add('/data', encode(ORIGINAL, 'br'), 'br')
    request = decompressed(pool, decoders=decoder_factories(module, None))
    _, _, body = await request(b'GET', server.url(path + '?piece=999'))
    assert await buffered(body) == ORIGINAL


@pytest.mark.parametrize('case', ['HEAD', '204', '304', 'empty 200'])
async def test_no_body_under_a_content_encoding_is_an_empty_body(served, pool, case):
    responses, server = served
    responses.add('/empty', b'', 'gzip')
    responses.add('/full', gzip.compress(b'x'), 'gzip')
    method = b'HEAD' if case == 'HEAD' else b'GET'
    path = '/full' if case == 'HEAD' else '/empty'
    query = '' if case in ('HEAD', 'empty 200') else f'?status={case}'
    code, _, body = await decompressed(pool)(method, server.url(path + query))
    assert await buffered(body) == b''
    assert code == (case.encode() if case in ('204', '304') else b'200')


async def test_uncompressed_responses_pass_through_untouched(served, pool):
    responses, server = served
    path = responses.add('/plain', ORIGINAL)
    code, headers, body = await decompressed(pool)(b'GET', server.url(path + '?piece=5000'))
    assert await buffered(body) == ORIGINAL
    assert b'content-encoding' not in dict(headers)


# ---------------------------------------------------------------------------------------------
# Bounded memory
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('coding', ['gzip', 'deflate', 'br', 'zstd'])
async def test_memory_stays_bounded_while_a_large_body_is_decoded(served, pool, coding):
    """64 MiB decoded from a few KiB: each piece handed over is small, and so is the peak of
    memory allocated while streaming (tracemalloc sees every bytes object made)."""
    responses, server = served
    size = 64 << 20
    path = responses.add('/zeros', zeros_encoded(coding, size), coding)
    request = decompressed(pool, max_size=None, max_ratio=None)
    _, _, body = await request(b'GET', server.url(path))
    tracemalloc.start()
    try:
        largest = total = 0
        async for piece in body:
            largest, total = max(largest, len(piece)), total + len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert largest <= 2 * lowhaio_decompress.OUTPUT_CHUNK
    assert peak < 8 << 20, f'{peak} bytes allocated at the peak, for a 64 MiB body'


# ---------------------------------------------------------------------------------------------
# Bombs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('coding', ['gzip', 'deflate', 'br', 'zstd'])
async def test_a_bomb_is_stopped_by_the_default_ratio_just_past_the_floor(served, pool, coding):
    responses, server = served
    path = responses.add('/bomb', zeros_encoded(coding, 64 << 20), coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    decoded = 0
    with pytest.raises(DecompressionError, match='max_ratio=200'):
        async for piece in body:
            decoded += len(piece)
    # The piece that went over is not handed over
    piece_size = 2 * lowhaio_decompress.OUTPUT_CHUNK
    assert RATIO_FLOOR - piece_size <= decoded <= RATIO_FLOOR + piece_size


@pytest.mark.parametrize('coding', ['gzip', 'br', 'zstd'])
@pytest.mark.parametrize('limit', ['max_size', 'max_ratio'])
async def test_a_limit_reached_while_the_body_arrives_closes_its_connection(served, pool, coding,
                                                                            limit):
    responses, server = served
    path = responses.add('/large', noise_encoded(coding), coding)
    request = decompressed(pool, max_size=1 << 20) if limit == 'max_size' else \
        decompressed(pool, max_ratio=0.5)
    _, _, body = await request(b'GET', server.url(path + '?piece=65536'))
    with pytest.raises(DecompressionError, match=limit):
        await buffered(body)
    assert idle_connections(pool, server) == 0
    assert await until_server_done(responses) == [True]
    # The next request opens a new connection and works
    responses.add('/small', gzip.compress(b'after'), 'gzip')
    _, _, body = await request(b'GET', server.url('/small'))
    assert await buffered(body) == b'after'
    assert idle_connections(pool, server) == 1


@pytest.mark.parametrize('coding', ['gzip', 'br', 'zstd'])
async def test_a_bomb_that_arrived_whole_leaves_its_connection_reusable(served, pool, coding):
    """A few KiB for 2 MiB, read with the head: the HTTP response was complete, so the
    connection is clean and goes back to the pool although the body was refused."""
    responses, server = served
    path = responses.add('/bomb', zeros_encoded(coding, 2 << 20), coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    with pytest.raises(DecompressionError, match='max_ratio'):
        await buffered(body)
    assert idle_connections(pool, server) == 1
    assert responses.aborted == [False]


@pytest.mark.parametrize('max_size, size, fails', [
    (1000, 1000, False),
    (1000, 1001, True),
    (10 << 20, 10 << 20, False),
    (10 << 20, (10 << 20) + 1, True),
])
@pytest.mark.parametrize('coding', ['gzip', 'zstd'])
async def test_max_size_is_exact(served, pool, coding, max_size, size, fails):
    responses, server = served
    path = responses.add('/data', ENCODERS[coding](bytes(size)), coding)
    request = decompressed(pool, max_size=max_size, max_ratio=None)
    _, _, body = await request(b'GET', server.url(path))
    if fails:
        with pytest.raises(DecompressionError, match=f'max_size={max_size}'):
            await buffered(body)
    else:
        assert len(await buffered(body)) == size


@pytest.mark.parametrize('max_ratio, fails', [(None, False), (2000, False), (500, True)])
async def test_max_ratio_compares_decoded_to_encoded_bytes(served, pool, max_ratio, fails):
    responses, server = served
    encoded = gzip.compress(bytes(8 << 20), 9)   # a ratio of about 1000
    assert 900 < (8 << 20) / len(encoded) < 1100
    path = responses.add('/data', encoded, 'gzip')
    _, _, body = await decompressed(pool, max_ratio=max_ratio)(b'GET', server.url(path))
    if fails:
        with pytest.raises(DecompressionError, match='max_ratio'):
            await buffered(body)
    else:
        assert await buffered(body) == bytes(8 << 20)


async def test_small_very_compressible_bodies_are_under_the_ratio_floor(served, pool):
    responses, server = served
    path = responses.add('/data', gzip.compress(bytes(RATIO_FLOOR)), 'gzip')
    _, _, body = await decompressed(pool, max_ratio=2)(b'GET', server.url(path))
    assert await buffered(body) == bytes(RATIO_FLOOR)


# ---------------------------------------------------------------------------------------------
# Truncated and corrupt streams
# ---------------------------------------------------------------------------------------------

def corrupted(encoded: bytes, where: str) -> bytes:
    if where == 'flipped in the middle':
        middle = len(encoded) // 2
        return encoded[:middle] + bytes([encoded[middle] ^ 0xFF]) + encoded[middle + 1:]
    if where == 'garbage':
        return b'this is not compressed at all, not even a little bit' * 10
    if where == 'garbage after the end':
        return encoded + b'garbage after the end'
    raise AssertionError(where)


@pytest.mark.parametrize('cut', ['first byte only', 'half', 'all but the last byte'])
@pytest.mark.parametrize('coding', ['gzip', 'deflate', 'br', 'zstd', 'gzip, br'])
async def test_a_truncated_stream_raises_and_the_connection_stays_usable(served, pool, coding,
                                                                         cut):
    """The HTTP framing is complete (content-length matches), only the compressed stream is
    cut short, so the connection itself is fine and goes back to the pool."""
    responses, server = served
    encoded = encode(ORIGINAL, coding)
    length = {'first byte only': 1, 'half': len(encoded) // 2,
              'all but the last byte': len(encoded) - 1}[cut]
    path = responses.add('/cut', encoded[:length], coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    with pytest.raises(DecompressionError, match='Truncated|Corrupt'):
        await buffered(body)
    assert idle_connections(pool, server) == 1


CORRUPTIONS = [(coding, where)
               for coding in ['gzip', 'deflate', 'br', 'zstd']
               for where in ['flipped in the middle', 'garbage', 'garbage after the end']
               # br has no checksum: a changed byte can decode, to other bytes
               if (coding, where) != ('br', 'flipped in the middle')]


@pytest.mark.parametrize('coding, where', CORRUPTIONS)
async def test_a_corrupt_stream_raises(served, pool, coding, where):
    responses, server = served
    path = responses.add('/bad', corrupted(encode(ORIGINAL, coding), where), coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path + '?piece=4096'))
    with pytest.raises(DecompressionError) as raised:
        await buffered(body)
    assert isinstance(raised.value, HttpDataError)


async def test_a_gzip_checksum_mismatch_raises(served, pool):
    responses, server = served
    encoded = bytearray(gzip.compress(ORIGINAL))
    encoded[-8] ^= 0x01   # the CRC-32 in the gzip trailer
    path = responses.add('/bad', bytes(encoded), 'gzip')
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    with pytest.raises(DecompressionError, match='Corrupt gzip'):
        await buffered(body)


async def test_a_connection_cut_mid_body_is_the_core_error(pool):
    """The server promises more than it sends: that is lowhaio's own HttpConnectionClosedError,
    not a decoding error, since the HTTP framing is what broke."""
    encoded = gzip.compress(ORIGINAL)

    async def handler(conn):
        await conn.read_request()
        conn.write(b'HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n'
                   % len(encoded) + encoded[:len(encoded) // 2])
        await conn.drain()
        conn.close()

    async with scripted_server(handler) as server:
        _, _, body = await decompressed(pool)(b'GET', server.url('/'))
        with pytest.raises(HttpConnectionClosedError):
            await buffered(body)


# ---------------------------------------------------------------------------------------------
# Codings that cannot be decoded
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('coding, decoders, message', [
    ('compress', None, "'compress': not a coding this helper knows"),
    ('gzip, x-unknown', None, "'x-unknown'"),
    ('br', decoder_factories(None, zstandard), r'lowhaio\[compression\]'),
    ('zstd', decoder_factories(brotli, None), r'lowhaio\[compression\]'),
    ('gzip, gzip, gzip, gzip, gzip, gzip', None, '6 content codings: at most 5'),
])
async def test_an_undecodable_coding_raises_before_returning_and_closes(
        served, pool, coding, decoders, message):
    responses, server = served
    path = responses.add('/data', os.urandom(1 << 20), coding)
    request = decompressed(pool, decoders=decoders)
    with pytest.raises(DecompressionError, match=message):
        await request(b'GET', server.url(path + '?piece=65536'))
    assert idle_connections(pool, server) == 0


# ---------------------------------------------------------------------------------------------
# Stopping early
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('coding', ['gzip', 'br', 'zstd'])
async def test_closing_the_decoded_body_early_closes_the_connection(served, pool, coding):
    responses, server = served
    path = responses.add('/large', noise_encoded(coding), coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path + '?piece=65536'))
    async for _ in body:
        break
    await body.aclose()
    assert idle_connections(pool, server) == 0
    assert await until_server_done(responses) == [True]


# ---------------------------------------------------------------------------------------------
# nginx with `gzip on`, and the same bytes as httpx and aiohttp decode
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [0, 1, 50_000, 3_000_000])
async def test_nginx_gzip_decoded_as_httpx_and_aiohttp_decode_it(nginx, pool, size):
    name = f'decompress-{size}.txt'
    (nginx.root / name).write_bytes(text_and_noise(size, seed=size))
    url = nginx.url('/gzip/' + name)

    code, headers, body = await decompressed(pool)(b'GET', url)
    ours = await buffered(body)
    assert code == b'200'
    assert dict(headers)[b'content-encoding'] == b'gzip'
    assert dict(headers)[b'transfer-encoding'] == b'chunked'
    async with httpx.AsyncClient() as client:
        httpx_response = await client.get(url)
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            aiohttp_body = await response.read()
    assert ours == httpx_response.content == aiohttp_body == text_and_noise(size, seed=size)


@pytest.mark.parametrize('coding', ['gzip', 'deflate', 'br', 'zstd', 'gzip, br'])
async def test_decoded_as_httpx_decodes(served, pool, coding):
    responses, server = served
    path = responses.add('/data', encode(ORIGINAL, coding), coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    async with httpx.AsyncClient() as client:
        assert await buffered(body) == (await client.get(server.url(path))).content


@pytest.mark.parametrize('coding, encoded', [
    ('gzip', gzip.compress(ORIGINAL)),
    ('deflate', zlib.compress(ORIGINAL)),
    ('deflate', raw_deflate(ORIGINAL)),
    ('br', encode(ORIGINAL, 'br')),
])
async def test_decoded_as_aiohttp_decodes(served, pool, coding, encoded):
    responses, server = served
    path = responses.add('/data', encoded, coding)
    _, _, body = await decompressed(pool)(b'GET', server.url(path))
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url(path)) as response:
            assert await buffered(body) == await response.read()


# ---------------------------------------------------------------------------------------------
# Stacked with the other helpers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('order', ['redirectable(decompressed)', 'decompressed(redirectable)'])
async def test_through_redirects_either_way_round(served, pool, order):
    responses, server = served
    responses.add('/target', encode(ORIGINAL, 'br'), 'br')

    async def redirect(request: web.Request) -> web.Response:
        # A compressed redirect body: redirectable drains it, decoded or not
        return web.Response(status=302, body=gzip.compress(b'moved'), headers={
            'location': server.url('/target'), 'content-encoding': 'gzip'})

    app = web.Application()
    app.router.add_get('/start', redirect)
    async with web_server(app) as start_server:
        stacked = redirectable(decompressed(pool)) if order == 'redirectable(decompressed)' \
            else decompressed(redirectable(pool))
        code, headers, body = await stacked(b'GET', start_server.url('/start'))
        assert (code, await buffered(body)) == (b'200', ORIGINAL)
        assert dict(headers)[b'content-encoding'] == b'br'
        assert responses.seen_headers[-1]['Accept-Encoding'] == 'gzip, deflate, br, zstd'
        # The redirect's connection went back to the pool: its body was read to the end
        assert idle_connections(pool, start_server) == 1


async def test_retry_around_decompressed_retries_a_503(served, pool):
    responses, server = served
    attempts: List[int] = []

    async def flaky(request: web.Request) -> web.Response:
        attempts.append(1)
        if len(attempts) == 1:
            return web.Response(status=503, body=gzip.compress(b'busy'),
                                headers={'content-encoding': 'gzip'})
        return web.Response(body=zstandard.ZstdCompressor().compress(ORIGINAL),
                            headers={'content-encoding': 'zstd'})

    app = web.Application()
    app.router.add_get('/flaky', flaky)
    async with web_server(app) as flaky_server:
        stacked = retry(decompressed(pool), retry_statuses=(503,),
                        status_intervals=(0,))
        code, _, body = await stacked(b'GET', flaky_server.url('/flaky'))
        assert (code, await buffered(body)) == (b'200', ORIGINAL)
    assert len(attempts) == 2
