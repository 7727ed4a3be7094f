"""Chunked transfer encoding of request bodies for lowhaio.

Use it when the length of a body is not known before it starts to be sent:

    request(b'POST', url, headers=((b'transfer-encoding', b'chunked'),), body=chunked(body))

The caller sets the `transfer-encoding: chunked` header (and no `content-length`), exactly as
with lowhaio-chunked 0.0.5: this module only encodes the body, it never touches headers.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from lowhaio import BodyFunction

LAST_CHUNK_AND_EMPTY_TRAILER = b'0\r\n\r\n'


def chunked(body: BodyFunction) -> BodyFunction:
    """Wrap an async generator function so that what it yields is sent chunk-encoded.

    The returned function takes the same arguments as `body`, so lowhaio's `body_args` and
    `body_kwargs` reach `body`, and the request can be replayed (by retry and redirect helpers)
    because each call starts a fresh iteration of `body`.
    """

    async def chunked_body(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        async for data in body(*args, **kwargs):
            # A zero-length chunk would be read by the server as the end of the body
            if data:
                yield encoded_chunk(data)
        yield LAST_CHUNK_AND_EMPTY_TRAILER

    return chunked_body


def encoded_chunk(data: bytes) -> bytes:
    # One bytes object per chunk, so each is a single write rather than three small ones
    return b'%x\r\n%b\r\n' % (len(data), data)
