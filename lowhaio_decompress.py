"""Decoding compressed response bodies for lowhaio, as a stream, with limits against bombs.

    decompressed_request = decompressed(request)
    code, headers, body = await decompressed_request(b'GET', url)

`decompressed` returns a function with the same signature as `request`. It sends
`accept-encoding` (unless the caller gives one) listing what this machine can decode: `gzip` and
`deflate` always (with `isal` when installed, twice as fast as the standard library's zlib), `br`
when `brotli` or `brotlicffi` is installed, `zstd` when `zstandard` is.
`pip install lowhaio[compression]` brings all three. The response body is decoded as it arrives, in
pieces of at most 64 KiB; headers are returned exactly as received, so `content-encoding` and
`content-length` still describe the encoded body.
"""

from __future__ import annotations

import importlib
import zlib
from typing import (
    Any,
    AsyncGenerator,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
)

from lowhaio import Headers, HttpDataError, Params, Request, Response, ResponseBody

# Decoded pieces handed to the caller are at most this long, and each decoder holds at most about
# this much output at a time, so memory stays bounded whatever the compressed stream says
OUTPUT_CHUNK = 65536
# The ratio check starts only once this much is decoded: small, very repetitive bodies (a page
# of zeros) legitimately compress far better than large ones
RATIO_FLOOR: int = 1 << 20
DEFAULT_MAX_SIZE: int = 1 << 30
DEFAULT_MAX_RATIO = 200
# A zlib-like decoder stops each call at a piece of output, and takes input in slices: a call
# that stops copies the input it has not reached (`unconsumed_tail`), so fed a whole read of up
# to 256 KiB, it would copy most of it again for every piece. The standard library's zlib also
# copies the last 32 KiB of output into its window at each call, and joins its output blocks of
# 32 KiB unless there is one, full: 32 KiB pieces from 8 KiB slices cost it least. isal_zlib
# costs least with the largest pieces. Measured on text, 256 KiB reads: 5% fewer instructions
# per MB than 64 KiB from 16 KiB slices with zlib, and 13% (zlib) and 14% (isal) fewer than
# 64 KiB pieces from whole reads
ZLIB_PIECE: int = 32768
ZLIB_SLICE: int = 8192
ISAL_PIECE: int = OUTPUT_CHUNK
ISAL_SLICE: int = 16384
# RFC 1952 section 2.3: the fourth byte of a gzip member's header holds its flags
GZIP_FLAGS_BYTE = 3
GZIP_FHCRC = 0x02
# More stacked codings than this is no real server; each one costs a decoder's memory
MAX_CODINGS = 5
# zstandard has no output limit per call, so input goes in in slices: one slice of this many
# bytes decodes to at most 2 MiB (an RLE block is 4 bytes for 128 KiB). Decoding ordinary data
# this way runs at about a third of zstd's own speed, still hundreds of MB/s
ZSTD_INPUT_SLICE = 64
BROTLI_INPUT_SLICE = 4096
# RFC 9659 section 3: a zstd content coding uses a window of at most 8 MiB
ZSTD_MAX_WINDOW: int = 1 << 23


class DecompressionError(HttpDataError):
    """The response body could not be decoded: corrupt, truncated, over the size or ratio
    limits, or in a coding this machine cannot decode. The connection is closed unless the
    whole encoded body had already arrived."""


# ---------------------------------------------------------------------------------------------
# Decoders: feed(data) yields decoded pieces of at most about OUTPUT_CHUNK bytes; end() raises
# if the stream stopped before its end; `consumed` counts the input bytes decoded so far, which
# the ratio limit compares with the output (not the bytes received, which can be far ahead)
# ---------------------------------------------------------------------------------------------

