"""The helpers stacked: retry(redirectable(signed(request))), and chunked bodies through
retry and redirect. Each wrapper has the signature of `request`, so any order type-checks;
these tests pin down that the usual order works end to end."""

from __future__ import annotations

import datetime
import os
from typing import List, Tuple

import botocore.auth
import botocore.credentials
import pytest
from aiohttp import web
from botocore.awsrequest import AWSRequest
from support import web_server

# The moto server fixture, shared with the SigV4 tests
from test_helpers_aws_sigv4 import moto, new_bucket_name  # noqa: F401

import lowhaio_aws_sigv4
from lowhaio import Pool, buffered
from lowhaio_chunked import chunked
from lowhaio_redirect import redirectable
from lowhaio_retry import retry

ACCESS_KEY_ID = 'AKIDCOMPOSED'
SECRET_ACCESS_KEY = 'composed-secret'


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


async def no_sleep(_: float) -> None:
    pass


def signature_is_valid(method: str, raw_path: str, headers, body: bytes) -> bool:
    """Recompute the signature from what arrived, as an S3 server does, with botocore."""
    authorization = headers['authorization']
    signed_names = authorization.split('SignedHeaders=')[1].split(',')[0].split(';')
    request = AWSRequest(method=method, url=raw_path, data=body,
                         headers={name: headers[name] for name in signed_names})
    request.context['timestamp'] = headers['x-amz-date']
    credentials = botocore.credentials.Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    auth = botocore.auth.S3SigV4Auth(credentials, 's3', 'us-east-1')
    canonical_request = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical_request), request)
    return authorization.endswith('Signature=' + expected)


async def credentials():
    return ACCESS_KEY_ID, SECRET_ACCESS_KEY, ()


async def test_redirect_then_retry_each_request_signed_afresh(request_):
    received: List[Tuple[str, str, bool, bytes]] = []
    unavailable_once = [True]

    async def record(request: web.Request) -> bytes:
        body = await request.read()
        received.append((request.method, request.raw_path,
                         signature_is_valid(request.method, request.raw_path, request.headers,
                                            body), body))
        return body

    async def old(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=307, headers={'location': '/new/key?v=2'})

    async def new(request: web.Request) -> web.Response:
        body = await record(request)
        if unavailable_once.pop() if unavailable_once else False:
            return web.Response(status=503, body=b'.' * 1_000_000)
        return web.Response(body=b'stored ' + body)

    app = web.Application()
    app.add_routes([web.put('/old/key', old), web.put('/new/key', new)])
    data = os.urandom(100_000)

    async def body(size):
        for start in range(0, len(data), size):
            yield data[start:start + size]

    async with web_server(app) as server:
        composed = retry(
            redirectable(lowhaio_aws_sigv4.signed(request_, credentials, 's3', 'us-east-1')),
            retry_statuses=(503,), status_intervals=(0,), sleep=no_sleep)
        code, _, response = await composed(b'PUT', server.url('/old/key'), body=body,
                                           body_args=(7919,))
        assert (code, await buffered(response)) == (b'200', b'stored ' + data)

    # First attempt: /old, redirected to /new (503); the retry starts again from /old
    assert [(method, path) for method, path, _, _ in received] == [
        ('PUT', '/old/key'), ('PUT', '/new/key?v=2'), ('PUT', '/old/key'), ('PUT', '/new/key?v=2')]
    assert all(valid for _, _, valid, _ in received)
    assert all(sent == data for _, _, _, sent in received)


async def test_wrong_secret_detected_by_the_verifying_server(request_):
    results = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        results.append(signature_is_valid(request.method, request.raw_path, request.headers,
                                          body))
        return web.Response()

    async def wrong_credentials():
        return ACCESS_KEY_ID, 'not-the-secret', ()

    app = web.Application()
    app.add_routes([web.get('/k', handler)])
    async with web_server(app) as server:
        for creds in (credentials, wrong_credentials):
            signed_request = lowhaio_aws_sigv4.signed(request_, creds, 's3', 'us-east-1')
            _, _, body = await signed_request(b'GET', server.url('/k'))
            await buffered(body)
    assert results == [True, False]


async def test_chunked_body_resent_through_redirect_and_retry(request_):
    received: List[Tuple[str, str, bytes]] = []
    statuses = [307, 503, 307, 200]

    async def handler(request: web.Request) -> web.Response:
        received.append((request.path, request.headers.get('transfer-encoding'),
                         await request.read()))
        status = statuses.pop(0)
        if status == 307:
            return web.Response(status=307, headers={'location': '/b'})
        return web.Response(status=status, body=b'done' if status == 200 else b'busy')

    app = web.Application()
    app.add_routes([web.post('/a', handler), web.post('/b', handler)])

    async def parts(*chunks):
        for chunk in chunks:
            yield chunk

    async with web_server(app) as server:
        composed = retry(redirectable(request_), retry_statuses=(503,), status_intervals=(0,),
                         sleep=no_sleep)
        code, _, body = await composed(
            b'POST', server.url('/a'), headers=((b'transfer-encoding', b'chunked'),),
            body=chunked(parts), body_args=(b'one', b'', b'two'))
        assert (code, await buffered(body)) == (b'200', b'done')
    assert received == [('/a', 'chunked', b'onetwo'), ('/b', 'chunked', b'onetwo')] * 2


async def test_composed_upload_and_download_against_moto(moto, request_):  # noqa: F811
    composed = retry(redirectable(lowhaio_aws_sigv4.signed(
        request_, moto.credentials(), 's3', 'us-east-1')))
    bucket = new_bucket_name()
    code, _, body = await composed(b'PUT', moto.url(f'/{bucket}'))
    await buffered(body)
    assert code == b'200'

    data = os.urandom(200_000)

    async def body_function():
        for start in range(0, len(data), 30_000):
            yield data[start:start + 30_000]

    code, _, body = await composed(b'PUT', moto.url(f'/{bucket}/composed key'),
                                   body=body_function)
    await buffered(body)
    assert code == b'200'
    code, _, body = await composed(b'GET', moto.url(f'/{bucket}/composed key'))
    assert (code, await buffered(body)) == (b'200', data)


def test_signing_time_is_utc_now_by_default():
    before = datetime.datetime.now(datetime.timezone.utc)
    now = lowhaio_aws_sigv4.utc_now()
    assert now.tzinfo is not None and before <= now
