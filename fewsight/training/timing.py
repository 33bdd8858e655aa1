"""Durations as a user writes them (--time 12m) and as fewsight prints them (about 57 h 10 min)."""

from __future__ import annotations

import re

from fewsight.errors import FewsightError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds of a duration such as 90s, 12m, 1.5h or 1h30m (a bare number is minutes)."""
    spoken = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", spoken):
        spoken += "m"
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", spoken)
    if not parts or "".join(n + u for n, u in parts) != spoken:
        raise FewsightError(f"--time {text!r} is not a duration; write it as 90s, 12m, 1.5h or 1h30m")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise FewsightError(f"--time {text!r} must be longer than zero; write it as 90s, 12m, 1.5h or 1h30m")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration rounded as a person says it: 40 s, 12 min, 57 h 10 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
