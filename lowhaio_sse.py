"""Server-sent events for lowhaio: an event stream read as browsers' EventSource reads it.

    async for event in events(request, url):
        print(event.type, event.data, event.id)

The stream is parsed by the rules of the WHATWG HTML standard, section 9.2 "Server-sent
events" (quoted below where they decide something). A dropped connection is reopened after the
server's `retry` delay, with `Last-Event-ID`; an HTTP 204 ends the stream.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Tuple,
)

from lowhaio import Headers, HttpConnectionError, HttpDataError, Request

DEFAULT_RECONNECTION_TIME = 3.0
DEFAULT_MAX_EVENT_SIZE: int = 1024 * 1024
DEFAULT_MAX_RECONNECT_ATTEMPTS = 10
# "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
# character pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE RETURN
# (CR) character."
LINE_END: re.Pattern[str] = re.compile('\r\n|\r|\n')
# More digits than any delay worth waiting for; int() of thousands of digits is slow or refused
MAX_RETRY_DIGITS = 12


class Event(NamedTuple):
    """One dispatched event. `type` is 'message' unless the server named it; `id` is the last
    event ID in force (it carries over from earlier events); `retry` is the reconnection time
    in milliseconds that this event's block set, or None."""

    type: str
    data: str
    id: str
    retry: Optional[int]


class EventStreamError(HttpDataError):
    """Not an event stream (a status other than 200 or 204, or another content type), or one
    that broke a limit (an event or line longer than max_event_size). `code` is the status."""

    def __init__(self, message: str, code: bytes) -> None:
        super().__init__(message)
        self.code: bytes = code


