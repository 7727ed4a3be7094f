"""AWS SigV4 signing: lowhaio_aws_sigv4 (payload signed) and lowhaio_aws_sigv4_unsigned_payload.

Signatures are checked against botocore's SigV4Auth / S3SigV4Auth, given the same request and
the same time. Then, end to end, against a moto S3 server with authentication switched on, which
recomputes every signature from the request it received and rejects a wrong one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
from typing import Dict, List, Optional, Sequence, Tuple

import botocore.auth
import botocore.config
import botocore.credentials
import pytest
from botocore.awsrequest import AWSRequest

import lowhaio_aws_sigv4
import lowhaio_aws_sigv4_unsigned_payload
from lowhaio import Pool, buffered, streamed

FIXED_TIME = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.timezone.utc)
ACCESS_KEY_ID = 'AKIDEXAMPLE'
SECRET_ACCESS_KEY = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY'
SESSION_TOKEN = 'session/token+with=odd chars'


# ---------------------------------------------------------------------------------------------
# Running the signers without a network: the wrapped request records what it is given
# ---------------------------------------------------------------------------------------------

class Recorded:
    def __init__(self) -> None:
        self.calls: List[Tuple[bytes, str, dict]] = []

    async def request(self, method: bytes, url: str, **kwargs):
        body = kwargs.get('body')
        sent = b''
        if body is not None:
            sent = b''.join([chunk async for chunk in body(
                *kwargs.get('body_args', ()), **dict(kwargs.get('body_kwargs', ())))])
        self.calls.append((method, url, dict(kwargs, sent=sent)))
        return b'200', (), streamed(b'')()

    @property
    def headers(self) -> Dict[str, List[str]]:
        result: Dict[str, List[str]] = {}
        for key, value in self.calls[-1][2]['headers']:
            result.setdefault(key.decode().lower(), []).append(value.decode())
        return result

    @property
    def url(self) -> str:
        return self.calls[-1][1]


def credentials_function(token: Optional[str] = None):
    async def credentials():
        extra = () if token is None else ((b'x-amz-security-token', token.encode()),)
        return ACCESS_KEY_ID, SECRET_ACCESS_KEY, extra
    return credentials


async def sign_with_lowhaio(method: bytes, url: str, *, params=(), headers=(), body: bytes = b'',
                            service: str = 's3', region: str = 'eu-west-2',
                            token: Optional[str] = None, unsigned: bool = False) -> Recorded:
    recorded = Recorded()
    module = lowhaio_aws_sigv4_unsigned_payload if unsigned else lowhaio_aws_sigv4
    signed_request = module.signed(recorded.request, credentials_function(token), service,
                                   region, now=lambda: FIXED_TIME)
    await signed_request(method, url, params=params, headers=headers, body=streamed(body))
    return recorded


def sign_with_botocore(monkeypatch: pytest.MonkeyPatch, method: str, wire_url: str, *,
                       params: Sequence[Tuple[str, str]] = (),
                       headers: Sequence[Tuple[str, str]] = (), body: bytes = b'',
                       service: str = 's3', region: str = 'eu-west-2',
                       token: Optional[str] = None, unsigned: bool = False) -> str:
    """botocore's Authorization header for the request as it goes on the wire."""
    monkeypatch.setattr(botocore.auth, 'get_current_datetime',
                        lambda *_, **__: FIXED_TIME.replace(tzinfo=None))
    request = AWSRequest(method=method, url=wire_url, params=list(params) or None, data=body)
    for key, value in headers:
        request.headers[key] = value  # appends, so repeated headers stay repeated
    if unsigned:
        request.context['payload_signing_enabled'] = False
        request.context['client_config'] = botocore.config.Config(
            s3={'payload_signing_enabled': False})
    credentials = botocore.credentials.Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, token)
    auth_class = botocore.auth.S3SigV4Auth if service == 's3' else botocore.auth.SigV4Auth
    auth_class(credentials, service, region).add_auth(request)
    return request.headers['Authorization']


def botocore_encoded(path: str) -> str:
    """A raw path (e.g. an S3 key) encoded for the URL as botocore's serializer encodes it."""
    return urllib.parse.quote(path, safe='/~')


