"""lowhaio_multipart: forms that aiohttp.web and starlette (python-multipart, under uvicorn)
parse back to exactly what was given, names that cannot break the part headers, files streamed
from disk with the length known in advance, and replays for retries and redirects."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tracemalloc
from typing import Any, Dict, List, Tuple

import aiohttp
import httpx
import pytest
from aiohttp import web
from asgi_support import servers_in_a_thread, uvicorn_server
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from support import web_server

from lowhaio import HttpDataError, HttpInvalidRequestError, Pool, buffered
from lowhaio_multipart import File, MultipartError, multipart
from lowhaio_redirect import redirectable
from lowhaio_retry import retry

Parsed = List[List[Any]]  # [name, filename or None, content type or None, size, sha256]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Servers that parse the form and say what they found
# ---------------------------------------------------------------------------------------------

def aiohttp_app() -> web.Application:
    """/stream parses with request.multipart(), part by part; /post with request.post()."""
    async def stream(request: web.Request) -> web.Response:
        parts: Parsed = []
        reader = await request.multipart()
        async for part in reader:
            hashed, size = hashlib.sha256(), 0
            while chunk := await part.read_chunk(65536):
                hashed.update(chunk)
                size += len(chunk)
            parts.append([part.name, part.filename,
                          part.headers.get('content-type') if part.filename else None,
                          size, hashed.hexdigest()])
        return web.json_response(parts)

    async def post(request: web.Request) -> web.Response:
        parts: Parsed = []
        for name, value in (await request.post()).items():
            if isinstance(value, str):
                parts.append([name, None, None, len(value.encode()), digest(value.encode())])
            else:
                data = value.file.read()
                parts.append([name, value.filename, value.content_type, len(data),
                              digest(data)])
        return web.json_response(parts)

    app = web.Application(client_max_size=1024 ** 3)
    app.router.add_post('/stream', stream)
    app.router.add_post('/post', post)
    return app


async def starlette_form(request: Request) -> JSONResponse:
    parts: Parsed = []
    async with request.form(max_part_size=16 * 1024 * 1024) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                parts.append([name, value.filename, value.content_type, len(data),
                              digest(data)])
            else:
                parts.append([name, None, None, len(value.encode()), digest(value.encode())])
    return JSONResponse(parts)


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


@pytest.fixture(scope='module')
def servers():
    """url of each form-parsing endpoint, by name: shared by the module's tests, in a thread."""
    starlette = Starlette(routes=[Route('/', starlette_form, methods=['POST'])])
    with servers_in_a_thread(lambda: web_server(aiohttp_app()),
                             lambda: uvicorn_server(starlette)) as (aio, asgi):
        yield {'aiohttp-multipart': aio.url('/stream'), 'aiohttp-post': aio.url('/post'),
               'starlette': asgi.url('/')}


SERVERS = ['aiohttp-multipart', 'aiohttp-post', 'starlette']


async def posted(request, url: str, fields: Any, **kwargs: Any) -> Parsed:
    headers, body = multipart(fields, **kwargs)
    code, _, response = await request(b'POST', url, headers=headers, body=body)
    text = await buffered(response)
    assert code == b'200', text
    return json.loads(text)


@pytest.fixture
def files(tmp_path: pathlib.Path) -> Dict[str, bytes]:
    contents = {
        'empty.bin': b'',
        'small.txt': b'hello\r\n--not-a-boundary\r\n',
        'random.bin': os.urandom(300_001),
        'photo.jpg': b'\xff\xd8\xff' + os.urandom(70_000),
    }
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return contents


# ---------------------------------------------------------------------------------------------
# What the servers parse
# ---------------------------------------------------------------------------------------------

FIELD_KINDS = ['text', 'bytes', 'empty-text', 'path', 'str-path-in-File', 'open-file',
               'open-file-midway', 'File-named-and-typed', 'empty-file']