class ZlibDecoder:
    """gzip (wbits 31), zlib-wrapped deflate (15) or raw deflate (-15). gzip may be several
    members one after another (RFC 1952 section 2.2); the other two end after one stream.
    `module` is the standard library's zlib or a module with its interface (isal_zlib)."""

    def __init__(self, wbits: int, coding: str, module: Any = zlib) -> None:
        self._wbits = wbits
        self._coding = coding
        self._module = module
        self._errors = (zlib.error, module.error)
        # isal_zlib fails on a gzip header whose CRC (FHCRC) arrives split across calls; HTTP
        # servers do not set that flag, so a member that has it goes to zlib instead. The first
        # bytes of each member are held until its flags byte is in
        self._check_flags = wbits == 31 and module is not zlib
        self._flags_seen = not self._check_flags
        self._held = b''
        self._decompressor = module.decompressobj(wbits)
        self._piece, self._slice = (ZLIB_PIECE, ZLIB_SLICE) if module is zlib else \
            (ISAL_PIECE, ISAL_SLICE)
        self.consumed = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            if len(data) <= self._slice:
                yield from self._feed_slice(data)
                return
            view = memoryview(data)
            for start in range(0, len(data), self._slice):
                yield from self._feed_slice(view[start:start + self._slice])
        except self._errors as exception:
            raise DecompressionError(f'Corrupt {self._coding} stream: {exception}') \
                from exception

    def _feed_slice(self, data: Any) -> Iterator[bytes]:
        while True:
            if data and self._decompressor.eof:
                self._start_next_member()
            if not self._flags_seen:
                data = self._held + bytes(data)
                if len(data) <= GZIP_FLAGS_BYTE:
                    self._held = data
                    return
                self._held, self._flags_seen = b'', True
                if data[GZIP_FLAGS_BYTE] & GZIP_FHCRC:
                    self._decompressor = zlib.decompressobj(self._wbits)
            piece = self._decompressor.decompress(data, self._piece)
            left = self._decompressor.unconsumed_tail or self._decompressor.unused_data
            self.consumed += len(data) - len(left)
            data = left
            if piece:
                yield piece
            # A full piece may leave output inside the decoder even when all input was taken
            if not data and len(piece) < self._piece:
                return

    def _start_next_member(self) -> None:
        if self._wbits != 31:
            raise DecompressionError(f'Data after the end of the {self._coding} stream')
        self._decompressor = self._module.decompressobj(self._wbits)
        self._flags_seen = not self._check_flags

    def end(self) -> None:
        if not self._decompressor.eof:
            raise DecompressionError(f'Truncated {self._coding} stream')


class DeflateDecoder:
    """`deflate` is meant to be zlib-wrapped (RFC 9110 section 8.4.1.2), but some servers send
    raw deflate: the first two bytes tell which, since a zlib header passes a check that raw
    deflate data almost never does."""

    def __init__(self, module: Any = zlib) -> None:
        self._module = module
        self._start = b''
        self._decoder: Optional[ZlibDecoder] = None

    @property
    def consumed(self) -> int:
        return 0 if self._decoder is None else self._decoder.consumed

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._decoder is None:
            self._start += data
            if len(self._start) < 2:
                return
            self._decoder = ZlibDecoder(15 if is_zlib_header(self._start) else -15, 'deflate',
                                        self._module)
            data, self._start = self._start, b''
        yield from self._decoder.feed(data)

    def end(self) -> None:
        if self._decoder is None:
            raise DecompressionError('Truncated deflate stream')
        self._decoder.end()


def is_zlib_header(start: bytes) -> bool:
    # RFC 1950 section 2.2: method 8 (deflate), a window of at most 32 KiB, and the two bytes
    # read as a big-endian number are a multiple of 31
    return start[0] & 0x0F == 8 and start[0] >> 4 <= 7 and (start[0] << 8 | start[1]) % 31 == 0


