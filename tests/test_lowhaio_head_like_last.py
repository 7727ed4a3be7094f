"""A response head that repeats the one before but for a line or two must parse as any head.

A Pool takes a head of the same length as the last one it parsed, differing only inside lines
that neither frame the body nor say whether the connection persists (a request id, the date),
as that head with those fields replaced, each changed line checked by the parser's own check
of a line. Whatever changed, the headers, framing, body and errors must be exactly those of a
full parse (`parse_response_head` and `response_framing`) of the head on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import lowhaio
from lowhaio import CHUNKED, CONTENT_LENGTH, NO_BODY, HttpError, Pool, buffered
from support import Connection, scripted_server

ID_LINE = b'x-request-id: 0123456789abcdef0123456789abcdef'
DATE_LINE = b'Date: Mon, 30 Nov 2026 00:00:00 GMT'

# The head before, each with the request-id line the changes below rewrite
PREVIOUS_HEADS = {
    'nginx-like': b'HTTP/1.1 200 OK\r\nServer: nginx/1.26.3\r\n' + DATE_LINE +
                  b'\r\nContent-Type: text/html\r\nContent-Length: 5\r\n'
                  b'Connection: keep-alive\r\n' + ID_LINE + b'\r\n\r\n',
    'chunked': b'HTTP/1.1 200 OK\r\n' + ID_LINE +
               b'\r\nTransfer-Encoding: chunked\r\nvary: accept\r\n\r\n',
    'HTTP/1.0 keep-alive': b'HTTP/1.0 200 OK\r\n' + ID_LINE +
                           b'\r\nconnection: keep-alive\r\ncontent-length: 7\r\n\r\n',
}


def id_line_as(line: bytes, same_length: bool = True) -> Callable[[bytes], Optional[bytes]]:
    assert (len(line) == len(ID_LINE)) == same_length, line
    return lambda head: head.replace(ID_LINE, line)


def replaced(old: bytes, new: bytes) -> Callable[[bytes], Optional[bytes]]:
    # None where the head has no such bytes: that pair is not in the matrix
    return lambda head: head.replace(old, new) if old in head else None


def date_and(line: bytes) -> Callable[[bytes], Optional[bytes]]:
    new_date = b'Date: Mon, 30 Nov 2026 00:00:01 GMT'
    return lambda head: head.replace(DATE_LINE, new_date).replace(ID_LINE, line) \
        if DATE_LINE in head else None


# How the next head differs from the one before
CHANGES: Dict[str, Callable[[bytes], Optional[bytes]]] = {
    'request id value': id_line_as(b'x-request-id: fedcba9876543210fedcba9876543210'),
    'date and request id': date_and(b'x-request-id: fedcba9876543210fedcba9876543210'),
    'date only': date_and(ID_LINE),
    'name': id_line_as(b'x-request-ix: 0123456789abcdef0123456789abcdef'),
    'name case only': id_line_as(b'X-Request-Id: 0123456789abcdef0123456789abcdef'),
    'whitespace around the value': id_line_as(b'x-request-id:\t 123456789abcdef0123456789abcd \t'),
    'empty value': id_line_as(b'x-request-id:' + b' ' * 33),
    'value with obs-text': id_line_as(b'x-request-id: \xff123456789abcdef0123456789abcdef'),
    'value with an inner space': id_line_as(b'x-request-id: 0123456789abcdef 123456789abcdef'),
    'into content-length': id_line_as(b'content-length: ' + b'0' * 29 + b'7'),
    'into connection: close': id_line_as(b'connection: close' + b' ' * 29),
    'into transfer-encoding': id_line_as(b'transfer-encoding: chunked' + b' ' * 20),
    'content-length value': replaced(b'ength: 5\r\n', b'ength: 6\r\n'),
    'connection value': replaced(b'Connection: keep-alive', b'Connection: Keep-Alive'),
    'transfer-encoding value': replaced(b'Encoding: chunked', b'Encoding: CHUNKED'),
    'status code': replaced(b' 200 OK', b' 201 OK'),
    'status code without a body': replaced(b' 200 OK', b' 204 OK'),
    'reason': replaced(b' 200 OK', b' 200 Ok'),
    'version': replaced(b'HTTP/1.1 200', b'HTTP/1.0 200'),
    'line split in two': id_line_as(b'x-request-id: 0123456789ab\r\nx-b: 0123456789abc'),
    'lines joined into one': replaced(b'GMT\r\nContent-Type', b'GMT; Content-Type'),
    'line added': id_line_as(ID_LINE + b'\r\nx-added: 1', same_length=False),
    'line removed': replaced(ID_LINE + b'\r\n', b''),
    'longer value': id_line_as(ID_LINE + b'0', same_length=False),
    'NUL in the value': id_line_as(b'x-request-id: 0123456789abcdef\x00123456789abcdef'),
    'DEL in the value': id_line_as(b'x-request-id: 0123456789abcdef\x7f123456789abcdef'),
    'bare CR in the value': id_line_as(b'x-request-id: 0123456789abcdef\r123456789abcdef'),
    'bare LF in the value': id_line_as(b'x-request-id: 0123456789abcdef\n123456789abcdef'),
    'obs-fold': id_line_as(b' x-request-id: 0123456789abcdef0123456789abcde'),
    'space before the colon': id_line_as(b'x-request-id : 0123456789abcdef0123456789abcde'),
    'no colon': id_line_as(b'x-request-id  0123456789abcdef0123456789abcdef'),
    'no name': id_line_as(b': x-request-id0123456789abcdef0123456789abcdef'),
    'bad byte in the name': id_line_as(b'x-request(id: 0123456789abcdef0123456789abcdef'),
    'date and a bad request id': date_and(b'x-request-id: 0123456789abcdef\x00123456789abcdef'),
}

PAIRS = [
    (previous, change)
    for previous in PREVIOUS_HEADS
    for change in CHANGES
    if CHANGES[change](PREVIOUS_HEADS[previous]) not in (None, PREVIOUS_HEADS[previous])
]

Parsed = Tuple[bytes, Tuple[Tuple[bytes, bytes], ...], bytes, bytes, lowhaio.Framing]


def full_parse(head: bytes) -> Tuple[Optional[Parsed], Optional[Tuple[type, str]]]:
    """What parsing the head on its own gives: its code, fields, reason, version and framing,
    or the type and message of the error."""
    try:
        parsed = lowhaio.parse_response_head(head)
        assert parsed is not None and head[parsed.length:] == b''
        framing = lowhaio.response_framing(b'GET', parsed)
    except HttpError as error:
        return None, (type(error), str(error))
    version = b'HTTP/1.%d' % (parsed.http_minor,)
    return (parsed.code, parsed.headers, parsed.reason, version, framing), None


def body_for(framing: lowhaio.Framing) -> Tuple[bytes, bytes]:
    """The bytes the server sends after a head framed so, and the body they make."""
    if framing.kind == NO_BODY:
        return b'', b''
    if framing.kind == CONTENT_LENGTH:
        return b'b' * framing.length, b'b' * framing.length
    if framing.kind == CHUNKED:
        return b'5\r\nhello\r\n0\r\n\r\n', b'hello'
    return b'until the server closes', b'until the server closes'


async def check_responses(heads: List[bytes]) -> List[Any]:
    """Request once for each head, answered with it; each must give what a full parse does.
    (Parsed first, its lines are known to the parser's memo of lines, so the Pool memoises a
    head whole too: a head found there then comes between heads like the last.) Returns the
    headers of each response (None for an error), for checks of which are the same object."""
    return await check_responses_are([full_parse(head) for head in heads], heads)


async def check_responses_are(
        expected: List[Tuple[Optional[Parsed], Optional[Tuple[type, str]]]],
        heads: List[bytes]) -> List[Any]:
    answers: List[bytes] = []
    got: List[Any] = []

    async def answer(conn: Connection) -> None:
        while await conn.read_request():
            parsed, error = expected[len(answers)]
            payload = body_for(parsed[4])[0] if parsed is not None else b''
            answers.append(heads[len(answers)] + payload)
            conn.write(answers[-1])
            await conn.drain()
            if parsed is None or not parsed[4].keep_alive:
                return  # closed: the only end of a body until close, and after an error

    async with scripted_server(answer) as server:
        request, close = Pool(socket_timeout=2)
        try:
            for parsed, error in expected:
                if error is not None:
                    with pytest.raises(error[0]) as raised:
                        await request(b'GET', server.url())
                    assert str(raised.value) == error[1]
                    got.append(None)
                    continue
                assert parsed is not None
                code, headers, body = await request(b'GET', server.url())
                assert (code, tuple(headers), headers.reason, headers.http_version) == \
                    parsed[:4]
                assert await buffered(body) == body_for(parsed[4])[1]
                got.append(headers)
            assert request.status().totals['in_use'] == 0
        finally:
            await close()
        assert not server.errors
        assert len(answers) == len(heads)
    return got


@pytest.mark.parametrize('previous, change', PAIRS, ids=[' / '.join(pair) for pair in PAIRS])
async def test_a_head_like_the_last_gives_what_a_full_parse_gives(previous: str,
                                                                  change: str) -> None:
    before = PREVIOUS_HEADS[previous]
    after = CHANGES[change](before)
    assert after is not None
    # There and back again, so that each is the head before the other, and the same again
    await check_responses([before, after, before, after, after])


def count_full_parses(monkeypatch: Any) -> List[bytes]:
    """The heads parsed in full from now on, in order: a head taken as like the last leaves
    none. (After the expected results are made: full_parse is counted too.)"""
    parsed_in_full: List[bytes] = []
    parse = lowhaio._parse_response_head_ending_at

    def counting(data: bytes, end: int, max_header_count: int) -> lowhaio.ResponseHead:
        parsed_in_full.append(data[:end + 4])
        return parse(data, end, max_header_count)

    monkeypatch.setattr(lowhaio, '_parse_response_head_ending_at', counting)
    return parsed_in_full


async def test_a_head_differing_in_its_request_id_is_not_parsed_again(
        monkeypatch: Any) -> None:
    first = PREVIOUS_HEADS['nginx-like']
    heads = [first] + [first.replace(ID_LINE, b'x-request-id: %032x' % (index,))
                       for index in range(3)]
    heads.append(date_and(b'x-request-id: %032x' % (9,))(first) or b'')
    expected = [full_parse(head) for head in heads]
    parsed_in_full = count_full_parses(monkeypatch)
    await check_responses_are(expected, heads)
    assert parsed_in_full == [first]


# Where a repeated head and its body are cut into writes (offsets, from the head's length): the
# Pool compares what it read first with the last head, and must take it only when it holds the
# whole head, and then read the body from exactly the head's end
CUTS: Dict[str, Callable[[int], List[int]]] = {
    'in one write': lambda length: [],
    'the head, then the body': lambda length: [length],
    'the head and a byte of the body, then the rest': lambda length: [length + 1],
    'all but the head\'s last byte, then the rest': lambda length: [length - 1],
    'the first byte, then the rest': lambda length: [1],
    'the head in halves, then the body': lambda length: [length // 2, length],
}


@pytest.mark.parametrize('cut', CUTS)
@pytest.mark.parametrize('previous', PREVIOUS_HEADS)
async def test_a_repeated_head_gives_what_a_full_parse_gives_however_it_arrives(
        previous: str, cut: str) -> None:
    head = PREVIOUS_HEADS[previous]
    parsed, error = full_parse(head)
    assert parsed is not None and error is None
    payload, body_bytes = body_for(parsed[4])
    cuts = CUTS[cut](len(head))

    async def answer(conn: Connection) -> None:
        for number in range(4):
            assert await conn.read_request()
            # The first in one write: the head the others repeat
            offsets = [0] + (cuts if number else []) + [len(head + payload)]
            for start, end in zip(offsets, offsets[1:]):
                conn.write((head + payload)[start:end])
                await conn.drain()
                await asyncio.sleep(0.01)

    async with scripted_server(answer) as server:
        request, close = Pool(socket_timeout=2)
        try:
            got = []
            for _ in range(4):
                code, headers, body = await request(b'GET', server.url())
                assert (code, tuple(headers), headers.reason, headers.http_version) == \
                    parsed[:4]
                assert await buffered(body) == body_bytes
                got.append(headers)
            if not cuts or cuts[0] >= len(head):
                # Read whole at first: taken as the last head, whose headers it has
                assert all(headers is got[0] for headers in got)
            assert request.status().totals['in_use'] == 0
        finally:
            await close()
        assert not server.errors