def field_of_kind(kind: str, tmp_path: pathlib.Path, files: Dict[str, bytes]
                  ) -> Tuple[Any, List[Any]]:
    """(value to give multipart, [filename, content type, content] the server should see)."""
    random_data = files['random.bin']
    if kind == 'text':
        return 'naïve text 😀\r\nline two', [None, None, 'naïve text 😀\r\nline two'.encode()]
    if kind == 'bytes':
        return b'\x00 raw \xc3\xa9', [None, None, b'\x00 raw \xc3\xa9']
    if kind == 'empty-text':
        return '', [None, None, b'']
    if kind == 'path':
        return tmp_path / 'photo.jpg', ['photo.jpg', 'image/jpeg', files['photo.jpg']]
    if kind == 'str-path-in-File':
        return File(str(tmp_path / 'small.txt')), ['small.txt', 'text/plain', files['small.txt']]
    if kind == 'open-file':
        return open(tmp_path / 'random.bin', 'rb'), \
            ['random.bin', 'application/octet-stream', random_data]
    if kind == 'open-file-midway':
        file = open(tmp_path / 'random.bin', 'rb')
        file.seek(1000)
        return file, ['random.bin', 'application/octet-stream', random_data[1000:]]
    if kind == 'File-named-and-typed':
        return File(tmp_path / 'random.bin', filename='report.csv', content_type='text/csv'), \
            ['report.csv', 'text/csv', random_data]
    assert kind == 'empty-file'
    return tmp_path / 'empty.bin', ['empty.bin', 'application/octet-stream', b'']


def expected_part(name: str, seen: List[Any]) -> List[Any]:
    filename, content_type, data = seen
    return [name, filename, content_type, len(data), digest(data)]


@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('kind', FIELD_KINDS)
async def test_each_kind_of_field_arrives_as_given(request_, servers, tmp_path, files, server,
                                                   kind):
    value, seen = field_of_kind(kind, tmp_path, files)
    try:
        parsed = await posted(request_, servers[server],
                              [('before', 'x'), ('field', value), ('after', 'y')])
    finally:
        if hasattr(value, 'close'):
            value.close()
    assert parsed == [expected_part('before', [None, None, b'x']), expected_part('field', seen),
                      expected_part('after', [None, None, b'y'])]


# Names and filenames that would break a naive quoted-string, or the header line
HOSTILE_NAMES = ['q"uote', '"', 'back\\slash', '\\"', 'new\nline', 'cr\rlf\r\n', 'tab\tx',
                 'nul\x00x', 'naïve ünïcode 😀', '%22already-encoded', 'semi;colon=x; name="y"',
                 '', ' ', 'a' * 1000]
# What servers see: HTML's form encoding percent-encodes '"', CR and LF (browsers do the same);
# lowhaio also the other control characters
SEEN_AS = {'q"uote': 'q%22uote', '"': '%22', '\\"': '\\%22', 'new\nline': 'new%0Aline',
           'cr\rlf\r\n': 'cr%0Dlf%0D%0A', 'tab\tx': 'tab%09x', 'nul\x00x': 'nul%00x',
           'semi;colon=x; name="y"': 'semi;colon=x; name=%22y%22'}


# aiohttp warns that it cannot parse the header it then refuses (or reads without the name)
@pytest.mark.filterwarnings('ignore::aiohttp.multipart.BadContentDispositionHeader')
@pytest.mark.parametrize('server', SERVERS)
@pytest.mark.parametrize('name', HOSTILE_NAMES, ids=[repr(name)[:20] for name in HOSTILE_NAMES])
async def test_names_and_filenames_cannot_break_the_part_head(request_, servers, server, name):
    url = servers[server]
    headers, body = multipart([
        (name, 'text'),
        (name, File(io.BytesIO(b'data'), filename=name, content_type='text/plain')),
        ('next', 'intact')])
    code, _, response = await request_(b'POST', url, headers=headers, body=body)
    parsed = await buffered(response)
    # httpx encodes names the same way: each server makes of it what it makes of httpx's
    async with httpx.AsyncClient() as client:
        by_httpx = await client.post(url, files=[
            (name, (None, b'text')), (name, (name, b'data', 'text/plain')),
            ('next', (None, b'intact'))])
    if name:  # httpx leaves out an empty filename; lowhaio sends filename="", as browsers do
        assert (code, parsed) == (str(by_httpx.status_code).encode(), by_httpx.content)
    if code != b'200':
        return  # aiohttp's post() refuses 'semi;colon=x; name="y"' from either client
    parts = json.loads(parsed)
    # Nothing leaked out of a name into another header or part
    assert parts[-1] == expected_part('next', [None, None, b'intact'])
    assert len(parts) <= 3
    if server == 'starlette' and name:
        # python-multipart reads quoted-strings by RFC 9110: exactly what was sent
        expected = SEEN_AS.get(name, name)
        assert [part[:3] for part in parts] == [
            [expected, None, None], [expected, expected, 'text/plain'], ['next', None, None]]