class BrotliDecoder:
    """br (RFC 7932). The decoder takes all the input it is given at once, so input goes in in
    slices, to keep `consumed` close to what was really decoded."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._decompressor = module.Decompressor()
        self.consumed = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            for start in range(0, len(data), BROTLI_INPUT_SLICE):
                yield from self._feed_slice(data[start:start + BROTLI_INPUT_SLICE])
        except self._module.error as exception:
            raise DecompressionError(f'Corrupt br stream: {exception}') from exception

    def _feed_slice(self, data: bytes) -> Iterator[bytes]:
        if self._decompressor.is_finished():
            raise DecompressionError('Data after the end of the br stream')
        piece = self._decompressor.process(data, output_buffer_limit=OUTPUT_CHUNK)
        self.consumed += len(data)
        # Output beyond the limit stays inside the decoder until asked for with empty input
        while piece:
            yield piece
            piece = self._decompressor.process(b'', output_buffer_limit=OUTPUT_CHUNK)

    def end(self) -> None:
        if not self._decompressor.is_finished():
            raise DecompressionError('Truncated br stream')


class ZstdDecoder:
    """One or more zstd frames (RFC 8878); each frame gets a fresh decompressor, so that the
    end of the last one can be checked."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._decompressor = self._new_decompressor()
        self.consumed = 0

    def _new_decompressor(self) -> Any:
        return self._module.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            for start in range(0, len(data), ZSTD_INPUT_SLICE):
                yield from self._feed_slice(data[start:start + ZSTD_INPUT_SLICE])
        except self._module.ZstdError as exception:
            raise DecompressionError(f'Corrupt zstd stream: {exception}') from exception

    def _feed_slice(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._decompressor.eof:
                self._decompressor = self._new_decompressor()
            piece = self._decompressor.decompress(data)
            left = self._decompressor.unused_data if self._decompressor.eof else b''
            self.consumed += len(data) - len(left)
            data = left
            yield from split(piece)

    def end(self) -> None:
        if not self._decompressor.eof:
            raise DecompressionError('Truncated zstd stream')


def split(data: bytes) -> Iterator[bytes]:
    if len(data) <= OUTPUT_CHUNK:
        if data:
            yield data
        return
    view = memoryview(data)
    for start in range(0, len(data), OUTPUT_CHUNK):
        yield bytes(view[start:start + OUTPUT_CHUNK])


# ---------------------------------------------------------------------------------------------
# Which codings this machine can decode
# ---------------------------------------------------------------------------------------------

def optional_module(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    return None


def brotli_module() -> Any:
    """brotli or brotlicffi, if one is installed in a version that can limit its output
    (1.2 onwards): an older one could be made to decode a bomb in one call."""
    module = optional_module('brotli', 'brotlicffi')
    if module is None:
        return None
    try:
        module.Decompressor().process(b'', output_buffer_limit=1)
    except TypeError:
        return None
    return module


def deflate_module() -> Any:
    """isal_zlib (python-isal, the bindings of Intel's ISA-L) if installed, else the standard
    library's zlib: the same interface, and ISA-L decodes gzip and deflate about twice as fast
    (half the instructions per MB), checksums included."""
    isal = optional_module('isal.isal_zlib')
    return zlib if isal is None else isal


def decoder_factories(brotli: Any, zstandard: Any,
                      deflate: Any = zlib) -> Dict[bytes, Callable[[], Any]]:
    """Decoder makers for gzip and deflate, decoded by `deflate` (zlib or isal_zlib), and for br
    and zstd if their modules are given (None: not decodable)."""
    factories: Dict[bytes, Callable[[], Any]] = {
        b'gzip': lambda: ZlibDecoder(31, 'gzip', deflate),
        b'deflate': lambda: DeflateDecoder(deflate),
    }
    if brotli is not None:
        factories[b'br'] = lambda: BrotliDecoder(brotli)
    if zstandard is not None:
        factories[b'zstd'] = lambda: ZstdDecoder(zstandard)
    return factories


DECODERS: Dict[bytes, Callable[[], Any]] = decoder_factories(
    brotli_module(), optional_module('zstandard'), deflate_module())
# RFC 9110 section 8.4.1.3: x-gzip is to be treated as gzip
ALIASES: Dict[bytes, bytes] = {b'x-gzip': b'gzip'}
INSTALL_HINTS: Dict[bytes, str] = {
    b'br': 'install brotli or brotlicffi 1.2 or later: pip install lowhaio[compression]',
    b'zstd': 'install zstandard: pip install lowhaio[compression]',
}


def accept_encoding(factories: Dict[bytes, Callable[[], Any]]) -> bytes:
    return b', '.join(factories)


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------

def decompressed(request: Request, max_size: Optional[int] = DEFAULT_MAX_SIZE,
                 max_ratio: Optional[float] = DEFAULT_MAX_RATIO, *,
                 decoders: Optional[Dict[bytes, Callable[[], Any]]] = None) -> Request:
    """Wrap `request` so that response bodies are decoded as their content-encoding says.

    max_size: more decoded bytes than this raises DecompressionError (None: no limit).
    max_ratio: once past 1 MiB decoded, more than this many decoded bytes per encoded byte
        raises DecompressionError (None: no limit). A body already read so far is kept; the
        connection is closed.
    decoders: coding name to a function making a decoder; by default every coding this machine
        can decode (gzip, deflate, and br and zstd when their libraries are installed), gzip
        and deflate with isal when it is installed: `decoder_factories(...)` makes others.

    `accept-encoding` is sent listing those codings, unless the caller sends the header. A
    response in a coding that cannot be decoded raises DecompressionError before it is
    returned. Headers come back as received, content-encoding included.
    """
    factories = DECODERS if decoders is None else decoders
    accepted = accept_encoding(factories)

    async def decompressed_request(method: bytes, url: str, params: Params = (),
                                   headers: Headers = (), **kwargs: Any) -> Response:
        headers = tuple(headers)
        if not any(key.lower() == b'accept-encoding' for key, _ in headers):
            headers += ((b'accept-encoding', accepted),)
        code, response_headers, body = await request(
            method, url, params=params, headers=headers, **kwargs)
        # No body, whatever the headers say (RFC 9110 sections 9.3.2, 15.3.5 and 15.4.5): its
        # content-encoding describes a body never sent, and needs no decoder installed here
        if method.upper() == b'HEAD' or code in (b'204', b'304'):
            return code, response_headers, body
        try:
            decoders_in_order = response_decoders(factories, response_headers)
        except DecompressionError:
            await body.aclose()
            raise
        if not decoders_in_order:
            return code, response_headers, body
        return code, response_headers, decoded_body(body, decoders_in_order, max_size, max_ratio)

    return decompressed_request


def content_codings(headers: Headers) -> List[bytes]:
    """The codings in the order they were applied, from every content-encoding line."""
    codings = []
    for key, value in headers:
        if key == b'content-encoding':
            for coding in value.split(b','):
                coding = coding.strip().lower()
                if coding and coding != b'identity':
                    codings.append(ALIASES.get(coding, coding))
    return codings


def response_decoders(factories: Dict[bytes, Callable[[], Any]], headers: Headers) -> List[Any]:
    """Fresh decoders in decoding order: the last coding applied is the first undone."""
    codings = content_codings(headers)
    if len(codings) > MAX_CODINGS:
        raise DecompressionError(f'{len(codings)} content codings: at most {MAX_CODINGS}')
    for coding in codings:
        if coding not in factories:
            hint = INSTALL_HINTS.get(coding, 'not a coding this helper knows')
            raise DecompressionError(
                f'Cannot decode content-encoding {coding.decode("latin-1")!r}: {hint}')
    return [factories[coding]() for coding in reversed(codings)]


def decoded_through(decoders: Sequence[Any], data: bytes) -> Iterator[bytes]:
    if not decoders:
        yield data
        return
    for piece in decoders[0].feed(data):
        yield from decoded_through(decoders[1:], piece)


async def decoded_body(body: ResponseBody, decoders: Sequence[Any],
                       max_size: Optional[int], max_ratio: Optional[float]
                       ) -> AsyncGenerator[bytes, None]:
    received = decoded_size = 0
    first = decoders[0]
    try:
        async for chunk in body:
            received += len(chunk)
            for piece in decoded_through(decoders, chunk):
                decoded_size += len(piece)
                check_limits(decoded_size, first.consumed, max_size, max_ratio)
                yield piece
        # An empty body is not a compressed stream, but it is what HEAD, 204, 304 and many
        # servers' empty answers carry under a content-encoding
        if received:
            for decoder in decoders:
                decoder.end()
    finally:
        # A no-op after the end of the body; otherwise (an error, or the caller stopped
        # reading) the rest is still on the wire, so the connection is closed
        await body.aclose()


def check_limits(decoded_size: int, encoded_size: int, max_size: Optional[int],
                 max_ratio: Optional[float]) -> None:
    if max_size is not None and decoded_size > max_size:
        raise DecompressionError(f'Decoded body larger than max_size={max_size} bytes')
    if max_ratio is not None and decoded_size > RATIO_FLOOR and \
            decoded_size > max_ratio * encoded_size:
        raise DecompressionError(
            f'Decoded body over max_ratio={max_ratio}: {decoded_size} bytes '
            f'from {encoded_size}')
