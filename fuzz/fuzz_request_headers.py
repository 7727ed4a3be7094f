"""Fuzz target: encode_request_headers with fuzzed methods and header lists of any shape.

Properties: the only exception is HttpInvalidRequestError; what is accepted encodes to one
`name: value` CRLF line per header, with a token name and a value that holds no CR, LF or NUL,
so no caller input can add a line or a request; the content-length reported is the one given.
"""

from __future__ import annotations

import re
from typing import List

import atheris

from _harness import lowhaio, run

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb'[^\x00\r\n]*')
NAMES = [b'host', b'Host', b'content-length', b'Content-Length', b'transfer-encoding',
         b'connection', b'x-a', b'bad name', b'bad:name', b'', b'x\r\n']
VALUES = [b'', b'5', b' 5 ', b'05', b'+5', b'5, 5', b'close', b'keep-alive, Close', b'a\r\nb',
          b'a\nb', b'a\x00b', b'chunked', b'99999999999999999999']
METHODS = [b'GET', b'POST', b'HEAD', b'', b'G T', b'GET\r\n', b'M' * 40]


def header(fdp: atheris.FuzzedDataProvider) -> object:
    shape = fdp.ConsumeIntInRange(0, 15)
    name = fdp.PickValueInList(NAMES) if fdp.ConsumeBool() else \
        fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    value = fdp.PickValueInList(VALUES) if fdp.ConsumeBool() else \
        fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
    odd_shapes = {
        12: (name.decode('latin-1'), value), 13: (name, value.decode('latin-1')),
        14: (name,), 15: (name, value, value),
    }
    if shape in odd_shapes:
        return odd_shapes[shape]
    if shape == 11:
        return fdp.PickValueInList([None, 3, b'ab', 'ab', [name, value]])
    return (name, value)


def check(method: bytes, headers: List[object], encoded: lowhaio.RequestHeaders) -> None:
    assert _TOKEN.fullmatch(method), method
    lines = encoded.block.split(b'\r\n')
    assert lines.pop() == b'' and len(lines) == len(headers), (headers, encoded)
    for line, (name, value) in zip(lines, headers):  # type: ignore[misc]
        assert line == name + b': ' + value, (line, name, value)
        assert _TOKEN.fullmatch(name) and _VALUE.fullmatch(value), (name, value)
    names = [name.lower() for name, _ in headers]  # type: ignore[misc]
    assert encoded.has_host == (b'host' in names), (headers, encoded)
    if encoded.content_length is not None:
        assert b'transfer-encoding' not in names, (headers, encoded)
        given = {value.strip() for name, value in headers  # type: ignore[misc]
                 if name.lower() == b'content-length'}
        assert given == {b'%d' % encoded.content_length} or \
            all(value.isdigit() and int(value) == encoded.content_length for value in given)


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    method = fdp.PickValueInList(METHODS) if fdp.ConsumeBool() else \
        fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 10))
    headers = [header(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    try:
        encoded = lowhaio.encode_request_headers(method, headers)  # type: ignore[arg-type]
    except lowhaio.HttpInvalidRequestError:
        return
    check(method, headers, encoded)


if __name__ == '__main__':
    run(test_one_input)
