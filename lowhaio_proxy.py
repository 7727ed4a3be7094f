"""Proxies from the environment, as curl reads them.

    from lowhaio import Pool
    from lowhaio_proxy import from_environment

    request, close = Pool(proxy=from_environment())

`from_environment()` reads `http_proxy`, `https_proxy`, `all_proxy` and `no_proxy` (each also in
upper case; the lower-case one wins when both are set) once, when it is called, and returns a
function `proxy(scheme, host, port) -> Optional[str]` for `Pool(proxy=...)`.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Callable, List, Mapping, NamedTuple, Optional, Union

__all__ = ['from_environment', 'no_proxy_matcher']

IpNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _variable(environ: Mapping[str, str], name: str, *, upper_case: bool = True) -> str:
    # Lower case first, as curl does. An empty value counts as unset.
    value = environ.get(name.lower(), '').strip()
    if not value and upper_case:
        value = environ.get(name.upper(), '').strip()
    return value


def _with_scheme(url: str) -> str:
    # A bare host:port means an HTTP proxy, as in curl
    return url if '://' in url else 'http://' + url


class _NoProxyEntry(NamedTuple):
    domain: Optional[str]  # a name, lower case, without leading or trailing dots
    network: Optional[IpNetwork]  # an address or a CIDR range
    port: Optional[int]


def _parse_no_proxy_entry(entry: str) -> Optional[_NoProxyEntry]:
    port = None
    host = entry
    if host.startswith('['):  # [v6] or [v6]:port
        end = host.find(']')
        if end == -1:
            return None
        rest = host[end + 1:]
        host = host[1:end]
        if rest:
            if not rest.startswith(':') or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif host.count(':') == 1:  # name:port or v4:port; more colons is a bare IPv6 address
        host, _, port_text = host.partition(':')
        if not port_text.isdigit():
            return None
        port = int(port_text)
    try:
        return _NoProxyEntry(None, ipaddress.ip_network(host, strict=False), port)
    except ValueError:
        pass
    domain = host.strip('.').lower()
    if not domain or '/' in domain:
        return None
    return _NoProxyEntry(domain, None, port)


def no_proxy_matcher(no_proxy: str) -> Callable[[str, int], bool]:
    """A function `bypass(host, port)` for a NO_PROXY value, following curl's rules.

    Comma-separated entries (spaces around them ignored); `*` alone matches every host. A name
    matches itself and every name below it, with or without a leading dot (`example.com` and
    `.example.com` both match `example.com` and `www.example.com`, not `notexample.com`). An
    IP address or a CIDR range (`10.0.0.0/8`, `::1`, `[::1]`, `fd00::/8`) matches IP literals
    in URLs; host names are not resolved to be compared with it. Any entry may end in `:port`,
    and then matches that port only. Names are compared without case and trailing dots.
    """
    entries: List[_NoProxyEntry] = []
    for raw in no_proxy.split(','):
        raw = raw.strip()
        if raw == '*':
            return lambda host, port: True
        if raw:
            entry = _parse_no_proxy_entry(raw)
            if entry is not None:
                entries.append(entry)

    def bypass(host: str, port: int) -> bool:
        name = host.strip('[]').rstrip('.').lower()
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        for entry in entries:
            if entry.port is not None and entry.port != port:
                continue
            if entry.network is not None:
                if address is not None and address.version == entry.network.version and \
                        address in entry.network:
                    return True
            elif address is None and entry.domain is not None and (
                    name == entry.domain or name.endswith('.' + entry.domain)):
                return True
        return False

    return bypass


def from_environment(environ: Optional[Mapping[str, str]] = None) \
        -> Callable[[str, str, int], Optional[str]]:
    """A `proxy` function for `Pool`, from the proxy variables of `environ` (default
    `os.environ`), read once now.

    `http://` origins use `http_proxy`, `https://` origins `https_proxy`, each falling back to
    `all_proxy`; hosts matching `no_proxy` (see `no_proxy_matcher`) connect directly. When
    `REQUEST_METHOD` is set the process is a CGI script, whose `HTTP_PROXY` may come from a
    request's `Proxy:` header (the "httpoxy" attack), so upper-case `HTTP_PROXY` is ignored then.
    A value without a scheme is an HTTP proxy.
    """
    env = os.environ if environ is None else environ
    cgi = 'REQUEST_METHOD' in env
    all_proxy = _variable(env, 'all_proxy')
    proxies = {
        'http': _variable(env, 'http_proxy', upper_case=not cgi) or all_proxy,
        'https': _variable(env, 'https_proxy') or all_proxy,
    }
    proxies = {scheme: _with_scheme(url) for scheme, url in proxies.items() if url}
    bypass = no_proxy_matcher(_variable(env, 'no_proxy'))

    def proxy(scheme: str, host: str, port: int) -> Optional[str]:
        url = proxies.get(scheme)
        if url is None or bypass(host, port):
            return None
        return url

    return proxy
