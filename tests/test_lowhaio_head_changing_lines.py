"""The lines that changed from one head to the next, changing again, must parse as any head.

Once a head has been parsed like the one before it (see test_lowhaio_head_like_last.py), a Pool
remembers which lines changed (a request id; the date and the lines up to the request id), and
takes the next head whose bytes before and after those lines are the same as that head with the
changed lines' fields replaced, each changed line checked by the parser's own check of a line.
Whatever the next head is, the headers, framing, body and errors must be exactly those of a full
parse of the head on its own.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, Dict, List, Optional

import pytest

from lowhaio import Pool, buffered
from support import Connection, scripted_server
from test_lowhaio_head_like_last import (
    CHANGES,
    DATE_LINE,
    ID_LINE,
    PREVIOUS_HEADS,
    body_for,
    check_responses,
    count_full_parses,
    date_and,
    full_parse,
    id_line_as,
)

# How the second head differs from the first: which lines the Pool then remembers as changing
FIRST_CHANGES: Dict[str, Callable[[bytes], Optional[bytes]]] = {
    'request id': id_line_as(b'x-request-id: 00000000000000000000000000000001'),
    # The date and the request id, and every line between them
    'date and request id': date_and(b'x-request-id: 00000000000000000000000000000001'),
    # A line before the request id's, which the next head keeps
    'date only': date_and(ID_LINE),
}

# The first head, the second, then the third (the first head changed as in CHANGES, so it
# differs from the second in the lines remembered, or around them, or both)
TRIPLES = [
    (previous, first_change, change)
    for previous in PREVIOUS_HEADS
    for first_change in FIRST_CHANGES
    if FIRST_CHANGES[first_change](PREVIOUS_HEADS[previous]) is not None
    for change in CHANGES
    if CHANGES[change](PREVIOUS_HEADS[previous]) not in (None, PREVIOUS_HEADS[previous])
]


def heads_of(previous: str, first_change: str, change: str) -> List[bytes]:
    first = PREVIOUS_HEADS[previous]
    second = FIRST_CHANGES[first_change](first)
    third = CHANGES[change](first)
    assert second is not None and third is not None
    return [first, second, third]


@pytest.mark.parametrize('previous, first_change, change', TRIPLES,
                         ids=[' / '.join(triple) for triple in TRIPLES])
async def test_a_head_changing_where_the_last_one_changed_gives_what_a_full_parse_gives(
        previous: str, first_change: str, change: str) -> None:
    first, second, third = heads_of(previous, first_change, change)
    # The second head again after the third: the third's changes undone, which the Pool checks
    # against what it remembered of the third head (or, if that was parsed in full, the second)
    await check_responses([first, second, third, second, third, third, first])


def with_request_id(head: bytes, number: int) -> bytes:
    return re.sub(rb'x-request-id: [0-9a-f]{32}', b'x-request-id: %032x' % (number,), head)


@pytest.mark.parametrize('first_change', FIRST_CHANGES)
async def test_a_run_of_unique_heads_gives_what_full_parses_give(first_change: str) -> None:
    first = PREVIOUS_HEADS['nginx-like']
    second = FIRST_CHANGES[first_change](first)
    assert second is not None
    # A new request id each time, and now and then the first head's date back
    heads = [first, second] + [with_request_id(first if number % 3 == 0 else second, number)
                               for number in range(2, 11)]
    assert len(set(heads)) == len(heads)
    await check_responses(heads)


def with_second_request_id(change: str) -> Optional[bytes]:
    # The first head changed so, with the request id of the second ('request id' in
    # FIRST_CHANGES) where its request-id line is still there: the value the Pool then
    # remembers as the last one, in a head that differs elsewhere
    changed = CHANGES[change](PREVIOUS_HEADS['nginx-like'])
    return None if changed is None else with_request_id(changed, 1)


SAME_ID_CHANGES = [
    change for change in CHANGES
    if with_second_request_id(change) not in
    (None, FIRST_CHANGES['request id'](PREVIOUS_HEADS['nginx-like']))
]


@pytest.mark.parametrize('change', SAME_ID_CHANGES)
async def test_the_last_request_id_again_in_a_head_changed_elsewhere_gives_what_a_full_parse_gives(
        change: str) -> None:
    # After a head taken as the one before but for its request id, the next is tried so first,
    # and found to be the last head again when its request id is: only if every other byte is.
    first = PREVIOUS_HEADS['nginx-like']
    second = FIRST_CHANGES['request id'](first)
    third = with_second_request_id(change)
    assert second is not None and third is not None
    await check_responses([first, second, third, second, third, third, second, second])


@pytest.mark.parametrize('last_id', [1, 3, 4])
async def test_a_head_after_request_ids_taken_so_is_parsed_like_the_last_one(
        last_id: int) -> None:
    # After heads taken with new request ids, one that changes elsewhere (the date) is parsed
    # like the head just before it, whichever request id it has: the last one's, an earlier
    # one's, a new one
    first = PREVIOUS_HEADS['nginx-like']
    later = date_and(ID_LINE)(first)
    assert later is not None
    await check_responses([first] + [with_request_id(first, number) for number in (1, 2, 3)] +
                          [with_request_id(later, last_id), with_request_id(later, 5)])


async def test_a_head_after_a_head_request_among_request_ids_is_parsed_in_full() -> None:
    # A response to HEAD between heads taken with new request ids: the next GET's head, one
    # of an earlier request id, is not taken as the last head
    first = PREVIOUS_HEADS['nginx-like']
    heads = [first] + [with_request_id(first, number) for number in (1, 2, 3, 1, 1)]
    methods = [b'GET', b'GET', b'GET', b'HEAD', b'GET', b'GET']
    expected = [full_parse(head)[0] for head in heads]

    async def answer(conn: Connection) -> None:
        for head, parsed, method in zip(heads, expected, methods):
            assert parsed is not None and await conn.read_request()
            conn.write(head + (body_for(parsed[4])[0] if method == b'GET' else b''))
            await conn.drain()

    async with scripted_server(answer) as server:
        request, close = Pool(socket_timeout=2)
        try:
            for parsed, method in zip(expected, methods):
                assert parsed is not None
                code, headers, body = await request(method, server.url())
                assert (code, tuple(headers), headers.reason, headers.http_version) == \
                    parsed[:4]
                assert await buffered(body) == (body_for(parsed[4])[1] if method == b'GET'
                                                else b'')
        finally:
            await close()
        assert not server.errors


# The whitespace after the colon in the request-id line of the head the Pool remembers
REMEMBERED_OWS = {'none': b'', 'a space': b' ', 'a tab and a space': b'\t ', 'two spaces': b'  '}

# What the next head has in its place and the value's (the same length: 32 bytes more)
NEXT_VALUES: Dict[str, Callable[[bytes], bytes]] = {
    'hex digits': lambda ows: ows + b'fedcba9876543210fedcba9876543210',
    'letters and digits': lambda ows: ows + b'FEDCBA9876543210zyxwvutsrqponmlk',
    'a space first': lambda ows: ows + b' edcba9876543210fedcba9876543210',
    'a tab first': lambda ows: ows + b'\tedcba9876543210fedcba9876543210',
    'a space last': lambda ows: ows + b'fedcba9876543210fedcba987654321 ',
    'a tab last': lambda ows: ows + b'fedcba9876543210fedcba987654321\t',
    'spaces only': lambda ows: ows + b' ' * 32,
    'dashes': lambda ows: ows + b'fedcba98-7654-3210-fedc-ba987654',
    'an inner space': lambda ows: ows + b'fedcba9876543210 edcba9876543210',
    'obs-text': lambda ows: ows + b'\xffedcba9876543210fedcba9876543210',
    'NUL': lambda ows: ows + b'fedcba9876543210\x00edcba9876543210',
    'DEL': lambda ows: ows + b'fedcba9876543210\x7fedcba9876543210',
    'other whitespace after the colon': lambda ows: b'\t' * len(ows) +
    b'fedcba9876543210fedcba9876543210',
    'a letter after the colon': lambda ows: b'x' * len(ows) + b'fedcba9876543210fedcba9876543210',
}


@pytest.mark.parametrize('next_value', NEXT_VALUES)
@pytest.mark.parametrize('ows', REMEMBERED_OWS)
async def test_a_new_request_id_with_or_without_whitespace_gives_what_a_full_parse_gives(
        ows: str, next_value: str) -> None:
    # The Pool remembers where the value starts past the whitespace after the colon, and takes
    # one of letters and digits there as it is: any other is checked and stripped as any line.
    first = PREVIOUS_HEADS['nginx-like']
    second = first.replace(ID_LINE, b'x-request-id:' + REMEMBERED_OWS[ows] + b'%032x' % (1,))
    third = first.replace(ID_LINE, b'x-request-id:' + NEXT_VALUES[next_value](
        REMEMBERED_OWS[ows]))
    assert len(second) == len(third) and second != third
    await check_responses([first, second, third, second, third])


@pytest.mark.parametrize('first_change', FIRST_CHANGES)
@pytest.mark.parametrize('chunk_size', [1, 7, 64])
async def test_a_head_changing_where_the_last_one_changed_may_arrive_in_pieces(
        first_change: str, chunk_size: int) -> None:
    # A piece ends before the lines after the changing ones: it must be read on, not taken
    first = PREVIOUS_HEADS['nginx-like']
    second = FIRST_CHANGES[first_change](first) or b''
    third = first.replace(ID_LINE, b'x-request-id: fedcba9876543210fedcba9876543210')
    heads = [first, second, third]
    expected = [full_parse(head)[0] for head in heads]

    async def answer(conn: Connection) -> None:
        for head, parsed in zip(heads, expected):
            assert parsed is not None and await conn.read_request()
            await conn.write_slowly(head + body_for(parsed[4])[0], chunk_size, delay=0)

    async with scripted_server(answer) as server:
        await check_each_response_as_parsed(server, expected)


async def check_each_response_as_parsed(server: Any, expected: List[Any]) -> None:
    """A GET for each of `expected` (full parses, in the order the server answers) gives its
    status line, headers and body, and leaves no connection in use."""
    request, close = Pool(socket_timeout=2)
    try:
        for parsed in expected:
            assert parsed is not None
            code, headers, body = await request(b'GET', server.url())
            assert (code, tuple(headers), headers.reason, headers.http_version) == parsed[:4]
            assert await buffered(body) == body_for(parsed[4])[1]
        assert request.status().totals['in_use'] == 0
    finally:
        await close()
    assert not server.errors


@pytest.mark.parametrize('changing', ['date', 'request id'])
async def test_a_head_repeated_after_a_changed_one_is_taken_as_the_last_head(
        changing: str) -> None:
    # The shortcut for a repeated head (the same headers, found by one comparison) must outlive
    # heads taken as like the one before: a server whose date changes once a second repeats
    # its head thousands of times in between.
    first = PREVIOUS_HEADS['nginx-like']
    if changing == 'date':
        changed = [first.replace(DATE_LINE, DATE_LINE[:-6] + b'%02d GMT' % (second,))
                   for second in range(1, 5)]
    else:
        changed = [with_request_id(first, number) for number in range(1, 5)]
    heads = [first] + [head for head in changed for _ in range(3)]
    got = await check_responses(heads)
    for index in range(1, len(heads)):
        assert (got[index] is got[index - 1]) == (heads[index] == heads[index - 1]), index


# Two heads a server alternates between (two resources, each with its own head)
ALTERNATING = {
    'values of other lengths': (b'Content-Type: text/html', b'Content-Type: application/json'),
    'values of the same length': (b'Content-Type: text/html', b'Content-Type: text/xml;'),
    'lines of other names': (b'Content-Type: text/html', b'Vary: accept'),
}


@pytest.mark.parametrize('kind', ALTERNATING)
async def test_heads_a_server_alternates_between_give_what_full_parses_give(kind: str) -> None:
    first = PREVIOUS_HEADS['nginx-like']
    one, other = (first.replace(b'Content-Type: text/html', line) for line in ALTERNATING[kind])
    next_second = first.replace(DATE_LINE, DATE_LINE[:-6] + b'01 GMT')
    one_later, other_later = (next_second.replace(b'Content-Type: text/html', line)
                              for line in ALTERNATING[kind])
    await check_responses([one, other] * 4 + [one_later, other_later] * 2 +
                          [with_request_id(one_later, number) for number in range(3)] +
                          [other_later, one_later])


async def test_heads_a_server_alternates_between_are_each_found_again() -> None:
    # Each is parsed once or twice, then found in the Pool's memo of heads: the same headers
    first = PREVIOUS_HEADS['nginx-like']
    one, other = (first.replace(b'Content-Type: text/html', line)
                  for line in ALTERNATING['values of other lengths'])
    heads = [one, other] * 5
    got = await check_responses(heads)
    assert all(got[index] is got[index - 2] for index in range(4, len(heads)))


# Where a head with a new request id and its body are cut into writes, as offsets from where
# the value starts and ends and from the head's end: the Pool compares the bytes around the
# value as they arrive, and must take them only when they hold the whole head, and then read
# the body from exactly the head's end
ID_CUTS: Dict[str, Callable[[int, int, int], List[int]]] = {
    'in one write': lambda start, end, length: [],
    'the head, then the body': lambda start, end, length: [length],
    'the head and a byte of the body, then the rest': lambda start, end, length: [length + 1],
    'all but the head\'s last byte, then the rest': lambda start, end, length: [length - 1],
    'inside the value': lambda start, end, length: [start + 5],
    'before the value': lambda start, end, length: [start],
    'after the value': lambda start, end, length: [end],
    'after the value\'s line': lambda start, end, length: [end + 2],
}


@pytest.mark.parametrize('cut', ID_CUTS)
async def test_a_new_request_id_gives_what_a_full_parse_gives_however_it_arrives(
        cut: str, monkeypatch: Any) -> None:
    first = PREVIOUS_HEADS['nginx-like']
    # The second is taken as the first but for its request id, the others as the second
    heads = [first] + [with_request_id(first, number) for number in (1, 2, 3, 2, 2, 4)]
    expected = [full_parse(head)[0] for head in heads]
    parsed_in_full = count_full_parses(monkeypatch)
    value_start = first.index(ID_LINE) + len(b'x-request-id: ')
    cuts = ID_CUTS[cut](value_start, value_start + 32, len(first))

    async def answer(conn: Connection) -> None:
        for number, (head, parsed) in enumerate(zip(heads, expected)):
            assert parsed is not None and await conn.read_request()
            data = head + body_for(parsed[4])[0]
            offsets = [0] + (cuts if number >= 2 else []) + [len(data)]
            for start, end in zip(offsets, offsets[1:]):
                conn.write(data[start:end])
                await conn.drain()
                await asyncio.sleep(0.01)

    async with scripted_server(answer) as server:
        await check_each_response_as_parsed(server, expected)
    if not cuts or cuts[0] >= len(first):
        # Read whole at first: each taken as the one before but for its request id
        assert parsed_in_full == [first]
