"""Fuzz target: parse_target, on arbitrary text and on URLs assembled from fuzzed parts.

Properties: the only exception is HttpInvalidRequestError; a parsed target can be written on
the wire as it is: the request-target is printable ASCII without spaces and starts with "/",
the host line is one "host: ..." line, the port is a real TCP port and the pool key agrees.
"""

from __future__ import annotations

import os
from typing import List

import atheris

from _harness import lowhaio, run

SCHEMES = ['http', 'https', 'HTTP', 'ftp', '', 'http:']
HOSTS = ['example.com', 'EXAMPLE.com.', '127.0.0.1', '[::1]', '[fe80::1%eth0]', 'bücher.de',
         'xn--bcher-kva.de', '', 'a b', 'a\r\nb', '[1.2.3.4]', '%41', 'ex ample', '[::1']
PORTS = ['', ':', ':80', ':443', ':0', ':65535', ':65536', ':-1', ':+1', ':0x50', ':８０']
PATHS = ['', '/', '/a b', '/%zz', '/%41', '/ü', '/a?b=c d', '?q', '#frag', '/a\r\nX: y',
         '/a\x00', '//x', '/a?b#c?d']


def assembled(fdp: atheris.FuzzedDataProvider) -> str:
    def part(choices: List[str]) -> str:
        return fdp.PickValueInList(choices) if fdp.ConsumeBool() else \
            fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    userinfo = 'u:p@' if fdp.ConsumeIntInRange(0, 7) == 0 else ''
    return part(SCHEMES) + '://' + userinfo + part(HOSTS) + part(PORTS) + part(PATHS)


def check(url: object, target: lowhaio.Target) -> None:
    request_target = target.path_and_query
    assert request_target.startswith(b'/'), (url, target)
    assert all(33 <= byte <= 126 for byte in request_target), (url, target)
    assert target.host_line.startswith(b'host: ') and target.host_line.endswith(b'\r\n')
    if os.environ.get('LOWHAIO_FUZZ_ALLOW_KNOWN_DEFECTS') and not target.host.isascii():
        return  # F5 (DEFECTS: IDNA maps Unicode spaces to ASCII ones), reported: fuzz past it
    assert all(33 <= byte <= 126 for byte in target.host_line[6:-2]), (url, target)
    assert target.scheme in ('http', 'https'), (url, target)
    assert 1 <= target.port <= 65535, (url, target)
    assert target.key == (target.scheme, target.host, target.port), (url, target)
    if os.environ.get('LOWHAIO_FUZZ_ALLOW_KNOWN_DEFECTS') and not target.ip_literal and \
            '' in target.host.split('.'):
        return  # F4 (DEFECTS: empty labels, a host of only dots), reported: fuzz on past it
    assert target.host and not target.host.endswith('.'), (url, target)


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    choice = fdp.ConsumeIntInRange(0, 7)
    if choice == 0:
        url: object = fdp.ConsumeBytes(64)  # not a str at all
    elif choice < 4:
        url = fdp.ConsumeUnicodeNoSurrogates(atheris.ALL_REMAINING)
    else:
        url = assembled(fdp)
    try:
        target = lowhaio.parse_target(url)  # type: ignore[arg-type]
    except lowhaio.HttpInvalidRequestError:
        return
    check(url, target)


if __name__ == '__main__':
    run(test_one_input)
