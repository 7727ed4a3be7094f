"""Every helper wraps any coroutine function with request's arguments, not only `request`.

A common use (as with lowhaio-retry 0.0.5) is to wrap a function that makes the request *and
reads the body*, so that a failure mid-body is retried too. Such a function returns
`(code, headers, bytes)`, or anything else it likes. A helper that only adds to the request
(signing, redirects it cannot see, retries on exceptions) must hand that result back untouched.
Only status-based retry needs the `(code, headers, body)` shape, and says so clearly.

Matrix: each helper x each kind of result x (for retry) with and without status rules.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, Callable, List

import pytest
from aiohttp import web
from support import scripted_server, web_server

import lowhaio_aws_sigv4
import lowhaio_aws_sigv4_unsigned_payload
from lowhaio import HttpDataError, Pool, buffered, streamed
from lowhaio_redirect import redirectable
from lowhaio_retry import retry


@pytest.fixture
async def request_():
    request, close = Pool()
    yield request
    await close()


def counting_app(seen: List[str]) -> web.Application:
    """/redirect redirects to /target; everything else answers 200 with its path."""
    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        await request.read()
        if request.path == '/redirect':
            raise web.HTTPFound('/target')
        return web.Response(body=b'path=' + request.path.encode())
    app = web.Application()
    app.router.add_route('*', '/{tail:.*}', handler)
    return app


# What a wrapped function may return, made from a real response: (name, function of
# (code, headers, body bytes)). Each kind must reach the caller as the function returned it.
RESULT_KINDS = {
    'read body as bytes': lambda code, headers, body: (code, headers, body),
    'dict': lambda code, headers, body: {'code': code, 'body': body},
    'bytes': lambda code, headers, body: body,
    'None': lambda code, headers, body: None,
    'pair': lambda code, headers, body: (code, body),
    'int code and str body': lambda code, headers, body: (int(code), headers, body.decode()),
}


def reading(request: Callable[..., Any], shape: Callable[..., Any],
            calls: List[str]) -> Callable[..., Any]:
    """A coroutine function with request's signature that reads the body, and returns `shape`
    of the response."""
    async def read_whole(method: bytes, url: str, **kwargs: Any) -> Any:
        calls.append(url)
        code, headers, body = await request(method, url, **kwargs)
        return shape(code, headers, await buffered(body))
    return read_whole


FIXED_TIME = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


async def aws_credentials():
    return 'AKIDEXAMPLE', 'secret', ()


HELPERS = {
    'retry': lambda request: retry(request),
    'retry with exception rules': lambda request: retry(
        request, exception_intervals=((HttpDataError, (0, 0)),)),
    'redirectable': lambda request: redirectable(request),
    'aws_sigv4.signed': lambda request: lowhaio_aws_sigv4.signed(
        request, aws_credentials, 's3', 'eu-west-2', now=lambda: FIXED_TIME),
    'aws_sigv4_unsigned_payload.signed': lambda request:
        lowhaio_aws_sigv4_unsigned_payload.signed(
            request, aws_credentials, 's3', 'eu-west-2', now=lambda: FIXED_TIME),
    'all stacked': lambda request: retry(redirectable(lowhaio_aws_sigv4.signed(
        request, aws_credentials, 's3', 'eu-west-2', now=lambda: FIXED_TIME))),
}


@pytest.mark.parametrize('kind', list(RESULT_KINDS))
@pytest.mark.parametrize('helper', list(HELPERS))
async def test_a_result_that_is_not_a_response_passes_through_untouched(request_, helper, kind):
    seen: List[str] = []
    calls: List[str] = []
    shape = RESULT_KINDS[kind]
    async with web_server(counting_app(seen)) as server:
        wrapped = HELPERS[helper](reading(request_, shape, calls))
        result = await wrapped(b'PUT', server.url('/plain'),
                               headers=((b'content-length', b'5'),), body=streamed(b'hello'))
    expected_body = b'path=/plain'
    if kind == 'read body as bytes':
        assert result[0] == b'200' and result[2] == expected_body
        assert (b'content-type', b'application/octet-stream') in result[1]
    elif kind == 'dict':
        assert result == {'code': b'200', 'body': expected_body}
    elif kind == 'bytes':
        assert result == expected_body
    elif kind == 'None':
        assert result is None
    elif kind == 'pair':
        assert result == (b'200', expected_body)
    else:
        assert result[0] == 200 and result[2] == expected_body.decode()
    assert seen == ['/plain'] and len(calls) == 1


async def test_a_redirect_whose_body_was_read_by_the_wrapped_function_is_still_followed(
        request_):
    seen: List[str] = []
    calls: List[str] = []
    async with web_server(counting_app(seen)) as server:
        wrapped = redirectable(reading(request_, RESULT_KINDS['read body as bytes'], calls))
        code, _, body = await wrapped(b'GET', server.url('/redirect'))
    assert (code, body) == (b'200', b'path=/target')
    assert seen == ['/redirect', '/target']


@pytest.mark.parametrize('kind', ['dict', 'None', 'pair', 'int code and str body', 'bytes'])
async def test_status_retry_says_clearly_that_it_needs_a_response(request_, kind):
    seen: List[str] = []
    async with web_server(counting_app(seen)) as server:
        wrapped = retry(reading(request_, RESULT_KINDS[kind], []), retry_statuses=(503,))
        with pytest.raises(TypeError, match=r'retry_statuses needs .*\(code: bytes, headers, '
                                            r'body\)'):
            await wrapped(b'GET', server.url('/plain'))


async def test_status_retry_works_on_responses_whose_body_was_read(request_):
    answers = iter([503, 503, 200])

    async def handler(request: web.Request) -> web.Response:
        status = next(answers)
        return web.Response(status=status, body=b'status %d' % status)
    app = web.Application()
    app.router.add_get('/', handler)
    sleeps: List[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
    async with web_server(app) as server:
        wrapped = retry(reading(request_, RESULT_KINDS['read body as bytes'], []),
                        retry_statuses=(503,), status_intervals=(0.5, 0.5, 0.5), sleep=sleep)
        code, _, body = await wrapped(b'GET', server.url('/'))
    assert (code, body, sleeps) == (b'200', b'status 200', [0.5, 0.5])


@pytest.mark.parametrize('failures', [1, 3])
async def test_a_failure_mid_body_is_retried_when_the_wrapped_function_reads_the_body(
        request_, failures):
    """The reason to wrap a function that reads the body: the server cuts the body short
    `failures` times, then sends it whole; the caller gets the whole body."""
    body = b'x' * 100_000
    attempts = 0

    async def handler(connection: Any) -> None:
        nonlocal attempts
        await connection.read_request()
        attempts += 1
        head = b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % len(body)
        if attempts <= failures:
            connection.write(head + body[:1000])
            await connection.drain()
            connection.close()
        else:
            connection.write(head + body)
            await connection.drain()

    async with scripted_server(handler) as server:
        wrapped = retry(reading(request_, RESULT_KINDS['read body as bytes'], []),
                        exception_intervals=((HttpDataError, (0,) * failures),))
        code, _, received = await asyncio.wait_for(
            wrapped(b'GET', server.url('/')), 10)
    assert (code, received, attempts) == (b'200', body, failures + 1)
