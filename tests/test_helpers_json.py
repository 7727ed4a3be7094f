"""lowhaio_json: JSON bodies that real servers parse, responses decoded by orjson or json alike
(every test runs with both backends), size limits that stop reading early, and decoding into
dataclasses, pydantic models and msgspec Structs with errors that name the field."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from typing import Any, List, Optional

import aiohttp
import httpx
import msgspec
import pydantic
import pytest
from aiohttp import web
from asgi_support import uvicorn_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from support import web_server

import lowhaio_json
from lowhaio import HttpDataError, HttpInvalidRequestError, Pool, buffered
from lowhaio_json import JsonError, JsonTooLargeError, JsonTypeError, json_body, read_json
from lowhaio_retry import retry

BACKENDS = ['orjson', 'json']
REPO_ROOT = pathlib.Path(lowhaio_json.__file__).parent


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


# Documents both backends and RFC 8259 agree on
VALID_DOCUMENTS: List[bytes] = [
    b'{}', b'[]', b'0', b'-1.5e3', b'"text"', b'true', b'null',
    b'{"a":[1,2,{"b":null}],"c":"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}',
    b' \n\t{ "spaced" : [ 1 , 2 ] }\r\n ',
    b'"\\u00e9\\ud83d\\ude00\\n\\"\\\\"',
    b'{"dup":1,"dup":2}',
    b'[' + b','.join(b'%d' % n for n in range(10000)) + b']',
    b'9223372036854775807',
]

INVALID_DOCUMENTS = [
    b'', b' ', b'{', b'[1,]', b'{"a":1,}', b"{'a':1}", b'NaN', b'[Infinity]', b'-Infinity',
    b'{"a":1}x', b'[1] [2]', b'\xff', b'"\xc3"', b'\xef\xbb\xbf{}', b'{"a":01}',
    '{"a":1}'.encode('utf-16'), b'"\x00"', b'[' * 100000,
]


def documents_app(documents: List[bytes]) -> web.Application:
    async def document(request: web.Request) -> web.Response:
        return web.Response(body=documents[int(request.match_info['n'])],
                            content_type='application/json')

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        return web.json_response({'content-type': request.headers['content-type'],
                                  'length': request.content_length, 'raw': raw.decode(),
                                  'parsed': await request.json()})
    app = web.Application()
    app.router.add_get('/doc/{n}', document)
    app.router.add_post('/echo', echo)
    return app


@pytest.fixture
async def documents():
    async with web_server(documents_app(VALID_DOCUMENTS + INVALID_DOCUMENTS)) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------

SENT_VALUES = [
    {}, [], {'name': 'lowhaio', 'tags': ['a', 'b'], 'n': 1, 'x': 1.5, 'none': None, 't': True},
    'plain', 'naïve € 😀 "quoted" \\ \n', [[[[[]]]]], 2 ** 62, -0.0, {'k' * 1000: 'v' * 100000},
]


@pytest.mark.parametrize('value', SENT_VALUES, ids=range(len(SENT_VALUES)))
async def test_aiohttp_web_parses_what_json_body_sends(request_, documents, backend, value):
    headers, body = json_body(value, backend=backend)
    code, _, response = await request_(b'POST', documents.url('/echo'), headers=headers,
                                       body=body)
    echoed = json.loads(await buffered(response))
    assert code == b'200'
    assert echoed['parsed'] == value
    assert echoed['content-type'] == 'application/json'
    assert echoed['length'] == len(echoed['raw'].encode())
    assert echoed['raw'] == json.dumps(value, ensure_ascii=False, separators=(',', ':'))


async def test_starlette_parses_it_too_and_the_body_replays(request_, backend):
    received = []

    async def echo(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({'n': len(received)}, status_code=503 if len(received) == 1 else 200)

    value = {'text': 'é' * 1000, 'list': list(range(100))}
    async with uvicorn_server(Starlette(routes=[Route('/', echo, methods=['POST'])])) as server:
        headers, body = json_body(value, backend=backend)
        retrying = retry(request_, retry_statuses=(503,), status_intervals=(0,))
        code, _, response = await retrying(b'POST', server.url('/'), headers=headers, body=body)
        assert (code, await read_json(response, backend=backend)) == (b'200', {'n': 2})
    assert received == [value, value]


@pytest.mark.parametrize('value', [object(), {1j: 2}, b'bytes', {'set': {1}}])
def test_values_json_cannot_hold_are_refused_before_sending(backend, value):
    with pytest.raises(HttpInvalidRequestError, match='Cannot encode as JSON'):
        json_body(value, backend=backend)


@pytest.mark.parametrize('value, as_orjson_writes_it', [
    (float('nan'), None), ([float('inf')], [None]), ({'x': float('-inf')}, {'x': None}),
])
async def test_nan_is_refused_by_json_and_written_as_null_by_orjson(value, as_orjson_writes_it):
    with pytest.raises(HttpInvalidRequestError, match='Out of range float'):
        json_body(value, backend='json')
    headers, body = json_body(value, backend='orjson')
    sent = await buffered(body())
    assert json.loads(sent) == as_orjson_writes_it
    assert dict(headers)[b'content-length'] == b'%d' % len(sent)


def test_an_unknown_backend_is_refused():
    with pytest.raises(HttpInvalidRequestError, match='backend'):
        json_body({}, backend='simplejson')


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('index', range(len(VALID_DOCUMENTS)))
async def test_read_json_agrees_with_aiohttp_and_httpx(request_, documents, backend, index):
    url = documents.url(f'/doc/{index}')
    code, _, body = await request_(b'GET', url)
    value = await read_json(body, backend=backend)
    assert value == json.loads(VALID_DOCUMENTS[index])
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert await response.json() == value
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).json() == value


@pytest.mark.parametrize('index', range(len(INVALID_DOCUMENTS)))
async def test_malformed_json_raises_json_error(request_, documents, backend, index):
    code, _, body = await request_(b'GET', documents.url(f'/doc/{len(VALID_DOCUMENTS) + index}'))
    with pytest.raises(JsonError, match='Invalid JSON') as raised:
        await read_json(body, backend=backend)
    assert isinstance(raised.value, HttpDataError)
    assert request_.status()[('http', '127.0.0.1', documents.port)]['in_use'] == 0


def streaming_app(sent: List[int], total: int, chunk: int) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={'content-type': 'application/json'})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'[')
        try:
            while sent[0] < total:
                await response.write(b'1,' * (chunk // 2))
                sent[0] += chunk
                await asyncio.sleep(0)  # let the client's close reach us
            await response.write(b'1]')
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response
    app = web.Application()
    app.router.add_get('/', stream)
    return app


@pytest.mark.parametrize('max_size', [1, 1000, 100_000])
async def test_a_body_over_max_size_raises_before_it_is_all_read(request_, backend, max_size):
    sent = [0]
    total = 200 * 1024 * 1024
    async with web_server(streaming_app(sent, total, 16384)) as server:
        code, _, body = await request_(b'GET', server.url('/'))
        with pytest.raises(JsonTooLargeError, match=f'max_size \\({max_size} bytes\\)'):
            await read_json(body, max_size=max_size, backend=backend)
        # The connection was closed, not kept to drain: the server stops long before the end
        assert request_.status()[('http', '127.0.0.1', server.port)]['in_use'] == 0
        await asyncio.sleep(0.2)
        assert sent[0] < total / 10


@pytest.mark.parametrize('extra, raises', [(-1, False), (0, False), (1, True)])
async def test_max_size_is_inclusive(request_, documents, backend, extra, raises):
    document = VALID_DOCUMENTS[7]
    code, _, body = await request_(b'GET', documents.url('/doc/7'))
    if raises:
        with pytest.raises(JsonTooLargeError):
            await read_json(body, max_size=len(document) - extra, backend=backend)
    else:
        assert await read_json(body, max_size=len(document) - extra, backend=backend) == \
            json.loads(document)


def run_without(modules: List[str], code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing `modules` fails, as if they were not
    installed."""
    blocker = ''.join(f'sys.modules[{name!r}] = None\n' for name in modules)
    return subprocess.run([sys.executable, '-c', 'import sys\n' + blocker + code],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def test_orjson_is_used_when_installed_and_json_otherwise():
    code = 'import lowhaio_json; print(lowhaio_json.default_backend())'
    assert run_without([], code).stdout.strip() == 'orjson'
    result = run_without(['orjson'], code + '''
import asyncio
headers, body = lowhaio_json.json_body({'a': 'é'})
async def main():
    print(await lowhaio_json.read_json(body()))
asyncio.run(main())
''')
    assert result.stdout.split() == ['json', "{'a':", "'é'}"], result.stderr


def test_as_type_without_msgspec_or_pydantic_names_the_extra():
    result = run_without(['msgspec', 'pydantic'], '''
import asyncio, dataclasses, lowhaio_json
@dataclasses.dataclass
class Point:
    x: int
headers, body = lowhaio_json.json_body({'x': 1})
try:
    asyncio.run(lowhaio_json.read_json(body(), as_type=Point))
except ImportError as error:
    print(error)
''')
    assert 'pip install lowhaio[json]' in result.stdout, result.stderr


# ---------------------------------------------------------------------------------------------
# Into types
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ItemDataclass:
    name: str
    price: float


@dataclasses.dataclass
class OrderDataclass:
    id: int
    items: List[ItemDataclass]
    note: Optional[str] = None


class ItemModel(pydantic.BaseModel):
    name: str
    price: float


class OrderModel(pydantic.BaseModel):
    id: int
    items: List[ItemModel]
    note: Optional[str] = None


class ItemStruct(msgspec.Struct):
    name: str
    price: float


class OrderStruct(msgspec.Struct):
    id: int
    items: List[ItemStruct]
    note: Optional[str] = None


ORDER_TYPES = [OrderDataclass, OrderModel, OrderStruct]
GOOD_ORDER = {'id': 7, 'items': [{'name': 'a', 'price': 1.5}, {'name': 'b', 'price': 2}]}


async def served_json(request_, value: Any):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(value)
    app = web.Application()
    app.router.add_get('/', handler)
    async with web_server(app) as server:
        _, _, body = await request_(b'GET', server.url('/'))
        return await buffered(body)


async def body_of(data: bytes):
    yield data


@pytest.mark.parametrize('as_type', ORDER_TYPES)
async def test_a_fitting_document_becomes_the_type(request_, backend, as_type):
    data = await served_json(request_, GOOD_ORDER)
    order = await read_json(body_of(data), as_type=as_type, backend=backend)
    assert isinstance(order, as_type)
    assert (order.id, order.note, [(item.name, item.price) for item in order.items]) == \
        (7, None, [('a', 1.5), ('b', 2.0)])


BAD_ORDERS = [
    ({'id': 'seven', 'items': []}, '$.id'),
    ({'items': []}, '$'),                      # a missing field: the object it is missing from
    ({'id': 7, 'items': [{'name': 'a', 'price': 1}, {'name': 'b', 'price': 'free'}]},
     '$.items[1].price'),
    ({'id': 7, 'items': {'name': 'a'}}, '$.items'),
    ([1, 2], '$'),
]


@pytest.mark.parametrize('as_type', ORDER_TYPES)
@pytest.mark.parametrize('document, field', BAD_ORDERS, ids=[field for _, field in BAD_ORDERS])
async def test_a_document_that_does_not_fit_names_the_field(request_, backend, as_type, document,
                                                            field):
    data = await served_json(request_, document)
    with pytest.raises(JsonTypeError) as raised:
        await read_json(body_of(data), as_type=as_type, backend=backend)
    error = raised.value
    assert isinstance(error, HttpDataError)
    assert as_type.__name__ in str(error)
    # pydantic reports a missing field at the field itself, msgspec at the enclosing object
    if field == '$' and isinstance(document, dict) and as_type is OrderModel:
        field = '$.id'
    assert error.field == field
    assert field in str(error)


@pytest.mark.parametrize('as_type, value', [
    (List[int], [1, 2, 3]), (dict, {'a': 1}), (Optional[float], None),
])
async def test_other_annotated_types_work_too(backend, as_type, value):
    assert await read_json(body_of(json.dumps(value).encode()), as_type=as_type,
                           backend=backend) == value
    with pytest.raises(JsonTypeError):
        await read_json(body_of(b'"not it"'), as_type=as_type, backend=backend)


def test_without_msgspec_pydantic_converts_dataclasses():
    result = run_without(['msgspec'], '''
import asyncio, dataclasses, typing, lowhaio_json
@dataclasses.dataclass
class Item:
    name: str
    price: float
@dataclasses.dataclass
class Order:
    id: int
    items: typing.List[Item]
async def main():
    headers, body = lowhaio_json.json_body({'id': 7, 'items': [{'name': 'a', 'price': 1}]})
    print(await lowhaio_json.read_json(body(), as_type=Order))
    headers, body = lowhaio_json.json_body({'id': 7, 'items': [{'name': 'a', 'price': 'x'}]})
    try:
        await lowhaio_json.read_json(body(), as_type=Order)
    except lowhaio_json.JsonTypeError as error:
        print(error.field)
asyncio.run(main())
''')
    assert result.stdout.splitlines() == [
        "Order(id=7, items=[Item(name='a', price=1.0)])", '$.items[0].price'], result.stderr
