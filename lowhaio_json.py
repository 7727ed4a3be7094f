"""JSON request bodies and responses for lowhaio.

    headers, body = json_body({'name': 'lowhaio'})
    code, response_headers, response = await request(b'POST', url, headers=headers, body=body)
    value = await read_json(response, max_size=1_000_000)
    user = await read_json(response, as_type=User)    # a dataclass, pydantic model or Struct

orjson encodes and decodes when it is installed (`pip install lowhaio[json]`), the standard
library's json otherwise; `backend='json'` or `backend='orjson'` chooses explicitly. Decoding
into a type uses msgspec for msgspec.Struct, pydantic for pydantic models, and whichever of
the two is installed for dataclasses and other annotated types.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any, AsyncIterator, Optional, Tuple

from lowhaio import BodyFunction, Headers, HttpDataError, HttpInvalidRequestError

DEFAULT_MAX_SIZE: int = 16 * 1024 * 1024
BACKENDS: Tuple[str, ...] = ('orjson', 'json')


class JsonError(HttpDataError):
    """A response body that is not the JSON expected: malformed, too large, or not of the
    type asked for."""


class JsonTooLargeError(JsonError):
    """The body was larger than max_size; it was closed, not read to the end."""


class JsonTypeError(JsonError):
    """The JSON did not fit `as_type`. `field` is where, as `$.items[2].price` (`$` for the
    whole value)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field: str = field


def default_backend() -> str:
    try:
        importlib.import_module('orjson')
    except ImportError:
        return 'json'
    return 'orjson'


def chosen_backend(backend: Optional[str]) -> str:
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise HttpInvalidRequestError(f'backend must be one of {BACKENDS}, not {backend!r}')
    return backend


# Encoding

def json_body(obj: Any, *, backend: Optional[str] = None) -> Tuple[Headers, BodyFunction]:
    """Headers and body function for sending `obj` as JSON (UTF-8, no whitespace).

    Returns ((content-type, content-length), body). The bytes are encoded once, now, and the
    body function can be called any number of times, so retries and redirects resend it.
    A value the encoder cannot encode raises HttpInvalidRequestError. NaN and infinities are
    not JSON: json refuses them, orjson writes them as null.
    """
    data = encoded(obj, chosen_backend(backend))

    async def body(*_: Any, **__: Any) -> AsyncIterator[bytes]:
        yield data

    headers = ((b'content-type', b'application/json'),
               (b'content-length', str(len(data)).encode('ascii')))
    return headers, body


def encoded(obj: Any, backend: str) -> bytes:
    try:
        if backend == 'orjson':
            return importlib.import_module('orjson').dumps(obj)  # type: ignore[no-any-return]
        # As compact as orjson's, and NaN refused rather than written as invalid JSON
        return json.dumps(obj, ensure_ascii=False, separators=(',', ':'),
                          allow_nan=False).encode('utf-8')
    except (TypeError, ValueError) as exception:  # orjson.JSONEncodeError is a TypeError
        raise HttpInvalidRequestError(f'Cannot encode as JSON: {exception}') from exception


# Decoding

async def read_json(body: AsyncIterator[bytes], max_size: int = DEFAULT_MAX_SIZE, *,
                    as_type: Any = None, backend: Optional[str] = None) -> Any:
    """The JSON value of a response body, read to its end.

    max_size: the most bytes read; past it JsonTooLargeError is raised at once and the body
        closed, without reading the rest.
    as_type: a dataclass, a pydantic model, a msgspec.Struct, or another type msgspec or
        pydantic can validate (list[int], ...): the value is converted to it, or
        JsonTypeError names the field that did not fit.
    backend: 'orjson' or 'json'; by default orjson when it is installed.

    The body must be UTF-8 (RFC 8259 section 8.1); NaN and Infinity are rejected by both
    backends, as orjson does.
    """
    value = decoded(await read_at_most(body, max_size), chosen_backend(backend))
    return value if as_type is None else converted(value, as_type)


async def read_at_most(body: AsyncIterator[bytes], max_size: int) -> bytes:
    chunks = []
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > max_size:
                raise JsonTooLargeError(f'JSON body larger than max_size ({max_size} bytes)')
            chunks.append(chunk)
    finally:
        # Closes the connection when the body was abandoned; a no-op once it was read
        aclose = getattr(body, 'aclose', None)
        if aclose is not None:
            await aclose()
    return b''.join(chunks)


def decoded(data: bytes, backend: str) -> Any:
    try:
        if backend == 'orjson':
            return importlib.import_module('orjson').loads(data)
        return json.loads(data.decode('utf-8'), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exception:
        # JSONDecodeError, orjson's, UnicodeDecodeError; json recurses once per nested array
        # or object, so '[' * 100000 exhausts the stack (orjson stops at 1024 levels itself)
        raise JsonError(f'Invalid JSON: {exception}') from exception


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not JSON')


def converted(value: Any, as_type: Any) -> Any:
    if _is_msgspec_struct(as_type):
        return _converted_by_msgspec(value, as_type)
    if _is_pydantic_model(as_type):
        return _converted_by_pydantic(value, as_type)
    for library, convert in (('msgspec', _converted_by_msgspec),
                             ('pydantic', _converted_by_pydantic)):
        try:
            importlib.import_module(library)
        except ImportError:
            continue
        return convert(value, as_type)
    raise ImportError('as_type needs msgspec or pydantic: pip install lowhaio[json]')


def _is_msgspec_struct(as_type: Any) -> bool:
    try:
        msgspec = importlib.import_module('msgspec')
    except ImportError:
        return False
    return isinstance(as_type, type) and issubclass(as_type, msgspec.Struct)


def _is_pydantic_model(as_type: Any) -> bool:
    try:
        pydantic = importlib.import_module('pydantic')
    except ImportError:
        return False
    return isinstance(as_type, type) and issubclass(as_type, pydantic.BaseModel)


_MSGSPEC_PATH = re.compile(r' - at `(?P<path>[^`]*)`$')


def _converted_by_msgspec(value: Any, as_type: Any) -> Any:
    msgspec = importlib.import_module('msgspec')
    try:
        return msgspec.convert(value, as_type)
    except msgspec.ValidationError as exception:
        message = str(exception)
        match = _MSGSPEC_PATH.search(message)
        field = match.group('path') if match else '$'
        raise JsonTypeError(f'JSON does not fit {_name(as_type)} at {field}: '
                            f'{_MSGSPEC_PATH.sub("", message)}', field) from exception


def _converted_by_pydantic(value: Any, as_type: Any) -> Any:
    pydantic = importlib.import_module('pydantic')
    try:
        if _is_pydantic_model(as_type):
            return as_type.model_validate(value)
        return pydantic.TypeAdapter(as_type).validate_python(value)
    except pydantic.ValidationError as exception:
        first = exception.errors()[0]
        field = _json_path(first['loc'])
        raise JsonTypeError(f'JSON does not fit {_name(as_type)} at {field}: {first["msg"]}'
                            f' ({exception.error_count()} error(s))', field) from exception


def _json_path(location: Tuple[Any, ...]) -> str:
    return '$' + ''.join(f'[{part}]' if isinstance(part, int) else f'.{part}'
                         for part in location)


def _name(as_type: Any) -> str:
    return getattr(as_type, '__name__', repr(as_type))
