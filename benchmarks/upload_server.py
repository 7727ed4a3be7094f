"""Upload sink for the benchmarks: an asyncio Protocol on uvloop.

nginx's `return` answers before it has read a request body, so the upload workload needs a server
that really consumes every byte. This one reads the whole body (framed by content-length, or
chunked), and answers 200 with the number of body bytes it received as the response body, so the
client can check that nothing was lost. It keeps connections alive and stays as cheap per byte as
pure Python allows: body bytes are only counted, never copied.

Run: python upload_server.py  ->  prints the port it listens on (127.0.0.1, chosen by the kernel).
"""

from __future__ import annotations

import asyncio
from typing import Optional

import uvloop

from server_lifetime import serve_until_stopped

MAX_HEAD = 65536


class UploadSink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = b''
        self.in_head = True
        self.chunked = False
        self.remaining = 0  # content-length bytes still to come
        self.received = 0
        # chunked state: the size of the chunk being read, or -1 while waiting for a size line
        self.chunk_left = -1
        self.after_last_chunk = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.consume(data)
        except Exception as exc:  # a malformed request: tell the client, and hang up
            assert self.transport is not None
            message = repr(exc).encode()
            self.transport.write(
                b'HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n'
                b'connection: close\r\n\r\n%s' % (len(message), message)
            )
            self.transport.close()

    def consume(self, data: bytes) -> None:
        while data:
            if self.in_head:
                data = self.consume_head(data)
            elif self.chunked:
                data = self.consume_chunked(data)
            else:
                take = min(self.remaining, len(data))
                self.received += take
                self.remaining -= take
                data = data[take:] if take < len(data) else b''
                if self.remaining == 0:
                    self.respond()

    def consume_head(self, data: bytes) -> bytes:
        self.buf += data
        end = self.buf.find(b'\r\n\r\n')
        if end == -1:
            if len(self.buf) > MAX_HEAD:
                raise ValueError('request head too long')
            return b''
        head, rest = self.buf[:end], self.buf[end + 4 :]
        self.buf = b''
        self.in_head = False
        self.received = 0
        self.chunked = False
        self.remaining = 0
        for line in head.split(b'\r\n')[1:]:
            name, _, value = line.partition(b':')
            name = name.strip().lower()
            if name == b'content-length':
                self.remaining = int(value)
            elif name == b'transfer-encoding' and value.strip().lower().endswith(b'chunked'):
                self.chunked = True
        if self.chunked:
            self.chunk_left = -1
            self.after_last_chunk = False
        elif self.remaining == 0:
            self.respond()
        return rest

    def consume_chunked(self, data: bytes) -> bytes:
        if self.chunk_left > 0:
            take = min(self.chunk_left, len(data))
            self.received += take
            self.chunk_left -= take
            if self.chunk_left == 0:
                self.chunk_left = -2  # the CRLF after the chunk's data
            return data[take:] if take < len(data) else b''
        self.buf += data
        line_end = self.buf.find(b'\r\n')
        if line_end == -1:
            if len(self.buf) > MAX_HEAD:
                raise ValueError('chunk line too long')
            return b''
        line, rest = self.buf[:line_end], self.buf[line_end + 2 :]
        self.buf = b''
        if self.chunk_left == -2:
            if line:
                raise ValueError('chunk data not followed by CRLF')
            self.chunk_left = -1
        elif self.after_last_chunk:
            if not line:  # the blank line that ends the (possibly empty) trailer section
                self.respond()
        else:
            size = int(line.split(b';', 1)[0], 16)
            if size == 0:
                self.after_last_chunk = True
            else:
                self.chunk_left = size
        return rest

    def respond(self) -> None:
        assert self.transport is not None
        body = b'%d' % self.received
        self.transport.write(
            b'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n'
            b'content-length: %d\r\n\r\n%s' % (len(body), body)
        )
        self.in_head = True


async def serve() -> None:
    await serve_until_stopped(UploadSink, backlog=1024)


if __name__ == '__main__':
    uvloop.run(serve())