# ---------------------------------------------------------------------------------------------
# Parity with botocore
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('service', ['s3', 'execute-api'])
@pytest.mark.parametrize('unsigned', [False, True])
async def test_simple_get_matches_botocore(monkeypatch, service, unsigned):
    recorded = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000/bucket/key',
                                       service=service, unsigned=unsigned)
    expected = sign_with_botocore(
        monkeypatch, 'GET', 'http://127.0.0.1:9000/bucket/key', service=service,
        headers=() if unsigned else (('content-length', '0'),), unsigned=unsigned)
    assert recorded.headers['authorization'] == [expected]


async def test_signed_headers_sent_are_the_ones_signed():
    body = b'some data'
    recorded = await sign_with_lowhaio(b'PUT', 'https://s3.example.com:8443/b/k', body=body,
                                       token=SESSION_TOKEN)
    headers = recorded.headers
    assert headers['host'] == ['s3.example.com:8443']
    assert headers['x-amz-date'] == ['20240229T235958Z']
    assert headers['x-amz-content-sha256'] == [hashlib.sha256(body).hexdigest()]
    assert headers['x-amz-security-token'] == [SESSION_TOKEN]
    assert headers['content-length'] == ['9']
    assert 'SignedHeaders=content-length;host;x-amz-content-sha256;x-amz-date;' \
        'x-amz-security-token,' in headers['authorization'][0]
    assert recorded.calls[-1][2]['sent'] == body


@pytest.mark.parametrize('service', ['s3', 'sqs'])
async def test_body_hash_and_content_length_match_botocore(monkeypatch, service):
    body = b'{"a": 1}' * 1000
    recorded = await sign_with_lowhaio(b'POST', 'http://127.0.0.1:9000/', body=body,
                                       service=service, headers=((b'Content-Type', b'x/y'),))
    expected = sign_with_botocore(
        monkeypatch, 'POST', 'http://127.0.0.1:9000/', body=body, service=service,
        headers=(('Content-Type', 'x/y'), ('content-length', str(len(body)))))
    assert recorded.headers['authorization'] == [expected]
    assert recorded.headers['content-length'] == [str(len(body))]


@pytest.mark.parametrize('unsigned', [False, True])
@pytest.mark.parametrize('service', ['s3', 'dynamodb'])
async def test_session_token_headers_match_botocore(monkeypatch, service, unsigned):
    recorded = await sign_with_lowhaio(b'GET', 'https://127.0.0.1:9443/a', token=SESSION_TOKEN,
                                       service=service, unsigned=unsigned)
    expected = sign_with_botocore(
        monkeypatch, 'GET', 'https://127.0.0.1:9443/a', token=SESSION_TOKEN, service=service,
        headers=() if unsigned else (('content-length', '0'),), unsigned=unsigned)
    assert recorded.headers['authorization'] == [expected]


QUERY_CASES = {
    'sorted by key': ((), (('b', '2'), ('a', '1'), ('c', '3'))),
    'repeated key sorted by value': ((), (('k', 'z'), ('k', 'a'), ('k', 'm'))),
    'reserved characters': ((), (('a b', 'c d'), ('e/f', 'g=h&i'), ('+', '~-_.'))),
    'unicode': ((), (('ключ', 'значение'), ('é', '☃'))),
    'empty value': ((), (('uploads', ''), ('partNumber', '1'))),
    'url query and params': ((('z', '26'), ('a b', 'x')), (('m', '13'),)),
    'url query only': ((('list-type', '2'), ('prefix', 'a/b c')), ()),
}


@pytest.mark.parametrize('service', ['s3', 'execute-api'])
@pytest.mark.parametrize('case', list(QUERY_CASES))
async def test_query_matches_botocore(monkeypatch, case, service):
    url_pairs, params = QUERY_CASES[case]
    url = 'http://127.0.0.1:9000/bucket/' + (
        '?' + urllib.parse.urlencode(url_pairs) if url_pairs else '')
    recorded = await sign_with_lowhaio(b'GET', url, params=params, service=service)
    expected = sign_with_botocore(
        monkeypatch, 'GET', 'http://127.0.0.1:9000/bucket/', params=url_pairs + params,
        headers=(('content-length', '0'),), service=service)
    assert recorded.headers['authorization'] == [expected]
    # What is sent is what was signed: the query in the canonical form
    sent_query = urllib.parse.urlsplit(recorded.url).query
    assert urllib.parse.parse_qsl(sent_query, keep_blank_values=True) == sorted(
        url_pairs + params, key=lambda pair: tuple(map(lowhaio_aws_sigv4.quote, pair)))


