"""One exception hierarchy for the whole library.

Every message names the stage, the client and what was expected, so that a coordinator can log
it verbatim and an operator can act on it without reading the code.
"""

__all__ = [
    "SecAggError",
    "ProtocolError",
    "AbortError",
    "WireError",
    "CryptoError",
    "BudgetExhaustedError",
    "InputError",
]


class SecAggError(Exception):
    """Base class of every error this library raises on purpose."""


class ProtocolError(SecAggError):
    """A message or call that the protocol forbids here (wrong stage, wrong round, wrong peer)."""


class AbortError(SecAggError):
    """The round cannot finish safely (too many dropouts); nothing about any input is released.

    Raised by the server with `.state` set to the ABORTED server state (masked data dropped).
    """

    state: object = None


class WireError(SecAggError):
    """Bytes that do not parse under the fixed binary layout or exceed a size limit."""


class CryptoError(SecAggError):
    """A signature, authentication tag or reconstructed secret failed verification."""


class BudgetExhaustedError(SecAggError):
    """The differential-privacy budget would be exceeded by one more round."""


class InputError(SecAggError, ValueError):
    """A local input (update vector, counters, weight, dimension) that cannot be encoded."""
