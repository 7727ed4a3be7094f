"""The end of a response body that arrived whole with its head.

Such a body ends, once its bytes are handed over, with an awaitable made in C rather than a
coroutine of lowhaio's own (it is asked for by every `async for`, so its cost is in every
request). Whatever way a caller drives the body, it must see exactly the async-iterator
protocol: its bytes once, then StopAsyncIteration raised when the awaitable is awaited (never
when it is made: `anext(body, default)` relies on that), each end awaitable accepted by
asyncio as a coroutine, and the end as often as it is asked for. `buffered(body)`, which takes
such a body's bytes without iterating it, leaves it ended in the same way.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, Dict, List

import pytest

from lowhaio import Pool, buffered
from support import answering_with, scripted_server

# Responses that arrive whole with their head, and the body each one has
RESPONSES = {
    'content-length': (b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello', b'hello'),
    'empty content-length': (b'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n', b''),
    'no body (204)': (b'HTTP/1.1 204 No Content\r\n\r\n', b''),
    'chunked, whole': (b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
                       b'3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n', b'hello'),
}


async def until_end(next_piece: Callable[[], Awaitable[bytes]]) -> List[bytes]:
    pieces = []
    while True:
        try:
            pieces.append(await next_piece())
        except StopAsyncIteration:
            return pieces


async def by_async_for(body: Any) -> List[bytes]:
    return [piece async for piece in body]


async def by_anext_calls(body: Any) -> List[bytes]:
    return await until_end(body.__anext__)


async def by_tasks(body: Any) -> List[bytes]:
    # create_task takes only coroutines: the end's awaitable must be one to asyncio
    return await until_end(lambda: asyncio.create_task(body.__anext__()))


async def by_wait_for(body: Any) -> List[bytes]:
    return await until_end(lambda: asyncio.wait_for(body.__anext__(), 5))


async def by_gather(body: Any) -> List[bytes]:
    pieces = []
    while True:
        outcome, = await asyncio.gather(body.__anext__(), return_exceptions=True)
        if isinstance(outcome, StopAsyncIteration):
            return pieces
        assert isinstance(outcome, bytes), outcome
        pieces.append(outcome)


async def by_anext_with_default(body: Any) -> List[bytes]:
    # The end must be raised by the awaitable, not by __anext__ itself: a body that did the
    # latter made CPython 3.11's anext() with a default crash
    pieces = []
    while True:
        piece = await anext(body, None)  # noqa: F821 - 3.10+
        if piece is None:
            return pieces
        pieces.append(piece)


async def by_anext_without_default(body: Any) -> List[bytes]:
    return await until_end(lambda: anext(body))  # noqa: F821 - 3.10+


async def by_aiter_then_async_for(body: Any) -> List[bytes]:
    iterator = body.__aiter__()
    assert iterator is body
    return [piece async for piece in iterator]


async def by_ends_made_before_awaited(body: Any) -> List[bytes]:
    # Awaitables made ahead, then awaited in the reverse order: each stands on its own
    pieces = await until_end(body.__anext__)
    ends = [body.__anext__() for _ in range(3)]
    for end in reversed(ends):
        with pytest.raises(StopAsyncIteration):
            await end
    return pieces


async def by_end_made_and_closed(body: Any) -> List[bytes]:
    # An awaitable closed without being awaited (as a caller that gave up does): the body
    # still ends when asked again
    pieces = await until_end(body.__anext__)
    body.__anext__().close()
    return pieces


async def by_buffered(body: Any) -> List[bytes]:
    data = await buffered(body)
    return [data] if data else []


async def by_a_piece_then_buffered(body: Any) -> List[bytes]:
    first = await anext_or_empty(body)
    rest = await buffered(body)
    return [piece for piece in (first, rest) if piece]


async def anext_or_empty(body: Any) -> bytes:
    try:
        return await body.__anext__()
    except StopAsyncIteration:
        return b''


CONSUMERS: Dict[str, Callable[[Any], Awaitable[List[bytes]]]] = {
    'async for': by_async_for,
    'buffered': by_buffered,
    'a piece, then buffered': by_a_piece_then_buffered,
    '__anext__ until the end': by_anext_calls,
    'each __anext__ in a task': by_tasks,
    'each __anext__ in wait_for': by_wait_for,
    'each __anext__ in gather': by_gather,
    'aiter, then async for': by_aiter_then_async_for,
    'end awaitables made before they are awaited': by_ends_made_before_awaited,
    'an end awaitable closed unawaited': by_end_made_and_closed,
}
if sys.version_info >= (3, 10):
    CONSUMERS['anext with a default'] = by_anext_with_default
    CONSUMERS['anext without a default'] = by_anext_without_default


@pytest.mark.parametrize('recv_bufsize', [None, 2], ids=['whole pieces', 'recv_bufsize=2'])
@pytest.mark.parametrize('consumer', list(CONSUMERS.values()), ids=list(CONSUMERS))
@pytest.mark.parametrize('response,expected', list(RESPONSES.values()), ids=list(RESPONSES))
async def test_a_whole_body_gives_its_bytes_then_ends_every_time_it_is_asked(
        response: bytes, expected: bytes,
        consumer: Callable[[Any], Awaitable[List[bytes]]], recv_bufsize: Any) -> None:
    async with scripted_server(answering_with(response)) as server:
        request, close = Pool(recv_bufsize=recv_bufsize)
        try:
            for _ in range(2):  # the second on the pooled connection
                code, _, body = await request(b'GET', server.url())
                pieces = await consumer(body)
                assert b''.join(pieces) == expected
                assert all(pieces)  # no empty piece before the end
                # Ended for good: every later way of asking says so again
                assert [piece async for piece in body] == []
                with pytest.raises(StopAsyncIteration):
                    await body.__anext__()
                with pytest.raises(StopAsyncIteration):
                    await asyncio.create_task(body.__anext__())
                await body.aclose()
                assert [piece async for piece in body] == []
        finally:
            await close()
        assert server.connections == 1
        assert not server.errors


@pytest.mark.parametrize('when', ['before reading', 'after the first piece'])
async def test_aclose_ends_a_whole_body(when: str) -> None:
    async with scripted_server(answering_with(RESPONSES['content-length'][0])) as server:
        request, close = Pool()
        try:
            _, _, body = await request(b'GET', server.url())
            read = []
            if when == 'after the first piece':
                read.append(await body.__anext__())
            await body.aclose()
            assert read + [piece async for piece in body] == \
                ([b'hello'] if read else [])
            with pytest.raises(StopAsyncIteration):
                await body.__anext__()
        finally:
            await close()


async def test_bodies_of_concurrent_requests_end_independently() -> None:
    # The end awaitables of many bodies, awaited interleaved from many tasks
    async with scripted_server(answering_with(RESPONSES['content-length'][0])) as server:
        request, close = Pool()
        try:
            async def one() -> List[bytes]:
                _, _, body = await request(b'GET', server.url())
                await asyncio.sleep(0)
                first = await body.__anext__()
                await asyncio.sleep(0)
                return [first] + [piece async for piece in body]
            for outcome in await asyncio.gather(*(one() for _ in range(20))):
                assert outcome == [b'hello']
        finally:
            await close()


@pytest.mark.parametrize('how', ['task cancelled before it starts', 'exception thrown in',
                                 'closed'])
async def test_an_end_awaitable_interrupted_leaves_later_bodies_intact(how: str) -> None:
    # The end awaitables of all bodies come from one place: one interrupted must not change
    # what any other gives
    async with scripted_server(answering_with(RESPONSES['content-length'][0])) as server:
        request, close = Pool()
        try:
            for _ in range(3):
                _, _, body = await request(b'GET', server.url())
                assert await body.__anext__() == b'hello'
                end = body.__anext__()
                if how == 'task cancelled before it starts':
                    task = asyncio.create_task(end)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                elif how == 'exception thrown in':
                    with pytest.raises(KeyError):
                        end.throw(KeyError('thrown'))
                else:
                    end.close()
                assert [piece async for piece in body] == []
                _, _, other = await request(b'GET', server.url())
                assert [piece async for piece in other] == [b'hello']
        finally:
            await close()