async def test_bytes_params_are_signed_as_their_text(monkeypatch):
    recorded = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000/b',
                                       params=((b'k', b'v w'),))
    expected = sign_with_botocore(monkeypatch, 'GET', 'http://127.0.0.1:9000/b',
                                  params=(('k', 'v w'),), headers=(('content-length', '0'),))
    assert recorded.headers['authorization'] == [expected]


PATH_CASES = [
    '/bucket/plain-key',
    '/bucket/key with spaces',
    '/bucket/a+b=c&d;e,f:g@h$i!j*k(l)m\'n',
    '/bucket/tilde~and%percent',
    '/bucket/ünïcödé/☃',
    '/bucket/dir/',
    '/bucket/dot/./segments/../and//double//slashes',
    '/',
]


@pytest.mark.parametrize('service', ['s3', 'execute-api', 'es'])
@pytest.mark.parametrize('path', PATH_CASES)
async def test_path_matches_botocore(monkeypatch, path, service):
    # For s3 the path is signed as sent; for other services it is normalised and encoded twice
    recorded = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000' + path, service=service)
    wire_url = 'http://127.0.0.1:9000' + botocore_encoded(path)
    expected = sign_with_botocore(monkeypatch, 'GET', wire_url,
                                  headers=(('content-length', '0'),), service=service)
    assert recorded.headers['authorization'] == [expected]
    # The path sent is the one signed: already encoded, so lowhaio sends it as it is
    assert recorded.url == wire_url


@pytest.mark.parametrize('service', ['s3', 'execute-api'])
@pytest.mark.parametrize('path', PATH_CASES)
async def test_already_encoded_path_signed_as_its_canonical_form(monkeypatch, path, service):
    # lowhaio reads %XX in a URL as an escape, so an encoded path means the same as a raw one
    encoded = urllib.parse.quote(path, safe="/%!$&'()*+,;=:@")
    recorded = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000' + encoded,
                                       service=service)
    raw = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000' + path, service=service)
    assert recorded.headers['authorization'] == raw.headers['authorization']
    assert recorded.url == raw.url


async def test_encoded_slash_stays_within_its_segment(monkeypatch):
    recorded = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000/bucket/a%2Fb/c')
    assert urllib.parse.urlsplit(recorded.url).path == '/bucket/a%2Fb/c'
    assert recorded.headers['authorization'] == [sign_with_botocore(
        monkeypatch, 'GET', 'http://127.0.0.1:9000/bucket/a%2Fb/c',
        headers=(('content-length', '0'),))]


@pytest.mark.parametrize('unsigned', [False, True])
async def test_headers_canonicalised_as_botocore(monkeypatch, unsigned):
    headers = (
        (b'X-Amz-Meta-Spaces', b'  leading   and   inner  spaces  '),
        (b'x-amz-meta-repeated', b'first'),
        (b'X-AMZ-META-REPEATED', b'second'),
        (b'Content-Type', b'text/plain'),
        (b'content-length', b'0'),
        # Not signed, by botocore's list: intermediaries may change them
        (b'User-Agent', b'lowhaio'),
        (b'Expect', b'100-continue'),
    )
    recorded = await sign_with_lowhaio(b'PUT', 'http://127.0.0.1:9000/b/k', headers=headers,
                                       unsigned=unsigned)
    expected = sign_with_botocore(
        monkeypatch, 'PUT', 'http://127.0.0.1:9000/b/k', unsigned=unsigned,
        headers=tuple((key.decode(), value.decode()) for key, value in headers))
    assert recorded.headers['authorization'] == [expected]
    assert 'user-agent' not in expected and 'expect' not in expected.split('Signature')[0]


@pytest.mark.parametrize('url, host', [
    ('https://S3.Example.COM:443/b', 's3.example.com'),
    ('http://s3.example.com:80/b', 's3.example.com'),
    ('http://s3.example.com:8080/b', 's3.example.com:8080'),
    ('https://s3.example.com/b', 's3.example.com'),
    ('http://[::1]:9000/b', '[::1]:9000'),
])
async def test_host_matches_botocore(monkeypatch, url, host):
    recorded = await sign_with_lowhaio(b'GET', url)
    expected = sign_with_botocore(monkeypatch, 'GET', url, headers=(('content-length', '0'),))
    assert recorded.headers['host'] == [host]
    assert recorded.headers['authorization'] == [expected]


