"""A real ASGI server for the helper tests: uvicorn serving an app in the running event loop.

A second server implementation beside aiohttp.web (its own HTTP parser, h11 or httptools), so
what the helpers send is checked by two independent parsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, AsyncIterator

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
