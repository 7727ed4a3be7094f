"""Fuzz target: response_framing on heads built from framing-relevant fields.

The fuzzer chooses the method, version, status and a list of header lines drawn mostly from
content-length, transfer-encoding and connection with fuzzed values; the head is written out
and parsed, and the framing decision is checked against RFC 9112 §6.3 and §9.3 stated as
properties (rather than re-implemented):
- HEAD, 1xx, 204 and 304 have no body; a 2xx to CONNECT is a tunnel, never reused;
- chunked framing only when transfer-encoding ends in chunked, and then never reused if a
  content-length came with it; transfer-encoding in HTTP/1.0 is an error;
- a content-length framing has exactly the length the header states;
- "close" among the connection options, or HTTP/1.0 without "keep-alive", is never reused;
- a body read until close is never reused.
"""

from __future__ import annotations

from typing import List, Tuple

import atheris

from _harness import HttpError, http_error_or, lowhaio, run

METHODS = [b'GET', b'HEAD', b'POST', b'CONNECT']
CODES = [b'100', b'101', b'200', b'204', b'206', b'304', b'404', b'500', b'199', b'299']
NAMES = [b'content-length', b'transfer-encoding', b'connection', b'Content-Length',
         b'TRANSFER-ENCODING', b'Connection', b'x-other']
VALUES = [b'0', b'5', b'05', b'5, 5', b'5,6', b'+5', b'0x5', b' 7 ', b'', b',', b'chunked',
          b'Chunked', b'gzip, chunked', b'chunked, gzip', b'chunked, chunked', b'identity',
          b'close', b'keep-alive', b'Keep-Alive, Upgrade', b'upgrade, close', b'CLOSE',
          b'999999999999999999', b'9999999999999999999']


def elements(values: List[bytes]) -> List[bytes]:
    return [item.strip(b' \t').lower() for value in values for item in value.split(b',')
            if item.strip(b' \t')]


def build(fdp: atheris.FuzzedDataProvider) -> Tuple[bytes, bytes]:
    method = fdp.PickValueInList(METHODS)
    minor = fdp.PickValueInList([b'0', b'1', b'9'])
    code = fdp.PickValueInList(CODES) if fdp.ConsumeBool() else \
        b'%03d' % fdp.ConsumeIntInRange(0, 999)
    lines = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = fdp.PickValueInList(NAMES)
        value = fdp.PickValueInList(VALUES) if fdp.ConsumeBool() else \
            fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))
        lines.append(name + b': ' + value + b'\r\n')
    return method, b'HTTP/1.' + minor + b' ' + code + b' X\r\n' + b''.join(lines) + b'\r\n'


def check(method: bytes, head: lowhaio.ResponseHead, framing: object) -> None:
    values = {name: [v for n, v in head.headers if n == name]
              for name in (b'content-length', b'transfer-encoding', b'connection')}
    codings = elements(values[b'transfer-encoding'])
    options = elements(values[b'connection'])
    no_body = method == b'HEAD' or head.code[:1] == b'1' or head.code in (b'204', b'304')
    tunnel = method == b'CONNECT' and head.code[:1] == b'2'
    if isinstance(framing, HttpError):
        # Only a bad framing header can make framing fail
        assert not no_body and not tunnel, (head, framing)
        assert values[b'content-length'] or values[b'transfer-encoding'], (head, framing)
        return
    assert isinstance(framing, lowhaio.Framing), framing
    if no_body:
        assert framing.kind == lowhaio.NO_BODY, (head, framing)
    elif tunnel:
        assert framing.kind == lowhaio.UNTIL_CLOSE and not framing.keep_alive, (head, framing)
    elif values[b'transfer-encoding']:
        assert head.http_minor == 1, (head, framing)
        if codings and codings[-1] == b'chunked':
            assert framing.kind == lowhaio.CHUNKED, (head, framing)
            assert not (framing.keep_alive and values[b'content-length']), (head, framing)
        else:
            assert framing.kind == lowhaio.UNTIL_CLOSE, (head, framing)
    elif values[b'content-length']:
        assert framing.kind == lowhaio.CONTENT_LENGTH, (head, framing)
        stated = set(elements(values[b'content-length']))
        assert all(value.isdigit() and len(value) <= 18 for value in stated), (head, framing)
        assert {int(value) for value in stated} == {framing.length}, (head, framing)
    else:
        assert framing.kind == lowhaio.UNTIL_CLOSE, (head, framing)
    if framing.keep_alive:
        assert b'close' not in options, (head, framing)
        assert head.http_minor == 1 or b'keep-alive' in options, (head, framing)
        assert framing.kind != lowhaio.UNTIL_CLOSE, (head, framing)
        assert head.code != b'101', (head, framing)


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    method, data = build(fdp)
    head = http_error_or(lowhaio.parse_response_head, data)
    if not isinstance(head, lowhaio.ResponseHead):
        return  # the values made the head itself invalid: fuzz_response_head covers that
    check(method, head, http_error_or(lowhaio.response_framing, method, head))


if __name__ == '__main__':
    run(test_one_input)