async def test_unsigned_payload_does_not_read_the_body_nor_add_content_length(monkeypatch):
    calls = 0

    async def body():
        nonlocal calls
        calls += 1
        yield b'data'

    recorded = Recorded()
    signed_request = lowhaio_aws_sigv4_unsigned_payload.signed(
        recorded.request, credentials_function(), 's3', 'eu-west-2', now=lambda: FIXED_TIME)
    await signed_request(b'PUT', 'http://127.0.0.1:9000/b/k', body=body)
    assert calls == 1  # once, by the request itself
    assert recorded.headers['x-amz-content-sha256'] == ['UNSIGNED-PAYLOAD']
    assert 'content-length' not in recorded.headers
    assert recorded.headers['authorization'] == [sign_with_botocore(
        monkeypatch, 'PUT', 'http://127.0.0.1:9000/b/k', body=b'data', unsigned=True)]


async def test_caller_signing_headers_are_replaced_not_duplicated():
    stale = ((b'Authorization', b'AWS4-HMAC-SHA256 stale'), (b'X-Amz-Date', b'20000101T000000Z'))
    recorded = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000/b', headers=stale)
    assert recorded.headers['x-amz-date'] == ['20240229T235958Z']
    assert len(recorded.headers['authorization']) == 1
    assert 'stale' not in recorded.headers['authorization'][0]


async def test_naive_now_is_taken_as_utc():
    recorded = Recorded()
    signed_request = lowhaio_aws_sigv4.signed(
        recorded.request, credentials_function(), 's3', 'eu-west-2',
        now=lambda: FIXED_TIME.replace(tzinfo=None))
    await signed_request(b'GET', 'http://127.0.0.1:9000/b')
    naive_authorization = recorded.headers['authorization']
    recorded_aware = await sign_with_lowhaio(b'GET', 'http://127.0.0.1:9000/b')
    assert naive_authorization == recorded_aware.headers['authorization']

    other_zone = datetime.timezone(datetime.timedelta(hours=5))
    signed_request = lowhaio_aws_sigv4.signed(
        recorded.request, credentials_function(), 's3', 'eu-west-2',
        now=lambda: FIXED_TIME.astimezone(other_zone))
    await signed_request(b'GET', 'http://127.0.0.1:9000/b')
    assert recorded.headers['authorization'] == naive_authorization


@pytest.mark.parametrize('service', ['s3', 'execute-api'])
@pytest.mark.parametrize('unsigned', [False, True])
@pytest.mark.parametrize('token', [None, SESSION_TOKEN])
@pytest.mark.parametrize('path, params', [
    ('/bucket/key', ()),
    ('/a%20b/c~d', (('b', '2'), ('a', 'x y'))),
    ('/', (('uploads', ''),)),
])
@pytest.mark.parametrize('module', [lowhaio_aws_sigv4, lowhaio_aws_sigv4_unsigned_payload])
def test_aws_sigv4_headers_of_0_0_4_sign_as_botocore(monkeypatch, module, service, unsigned,
                                                     token, path, params):
    """Code written for lowhaio-aws-sigv4 0.0.4 may call its aws_sigv4_headers itself: the
    same arguments, the same headers back, each signature botocore's."""
    body = b'' if unsigned else b'{"a": 1}'
    body_hash = 'UNSIGNED-PAYLOAD' if unsigned else hashlib.sha256(body).hexdigest()
    pre_auth = ((b'content-type', b'x/y'),) + (
        () if token is None else ((b'x-amz-security-token', token.encode()),))
    headers = module.aws_sigv4_headers(
        ACCESS_KEY_ID, SECRET_ACCESS_KEY, pre_auth, service, 'eu-west-2', '127.0.0.1:9443',
        'POST', path, params, body_hash, now=lambda: FIXED_TIME)
    assert [key for key, _ in headers] == \
        [b'authorization', b'x-amz-date', b'x-amz-content-sha256', b'content-type'] + \
        ([] if token is None else [b'x-amz-security-token'])
    assert dict(headers)[b'x-amz-content-sha256'] == body_hash.encode()
    assert dict(headers)[b'x-amz-date'] == b'20240229T235958Z'
    expected = sign_with_botocore(
        monkeypatch, 'POST', 'https://127.0.0.1:9443' + path, params=params, body=body,
        headers=(('content-type', 'x/y'), ('x-amz-content-sha256', body_hash)),
        service=service, token=token, unsigned=unsigned)
    assert dict(headers)[b'authorization'] == expected.encode()