async def test_the_same_form_parses_the_same_as_aiohttps_and_httpxs(request_, servers, tmp_path,
                                                                    files):
    lowhaio_parsed = await posted(request_, servers['starlette'], [
        ('title', 'Holiday é'), ('photo', tmp_path / 'photo.jpg'),
        ('data', File(tmp_path / 'random.bin', content_type='application/octet-stream'))])
    async with httpx.AsyncClient() as client:
        httpx_parsed = (await client.post(servers['starlette'], data={'title': 'Holiday é'},
                                          files=[('photo', ('photo.jpg', files['photo.jpg'],
                                                            'image/jpeg')),
                                                 ('data', ('random.bin', files['random.bin'],
                                                           'application/octet-stream'))])).json()
    form = aiohttp.FormData()
    form.add_field('title', 'Holiday é')
    form.add_field('photo', files['photo.jpg'], filename='photo.jpg', content_type='image/jpeg')
    form.add_field('data', files['random.bin'], filename='random.bin',
                   content_type='application/octet-stream')
    async with aiohttp.ClientSession() as session:
        async with session.post(servers['starlette'], data=form) as response:
            aiohttp_parsed = await response.json()
    assert lowhaio_parsed == httpx_parsed == aiohttp_parsed


async def test_a_mapping_of_fields_works_too(request_, servers):
    parsed = await posted(request_, servers['aiohttp-multipart'], {'a': '1', 'b': b'2'})
    assert [part[0] for part in parsed] == ['a', 'b']


# ---------------------------------------------------------------------------------------------
# Length and boundary
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kinds', [[], ['text'], ['path', 'empty-file'], FIELD_KINDS])
async def test_content_length_is_exact_and_known_in_advance(tmp_path, files, kinds):
    fields = [(f'f{index}', field_of_kind(kind, tmp_path, files)[0])
              for index, kind in enumerate(kinds)]
    headers, body = multipart(fields)
    sent = await buffered(body())
    assert dict(headers)[b'content-length'] == b'%d' % len(sent)
    assert b'transfer-encoding' not in dict(headers)
    boundary = dict(headers)[b'content-type'].split(b'boundary=')[1]
    assert sent.endswith(b'--%s--\r\n' % boundary)
    for _, value in fields:
        if hasattr(value, 'close'):
            value.close()


async def test_a_boundary_found_in_a_text_field_is_replaced(request_, servers):
    candidates = iter(['in-the-text', 'also-in-the-text', 'free-boundary'])
    headers, _ = multipart([('a', 'xx in-the-text'), ('b', b'also-in-the-text')],
                           make_boundary=lambda: next(candidates))
    assert dict(headers)[b'content-type'] == b'multipart/form-data; boundary=free-boundary'
    parsed = await posted(request_, servers['starlette'], [('a', '--same--')],
                          make_boundary=iter(['same', 'other']).__next__)
    assert parsed == [expected_part('a', [None, None, b'--same--'])]


def test_when_every_boundary_collides_it_says_so():
    with pytest.raises(MultipartError, match='boundary'):
        multipart([('a', 'x')], make_boundary=lambda: 'x')


def test_the_default_boundary_is_random():
    boundaries = {dict(multipart([('a', 'b')])[0])[b'content-type'] for _ in range(100)}
    assert len(boundaries) == 100


# ---------------------------------------------------------------------------------------------
# Hostile or broken inputs
# ---------------------------------------------------------------------------------------------

