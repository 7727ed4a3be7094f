"""A server that answers, or closes, while the request's body generator waits for its next chunk.

A body made from a stream (a pipe, a queue, a live source) may wait a long time between chunks,
or forever. A server that will not take the body may answer meanwhile, and may close. What
users rely on:

- an answer of 300 or more, whole, ends the upload at once, whether the server then stays open
  (reading or not) or closes: the answer is returned, the generator is closed (the wait it was
  in raises CancelledError), and the connection is not reused;
- a close without an answer fails the request at once with HttpDataError; bytes that are not a
  response fail it with HttpProtocolError;
- a 2xx or an interim response does not end the upload: the body goes on when the generator
  has more;
- the caller's own cancellation is never taken for lowhaio's: it propagates, and on 3.11+ no
  cancellation request is left behind on the caller's task (asyncio.timeout relies on that).

Answers while the body is sent (the generator not waiting) are in
test_lowhaio_answer_during_the_upload and test_lowhaio_answer_before_the_body.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any, AsyncIterator, Callable, List

import pytest

import support
from lowhaio import HttpDataError, HttpProtocolError, buffered
from test_lowhaio_answer_during_the_upload import REFUSALS, Answer, gets_answered_then, serving

KIB = 1024
ENDLESS = 1 << 40
REPEATS = 5
# Long enough that a request still waiting then has missed the answer: the generator never
# gives more
PROMPTLY = 5.0

# What the server does once it has answered
AFTERWARDS = ('stays-open-not-reading', 'reads-on', 'closes')


class WaitingBody:
    """A body function whose generator yields a first chunk, then waits for more that never
    comes, in one of the ways WAITS names; it records how it ended."""

    def __init__(self, wait: str) -> None:
        self.wait = wait
        self.ended_by: List[str] = []
        self.release = threading.Event()  # for a thread the 'executor' wait leaves blocked

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            yield b'x' * KIB
            await WAITS[self.wait](self)
            yield b'never'
        except asyncio.CancelledError:
            self.ended_by.append('CancelledError')
            raise
        except GeneratorExit:
            self.ended_by.append('closed')
            raise


async def wait_event(_: WaitingBody) -> None:
    await asyncio.Event().wait()


async def wait_queue(_: WaitingBody) -> None:
    await asyncio.Queue().get()


async def wait_sleep(_: WaitingBody) -> None:
    await asyncio.sleep(3600)


async def wait_executor(body: WaitingBody) -> None:
    await asyncio.get_running_loop().run_in_executor(None, body.release.wait)


WAITS = {'event': wait_event, 'queue': wait_queue, 'sleep': wait_sleep,
         'executor': wait_executor}


def answering_then(answer: Answer, afterwards: str) -> support.Handler:
    """Reads a request's head and its first KiB of body, writes `answer`'s pieces, then does
    as `afterwards` says; a GET it answers at once."""
    async def handle_upload(conn: support.Connection, _: bytes) -> bool:
        await conn.read(KIB)
        await conn.write_in_turn(answer.pieces)
        if afterwards == 'stays-open-not-reading':
            await asyncio.sleep(60)  # the client goes first, or the test times out
        elif afterwards == 'reads-on':
            while await conn.read_some(64 * KIB):
                pass
        return False
    return gets_answered_then(handle_upload)


def no_cancellation_left() -> bool:
    task = asyncio.current_task()
    return not hasattr(task, 'cancelling') or task.cancelling() == 0  # type: ignore[union-attr]


async def post(request: Any, url: str, body: WaitingBody) -> Any:
    return await asyncio.wait_for(
        request(b'POST', url, headers=((b'content-length', b'%d' % ENDLESS),), body=body),
        PROMPTLY)


@pytest.mark.parametrize('wait', list(WAITS))
@pytest.mark.parametrize('answer', list(REFUSALS))
@pytest.mark.parametrize('afterwards', AFTERWARDS)
@pytest.mark.parametrize('transport', ['tcp', 'tls'])
async def test_an_answer_of_300_or_more_ends_the_wait_for_the_body(
        transport: str, afterwards: str, answer: str, wait: str,
        asyncio_warnings: Callable[[], List[str]]) -> None:
    expected = REFUSALS[answer]
    async with serving(answering_then(expected, afterwards), transport) as (server, request):
        for _ in range(REPEATS):
            body = WaitingBody(wait)
            try:
                code, response_headers, response = await post(request, server.url('/'), body)
                assert (code, expected.header in response_headers, await buffered(response),
                        body.ended_by) == \
                    (expected.code, True, expected.body, ['CancelledError'])
            finally:
                body.release.set()
            assert no_cancellation_left()
            await asyncio.sleep(0)  # no cancellation is left pending on this task either
        await support.assert_no_connection_was_reused(request, server, REPEATS)
    assert server.errors == []
    assert asyncio_warnings() == []


@pytest.mark.parametrize('wait', list(WAITS))
@pytest.mark.parametrize('transport', ['tcp', 'tls'])
async def test_a_close_without_an_answer_fails_the_request_at_once(transport: str,
                                                                   wait: str) -> None:
    async def handler(conn: support.Connection) -> None:
        await conn.read_head()
        await conn.read(KIB)

    async with serving(handler, transport) as (server, request):
        for _ in range(REPEATS):
            body = WaitingBody(wait)
            try:
                with pytest.raises(HttpDataError):
                    await post(request, server.url('/'), body)
            finally:
                body.release.set()
            assert body.ended_by == ['CancelledError']
            assert no_cancellation_left()
            await asyncio.sleep(0)


@pytest.mark.parametrize('bytes_sent', [
    b'garbage\r\n\r\n', b'HTTP/1.1 abc\r\n\r\n',
    b'HTTP/1.1 103 Early Hints\r\n\r\n' * 17,
])
@pytest.mark.parametrize('afterwards', ['stays-open-not-reading', 'closes'])
async def test_bytes_that_are_not_a_response_fail_the_request_at_once(
        afterwards: str, bytes_sent: bytes) -> None:
    async with serving(answering_then(Answer((bytes_sent,), b''), afterwards), 'tcp') \
            as (server, request):
        for _ in range(REPEATS):
            body = WaitingBody('event')
            with pytest.raises(HttpProtocolError):
                await post(request, server.url('/'), body)
            assert body.ended_by == ['CancelledError']
            assert no_cancellation_left()


@pytest.mark.parametrize('before', [b'', b'HTTP/1.1 100 Continue\r\n\r\n',
                                    b'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstored'],
                         ids=['nothing', '100-continue', '200-early'])
@pytest.mark.parametrize('transport', ['tcp', 'tls'])
async def test_an_interim_or_2xx_answer_lets_the_body_go_on(transport: str,
                                                           before: bytes) -> None:
    # The generator waits a while after its first chunk, during which the server sends
    # `before`; then it ends. The whole body arrives, and the connection is reused.
    received: List[bytes] = []
    size = 3 * KIB

    async def handler(conn: support.Connection) -> None:
        while True:
            head = await conn.read_head()
            if not head:
                return
            data = await conn.read(KIB)
            conn.write(before)
            await conn.drain()
            data += await conn.read(size - KIB)
            received.append(data)
            if not before.startswith(b'HTTP/1.1 200'):
                conn.write(b'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstored')
                await conn.drain()

    async def body() -> AsyncIterator[bytes]:
        yield b'a' * KIB
        await asyncio.sleep(0.05)
        yield b'b' * KIB
        await asyncio.sleep(0.05)
        yield b'c' * KIB

    async with serving(handler, transport) as (server, request):
        for _ in range(REPEATS):
            code, _, response = await asyncio.wait_for(request(
                b'POST', server.url('/'), headers=((b'content-length', b'%d' % size),),
                body=body), PROMPTLY)
            assert (code, await buffered(response)) == (b'200', b'stored')
            assert no_cancellation_left()
        for _ in range(100):  # a 200 sent early reaches the client before the server reads on
            if len(received) == REPEATS:
                break
            await asyncio.sleep(0.01)
        assert received == [b'a' * KIB + b'b' * KIB + b'c' * KIB] * REPEATS
        assert server.connections == 1


async def test_the_callers_cancellation_while_the_body_waits_propagates() -> None:
    # No answer: the caller's timeout is the caller's, and the generator is closed by it
    async with serving(answering_then(Answer((), b''), 'stays-open-not-reading'), 'tcp') \
            as (server, request):
        for _ in range(REPEATS):
            body = WaitingBody('event')
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(request(
                    b'POST', server.url('/'), headers=((b'content-length', b'%d' % ENDLESS),),
                    body=body), 0.2)
            assert body.ended_by == ['CancelledError']
            assert no_cancellation_left()


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason='before 3.11 a task does not count the cancellations asked of it, '
                           'so two at once cannot be told apart (see the README)')
async def test_the_callers_cancellation_as_the_answer_arrives_is_never_lost() -> None:
    # The caller cancels the request around the moment the answer arrives, on turns of the
    # loop before, at and after it: either the request was cancelled, or it had returned
    # before the cancellation; never a cancellation swallowed.
    written = asyncio.Event()

    async def handler(conn: support.Connection) -> None:
        while True:
            head = await conn.read_head()
            if not head:
                return
            await conn.read(KIB)
            conn.write(REFUSALS['content-length'].pieces[0])
            await conn.drain()
            written.set()
            await asyncio.sleep(60)

    async with serving(handler, 'tcp') as (server, request):
        outcomes = set()
        for turns in list(range(6)) * 4:
            written.clear()
            body = WaitingBody('event')
            task = asyncio.create_task(request(
                b'POST', server.url('/'), headers=((b'content-length', b'%d' % ENDLESS),),
                body=body))
            await written.wait()
            for _ in range(turns):
                await asyncio.sleep(0)
            returned_before = task.done()
            task.cancel()
            try:
                code, _, response = await task
            except asyncio.CancelledError:
                outcomes.add('cancelled')
                assert task.cancelled()
            else:
                # Only if it had returned before the cancellation was asked for
                assert returned_before
                outcomes.add('answered')
                assert (code, await buffered(response)) == (b'413', b'body not accepted')
        assert 'cancelled' in outcomes
