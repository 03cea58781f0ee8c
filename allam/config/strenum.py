"""Choices as strings: the base of every choice enum of the config schemas."""
from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A choice that behaves as its plain string value (==, str(), f-strings, json, hashing)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    __hash__ = str.__hash__