class EventStreamParser:
    """Bytes of one connection's stream in, dispatched events out; no I/O.

    last_event_id: the last event ID string when the connection opened.
    max_event_size: the most characters a line, or an event's data, may have.
    """

    def __init__(self, last_event_id: str = '',
                 max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self.last_event_id: str = last_event_id
        self.reconnection_time: Optional[int] = None  # milliseconds, once a retry field says
        self._max_event_size = max_event_size
        # "The stream must then be parsed by ... the UTF-8 decode algorithm", which replaces
        # invalid bytes with U+FFFD; incremental, since a character may span two reads
        self._decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
        self._at_start = True
        self._after_cr = False
        self._line = ''
        self._data: List[str] = []
        self._data_size = 0
        self._type = ''
        self._id = last_event_id
        self._retry: Optional[int] = None

    def feed(self, data: bytes) -> List[Event]:
        text = self._decoder.decode(data)
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present"
            if text[0] == '\ufeff':
                text = text[1:]
                if not text:
                    return []
        if self._after_cr:
            self._after_cr = False
            if text[0] == '\n':
                text = text[1:]  # the LF of a CRLF whose CR ended the previous read
                if not text:
                    return []
        self._after_cr = text[-1] == '\r'
        lines = LINE_END.split(text)
        lines[0] = self._line + lines[0]
        self._line = lines.pop()
        if len(self._line) > self._max_event_size:
            raise EventStreamError(
                f'Event stream line longer than max_event_size ({self._max_event_size})', b'200')
        events = []
        for line in lines:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> Optional[Event]:
        # "If the line is empty (a blank line): Dispatch the event"
        if not line:
            return self._dispatch()
        # "If the line starts with a U+003A COLON character (:): Ignore the line."
        if line[0] == ':':
            return None
        # "If the line contains a U+003A COLON character: Collect the characters on the line
        # before the first colon, and let field be that string. Collect the characters on the
        # line after the first colon, and let value be that string. If value starts with a
        # U+0020 SPACE character, remove it from value." Otherwise the whole line is the field
        # and the value is empty.
        field, _, value = line.partition(':')
        if value[:1] == ' ':
            value = value[1:]
        self._process_field(field, value)
        return None

    def _process_field(self, field: str, value: str) -> None:
        if field == 'event':
            self._type = value
        elif field == 'data':
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self._max_event_size:
                raise EventStreamError(
                    f'Event data longer than max_event_size ({self._max_event_size})', b'200')
        elif field == 'id':
            # "If the field value does not contain U+0000 NULL, then set the last event ID
            # buffer to the field value. Otherwise, ignore the field."
            if '\0' not in value:
                self._id = value
        elif field == 'retry':
            # "If the field value consists of only ASCII digits, then interpret the field
            # value as an integer in base ten, and set the event stream's reconnection time
            # to that integer. Otherwise, ignore the field."
            if value and value.isascii() and value.isdigit():
                self._retry = int(value) if len(value) <= MAX_RETRY_DIGITS \
                    else 10 ** MAX_RETRY_DIGITS
                self.reconnection_time = self._retry
        # "Otherwise: The field is ignored."

    def _dispatch(self) -> Optional[Event]:
        # "Set the last event ID string of the event source to the value of the last event ID
        # buffer", whether or not an event is dispatched
        self.last_event_id = self._id
        data, event_type, retry = self._data, self._type, self._retry
        self._data, self._data_size, self._type, self._retry = [], 0, '', None
        # "If the data buffer is an empty string, set the data buffer and the event type
        # buffer to the empty string and return." Each data line appended its value and a LF,
        # and the last LF is removed: the lines joined by LF.
        if not data:
            return None
        return Event(event_type or 'message', '\n'.join(data), self.last_event_id, retry)


def is_event_stream(headers: Headers) -> bool:
    content_type = next((value for name, value in headers if name == b'content-type'), b'')
    return content_type.split(b';', 1)[0].strip().lower() == b'text/event-stream'


async def events(request: Request, url: str, headers: Iterable[Tuple[bytes, bytes]] = (),
                 last_event_id: Optional[str] = None, *,
                 reconnection_time: float = DEFAULT_RECONNECTION_TIME,
                 max_reconnection_time: float = 300.0,
                 max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
                 max_reconnect_attempts: Optional[int] = DEFAULT_MAX_RECONNECT_ATTEMPTS,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 ) -> AsyncIterator[Event]:
    """The events of the stream at `url`, reconnecting when the connection drops.

    headers: sent with every request, along with `accept: text/event-stream` unless given,
        and `last-event-id` when there is a last event ID.
    last_event_id: the ID to resume after, sent on the first request too.
    reconnection_time: seconds to wait before reconnecting, until the server sets it with a
        `retry` field (in milliseconds); at most max_reconnection_time.
    max_event_size: the most characters in one line or one event's data; past it,
        EventStreamError, so a hostile stream cannot take unbounded memory.
    max_reconnect_attempts: failed reconnections in a row (connection errors) before the
        last error is raised; None for no limit, as browsers do. Errors on the first request
        are raised at once.

    A 204 ends the iteration; any other status than 200, or a content type other than
    text/event-stream, raises EventStreamError. Leaving the loop early closes the connection.
    """
    headers = tuple(headers)
    if not any(name.lower() == b'accept' for name, _ in headers):
        headers += ((b'accept', b'text/event-stream'),)
    last_id = last_event_id or ''
    delay = reconnection_time
    failed_attempts: Optional[int] = None  # None until the first connection is made

    while True:
        try:
            code, response_headers, body = await request(
                b'GET', url, headers=headers + last_event_id_header(last_id))
        except (HttpConnectionError, HttpDataError):
            if failed_attempts is None or (max_reconnect_attempts is not None and
                                           failed_attempts >= max_reconnect_attempts):
                raise
            failed_attempts += 1
            await sleep(delay)
            continue

        if code != b'200' or not is_event_stream(response_headers):
            await close(body)
            # "HTTP 204 No Content ... must prevent further reconnection"
            if code == b'204':
                return
            raise EventStreamError(
                f'Not an event stream: status {code.decode()}, content type '
                f'{dict(response_headers).get(b"content-type", b"(none)").decode("latin-1")}',
                code)
        failed_attempts = 0

        parser = EventStreamParser(last_id, max_event_size)
        try:
            async for chunk in body:
                for event in parser.feed(chunk):
                    last_id = event.id
                    yield event
        except EventStreamError:
            raise
        except (HttpConnectionError, HttpDataError):
            pass  # a dropped or broken connection: reconnect, as at the end of the stream
        finally:
            # When the consumer leaves the loop, or the stream broke: free the connection
            await close(body)
        # "Once the end of the file is reached, any pending data must be discarded": the
        # parser's incomplete line and event go with it. Its last event ID string stays.
        last_id = parser.last_event_id
        if parser.reconnection_time is not None:
            delay = parser.reconnection_time / 1000
        await sleep(min(delay, max_reconnection_time))


def last_event_id_header(last_id: str) -> Headers:
    # "If the event source's last event ID string is not the empty string, set
    # `Last-Event-ID` ... to the last event ID string, encoded as UTF-8."
    return ((b'last-event-id', last_id.encode('utf-8')),) if last_id else ()


async def close(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, 'aclose', None)
    if aclose is not None:
        await aclose()
