"""Fuzz target: parse_response_head, whole and cut at fuzzer-chosen points, then framing.

Properties checked for every input:
- the only exception is an HttpError subclass;
- a parsed head describes itself: its length ends at the first CRLFCRLF, within the limit, and
  parsing just those bytes gives the same head; names are lowercase tokens, values are trimmed
  and hold no CR, LF or NUL;
- reading more bytes never changes a decision: a prefix that parses gives the same head as the
  whole, a prefix that is rejected means the whole is rejected the same way;
- response_framing of a parsed head, for GET, HEAD and CONNECT, is a Framing or an HttpError.
"""

from __future__ import annotations

import re

import atheris

from _harness import HttpError, http_error_or, lowhaio, run, split_points

_LOWER_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_IN_VALUE = re.compile(rb'[\x00\r\n]')
LIMITS = [64, 200, 1024, 16384]


def check_head_shape(head: lowhaio.ResponseHead, data: bytes, max_length: int) -> None:
    assert head.http_minor in (0, 1), head
    assert len(head.code) == 3 and head.code.isdigit(), head
    assert head.length <= max_length and head.length <= len(data), head
    assert data.find(b'\r\n\r\n') == head.length - 4, head
    for name, value in head.headers:
        assert _LOWER_TOKEN.fullmatch(name), (name, value)
        assert not _BAD_IN_VALUE.search(value), (name, value)
        assert value == value.strip(b' \t'), (name, value)


def check_framing(head: lowhaio.ResponseHead) -> None:
    for method in (b'GET', b'HEAD', b'CONNECT'):
        framing = http_error_or(lowhaio.response_framing, method, head)
        if isinstance(framing, HttpError):
            continue
        assert framing.kind in (lowhaio.NO_BODY, lowhaio.CONTENT_LENGTH, lowhaio.CHUNKED,
                                lowhaio.UNTIL_CLOSE), framing
        assert framing.length >= 0, framing
        # A body read until close cannot leave the connection reusable
        assert not (framing.kind == lowhaio.UNTIL_CLOSE and framing.keep_alive), framing
        if method == b'HEAD':
            assert framing.kind == lowhaio.NO_BODY, framing


def same_outcome(first: object, second: object) -> bool:
    if isinstance(first, HttpError) or isinstance(second, HttpError):
        return type(first) is type(second)
    return first == second


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    max_length = fdp.PickValueInList(LIMITS)
    max_count = fdp.ConsumeIntInRange(0, 8) or 100
    points = split_points(fdp, 4096)
    data = fdp.ConsumeBytes(atheris.ALL_REMAINING)

    whole = http_error_or(lowhaio.parse_response_head, data, max_length, max_count)
    if isinstance(whole, lowhaio.ResponseHead):
        check_head_shape(whole, data, max_length)
        again = lowhaio.parse_response_head(data[:whole.length], max_length, max_count)
        assert again == whole, (again, whole)
        check_framing(whole)

    for point in points:
        prefix = http_error_or(lowhaio.parse_response_head, data[:point], max_length, max_count)
        if prefix is not None:
            assert same_outcome(prefix, whole), (point, prefix, whole)


if __name__ == '__main__':
    run(test_one_input)
