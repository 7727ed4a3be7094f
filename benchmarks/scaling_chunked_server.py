"""Chunked-response server for benchmarks/scaling's chunk-size curve.

`GET /chunked/SIZE` answers 200 with `transfer-encoding: chunked`: the LENGTH-byte text (64-byte
lines) in chunks of exactly SIZE bytes, then the last chunk. Each whole response is built once per
SIZE and handed to the transport in one write, so the kernel sends it in full segments and the
client reads as much as its socket holds, as from any server that does not send chunk by chunk.

Why not nginx (as the curve first did): its `sub_filter` sends a chunked response with four system
calls per chunk (`pread` of the file, `writev` of the size line, `sendfile` of the data, `writev`
of the CRLF), each put on the wire at once (`tcp_nodelay`). At 1 KiB chunks the server is then
slower per chunk than the client, which wakes up and reads for every few KiB that arrive (3-7 KiB
per read measured, when another process shared the client's core; on a quiet machine, closer to
one chunk per wake-up): all three clients, the floor included, paid 7-15 us per 1 KiB chunk, the
cost of a wake-up and a read, and the curve measured the server's pacing. From this server the
client reads full 124 KiB pieces at every chunk size, and the curve measures its cost per chunk.

Run: python scaling_chunked_server.py LENGTH  ->  prints the port it listens on (127.0.0.1).
"""

from __future__ import annotations

import sys
from typing import Dict

import uvloop

from server_lifetime import GetsByPath, serve_until_stopped

LINE = b'lowhaio scaling chunked body: sixty-four bytes per line, texts.\n'
NOT_FOUND = b'HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n'
RESPONSES: Dict[int, bytes] = {}


def chunked_response(length: int, size: int) -> bytes:
    """The whole response: head, `length` bytes of text in chunks of `size`, last chunk."""
    text = LINE * (length // len(LINE)) + LINE[: length % len(LINE)]
    chunks = [b'%x\r\n%s\r\n' % (len(piece), piece)
              for piece in (text[i : i + size] for i in range(0, length, size))]
    head = b'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n'
    return head + b''.join(chunks) + b'0\r\n\r\n'


class ChunkedSender(GetsByPath):
    length = 0

    def answer(self, path: bytes) -> None:
        assert self.transport is not None
        prefix, _, size = path.rpartition(b'/')
        if prefix != b'/chunked' or not size.isdigit() or int(size) == 0:
            self.transport.write(NOT_FOUND)
            return
        response = RESPONSES.get(int(size))
        if response is None:
            response = RESPONSES[int(size)] = chunked_response(self.length, int(size))
        self.transport.write(response)


async def serve(length: int) -> None:
    ChunkedSender.length = length
    await serve_until_stopped(ChunkedSender)


if __name__ == '__main__':
    uvloop.run(serve(int(sys.argv[1])))
