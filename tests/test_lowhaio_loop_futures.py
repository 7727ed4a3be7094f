"""The futures a request waits on for its response head.

asyncio's own loops and uvloop's make a future as `asyncio.Future(loop=self)`: for them a Pool
makes that same future without calling create_future. From Python 3.12 it is made with no
argument, the running loop taken in C; before 3.12 that lookup makes a getpid system call each
time, so the loop is named. Any other loop has its own create_future used, a subclass of either
with a create_future of its own included.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any, Dict, List, Type

import pytest

import lowhaio
from lowhaio import Pool
from support import answering_with, scripted_server

try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the platform
    uvloop = None  # type: ignore[assignment]

HELLO = b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello'


def _loop_classes() -> Dict[str, Type[asyncio.AbstractEventLoop]]:
    classes: Dict[str, Type[asyncio.AbstractEventLoop]] = {
        'asyncio': asyncio.SelectorEventLoop}
    if uvloop is not None:
        classes['uvloop'] = uvloop.Loop
    return classes


LOOP_CLASSES = _loop_classes()


async def test_the_future_made_without_the_call_is_the_loops_own() -> None:
    # Under both loops (see conftest): the future made without create_future has its type and
    # its loop, and a request waiting on one gets its response
    loop = asyncio.get_running_loop()
    assert lowhaio._makes_plain_futures(type(loop))
    made, own = lowhaio._future_maker(loop)(), loop.create_future()
    assert type(made) is type(own)
    assert made.get_loop() is own.get_loop() is loop
    async with scripted_server(answering_with(HELLO)) as server:
        request, close = Pool()
        try:
            for _ in range(3):
                _, _, body = await request(b'GET', server.url())
                assert [chunk async for chunk in body] == [b'hello']
        finally:
            await close()
        assert server.connections == 1


@pytest.mark.parametrize('loop_class', list(LOOP_CLASSES.values()), ids=list(LOOP_CLASSES))
def test_the_future_is_made_without_a_system_call(
        loop_class: Type[asyncio.AbstractEventLoop]) -> None:
    loop = loop_class()
    try:
        make = lowhaio._future_maker(loop)
        if sys.version_info >= (3, 12):
            # The running loop is kept in the thread's state, found in C
            assert make is asyncio.Future
            return
        # Before 3.12 C's lookup of the running loop compares the process id with getpid(),
        # a system call per request: the future is made with its loop named instead, so even
        # made where no loop runs, it has the pool's
        made: List[Any] = []
        thread = threading.Thread(target=lambda: made.append(make()))
        thread.start()
        thread.join()
        assert type(made[0]) is asyncio.Future
        assert made[0].get_loop() is loop
    finally:
        loop.close()


@pytest.mark.parametrize('base', list(LOOP_CLASSES.values()), ids=list(LOOP_CLASSES))
def test_a_subclass_with_its_own_create_future_makes_every_head_wait(
        base: Type[asyncio.AbstractEventLoop]) -> None:
    class FutureCountingLoop(base):  # type: ignore[valid-type,misc]
        futures_made = 0

        def create_future(self) -> 'asyncio.Future[Any]':
            self.futures_made += 1
            return super().create_future()

    assert not lowhaio._makes_plain_futures(FutureCountingLoop)
    loop = FutureCountingLoop()

    async def futures_made_per_reused_request() -> List[int]:
        async with scripted_server(answering_with(HELLO)) as server:
            request, close = Pool()
            try:
                _, _, body = await request(b'GET', server.url())
                assert [chunk async for chunk in body] == [b'hello']
                made = []
                for _ in range(3):
                    before = loop.futures_made
                    _, _, body = await request(b'GET', server.url())
                    assert [chunk async for chunk in body] == [b'hello']
                    made.append(loop.futures_made - before)
                return made
            finally:
                await close()
    try:
        assert all(count >= 1 for count in loop.run_until_complete(
            asyncio.wait_for(futures_made_per_reused_request(), 30)))
    finally:
        loop.close()
