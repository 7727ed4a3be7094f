"""Retrying failed lowhaio requests.

    retriable_request = retry(request)
    code, headers, body = await retriable_request(b'GET', url)

`retry` returns a function with the same signature as `request`. Each attempt calls the body
function again (with the same body_args and body_kwargs), so bodies are replayed, not buffered.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import itertools
import random
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    cast,
)

import lowhaio
from lowhaio import HttpConnectionError, HttpError, Request, Response

ExceptionIntervals = Sequence[Tuple[Type[BaseException], Iterable[float]]]

IDEMPOTENT_METHODS: FrozenSet[bytes] = frozenset((
    b'GET', b'HEAD', b'OPTIONS', b'TRACE', b'PUT', b'DELETE'))


class _NeverRaised(HttpError):
    """Stands in for lowhaio's 'reused connection closed before the response' error on versions
    of lowhaio that do not define it, so the default rules need no special case."""


HttpConnectionClosedBeforeResponseError: Type[BaseException] = getattr(
    lowhaio, 'HttpConnectionClosedBeforeResponseError', _NeverRaised,
)


def exponential_backoff(base: float = 0.05, cap: float = 5.0, max_count: Optional[int] = None,
                        jitter: Callable[[float, float], float] = random.uniform,
                        ) -> Iterable[float]:
    """Intervals for "full jitter" exponential backoff: the n-th (from 0) is uniformly random
    between 0 and min(cap, base * 2**n). Without max_count, it yields forever.

    Spreading retries randomly over the whole window stops clients that failed together from
    retrying together; the cap stops the window from growing without limit. The result is
    re-iterable: each iteration (so each request call made through `retry`) starts again
    from the first interval.
    """
    return _ExponentialBackoff(base, cap, max_count, jitter)


class _ExponentialBackoff:
    def __init__(self, base: float, cap: float, max_count: Optional[int],
                 jitter: Callable[[float, float], float]):
        self.base, self.cap, self.max_count, self.jitter = base, cap, max_count, jitter

    def __iter__(self) -> Iterator[float]:
        counter = itertools.count() if self.max_count is None else range(self.max_count)
        for attempt in counter:
            # Bounding the exponent avoids float overflow after about 1000 attempts
            yield self.jitter(0.0, min(self.cap, self.base * 2 ** min(attempt, 64)))

    def __repr__(self) -> str:
        return (f'exponential_backoff(base={self.base!r}, cap={self.cap!r}, '
                f'max_count={self.max_count!r})')


DEFAULT_INTERVALS: Iterable[float] = exponential_backoff(max_count=5)
DEFAULT_STATUS_INTERVALS = DEFAULT_INTERVALS


def default_exception_intervals(method: bytes) -> ExceptionIntervals:
    """What is safe to retry without knowing anything about the server: a connection that
    could not be made (nothing was sent), and, for idempotent methods only, a reused
    keep-alive connection that the server closed before any byte of a response (the
    request may or may not have been processed)."""
    rules: List[Tuple[Type[BaseException], Iterable[float]]] = [
        (HttpConnectionError, DEFAULT_INTERVALS)]
    if method.upper() in IDEMPOTENT_METHODS:
        rules.append((HttpConnectionClosedBeforeResponseError, DEFAULT_INTERVALS))
    return rules


def retry(request: Request,
          exception_intervals: Optional[ExceptionIntervals] = None,
          *,
          retry_statuses: Iterable[Any] = (),
          status_intervals: Any = None,
          max_retry_after: float = 60.0,
          sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
          ) -> Request:
    """Wrap `request` so that it is retried on the given exceptions, and optionally on statuses.

    exception_intervals: pairs of (exception class, intervals). When an attempt raises an
        instance of the class of the first matching pair, the next of that pair's intervals
        (seconds) is slept and the request is made again; when they run out, the exception
        propagates. Intervals can be any iterable, including an infinite one, or a
        zero-argument callable returning one. A fresh iterator is taken for every call of the
        returned function, so one call's retries do not use up another's; but an iterator
        object, e.g. a generator object, can only be consumed once: pass a tuple, an
        `exponential_backoff(...)`, or a generator function instead. Without
        exception_intervals, `default_exception_intervals(method)` apply.
    retry_statuses: response codes (ints or bytes), e.g. (429, 503), retried for any method,
        since the caller opts in. The discarded response's body is closed. The wait is the
        response's Retry-After (delay-seconds or an HTTP date, at most max_retry_after) if it
        has a valid one, else the next of status_intervals (by default the same as
        DEFAULT_INTERVALS). Either way an interval is used up, and when they run out the last
        response is returned as is.
    """
    statuses = frozenset(
        status if isinstance(status, bytes) else str(status).encode() for status in retry_statuses
    )

    async def retriable_request(*args: Any, **kwargs: Any) -> Response:
        # The arguments pass through untouched (lowhaio-retry 0.0.5 wrapped any coroutine
        # function); only the default rules look at the method, where request takes it.
        rules = default_exception_intervals(method_of(args, kwargs)) \
            if exception_intervals is None else exception_intervals
        exception_iterators = [(cls, fresh_iterator(intervals)) for cls, intervals in rules]
        status_iterator = fresh_iterator(
            DEFAULT_STATUS_INTERVALS if status_intervals is None else status_intervals)

        while True:
            try:
                result = await request(*args, **kwargs)
            except BaseException as exception:
                interval = next_interval_for(exception, exception_iterators)
                if interval is None:
                    raise
                await sleep(interval)
                continue

            # Without status rules the wrapped function may return anything (lowhaio-retry
            # 0.0.5 wrapped any coroutine function): it passes through untouched.
            if not statuses:
                return result
            code, headers, body = response_parts(result)
            if code not in statuses:
                return result

            interval = next(status_iterator, None)
            if interval is None:
                return result
            retry_after = retry_after_seconds(headers)
            await close_body(body)
            await sleep(interval if retry_after is None else min(retry_after, max_retry_after))

    return cast(Request, retriable_request)


def method_of(args: Sequence[Any], kwargs: Dict[str, Any]) -> bytes:
    """The method of a call made as request is called, for the default rules; b'' (not
    idempotent, so only what is always safe is retried) for a function called otherwise."""
    method = args[0] if args else kwargs.get('method', b'')
    if isinstance(method, str):
        method = method.encode('latin-1', 'replace')
    return method if isinstance(method, bytes) else b''


def response_parts(result: Any) -> Tuple[Any, Any, Any]:
    """(code, headers, body) of what the wrapped function returned, which retry_statuses
    needs: a lowhaio response, or one whose body was read already (bytes)."""
    if isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], bytes):
        return result
    raise TypeError(
        'retry_statuses needs the wrapped function to return (code: bytes, headers, body), '
        'as lowhaio request does; it returned %s' % (type(result).__name__,))


async def close_body(body: Any) -> None:
    # A streamed body is closed, freeing its connection; one already read has nothing to close
    aclose = getattr(body, 'aclose', None)
    if aclose is not None:
        await aclose()


def fresh_iterator(intervals: Any) -> Iterator[float]:
    # A zero-argument callable (e.g. a generator function) is called per request, so that
    # something that can only be iterated once still restarts for each call
    return iter(intervals() if callable(intervals) else intervals)


def next_interval_for(exception: BaseException,
                      exception_iterators: Sequence[Tuple[Type[BaseException], Iterator[float]]],
                      ) -> Optional[float]:
    # Cancellation and other BaseExceptions are only retried if a rule names them explicitly
    for cls, intervals in exception_iterators:
        if isinstance(exception, cls):
            return next(intervals, None)
    return None


def retry_after_seconds(headers: Iterable[Tuple[bytes, bytes]]) -> Optional[float]:
    """The Retry-After header (RFC 9110 10.2.3) as seconds from now: either delay-seconds or an
    HTTP date. None if absent or unparseable, so the caller falls back to its own interval."""
    value = next((value for key, value in headers if key.lower() == b'retry-after'), None)
    if value is None:
        return None
    text = value.decode('latin-1').strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # HTTP dates are always GMT; parsedate_to_datetime returns naive for "-0000"
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
