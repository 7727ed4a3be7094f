"""A circuit breaker for lowhaio: stop calling an origin that keeps failing, then probe it.

    breaker_request = circuit_breaker(request, failure_threshold=5, recovery_time=30)
    code, headers, body = await breaker_request(b'GET', url)
    breaker_request.state(url)   # 'closed', 'open' or 'half-open'

Each origin (scheme, host, port) has its own circuit:

- closed: requests go through; `failure_threshold` failures in a row open it.
- open: requests fail at once with CircuitOpenError, sending nothing, for `recovery_time` s.
- half-open: one trial request goes through while the others fail fast. If it succeeds the
  circuit closes; if it fails the circuit opens again for another `recovery_time`.

A failure is one of `failure_exceptions` raised by the wrapped request, or a response whose
status is in `failure_statuses` (none by default; the response is still returned). The outcome
of a request is known once its response head arrives: errors while reading a body are not
counted.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    Optional,
    Tuple,
    Type,
)

from lowhaio import (
    HttpConnectionClosedError,
    HttpConnectionError,
    HttpInvalidRequestError,
    HttpTimeoutError,
    Request,
    Response,
)

Origin = Tuple[str, str, Optional[int]]

CLOSED = 'closed'
OPEN = 'open'
HALF_OPEN = 'half-open'

DEFAULT_PORTS: Dict[str, int] = {'http': 80, 'https': 443}
# Failing to connect, timing out, and the server dropping the connection: what an unhealthy
# origin does. Errors the caller causes (HttpInvalidRequestError) and malformed responses
# are not counted.
DEFAULT_FAILURE_EXCEPTIONS: Tuple[Type[BaseException], ...] = (
    HttpConnectionError, HttpTimeoutError, HttpConnectionClosedError)
SERVER_ERRORS: Tuple[int, ...] = tuple(range(500, 600))


class CircuitOpenError(HttpConnectionError):
    """The circuit for this origin is open (or half-open with its trial in flight): the
    request was not sent."""


class _Circuit:
    """The state of one origin. `opened_at` is None while closed."""

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at: Optional[float] = None
        self.trial_in_flight = False


def origin_of(url: str) -> Origin:
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    return scheme, (parsed.hostname or ''), parsed.port or DEFAULT_PORTS.get(scheme)


def circuit_breaker(request: Request, failure_threshold: int = 5, recovery_time: float = 30,
                    *,
                    failure_statuses: Collection[int] = (),
                    failure_exceptions: Tuple[Type[BaseException], ...] =
                    DEFAULT_FAILURE_EXCEPTIONS,
                    clock: Callable[[], float] = time.monotonic) -> Request:
    """Wrap `request` with one circuit breaker per origin.

    failure_threshold: consecutive failures that open a closed circuit.
    recovery_time: seconds an open circuit waits before letting one trial request through.
    failure_statuses: response statuses (ints, e.g. `lowhaio_breaker.SERVER_ERRORS` for
        500-599) that count as failures; the response is returned to the caller all the same.
    failure_exceptions: exception classes that count as failures. A CircuitOpenError from an
        inner breaker never does. Other exceptions propagate without changing the state.
    clock: a monotonic clock in seconds.

    The returned function has `state(url)`, the state of that URL's origin, and `states()`,
    a dict of every origin seen, as (scheme, host, port), to its state.
    """
    if failure_threshold < 1:
        raise HttpInvalidRequestError('failure_threshold must be at least 1')
    statuses = frozenset(int(status) for status in failure_statuses)
    circuits: Dict[Origin, _Circuit] = {}

    def state_of(circuit: _Circuit) -> str:
        if circuit.opened_at is None:
            return CLOSED
        return HALF_OPEN if clock() - circuit.opened_at >= recovery_time else OPEN

    def admit(circuit: _Circuit, url: str) -> bool:
        """Whether a request may go; True if it is the half-open circuit's trial."""
        state = state_of(circuit)
        if state == CLOSED:
            return False
        if state == HALF_OPEN and not circuit.trial_in_flight:
            circuit.trial_in_flight = True
            return True
        raise CircuitOpenError(f'Circuit open for {url}: {circuit.failures} failures in a row')

    def record_failure(circuit: _Circuit, is_trial: bool) -> None:
        circuit.failures += 1
        if is_trial or circuit.failures >= failure_threshold:
            circuit.opened_at = clock()

    def record_success(circuit: _Circuit) -> None:
        circuit.failures = 0
        circuit.opened_at = None

    def is_failure(exception: BaseException) -> bool:
        return isinstance(exception, failure_exceptions) and \
            not isinstance(exception, CircuitOpenError)

    async def breaker_request(method: bytes, url: str, *args: Any, **kwargs: Any
                              ) -> Response:
        circuit = circuits.setdefault(origin_of(url), _Circuit())
        is_trial = admit(circuit, url)
        try:
            response = await request(method, url, *args, **kwargs)
        except BaseException as exception:
            if is_failure(exception):
                record_failure(circuit, is_trial)
            raise
        finally:
            if is_trial:
                # Whatever happened, the trial is over: a cancelled or uncounted trial leaves
                # the circuit half-open for the next request to try
                circuit.trial_in_flight = False
        if int(response[0]) in statuses:
            record_failure(circuit, is_trial)
        else:
            record_success(circuit)
        return response

    def state(url: str) -> str:
        """'closed', 'open' or 'half-open' for the origin of `url`."""
        circuit = circuits.get(origin_of(url))
        return CLOSED if circuit is None else state_of(circuit)

    def states() -> Dict[Origin, str]:
        return {origin: state_of(circuit) for origin, circuit in circuits.items()}

    breaker_request.state = state  # type: ignore[attr-defined]
    breaker_request.states = states  # type: ignore[attr-defined]
    return breaker_request
