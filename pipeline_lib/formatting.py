"""Markdown tables and figures with confidence intervals, for the evaluate report and the model
card."""

from __future__ import annotations

import math


def number(value, fmt: str = ".3f") -> str:
    """A number for a table; ``-`` for a missing or undefined (NaN, infinite) one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def with_ci(entry: dict, key: str) -> str:
    """``entry[key]`` with its interval ``[key_low, key_high]``, or alone without one."""
    low, high = entry.get(f"{key}_low"), entry.get(f"{key}_high")
    if number(low) == "-" or number(high) == "-":
        return number(entry.get(key))
    return f"{number(entry[key])} [{number(low)}, {number(high)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
