"""User-facing errors: one line, naming the field (or file/line/column), exit code 2."""
from __future__ import annotations

from typing import Any


class SimschedError(Exception):
    """Base for errors that are the user's input, not a bug: printed as one line, exit 2."""

    exit_code = 2


class ConfigError(SimschedError):
    """A configuration value is invalid. ``key`` is the field name (dotted path once known)."""

    def __init__(self, key: str, message: str, value: Any = None, allowed: str | None = None):
        self.key = key
        self.message = message
        self.value = value
        self.allowed = allowed
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.key}: {self.message}"
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        return text

    def under(self, prefix: str) -> "ConfigError":
        """Return the same error with its key placed under a config path prefix."""
        key = f"{prefix}.{self.key}" if prefix else self.key
        return ConfigError(key, self.message, self.value, self.allowed)


class InputError(SimschedError):
    """A data file is unusable: names the file and, where known, line and column."""

    def __init__(self, path: str, message: str, line: int | None = None, column: str | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if column is not None:
            where += f" column '{column}'"
        super().__init__(f"{where}: {message}")


# The largest integer a setting may take: every integer up to it is exact as a float64, so
# counts survive numpy and arithmetic without wrapping (2**53 = 9,007,199,254,740,992).
MAX_INT = 2 ** 53


def check_positive(key: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise ConfigError unless value is a finite positive number (or >= 0 when allow_zero);
    an ``integer`` must also be whole and at most ``MAX_INT``."""
    check_finite(key, value)
    if integer and not isinstance(value, int) and float(value) != int(value):
        raise ConfigError(key, "must be an integer", value)
    if integer and value > MAX_INT:
        raise ConfigError(key, f"must be <= 2**53 = {MAX_INT}", value)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, "must be >= 0" if allow_zero else "must be > 0", value)


def check_range(key: str, value: Any, low: float, high: float, why: str = "") -> None:
    """Raise ConfigError unless low <= value <= high (a finite number); ``why`` says why the bounds."""
    check_finite(key, value)
    if not low <= value <= high:
        raise ConfigError(key, f"must be in [{low:g}, {high:g}]" + (f" ({why})" if why else ""), value)


def check_finite(key: str, value: Any) -> None:
    """Raise ConfigError unless value is a finite real number (bools are rejected)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.number):
                value = float(value)
            else:
                raise TypeError
        except TypeError:
            raise ConfigError(key, "must be a number", value) from None
    if isinstance(value, int):
        return   # a Python int is exact and finite, however large (float() of it may overflow)
    if not math.isfinite(value):
        raise ConfigError(key, "must be finite", value)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless value is one of choices."""
    if value not in choices:
        raise ConfigError(key, "unknown value", value, ", ".join(choices))


def check_probability(key: str, value: Any, *, open_upper: bool = False) -> None:
    """Raise ConfigError unless 0 <= value <= 1 (or < 1)."""
    check_finite(key, value)
    if value < 0 or value > 1 or (open_upper and value >= 1):
        raise ConfigError(key, "must be in [0, 1)" if open_upper else "must be in [0, 1]", value)
