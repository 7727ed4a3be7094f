"""A real ASGI server for the helper tests: uvicorn serving an app in the running event loop.

A second server implementation beside aiohttp.web (its own HTTP parser, h11 or httptools), so
what the helpers send is checked by two independent parsers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from typing import Any, AsyncIterator, Callable, Iterator, List

import uvicorn


class AsgiServer:
    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, path: str = '/') -> str:
        return f'http://127.0.0.1:{self.port}{path}'


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[AsgiServer]:
    """Serve `app` with uvicorn on 127.0.0.1, on a port the kernel picks."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen(128)
    config = uvicorn.Config(app, lifespan='off', log_level='warning', access_log=False,
                            # endless responses (event streams) must not stall teardown
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what made it stop
            await asyncio.sleep(0.005)
        yield AsgiServer(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.contextmanager
def servers_in_a_thread(*context_managers: Callable[[], Any]) -> Iterator[List[Any]]:
    """Start servers, each from a function returning an async context manager (web_server,
    uvicorn_server ...), on an event loop of their own in another thread, and yield what each
    context manager gave.

    For servers that a whole module's tests share: started once, not once per test and event
    loop, so a test pays no start-up or shutdown time.
    """
    loop = asyncio.new_event_loop()
    started: 'concurrent.futures.Future[List[Any]]' = concurrent.futures.Future()
    stop: List[asyncio.Event] = []

    async def serve() -> None:
        stop.append(asyncio.Event())  # made in its own loop, for Python 3.9
        try:
            async with contextlib.AsyncExitStack() as stack:
                started.set_result([await stack.enter_async_context(make())
                                    for make in context_managers])
                await stop[0].wait()
        except BaseException as exception:
            if not started.done():
                started.set_exception(exception)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        loop.close()
