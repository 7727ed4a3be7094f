"""The headers a Pool returns: a tuple of pairs with the status line's reason and version.

However a head was parsed (in full, found again, or like the head before it but for a request
id) and however many distinct status lines the process has seen, the headers compare, iterate,
pickle and copy as the tuple of pairs they are, and keep `reason` and `http_version`.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any, List, Tuple

import pytest

import lowhaio
from lowhaio import Pool, ResponseHeaders, buffered
from support import Connection, scripted_server

STATUS_LINES = {
    'HTTP/1.1 200 OK': (b'HTTP/1.1 200 OK', b'OK', b'HTTP/1.1'),
    'HTTP/1.0 200 OK': (b'HTTP/1.0 200 OK', b'OK', b'HTTP/1.0'),
    'not found': (b'HTTP/1.1 404 Not Found', b'Not Found', b'HTTP/1.1'),
    'empty reason': (b'HTTP/1.1 200 ', b'', b'HTTP/1.1'),
    'reason with spaces and obs-text': (b'HTTP/1.1 299 Very \xe9 Odd \t', b'Very \xe9 Odd',
                                        b'HTTP/1.1'),
}

# Whether a class for the status line can still be made, or the process has made all it may
ROOM = {'classes left': None, 'no classes left': 0}



def make_room(room: str, monkeypatch: Any) -> None:
    if ROOM[room] is not None:
        # None made yet, and none may be
        monkeypatch.setattr(lowhaio, '_headers_classes', {})
        monkeypatch.setattr(lowhaio, '_MAX_HEADERS_CLASSES', ROOM[room])


ID = b'x-request-id: %032x'


def head(status_line: bytes, number: int) -> bytes:
    return status_line + b'\r\nServer: test\r\n' + ID % (number,) + \
        b'\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n'


def fields(number: int) -> Tuple[Tuple[bytes, bytes], ...]:
    return ((b'server', b'test'), (b'x-request-id', b'%032x' % (number,)),
            (b'content-length', b'2'), (b'connection', b'keep-alive'))


# The request ids of the responses in turn: each head parsed in full, found again as the last
# one, found in the Pool's memo of heads, and like the last but for its request id
NUMBERS = [1, 1, 2, 3, 3, 4, 1]


async def responses(status_line: bytes) -> List[Tuple[bytes, Any]]:
    """The code and headers of a response to each head in turn, bodies read."""
    async def answer(conn: Connection) -> None:
        for number in NUMBERS:
            assert await conn.read_request()
            conn.write(head(status_line, number) + b'ok')

    got = []
    async with scripted_server(answer) as server:
        request, close = Pool(socket_timeout=2)
        try:
            for _ in NUMBERS:
                code, headers, body = await request(b'GET', server.url())
                assert await buffered(body) == b'ok'
                got.append((code, headers))
        finally:
            await close()
        assert not server.errors
    return got


def check_headers(headers: Any, number: int, reason: bytes, http_version: bytes) -> None:
    assert isinstance(headers, ResponseHeaders) and isinstance(headers, tuple)
    assert headers == fields(number) and tuple(headers) == fields(number)
    assert list(headers) == list(fields(number)) and len(headers) == 4
    assert hash(headers) == hash(fields(number))
    assert dict(headers)[b'x-request-id'] == b'%032x' % (number,)
    assert (headers.reason, headers.http_version) == (reason, http_version)


@pytest.mark.parametrize('room', ROOM)
@pytest.mark.parametrize('status', STATUS_LINES)
async def test_headers_are_the_pairs_with_the_status_lines_reason_and_version(
        status: str, room: str, monkeypatch: Any) -> None:
    make_room(room, monkeypatch)
    status_line, reason, http_version = STATUS_LINES[status]
    for (code, headers), number in zip(await responses(status_line), NUMBERS):
        assert code == status_line[9:12]
        check_headers(headers, number, reason, http_version)


@pytest.mark.parametrize('room', ROOM)
@pytest.mark.parametrize('status', STATUS_LINES)
async def test_headers_pickle_and_copy_as_they_are(status: str, room: str,
                                                   monkeypatch: Any) -> None:
    make_room(room, monkeypatch)
    status_line, reason, http_version = STATUS_LINES[status]
    for (_, headers), number in zip(await responses(status_line), NUMBERS):
        copies = [copy.copy(headers), copy.deepcopy(headers)] + [
            pickle.loads(pickle.dumps(headers, protocol))
            for protocol in range(pickle.HIGHEST_PROTOCOL + 1)]
        for copied in copies:
            check_headers(copied, number, reason, http_version)


@pytest.mark.parametrize('room', ROOM)
async def test_attributes_set_on_headers_are_kept_by_pickle_and_copy(
        room: str, monkeypatch: Any) -> None:
    make_room(room, monkeypatch)
    _, headers = (await responses(b'HTTP/1.1 200 OK'))[2]
    headers.reason = b'Fine'
    headers.note = 'mine'
    for copied in [copy.copy(headers), copy.deepcopy(headers),
                   pickle.loads(pickle.dumps(headers))]:
        check_headers(copied, NUMBERS[2], b'Fine', b'HTTP/1.1')
        assert copied.note == 'mine'


def test_headers_made_by_the_caller_keep_the_defaults_and_what_is_set() -> None:
    headers = ResponseHeaders(fields(5))
    assert (headers.reason, headers.http_version) == (b'', b'HTTP/1.1')
    check_headers(pickle.loads(pickle.dumps(headers)), 5, b'', b'HTTP/1.1')
    headers.http_version = b'HTTP/1.0'
    check_headers(copy.copy(headers), 5, b'', b'HTTP/1.0')
    check_headers(copy.deepcopy(headers), 5, b'', b'HTTP/1.0')
