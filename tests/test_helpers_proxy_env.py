"""lowhaio_proxy.from_environment: which proxy each origin gets, from a table of environments.

(That the function it returns drives a real Pool through real proxies is tested in
test_lowhaio_proxy.py.)
"""

from __future__ import annotations

from typing import Dict, Optional

import pytest

from lowhaio_proxy import from_environment, no_proxy_matcher

P = 'http://proxy.test:3128'
Q = 'http://other.test:8080'

# (environment, scheme, host, port, expected proxy URL or None)
CHOICES = [
    # Nothing set: direct
    ({}, 'http', 'example.com', 80, None),
    ({}, 'https', 'example.com', 443, None),
    # Each scheme its own variable, lower or upper case
    ({'http_proxy': P}, 'http', 'example.com', 80, P),
    ({'http_proxy': P}, 'https', 'example.com', 443, None),
    ({'HTTP_PROXY': P}, 'http', 'example.com', 80, P),
    ({'https_proxy': P}, 'https', 'example.com', 443, P),
    ({'HTTPS_PROXY': P}, 'https', 'example.com', 443, P),
    ({'https_proxy': P}, 'http', 'example.com', 80, None),
    # Lower case wins
    ({'http_proxy': P, 'HTTP_PROXY': Q}, 'http', 'example.com', 80, P),
    ({'HTTPS_PROXY': Q, 'https_proxy': P}, 'https', 'example.com', 443, P),
    ({'all_proxy': P, 'ALL_PROXY': Q}, 'https', 'example.com', 443, P),
    # An empty value counts as unset
    ({'http_proxy': '', 'HTTP_PROXY': Q}, 'http', 'example.com', 80, Q),
    ({'https_proxy': '  '}, 'https', 'example.com', 443, None),
    # ALL_PROXY as the fallback for both; the scheme's own variable takes precedence
    ({'ALL_PROXY': P}, 'http', 'example.com', 80, P),
    ({'all_proxy': P}, 'https', 'example.com', 443, P),
    ({'all_proxy': Q, 'https_proxy': P}, 'https', 'example.com', 443, P),
    ({'ALL_PROXY': Q, 'HTTP_PROXY': P}, 'http', 'example.com', 80, P),
    # SOCKS proxies pass through as they are
    ({'all_proxy': 'socks5h://s.test:1080'}, 'https', 'example.com', 443, 'socks5h://s.test:1080'),
    # No scheme: an HTTP proxy
    ({'http_proxy': 'proxy.test:3128'}, 'http', 'example.com', 80, P),
    # CGI (httpoxy): upper-case HTTP_PROXY may come from a request header, so it is ignored...
    ({'REQUEST_METHOD': 'GET', 'HTTP_PROXY': P}, 'http', 'example.com', 80, None),
    ({'REQUEST_METHOD': 'GET', 'HTTP_PROXY': Q, 'ALL_PROXY': P}, 'http', 'example.com', 80, P),
    # ...but not the lower-case one, nor HTTPS_PROXY, which no request header can set
    ({'REQUEST_METHOD': 'GET', 'http_proxy': P}, 'http', 'example.com', 80, P),
    ({'REQUEST_METHOD': 'POST', 'HTTPS_PROXY': P}, 'https', 'example.com', 443, P),
    # NO_PROXY, lower case winning, applied to every scheme
    ({'all_proxy': P, 'no_proxy': 'example.com'}, 'https', 'example.com', 443, None),
    ({'all_proxy': P, 'NO_PROXY': 'example.com'}, 'http', 'example.com', 80, None),
    ({'all_proxy': P, 'no_proxy': 'other.com', 'NO_PROXY': 'example.com'},
     'http', 'example.com', 80, P),
    ({'all_proxy': P, 'no_proxy': '*'}, 'https', 'anything.test', 443, None),
    ({'all_proxy': P, 'no_proxy': ''}, 'https', 'example.com', 443, P),
]


@pytest.mark.parametrize('environ, scheme, host, port, expected', CHOICES)
def test_proxy_chosen_from_the_environment(environ: Dict[str, str], scheme: str, host: str,
                                           port: int, expected: Optional[str]) -> None:
    assert from_environment(environ)(scheme, host, port) == expected


# (NO_PROXY value, host as lowhaio passes it, port, bypassed?)
NO_PROXY_CASES = [
    ('*', 'example.com', 443, True),
    ('*', '10.1.2.3', 80, True),
    ('', 'example.com', 443, False),
    # A name matches itself and the names below it, leading dot or not
    ('example.com', 'example.com', 443, True),
    ('example.com', 'www.example.com', 443, True),
    ('example.com', 'a.b.example.com', 443, True),
    ('example.com', 'notexample.com', 443, False),
    ('example.com', 'example.com.evil.test', 443, False),
    ('example.com', 'com', 443, False),
    ('.example.com', 'www.example.com', 443, True),
    ('.example.com', 'example.com', 443, True),
    ('.example.com', 'notexample.com', 443, False),
    # Without case, trailing dots, and spaces around entries
    ('Example.COM', 'www.example.com', 443, True),
    ('example.com.', 'example.com', 443, True),
    ('other.test , example.com ,x.test', 'example.com', 443, True),
    ('other.test,,x.test', 'example.com', 443, False),
    # IP addresses and CIDR ranges match IP literals
    ('10.1.2.3', '10.1.2.3', 80, True),
    ('10.1.2.3', '10.1.2.4', 80, False),
    ('10.0.0.0/8', '10.200.1.1', 80, True),
    ('10.0.0.0/8', '11.0.0.1', 80, False),
    ('192.168.0.0/16', '192.168.255.255', 80, True),
    ('::1', '::1', 80, True),
    ('[::1]', '::1', 80, True),
    ('fd00::/8', 'fd12:3456::1', 80, True),
    ('fd00::/8', 'fe80::1', 80, False),
    ('127.0.0.0/8', '::1', 80, False),
    # A range never matches a name: names are not resolved
    ('127.0.0.0/8', 'localhost', 80, False),
    # An optional port narrows an entry to that port
    ('example.com:8080', 'example.com', 8080, True),
    ('example.com:8080', 'example.com', 443, False),
    ('10.0.0.0/8:80', '10.1.1.1', 80, True),
    ('10.0.0.0/8:80', '10.1.1.1', 81, False),
    ('[::1]:8443', '::1', 8443, True),
    ('[::1]:8443', '::1', 443, False),
    # A malformed entry is skipped, not fatal to the others
    ('example.com:x,other.test', 'other.test', 443, True),
    ('example.com:x', 'example.com', 443, False),
    ('[::1', '::1', 443, False),
]


@pytest.mark.parametrize('no_proxy, host, port, bypassed', NO_PROXY_CASES)
def test_no_proxy_follows_curls_rules(no_proxy: str, host: str, port: int,
                                      bypassed: bool) -> None:
    assert no_proxy_matcher(no_proxy)(host, port) is bypassed
    chosen = from_environment({'all_proxy': P, 'NO_PROXY': no_proxy})('https', host, port)
    assert chosen == (None if bypassed else P)


def test_the_environment_is_read_once_when_called() -> None:
    environ = {'https_proxy': P}
    proxy = from_environment(environ)
    environ['https_proxy'] = Q
    environ['no_proxy'] = '*'
    assert proxy('https', 'example.com', 443) == P


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY',
                 'REQUEST_METHOD'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('https_proxy', P)
    monkeypatch.setenv('HTTPS_PROXY', Q)
    assert from_environment()('https', 'example.com', 443) == P
    assert from_environment()('http', 'example.com', 80) is None
