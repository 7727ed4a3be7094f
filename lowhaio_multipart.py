"""multipart/form-data request bodies (RFC 7578) for lowhaio, with files streamed from disk.

    headers, body = multipart((
        ('title', 'Holiday'),                        # a text field
        ('photo', pathlib.Path('beach.jpg')),        # a file, by path
        ('notes', File(open('notes.txt', 'rb'), filename='notes.txt',
                       content_type='text/plain')),  # an open binary file, named explicitly
    ))
    code, response_headers, response = await request(b'POST', url, headers=headers, body=body)

The content-length is computed in advance from the file sizes, so no chunked encoding is
needed, and files are read in chunks as they are sent: never whole.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os
import re
import secrets
from typing import (
    Any,
    AsyncIterator,
    BinaryIO,
    Callable,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from lowhaio import BodyFunction, Headers, HttpDataError, HttpInvalidRequestError

CHUNK_SIZE = 65536
MAX_BOUNDARY_ATTEMPTS = 10
# In a quoted name or filename: the quote would end it, and CR, LF and the other controls
# could end the header line or trip the server's parser. Percent-encoded, as browsers do for
# '"', CR and LF (HTML's multipart/form-data encoding algorithm) and httpx for all of them.
UNSAFE_IN_QUOTED: re.Pattern[str] = re.compile('["\x00-\x1f\x7f]')
# A backslash starts a quoted-pair (RFC 9110 section 5.6.4) for servers that parse those
# (aiohttp, python-multipart), so it is doubled, as httpx does


class MultipartError(HttpInvalidRequestError):
    """A field that cannot be sent: an unreadable or unseekable file, a bad content type."""


class File(NamedTuple):
    """A file field. `source` is a path (str or os.PathLike) or a binary file object open for
    reading, which is sent from its current position to its end. `filename` defaults to the
    path's or file object's base name, `content_type` to a guess from the file name."""

    source: Union[str, 'os.PathLike[str]', BinaryIO]
    filename: Optional[str] = None
    content_type: Optional[str] = None


class _FilePart(NamedTuple):
    head: bytes
    source: Union[str, 'os.PathLike[str]', BinaryIO]
    start: int
    size: int


Part = Union[bytes, _FilePart]


def multipart(fields: Union[Mapping[str, Any], Iterable[Tuple[str, Any]]], *,
              chunk_size: int = CHUNK_SIZE,
              make_boundary: Callable[[], str] = lambda: 'lowhaio-' + secrets.token_hex(16),
              ) -> Tuple[Headers, BodyFunction]:
    """Headers (content-type with the boundary, content-length) and a body function.

    fields: (name, value) pairs, or a mapping. A str value is a text field, sent as UTF-8;
        bytes are sent as they are. A pathlib.Path (any os.PathLike) or a File is a file.
    chunk_size: bytes read from a file at a time.
    make_boundary: makes a boundary; it is made again if it occurs in a text field.

    The body function can be called again (by retry or a 307 redirect): files given by path
    are reopened, file objects rewound to where they were when multipart() was called.
    """
    items = fields.items() if isinstance(fields, Mapping) else fields
    named_parts = [(name, as_part_source(value)) for name, value in items]
    boundary = boundary_not_in(
        [source for _, source in named_parts if isinstance(source, bytes)], make_boundary)
    parts = [part_for(boundary, name, source) for name, source in named_parts]
    closing = b'--%s--\r\n' % (boundary,)
    length = sum(len(part) if isinstance(part, bytes) else len(part.head) + part.size + 2
                 for part in parts) + len(closing)

    async def body(*_: Any, **__: Any) -> AsyncIterator[bytes]:
        for part in parts:
            if isinstance(part, bytes):
                yield part
            else:
                yield part.head
                async for chunk in file_chunks(part, chunk_size):
                    yield chunk
                yield b'\r\n'
        yield closing

    headers = (
        (b'content-type', b'multipart/form-data; boundary=' + boundary),
        (b'content-length', str(length).encode('ascii')),
    )
    return headers, body


def as_part_source(value: Any) -> Union[bytes, File]:
    if isinstance(value, str):
        return value.encode('utf-8')
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, File):
        return value
    if isinstance(value, os.PathLike) or hasattr(value, 'read'):
        return File(value)
    raise MultipartError(f'A field value must be str, bytes, a path or a File, not {value!r}')


def boundary_not_in(contents: List[bytes], make_boundary: Callable[[], str]) -> bytes:
    # Files are not searched (that would mean reading them twice): a 128-bit random boundary
    # occurring in one by chance is not a real risk; text fields are cheap to check
    for _ in range(MAX_BOUNDARY_ATTEMPTS):
        boundary = make_boundary().encode('ascii')
        if not any(boundary in content for content in contents):
            return boundary
    raise MultipartError(f'No boundary absent from the fields in {MAX_BOUNDARY_ATTEMPTS} tries')


def quoted(text: str) -> bytes:
    escaped = UNSAFE_IN_QUOTED.sub(lambda match: '%%%02X' % ord(match.group()),
                                   text.replace('\\', '\\\\'))
    return b'"%s"' % (escaped.encode('utf-8'),)


def part_for(boundary: bytes, name: str, source: Union[bytes, File]) -> Part:
    disposition = b'--%s\r\ncontent-disposition: form-data; name=%s' % (boundary, quoted(name))
    if isinstance(source, bytes):
        return b'%s\r\n\r\n%s\r\n' % (disposition, source)
    filename = source.filename if source.filename is not None else default_filename(source)
    content_type = source.content_type or \
        mimetypes.guess_type(filename)[0] or 'application/octet-stream'
    if re.search('[\x00-\x1f\x7f]', content_type) or not content_type.isascii():
        raise MultipartError(f'Invalid content type for {name!r}: {content_type!r}')
    head = b'%s; filename=%s\r\ncontent-type: %s\r\n\r\n' % (
        disposition, quoted(filename), content_type.encode('ascii'))
    start, size = position_and_size(source.source, name)
    return _FilePart(head, source.source, start, size)


def default_filename(source: File) -> str:
    path = source.source if not hasattr(source.source, 'read') else \
        getattr(source.source, 'name', '')
    return os.path.basename(os.fsdecode(path)) if isinstance(path, (str, os.PathLike)) else ''


def position_and_size(source: Union[str, 'os.PathLike[str]', BinaryIO], name: str
                      ) -> Tuple[int, int]:
    if isinstance(source, io.TextIOBase):
        raise MultipartError(f'Field {name!r}: open the file in binary mode (rb)')
    try:
        if not hasattr(source, 'read'):
            return 0, os.stat(source).st_size  # type: ignore[arg-type,unused-ignore]
        start = source.tell()  # type: ignore[union-attr]
        end = source.seek(0, io.SEEK_END)  # type: ignore[union-attr]
        source.seek(start)  # type: ignore[union-attr]
        return start, end - start
    except (OSError, ValueError) as exception:
        # A pipe or socket has no size to put in content-length, and cannot be replayed
        raise MultipartError(f'Field {name!r}: not a readable, seekable file: {exception!r}') \
            from exception


async def file_chunks(part: _FilePart, chunk_size: int) -> AsyncIterator[bytes]:
    """Exactly part.size bytes from the file, read in a thread so the loop never blocks."""
    loop = asyncio.get_running_loop()
    opened = not hasattr(part.source, 'read')
    # open() is overloaded on its mode, which run_in_executor's signature cannot pick by
    file: BinaryIO = await loop.run_in_executor(
        None, open, part.source, 'rb',  # type: ignore[arg-type]
    ) if opened else part.source  # type: ignore[assignment]
    try:
        await loop.run_in_executor(None, file.seek, part.start)
        remaining = part.size
        while remaining:
            chunk = await loop.run_in_executor(None, file.read, min(chunk_size, remaining))
            if not chunk:
                raise HttpDataError(f'{getattr(file, "name", "A file")} is shorter than when '
                                    f'multipart() measured it ({part.size} bytes)')
            remaining -= len(chunk)
            yield chunk
    finally:
        if opened:
            file.close()