def test_unsendable_fields_are_refused_before_anything_is_sent(tmp_path):
    read_end, write_end = os.pipe()
    pipe = os.fdopen(read_end, 'rb')
    text_file = open(tmp_path / 'text.txt', 'w+')
    try:
        for fields, message in [
            ([('f', tmp_path / 'missing')], 'seekable'),
            ([('f', pipe)], 'seekable'),
            ([('f', text_file)], 'binary mode'),
            ([('f', 12)], 'must be str, bytes'),
            ([('f', None)], 'must be str, bytes'),
            ([('f', File(io.BytesIO(b''), content_type='text/plain\r\nx-injected: 1'))],
             'content type'),
            ([('f', File(io.BytesIO(b''), content_type='tëxt/plain'))], 'content type'),
        ]:
            with pytest.raises(MultipartError, match=message) as raised:
                multipart(fields)
            assert isinstance(raised.value, HttpInvalidRequestError)
    finally:
        pipe.close()
        os.close(write_end)
        text_file.close()


async def test_a_file_that_shrinks_before_sending_raises(request_, servers, tmp_path):
    path = tmp_path / 'shrinks.bin'
    path.write_bytes(b'x' * 100_000)
    headers, body = multipart([('f', path)])
    path.write_bytes(b'x' * 10)
    with pytest.raises(HttpDataError, match='shorter than when multipart'):
        await request_(b'POST', servers['aiohttp-multipart'], headers=headers, body=body)


async def test_a_file_that_grows_is_sent_as_it_was_measured(request_, servers, tmp_path):
    path = tmp_path / 'grows.log'
    path.write_bytes(b'line\n' * 1000)
    headers, body = multipart([('f', path)])
    with open(path, 'ab') as file:
        file.write(b'more\n' * 1000)
    parsed = await posted(request_, servers['aiohttp-multipart'], [('f', path)])
    assert parsed[0][3] == 10_000  # a fresh multipart() measures it again
    code, _, response = await request_(b'POST', servers['aiohttp-multipart'], headers=headers,
                                       body=body)
    assert code == b'200'
    assert json.loads(await buffered(response))[0][3] == 5000


# ---------------------------------------------------------------------------------------------
# Replays, and memory
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['path', 'open-file', 'open-file-midway'])
async def test_the_body_replays_for_retry_and_307(request_, tmp_path, files, kind):
    received: List[str] = []

    async def handler(request: web.Request) -> web.Response:
        parts = []
        async for part in await request.multipart():
            parts.append(digest(await part.read()))
        received.append(' '.join(parts))
        if len(received) == 1:
            return web.Response(status=503)
        if len(received) == 2:
            return web.Response(status=307, headers={'location': '/again'})
        return web.Response(body=b'ok')

    app = web.Application()
    app.router.add_post('/{tail:.*}', handler)
    value, seen = field_of_kind(kind, tmp_path, files)
    async with web_server(app) as server:
        headers, body = multipart([('t', 'text'), ('f', value)])
        composed = retry(redirectable(request_), retry_statuses=(503,), status_intervals=(0,))
        code, _, response = await composed(b'POST', server.url('/'), headers=headers, body=body)
        assert (code, await buffered(response)) == (b'200', b'ok')
    if hasattr(value, 'close'):
        value.close()
    assert received == [f'{digest(b"text")} {digest(seen[2])}'] * 3


LARGE_FILE_SIZE = 256 * 1024 * 1024


async def test_a_large_file_streams_in_bounded_memory(request_, servers, tmp_path):
    path = tmp_path / 'sparse.bin'
    with open(path, 'wb') as file:  # sparse: no disk used, and all zeros when read
        file.truncate(LARGE_FILE_SIZE)
    tracemalloc.start()
    try:
        parsed = await posted(request_, servers['aiohttp-multipart'],
                              [('name', 'big'), ('f', path)], chunk_size=65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed[1][3] == LARGE_FILE_SIZE
    zeros = hashlib.sha256()
    for _ in range(LARGE_FILE_SIZE // 65536):
        zeros.update(bytes(65536))
    assert parsed[1][4] == zeros.hexdigest()
    # Client and server together, in this process: a few chunks and buffers, not the file
    assert peak < 16 * 1024 * 1024, peak
