"""Fuzz target: ChunkedDecoder, fed whole and in fuzzer-chosen pieces.

Each input is turned into one of:
- raw bytes (the fuzzer's own guess at an encoding);
- a valid chunked encoding of a body the fuzzer chose (chunk sizes, hex case, leading zeros,
  extensions, trailers, bytes after the end), possibly cut short;
- such an encoding with a few bytes replaced, inserted or deleted.

The decoder is checked against the body itself where it is known (its output must be a prefix
of the true body, the whole body once the encoding is complete) and, for every input, against
a small reference decoder written from RFC 9112 §7.1 that reads the whole input at once: same
body bytes, same verdict (complete, needs more, invalid), same count of bytes after the end.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import atheris

from _harness import HttpError, lowhaio, pieces, run, split_points

HEXDIG = frozenset(b'0123456789abcdefABCDEF')
VALUE_CHAR = frozenset([9, 32, *range(33, 127), *range(128, 256)])
TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                  b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz')
MAX_SIZE_LINE = 4096
MAX_TRAILER = 16384
EXTENSIONS = [b'', b';a', b';a=b', b' ;name="quoted value"', b'\t; x = 1', b';;']
TRAILERS = [b'expires: never\r\n', b'x-checksum: abc\r\n', b'empty:\r\n']

DONE, MORE, INVALID = 'done', 'needs more', 'invalid'


def chunk_size(line: bytes) -> Optional[int]:
    """The size in a chunk-size line (with its CRLF), or None if the line is malformed."""
    if not line.endswith(b'\r\n'):
        return None
    digits = 0
    while digits < len(line) and line[digits] in HEXDIG:
        digits += 1
    if not 1 <= digits <= 16:
        return None
    extension = line[digits:-2].lstrip(b' \t')
    if digits < len(line) - 2 and not extension.startswith(b';'):
        return None
    if any(byte not in VALUE_CHAR for byte in extension):
        return None
    return int(line[:digits], 16)


def valid_trailer_line(line: bytes) -> bool:
    if not line.endswith(b'\r\n'):
        return False
    name, colon, value = line[:-2].partition(b':')
    return bool(colon and name) and all(byte in TCHAR for byte in name) and \
        all(byte in VALUE_CHAR for byte in value)


def reference_decode(data: bytes) -> Tuple[bytes, str, int]:
    """(body bytes found, verdict, bytes after the end) for `data` read all at once."""
    body: List[bytes] = []
    pos = 0
    while True:
        newline = data.find(b'\n', pos)
        if newline == -1:
            return b''.join(body), INVALID if len(data) - pos > MAX_SIZE_LINE else MORE, 0
        line = data[pos:newline + 1]
        size = chunk_size(line) if len(line) <= MAX_SIZE_LINE else None
        if size is None:
            return b''.join(body), INVALID, 0
        pos = newline + 1
        if size == 0:
            break
        body.append(data[pos:pos + size])
        pos += size
        if pos > len(data):
            return b''.join(body), MORE, 0
        after = data[pos:pos + 2]
        if after != b'\r\n':
            return b''.join(body), MORE if after in (b'', b'\r') and \
                pos + len(after) == len(data) else INVALID, 0
        pos += 2
    trailer_length = 0
    while True:
        newline = data.find(b'\n', pos)
        if newline == -1:
            return b''.join(body), INVALID if len(data) - pos > MAX_TRAILER else MORE, 0
        line = data[pos:newline + 1]
        trailer_length += len(line)
        if trailer_length > MAX_TRAILER:
            return b''.join(body), INVALID, 0
        pos = newline + 1
        if line == b'\r\n':
            return b''.join(body), DONE, len(data) - pos
        if not valid_trailer_line(line):
            return b''.join(body), INVALID, 0


def valid_encoding(fdp: atheris.FuzzedDataProvider) -> Tuple[bytes, bytes]:
    """(encoding, body) for a body and a way of writing it chosen by the fuzzer."""
    parts, body = [], []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 300))
        if not data:
            break
        size = (b'%X' if fdp.ConsumeBool() else b'%x') % len(data)
        parts.append(b'0' * fdp.ConsumeIntInRange(0, 3) + size +
                     fdp.PickValueInList(EXTENSIONS) + b'\r\n' + data + b'\r\n')
        body.append(data)
    parts.append(b'0' * fdp.ConsumeIntInRange(1, 3) + fdp.PickValueInList(EXTENSIONS) + b'\r\n')
    parts.extend(fdp.PickValueInList(TRAILERS) for _ in range(fdp.ConsumeIntInRange(0, 2)))
    parts.append(b'\r\n')
    return b''.join(parts), b''.join(body)


def mutated(fdp: atheris.FuzzedDataProvider, data: bytes) -> bytes:
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        operation = fdp.ConsumeIntInRange(0, 2)
        position = fdp.ConsumeIntInRange(0, len(data))
        byte = bytes([fdp.ConsumeIntInRange(0, 255)])
        if operation == 0:
            data = data[:position] + byte + data[position + 1:]
        elif operation == 1:
            data = data[:position] + byte + data[position:]
        else:
            data = data[:position] + data[position + 1:]
    return data


def decode(data: bytes, points: List[int], joined: bool = False) \
        -> Tuple[bytes, Optional[HttpError], bool, int]:
    """What the decoder gives for `data` cut at `points`: by `feed`, or by `feed_joined` (what
    a response body uses), which must give the same bytes, as one bytes object per piece."""
    decoder = lowhaio.ChunkedDecoder()
    output: List[bytes] = []
    try:
        for piece in pieces(data, points):
            if joined:
                result = decoder.feed_joined(piece)
                assert type(result) is bytes, (data, points, result)
                output.append(result)
            else:
                output.extend(decoder.feed(piece))
    except HttpError as error:
        return b''.join(output), error, decoder.done, decoder.excess
    return b''.join(output), None, decoder.done, decoder.excess


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    kind = fdp.ConsumeIntInRange(0, 3)
    true_body = None
    if kind == 0:
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))
    else:
        data, true_body = valid_encoding(fdp)
        if kind == 1:  # complete, then bytes that belong to no body (the excess)
            data += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        elif kind == 2:  # cut short: the connection broke
            data = data[:fdp.ConsumeIntInRange(0, len(data))]
        else:
            data, true_body = mutated(fdp, data), None
    points = split_points(fdp, len(data))

    body, verdict, excess = reference_decode(data)
    for cuts, joined in (([], False), (points, False), (points, True)):
        output, error, done, decoder_excess = decode(data, cuts, joined)
        if true_body is not None:
            assert true_body.startswith(output), (data, cuts, output, true_body)
        if verdict == INVALID:
            assert error is not None, (data, cuts, output, body)
            assert body.startswith(output), (data, cuts, output, body)
        else:
            assert error is None, (data, cuts, error, verdict)
            assert output == body, (data, cuts, output, body)
            assert done == (verdict == DONE), (data, cuts, done, verdict)
            if done:
                assert decoder_excess == excess, (data, cuts, decoder_excess, excess)
                if true_body is not None:
                    assert output == true_body, (data, cuts, output, true_body)


if __name__ == '__main__':
    run(test_one_input)
