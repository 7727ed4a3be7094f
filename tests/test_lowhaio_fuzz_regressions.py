"""Regression tests for defects the reliability programs (fuzz/, issue 14) found in lowhaio.py.

Each test is named after what a user relies on and quotes the defect's number in DEFECTS of the
reliability report; the inputs are the minimised ones that showed it.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest

import lowhaio

# A linear parse of these inputs takes well under a millisecond; the defect took seconds. The
# bound is CPU time of this process, so other work on the machine does not count against it.
CPU_SECONDS_ALLOWED = 0.5
SPACES = 8000


def cpu_seconds_to_reject(parse: Callable[[], object]) -> float:
    started = time.process_time()
    with pytest.raises(lowhaio.HttpProtocolError):
        parse()
    return time.process_time() - started


@pytest.mark.parametrize('bad_byte', [b'\x00', b'\x7f', b'\x01', b'\r'])
def test_header_line_of_spaces_then_a_bad_byte_is_rejected_in_linear_time(
        bad_byte: bytes) -> None:
    # F1: _FIELD_LINE_RE let [ \t]* and the value both match the spaces, so fullmatch tried
    # every split of them: O(n^2), ~6 s of event-loop CPU for one 16 KiB response head.
    head = b'HTTP/1.1 200 OK\r\nx:' + b' ' * SPACES + bad_byte + b'\r\n\r\n'
    assert cpu_seconds_to_reject(lambda: lowhaio.parse_response_head(head)) \
        < CPU_SECONDS_ALLOWED


def test_header_block_of_spaces_then_a_bad_byte_is_rejected_in_linear_time() -> None:
    block = b'x:' + b'\t ' * (SPACES // 2) + b'\x00\r\n'
    assert cpu_seconds_to_reject(lambda: lowhaio.parse_field_block(block)) < CPU_SECONDS_ALLOWED


def test_chunked_trailer_of_spaces_then_a_bad_byte_is_rejected_in_linear_time() -> None:
    body = b'0\r\nx:' + b' ' * SPACES + b'\x00\r\n\r\n'
    decoder = lowhaio.ChunkedDecoder()
    assert cpu_seconds_to_reject(lambda: decoder.feed(body)) < CPU_SECONDS_ALLOWED
