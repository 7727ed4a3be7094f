"""What every fuzz target shares: lowhaio imported with coverage instrumentation, the one
allowed kind of failure, and feeding a byte string in pieces chosen by the fuzzer."""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Callable, Iterator, List, TypeVar

import atheris

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# lowhaio's own dependencies are imported first, uninstrumented: coverage is wanted for the
# parsing code, and instrumenting asyncio would only slow every input down.
import asyncio  # noqa: E402,F401
import ipaddress  # noqa: E402,F401
import ssl  # noqa: E402,F401
import urllib.parse  # noqa: E402,F401

import aiodnsresolver  # noqa: E402,F401

with atheris.instrument_imports(include=['lowhaio']):
    import lowhaio  # noqa: E402

HttpError = lowhaio.HttpError
T = TypeVar('T')


def http_error_or(function: Callable[..., T], *args: object) -> 'T | HttpError':
    """Call `function`; an HttpError is a result, any other exception escapes (a defect)."""
    try:
        return function(*args)
    except HttpError as error:
        return error


def split_points(fdp: atheris.FuzzedDataProvider, length: int) -> List[int]:
    """Up to 16 sorted cut positions inside [0, length], taken from the fuzz input."""
    count = fdp.ConsumeIntInRange(0, 16)
    return sorted({fdp.ConsumeIntInRange(0, length) for _ in range(count)})


def pieces(data: bytes, points: List[int]) -> Iterator[bytes]:
    """`data` cut at `points` (empty pieces included: a read may return nothing new)."""
    start = 0
    for point in points:
        yield data[start:point]
        start = point
    yield data[start:]


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Hand `test_one_input` to libFuzzer with the command-line arguments (corpus, -runs=...).

    libFuzzer runs argv[0] again for -merge; a .py file is not executable, so the runner may
    name an executable wrapper in LOWHAIO_FUZZ_SELF.
    """
    argv = [os.environ.get('LOWHAIO_FUZZ_SELF', sys.argv[0]), *sys.argv[1:]]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
