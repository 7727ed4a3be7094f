"""Real ASGI servers on loopback for the ecosystem tests: uvicorn and hypercorn, in the running
event loop (default asyncio or uvloop), each on a port the kernel picks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, AsyncIterator, Callable

__all__ = ['AsgiServer', 'asgi_server', 'uvicorn_server', 'hypercorn_server']

ASGI_SERVERS = ('uvicorn', 'hypercorn')


class AsgiServer:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def url(self, path: str = '/') -> str:
        return 'http://%s:%d%s' % (self.host, self.port, path)


def _bound_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def uvicorn_server(app: Callable[..., Any], host: str = '127.0.0.1',
                         lifespan: str = 'on') -> AsyncIterator[AsgiServer]:
    """uvicorn serving `app`; its lifespan runs (startup before the yield, shutdown after)."""
    import uvicorn

    sock = _bound_socket(host)
    # proxy_headers off: uvicorn would otherwise take a loopback client's X-Forwarded-For as
    # the client's address, and these servers face their clients directly
    config = uvicorn.Config(app, loop='none', lifespan=lifespan, log_level='warning',
                            access_log=False, timeout_graceful_shutdown=1, proxy_headers=False)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what made it stop
                raise RuntimeError('uvicorn stopped before starting')
            await asyncio.sleep(0.01)
        yield AsgiServer(host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def hypercorn_server(app: Callable[..., Any], host: str = '127.0.0.1'
                           ) -> AsyncIterator[AsgiServer]:
    """hypercorn serving `app` (HTTP/1.1), lifespan included."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = _bound_socket(host)
    config = Config()
    # hypercorn takes ownership of the descriptor it is given: a duplicate, so that ours stays
    # ours to close
    config.bind = ['fd://%d' % os.dup(sock.fileno())]
    config.graceful_timeout = 1
    config.loglevel = 'WARNING'
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
    try:
        # No need to wait for it to start: the socket already listens, and connections wait
        # in its backlog until hypercorn accepts them
        yield AsgiServer(host, sock.getsockname()[1])
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        sock.close()


def asgi_server(kind: str, app: Callable[..., Any], **kwargs: Any) -> Any:
    """`uvicorn_server` or `hypercorn_server`, by name."""
    return {'uvicorn': uvicorn_server, 'hypercorn': hypercorn_server}[kind](app, **kwargs)
