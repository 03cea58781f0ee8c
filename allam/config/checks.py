"""The small checks every rule module uses: each failure is one line naming the key, the value
and what is allowed."""
from __future__ import annotations

import math
from typing import Any, Optional

from allam.config.errors import ConfigError


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value}: {allowed}")


def unit(key: str, value: Optional[float]) -> None:
    if value is not None and not (0.0 <= float(value) <= 1.0):
        fail(key, value, "must be a fraction in [0, 1]")


def above_zero(key: str, value: Optional[float]) -> None:
    if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
        fail(key, value, "must be a number > 0")


def positive(key: str, value: Optional[int], allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        fail(key, value, "must be " + ("non-negative" if allow_zero else "positive"))

