"""AWS Signature Version 4 signing of lowhaio requests, without signing the payload.

    signed_request = signed(request, credentials=credentials, service='s3', region='eu-west-1')

The same as lowhaio_aws_sigv4.signed, except that the payload is not hashed: the request
carries `x-amz-content-sha256: UNSIGNED-PAYLOAD` and the body streams straight from the body
function, never read in advance. The body is then protected only by TLS, so use https. Unlike
the signed variant, no content-length is added: the caller sets it (or transfer-encoding), as
with lowhaio-aws-sigv4-unsigned-payload.
"""

from __future__ import annotations

from typing import Any, Sequence

from lowhaio import BodyFunction, BodyKwargs, Headers, Params, Request, Response
from lowhaio_aws_sigv4 import (
    UNSIGNED_PAYLOAD,
    Credentials,
    Now,
    aws_sigv4_headers,
    empty_async_iterator,
    empty_body,
    sign,
    utc_now,
)

__all__ = ['UNSIGNED_PAYLOAD', 'aws_sigv4_headers', 'empty_async_iterator', 'signed']


def signed(request: Request, credentials: Credentials, service: str, region: str, *,
           now: Now = utc_now) -> Request:
    """Wrap `request` so that every request is signed with AWS SigV4, the payload unsigned.

    credentials: async function returning (access_key_id, secret_access_key, extra_headers),
        called for each request; extra_headers (e.g. x-amz-security-token) are sent and signed.
    now: the signing time; fixed in tests.
    """

    async def signed_request(method: bytes, url: str, params: Params = (), headers: Headers = (),
                             body: BodyFunction = empty_body, body_args: Sequence[Any] = (),
                             body_kwargs: BodyKwargs = (), **kwargs: Any) -> Response:
        url, signed_headers = await sign(credentials, service, region, now(), method, url,
                                         params, tuple(headers), UNSIGNED_PAYLOAD)
        return await request(method, url, headers=signed_headers, body=body,
                             body_args=body_args, body_kwargs=body_kwargs, **kwargs)

    return signed_request
