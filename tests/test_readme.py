"""Every Python example in README.md runs as written, with its `URL = ...` line pointed at a
local server (there is no internet here), and its `PROXY = ...` line, if any, at a local
tinyproxy: each example is a complete script, run in its own process, and must exit 0 having
printed something."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import sys
import urllib.parse
from typing import Iterator, List, Tuple

import pytest
from aiohttp import web
from support import Tinyproxy, proxy_binary, web_server

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_examples() -> List[Tuple[str, str]]:
    """(id, code) for each ```python block, the id from the nearest heading above it."""
    examples: List[Tuple[str, str]] = []
    heading = 'top'
    block: List[str] = []
    in_block = False
    for line in (REPO_ROOT / 'README.md').read_text().splitlines():
        if in_block:
            if line == '```':
                examples.append(('%s-%d' % (heading, len(examples)), '\n'.join(block) + '\n'))
                in_block = False
            else:
                block.append(line)
        elif line == '```python':
            in_block, block = True, []
        elif line.startswith('#'):
            heading = re.sub(r'[^a-z0-9]+', '-', line.lstrip('#').strip().lower()).strip('-')
    return examples


EXAMPLES = readme_examples()


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 6


def local_app(seen: List[Tuple[str, str, int]]) -> web.Application:
    """Answers anything: /old-path redirects, everything else gets 200 and its body length."""
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path, len(body)))
        if request.path == '/old-path':
            raise web.HTTPMovedPermanently('/new-path')
        return web.Response(body=b'ok %d' % len(body))
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route('*', '/{tail:.*}', handler)
    return app


@pytest.fixture(scope='session')
def readme_proxy() -> Iterator[str]:
    """A tinyproxy for the examples that need a proxy, started once."""
    if proxy_binary('tinyproxy') is None:
        pytest.fail('tinyproxy is not installed; scripts/test installs it')
    with Tinyproxy() as proxy:
        yield proxy.url


@pytest.mark.parametrize('code', [code for _, code in EXAMPLES],
                         ids=[example_id for example_id, _ in EXAMPLES])
async def test_example_runs(code: str, request: pytest.FixtureRequest) -> None:
    if re.search(r"^PROXY = '[^']+'$", code, flags=re.M):
        code = re.sub(r"^PROXY = '[^']+'$", "PROXY = '%s'" % request.getfixturevalue(
            'readme_proxy'), code, flags=re.M)
    assert re.search(r"^URL = '[^']+'$", code, flags=re.M), 'every example names its URL'
    seen: List[Tuple[str, str, int]] = []
    async with web_server(local_app(seen)) as server:
        def local(match: re.Match) -> str:
            path = urllib.parse.urlsplit(match.group(1)).path
            return "URL = '%s'" % server.url(path)
        script = re.sub(r"^URL = '([^']+)'$", local, code, flags=re.M)
        process = await asyncio.create_subprocess_exec(
            sys.executable, '-c', script,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), AWS_ACCESS_KEY_ID='AKIDEXAMPLE',
                     AWS_SECRET_ACCESS_KEY='secret'),
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.strip(), 'the example printed nothing'
    assert seen, 'the example made no request'
