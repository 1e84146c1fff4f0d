"""Errors raised inside the emulator and how they surface to clients."""

from __future__ import annotations

# MySQL error numbers StarRocks uses for the statements the emulator answers.
ER_DB_CREATE_EXISTS = 1007
ER_DB_DROP_EXISTS = 1008
ER_NO_DB_ERROR = 1046
ER_BAD_DB_ERROR = 1049
ER_TABLE_EXISTS_ERROR = 1050
ER_BAD_TABLE_ERROR = 1051
ER_DUP_FIELDNAME = 1060
ER_PARSE_ERROR = 1064
ER_UNKNOWN_ERROR = 1105
ER_NOT_SUPPORTED_YET = 1235


class SRError(Exception):
    """A statement StarRocks would refuse; carries a MySQL error number."""

    def __init__(self, message: str, code: int = ER_PARSE_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class LoadError(Exception):
    """A load StarRocks would refuse as a whole; the message is what the BE reports."""


class LabelAlreadyExists(LoadError):
    def __init__(self, label: str, existing_status: str) -> None:
        super().__init__(f"Label [{label}] has already been used.")
        self.existing_status = existing_status
