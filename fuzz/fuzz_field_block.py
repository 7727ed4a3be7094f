"""Fuzz target: parse_field_block against an independent, character-by-character oracle.

A block is valid exactly when it is a sequence of lines, each ending in CRLF, each
`token ":" value` with the value made of HTAB, SP, VCHAR and obs-text only (RFC 9112 §5), and
there are no more lines than the limit. Valid blocks give one (lowercased name, trimmed value)
per line; invalid ones raise HttpError; parsing twice (the line memo) gives the same answer.
"""

from __future__ import annotations

from typing import Optional, Tuple

import atheris

from _harness import HttpError, http_error_or, lowhaio, run

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                  b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz')
VALUE_CHAR = frozenset([9, 32, *range(33, 127), *range(128, 256)])


def oracle_line(line: bytes) -> Optional[Tuple[bytes, bytes]]:
    name, colon, value = line.partition(b':')
    if not colon or not name or any(byte not in TCHAR for byte in name):
        return None
    if any(byte not in VALUE_CHAR for byte in value):
        return None
    return name.lower(), value.strip(b' \t')


def oracle(block: bytes, max_count: int) -> object:
    if block and not block.endswith(b'\r\n'):
        return None
    lines = block.split(b'\r\n')[:-1]
    if len(lines) > max_count:
        return 'too many'
    fields = tuple(oracle_line(line) for line in lines)
    return None if None in fields else fields


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    max_count = fdp.ConsumeIntInRange(0, 8) or 100
    block = fdp.ConsumeBytes(atheris.ALL_REMAINING)
    result = http_error_or(lowhaio.parse_field_block, block, max_count)
    expected = oracle(block, max_count)
    if expected is None:
        assert isinstance(result, lowhaio.HttpProtocolError), (block, result)
    elif expected == 'too many':
        assert isinstance(result, lowhaio.HttpHeaderTooLong), (block, result)
    else:
        assert result == expected, (block, result, expected)
    again = http_error_or(lowhaio.parse_field_block, block, max_count)
    assert type(again) is type(result) and (isinstance(again, HttpError) or again == result)


if __name__ == '__main__':
    run(test_one_input)
