"""Error taxonomy. Every error that reaches a user names the cause and the fix.

`DbmazzError.message` is the human text; `hint` is the action to take. Neither may contain
credentials: build them from names (tables, slots, hosts), never from connection strings.
"""

from __future__ import annotations


class DbmazzError(Exception):
    """Base class: an error with an actionable message."""

    #: Whether retrying the same operation later may succeed.
    retryable: bool = False

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} — {hint}" if hint else message)


class ConfigError(DbmazzError):
    """Invalid configuration; raised at start, before anything is touched."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        text = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text)


class SetupError(DbmazzError):
    """The source or target is not in a state dbmazz can work with."""


class SetupProblems(SetupError):
    """Several setup refusals found by one check (``dbmazz setup --check``), each in
    ``problems`` with its own hint."""

    def __init__(self, problems: list[SetupError]) -> None:
        self.problems = problems
        super().__init__(
            f"{len(problems)} problems: " + "; ".join(p.message for p in problems),
            "; ".join(p.hint for p in problems if p.hint) or None,
        )


class SourceError(DbmazzError):
    """PostgreSQL connection or replication failure."""


class SourceConnectionError(SourceError):
    """PostgreSQL unreachable or the connection dropped; retried with backoff."""

    retryable = True


class SlotLostError(SourceError):
    """The replication slot vanished or was invalidated: changes may have been lost."""


class ProtocolError(SourceError):
    """The replication stream held something dbmazz cannot decode."""


class SlotInUseError(SourceConnectionError):
    """Another session streams from the slot. Retryable: after a crash the old walsender
    keeps the slot until it notices its client is gone (up to wal_sender_timeout)."""


class CaptureFormatError(DbmazzError):
    """A capture file is not in the format of DESIGN §3 (or is truncated)."""


class SinkError(DbmazzError):
    """A load into the target failed."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        table: str | None = None,
        label: str | None = None,
        retryable: bool = False,
    ) -> None:
        self.table = table
        self.label = label
        self.retryable = retryable
        super().__init__(message, hint)


class SinkReplayRequired(SinkError):
    """The target dropped an unfinished multi-part (split) source transaction.

    Retrying the same part cannot help: the engine must resend the source transaction from
    its first part (restart from the checkpoint, which never lies inside a transaction).
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        table: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(message, hint, table=table, label=label, retryable=True)


class NotImplementedYet(DbmazzError):
    """A command registered in the CLI whose feature has not landed."""
