"""Errors that unipo reports to the user as one clear message (no stack trace from the CLI)."""

from __future__ import annotations


class UnipoError(Exception):
    """Base class: the CLI prints the message and exits with status 2."""


class ConfigError(UnipoError, ValueError):
    """A configuration key or value is wrong; the message says what is allowed."""


class DataError(UnipoError, ValueError):
    """Bad input data. The message names the file, the row (1-based) and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file, self.row, self.field = file, row, field

    def with_way_out(self, way_out: str) -> DataError:
        """The same error (file, row, field kept) with ``way_out`` appended to its message."""
        err = DataError(f"{self}; {way_out}")
        err.file, err.row, err.field = self.file, self.row, self.field
        return err


def skip_invalid_hint(counted_in: str) -> str:
    """The way out that ends every invalid-row error of the commands that read pairs (``--on-invalid``)."""
    return f"pass --on-invalid skip to drop such rows; they are counted in {counted_in}"
