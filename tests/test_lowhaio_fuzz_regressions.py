"""Regression tests for defects the reliability programs (fuzz/, issue 14) found in lowhaio.py.

Each test is named after what a user relies on and quotes the defect's number in DEFECTS of the
reliability report; the inputs are the minimised ones that showed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Tuple

import dnslib
import pytest

import lowhaio
import support

# A linear parse of these inputs takes well under a millisecond; the defect took seconds. The
# bound is CPU time of this process, so other work on the machine does not count against it.
CPU_SECONDS_ALLOWED = 0.5
SPACES = 8000


def cpu_seconds_to_reject(parse: Callable[[], object]) -> float:
    started = time.process_time()
    with pytest.raises(lowhaio.HttpProtocolError):
        parse()
    return time.process_time() - started


@pytest.mark.parametrize('bad_byte', [b'\x00', b'\x7f', b'\x01', b'\r'])
def test_header_line_of_spaces_then_a_bad_byte_is_rejected_in_linear_time(
        bad_byte: bytes) -> None:
    # F1: _FIELD_LINE_RE let [ \t]* and the value both match the spaces, so fullmatch tried
    # every split of them: O(n^2), ~6 s of event-loop CPU for one 16 KiB response head.
    head = b'HTTP/1.1 200 OK\r\nx:' + b' ' * SPACES + bad_byte + b'\r\n\r\n'
    assert cpu_seconds_to_reject(lambda: lowhaio.parse_response_head(head)) \
        < CPU_SECONDS_ALLOWED


def test_header_block_of_spaces_then_a_bad_byte_is_rejected_in_linear_time() -> None:
    block = b'x:' + b'\t ' * (SPACES // 2) + b'\x00\r\n'
    assert cpu_seconds_to_reject(lambda: lowhaio.parse_field_block(block)) < CPU_SECONDS_ALLOWED


def test_chunked_trailer_of_spaces_then_a_bad_byte_is_rejected_in_linear_time() -> None:
    body = b'0\r\nx:' + b' ' * SPACES + b'\x00\r\n\r\n'
    decoder = lowhaio.ChunkedDecoder()
    assert cpu_seconds_to_reject(lambda: decoder.feed(body)) < CPU_SECONDS_ALLOWED


# F2 (found by tests/test_lowhaio_faults.py): a server that half-closes (FIN, still reading)
# while the request body is being sent. asyncio's transport closes itself on EOF, finishes
# sending its buffer and then reports connection_lost without counting the loss; lowhaio's
# close() then calls transport.abort(), which fails inside asyncio with
# AttributeError("'NoneType' object has no attribute 'call_soon'") instead of an HttpError.

REQUEST_BODY = b'x' * (4 * 1024 * 1024)


async def half_close_after_the_head(conn: support.Connection) -> None:
    await conn.read_head()
    conn.half_close()
    await conn.read_until_eof()


def small_send_buffer_sock(family: int = socket.AF_INET) -> socket.socket:
    sock = lowhaio.get_nonblocking_sock(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return sock


@pytest.mark.parametrize('attempt', range(5))
async def test_server_half_closing_while_the_body_is_sent_raises_an_http_data_error(
        attempt: int) -> None:
    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(REQUEST_BODY), 65536):
            yield REQUEST_BODY[start:start + 65536]

    async with support.scripted_server(half_close_after_the_head) as server:
        request, close = lowhaio.Pool(get_sock=small_send_buffer_sock, socket_timeout=5)
        try:
            with pytest.raises(lowhaio.HttpDataError):
                _, _, response = await request(
                    b'POST', server.url(), body=body,
                    headers=((b'content-length', b'%d' % len(REQUEST_BODY)),))
                await lowhaio.buffered(response)
        finally:
            await close()


# F3 (found by scripts/soak): a request cancelled while its DNS lookups run, for a name with
# only A records: A has answered, and the AAAA lookup (waited for during RFC 8305's resolution
# delay) fails at about the moment of the cancellation. resolve()'s `finally` cancels a lookup
# that is no longer cancellable, or does not look at one that has just failed, and nothing
# retrieves its exception: asyncio logs "Task exception was never retrieved ...
# DnsNoMatchingAnswers" (in users' logs, from a normal cancellation). The moment is hit by
# sweeping the cancellation across the AAAA answer's arrival.

AAAA_DELAY = 0.02


class SlowAaaaDnsServer(support.DnsServer):
    """Answers A at once and AAAA (with no records) after AAAA_DELAY."""

    def datagram_received(self, data: bytes, addr: Tuple[str, int]) -> None:
        if dnslib.QTYPE.get(dnslib.DNSRecord.parse(data).q.qtype) == 'AAAA':
            asyncio.get_running_loop().call_later(AAAA_DELAY, super().datagram_received,
                                                  data, addr)
        else:
            super().datagram_received(data, addr)


async def test_cancelling_a_request_during_dns_leaves_no_unretrieved_lookup_exception() -> None:
    loop = asyncio.get_running_loop()
    reported: List[Dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    server = SlowAaaaDnsServer(ttl=60)
    transport, _ = await loop.create_datagram_endpoint(lambda: server,
                                                       local_addr=('127.0.0.1', 0))
    server.port = transport.get_extra_info('sockname')[1]
    server.set('only-a.lowhaio.test', ['127.0.0.1'])
    try:
        for step in range(150):
            request, close = lowhaio.Pool(get_dns_resolver=server.get_dns_resolver)
            task = asyncio.ensure_future(request(b'GET', 'http://only-a.lowhaio.test:9/'))
            await asyncio.sleep(AAAA_DELAY - 0.003 + step * 0.00005)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, lowhaio.HttpError):
                await task
            del task
            await close()
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        transport.close()
        loop.set_exception_handler(None)
    unretrieved = [context for context in reported
                   if 'never retrieved' in str(context.get('message'))]
    assert unretrieved == []


# F4 (found by fuzz/fuzz_target.py): a host made only of dots, or with empty labels. The "URL
# has no host" check runs before the trailing dot is stripped, so 'http://./' gives host '' and
# 'http://../' host '.', and 'http://a../' host 'a.': accepted, and sent on to DNS (a query
# for the root name; an IDNA error inside the resolver), ending as HttpDnsError after network
# activity instead of HttpInvalidRequestError before any.

@pytest.mark.parametrize('url', ['http://./', 'http://../', 'https://.:8080/x', 'http://.../',
                                 'http://a../', 'http://a..b/'])
def test_a_host_of_only_dots_or_with_empty_labels_is_an_invalid_request(url: str) -> None:
    with pytest.raises(lowhaio.HttpInvalidRequestError):
        lowhaio.parse_target(url)


# F5 (found by fuzz/fuzz_target.py): Unicode spaces in a host. The host is checked for
# characters below 33 before IDNA encoding, and IDNA's nameprep maps U+00A0, U+2000-U+200A and
# U+3000 to an ASCII space: 'http://a\u3000b.de/' is sent as 'host: a b.de', a Host header
# with a space in it (not a uri-host: a server answers 400, or a proxy splits it).

@pytest.mark.parametrize('host', ['a\u3000b.de', 'b\u00fccher.de\u2000', 'b\u00fccher.de\u00a0',
                                  '\u2000\u00fc', '\u00fc\u2009x'])
def test_a_host_that_would_encode_with_a_space_is_an_invalid_request(host: str) -> None:
    try:
        target = lowhaio.parse_target('http://%s/' % (host,))
    except lowhaio.HttpInvalidRequestError:
        return
    assert b' ' not in target.host_line[len(b'host: '):], target.host_line