def test_names_of_the_0_0_4_packages_are_there():
    for module in (lowhaio_aws_sigv4, lowhaio_aws_sigv4_unsigned_payload):
        assert module.empty_async_iterator is lowhaio_aws_sigv4.empty_body
        assert module.aws_sigv4_headers is lowhaio_aws_sigv4.aws_sigv4_headers


async def test_body_args_reach_the_body_and_content_length_is_kept_if_given(monkeypatch):
    async def body(repeat, *, chunk):
        for _ in range(repeat):
            yield chunk

    for replay_body in (False, True):
        recorded = Recorded()
        signed_request = lowhaio_aws_sigv4.signed(
            recorded.request, credentials_function(), 's3', 'eu-west-2',
            now=lambda: FIXED_TIME, replay_body=replay_body)
        await signed_request(b'PUT', 'http://127.0.0.1:9000/b/k', body=body, body_args=(3,),
                             body_kwargs=(('chunk', b'ab'),), headers=((b'content-length', b'6'),))
        assert recorded.calls[-1][2]['sent'] == b'ababab'
        assert recorded.headers['content-length'] == ['6']
        assert recorded.headers['authorization'] == [sign_with_botocore(
            monkeypatch, 'PUT', 'http://127.0.0.1:9000/b/k', body=b'ababab',
            headers=(('content-length', '6'),))]


async def test_body_iterated_once_by_default_twice_with_replay():
    for replay_body, expected_calls in ((False, 1), (True, 2)):
        calls = 0

        async def body():
            nonlocal calls
            calls += 1
            yield b'abc'
            yield b'def'

        recorded = Recorded()
        signed_request = lowhaio_aws_sigv4.signed(
            recorded.request, credentials_function(), 's3', 'eu-west-2',
            replay_body=replay_body)
        await signed_request(b'PUT', 'http://127.0.0.1:9000/b/k', body=body)
        assert recorded.calls[-1][2]['sent'] == b'abcdef'
        assert calls == expected_calls


async def test_credentials_fetched_for_every_request():
    keys = iter([('AKID1', 'secret1', ()), ('AKID2', 'secret2', ())])

    async def rotating_credentials():
        return next(keys)

    recorded = Recorded()
    signed_request = lowhaio_aws_sigv4.signed(recorded.request, rotating_credentials, 's3',
                                              'eu-west-2')
    await signed_request(b'GET', 'http://127.0.0.1:9000/b')
    await signed_request(b'GET', 'http://127.0.0.1:9000/b')
    assert 'Credential=AKID1/' in recorded.calls[0][2]['headers'][-1][1].decode()
    assert 'Credential=AKID2/' in recorded.calls[1][2]['headers'][-1][1].decode()


# ---------------------------------------------------------------------------------------------
# End to end: a moto S3 server that checks every signature
# ---------------------------------------------------------------------------------------------

MOTO_SERVER = '''
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test session closes our end
server.stop()
'''
# Actions before authentication starts: creating the user, its key and its policy. Every
# action after that has its signature checked.
SETUP_ACTIONS = 3


class Moto:
    def __init__(self, endpoint: str, access_key_id: str, secret_access_key: str) -> None:
        self.endpoint = endpoint
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key

    def url(self, path: str) -> str:
        return self.endpoint + path

    def credentials(self, secret_access_key: Optional[str] = None):
        async def _credentials():
            return self.access_key_id, secret_access_key or self.secret_access_key, ()
        return _credentials


