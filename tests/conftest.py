"""Shared test set-up: import paths, both event loops, and a session-wide nginx.

Every async test runs twice, under the default asyncio loop and under uvloop, with ids ending in
[asyncio] and [uvloop]: lowhaio must behave the same on both.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pathlib
import sys
from typing import Callable, Dict, Iterator, List

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# `import support` from any test file, and `import lowhaio` from the working tree without an install
for _path in (str(TESTS_DIR), str(REPO_ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import support  # noqa: E402

IN_CI = bool(os.environ.get('CI'))

try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the platform
    uvloop = None  # type: ignore[assignment]
    if IN_CI:
        raise  # in CI, half the test matrix silently missing is a failure, not a skip


def _loop_factories() -> Dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: Dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        'asyncio': asyncio.new_event_loop,
    }
    if uvloop is not None:
        factories['uvloop'] = uvloop.new_event_loop
    return factories


def _has_loop_factories_hook() -> bool:
    """pytest-asyncio >= 1.3 has a hook for loop factories and deprecates the policy fixture."""
    import pytest_asyncio.plugin

    return hasattr(pytest_asyncio.plugin, 'PytestAsyncioSpecs')


if _has_loop_factories_hook():

    @pytest.hookimpl(optionalhook=True)
    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Dict[
            str, Callable[[], asyncio.AbstractEventLoop]]:
        return _loop_factories()

else:
    # Older pytest-asyncio (the newest that supports Python 3.9 is 1.2) creates each test's loop
    # from the `event_loop_policy` fixture. Parametrizing it for coroutine tests only, rather than
    # through fixture params, keeps synchronous tests from running twice.

    def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
        if inspect.iscoroutinefunction(metafunc.function):
            names = list(_loop_factories())
            metafunc.parametrize('event_loop_policy', names, ids=names, indirect=True)

    @pytest.fixture(scope='session')
    def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
        if getattr(request, 'param', 'asyncio') == 'uvloop':
            return uvloop.EventLoopPolicy()  # type: ignore[union-attr]
        return asyncio.DefaultEventLoopPolicy()


@pytest.fixture(scope='session')
def nginx() -> Iterator[support.Nginx]:
    """One nginx for the session (see support.Nginx). Skipped only outside CI if nginx is absent."""
    if support.nginx_binary() is None:
        if IN_CI:
            pytest.fail('nginx is not installed; scripts/test installs it')
        pytest.skip('nginx is not installed (scripts/test installs it)')
    with support.Nginx() as server:
        yield server


@pytest.fixture
def asyncio_warnings(caplog: pytest.LogCaptureFixture) -> Callable[[], List[str]]:
    """What asyncio has logged at WARNING or above so far in the test."""
    caplog.set_level(logging.WARNING, logger='asyncio')
    return lambda: [record.getMessage() for record in caplog.records
                    if record.name == 'asyncio' and record.levelno >= logging.WARNING]


# Test modules whose tests hold the client to wall-clock bounds (deadlines, timeouts, delays
# between connection attempts) tight enough that a busy machine can break them. CI (.ci/run)
# never runs two test runs of tests marked `serial` at once (and with CI_SERIAL=alone runs them
# with nothing beside them), while the other tests run side by side with other test runs. A
# single test elsewhere can be marked with @pytest.mark.serial.
SERIAL_MODULES = frozenset({
    'test_lowhaio_dns.py',              # happy eyeballs: attempts ordered against deadlines
    'test_lowhaio_faults.py',           # each fault must fail within its time limit
    'test_lowhaio_limits.py',           # waits for a connection, bounded below and above
    'test_lowhaio_pool.py',             # connection attempt delays, bounded below and above
    'test_lowhaio_timeouts.py',         # every deadline, fired within a small margin
    'test_lowhaio_upload_timeouts.py',  # inactivity timeouts within 1.125 x socket_timeout
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        'markers', 'serial: bounded by wall-clock time; CI runs one run of these at a time')


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
