"""The one error tree of nurture: everything the engine raises on purpose is a NurtureError."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class NurtureError(Exception):
    """Raised when nurture refuses to do something; the root of every error it raises on purpose."""


class ConfigurationError(NurtureError):
    """Raised when settings or provider credentials are missing or wrong."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a workflow file, located by file, line and dotted field path."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class WorkflowError(NurtureError):
    """Raised when workflow YAML or templates do not validate; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConditionError(NurtureError):
    """Raised when a condition string does not parse; `column` is 1-based within the text."""

    def __init__(self, message: str, column: int) -> None:
        self.message = message
        self.column = column
        super().__init__(f"{message} (at column {column})")


class UnknownLeadError(NurtureError):
    """Raised when a lead is looked up by an identity nobody has."""


class UnknownSequenceError(NurtureError):
    """Raised when a command names a sequence the workflows folder does not hold; the message
    lists the ones it does."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown sequence {name!r} (sequences: {', '.join(known)})")


class UnknownExperimentError(NurtureError):
    """Raised when a command names a step without variants, or a variant the step lacks; the
    message lists what there is to choose from."""


class InvalidLeadError(NurtureError):
    """Raised when lead data is unusable: no identity, a malformed email or phone number.

    `field` names the attribute at fault when one is; `reason` is the message without it.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class ErrorKind(StrEnum):
    """What the caller of a channel should do about its error."""

    TRANSIENT = "transient"  # retry with backoff: provably not taken (refused, 429, 500, 503)
    PERMANENT = "permanent"  # give up on this delivery: bad request, invalid address
    UNKNOWN = "unknown"  # may have been taken (read time-out, reset after sending): never resend
    OPTED_OUT = "opted_out"  # the recipient refused: suppress the address
    CONFIGURATION = "configuration"  # bad key or sender: stop and say so loudly


class ChannelError(NurtureError):
    """Raised by channel adapters; `kind` says what the caller should do about it."""

    def __init__(
        self,
        message: str,
        kind: ErrorKind,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.code = code
        self.retry_after = retry_after
        super().__init__(message)

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed."""
        return self.kind == ErrorKind.TRANSIENT