@pytest.fixture(scope='module')
def moto():
    import boto3

    process = subprocess.Popen(
        [sys.executable, '-c', MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_ACTIONS)))
    try:
        port = int(process.stdout.readline())
        endpoint = f'http://127.0.0.1:{port}'
        iam = boto3.client('iam', endpoint_url=endpoint, region_name='us-east-1',
                           aws_access_key_id='setup', aws_secret_access_key='setup')
        iam.create_user(UserName='lowhaio')
        key = iam.create_access_key(UserName='lowhaio')['AccessKey']
        iam.put_user_policy(UserName='lowhaio', PolicyName='everything', PolicyDocument=json.dumps(
            {'Version': '2012-10-17',
             'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))
        yield Moto(endpoint, key['AccessKeyId'], key['SecretAccessKey'])
    finally:
        process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


bucket_numbers = iter(range(1_000_000))


def new_bucket_name() -> str:
    return f'lowhaio-{os.getpid()}-{next(bucket_numbers)}'


@pytest.fixture
async def pool():
    request, close = Pool()
    yield request
    await close()


async def create_bucket(signed_request, moto: Moto) -> str:
    bucket = new_bucket_name()
    code, _, body = await signed_request(b'PUT', moto.url(f'/{bucket}'))
    await buffered(body)
    assert code == b'200'
    return bucket


async def test_moto_rejects_a_wrong_signature(moto, pool):
    wrong = lowhaio_aws_sigv4.signed(pool, moto.credentials('not-the-secret'), 's3', 'us-east-1')
    code, _, body = await wrong(b'PUT', moto.url(f'/{new_bucket_name()}'))
    assert code == b'403'
    assert b'SignatureDoesNotMatch' in await buffered(body)

    right = lowhaio_aws_sigv4.signed(pool, moto.credentials(), 's3', 'us-east-1')
    code, _, body = await right(b'PUT', moto.url(f'/{new_bucket_name()}'))
    await buffered(body)
    assert code == b'200'


def chunks_of(data: bytes, size: int):
    async def body():
        for start in range(0, len(data), size):
            yield data[start:start + size]
    return body


KEYS = ['plain', 'with spaces and ünïcödé', 'reserved+=&;,:@$!*()\'~chars', 'dir/sub dir/file']


@pytest.mark.parametrize('replay_body', [False, True])
@pytest.mark.parametrize('key', KEYS)
async def test_upload_streamed_then_download_signed_payload(moto, pool, key, replay_body):
    signed_request = lowhaio_aws_sigv4.signed(pool, moto.credentials(), 's3', 'us-east-1',
                                              replay_body=replay_body)
    bucket = await create_bucket(signed_request, moto)
    data = os.urandom(300_000)

    code, _, body = await signed_request(b'PUT', moto.url(f'/{bucket}/{key}'),
                                         body=chunks_of(data, 65536))
    assert (code, await buffered(body)) == (b'200', b'')

    code, _, body = await signed_request(b'GET', moto.url(f'/{bucket}/{key}'))
    assert code == b'200'
    assert await buffered(body) == data


@pytest.mark.parametrize('key', KEYS)
async def test_upload_streamed_then_download_unsigned_payload(moto, pool, key):
    signed_request = lowhaio_aws_sigv4_unsigned_payload.signed(
        pool, moto.credentials(), 's3', 'us-east-1')
    bucket = await create_bucket(signed_request, moto)
    data = os.urandom(300_000)

    code, _, body = await signed_request(
        b'PUT', moto.url(f'/{bucket}/{key}'), body=chunks_of(data, 65536),
        headers=((b'content-length', str(len(data)).encode()),))
    assert (code, await buffered(body)) == (b'200', b'')

    code, _, body = await signed_request(b'GET', moto.url(f'/{bucket}/{key}'))
    assert code == b'200'
    assert await buffered(body) == data


async def test_query_parameters_are_signed_as_sent(moto, pool):
    signed_request = lowhaio_aws_sigv4.signed(pool, moto.credentials(), 's3', 'us-east-1')
    bucket = await create_bucket(signed_request, moto)
    for key in ('dir one/a', 'dir one/b', 'dir two/c'):
        _, _, body = await signed_request(b'PUT', moto.url(f'/{bucket}/{key}'),
                                          body=streamed(key.encode()))
        await buffered(body)

    code, _, body = await signed_request(
        b'GET', moto.url(f'/{bucket}?list-type=2'), params=(('prefix', 'dir one/'),))
    listing = (await buffered(body)).decode()
    assert code == b'200'
    assert '<Key>dir one/a</Key>' in listing and '<Key>dir one/b</Key>' in listing
    assert 'dir two' not in listing
