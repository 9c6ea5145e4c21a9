"""How a duration is written for people: one form for the CLI's tables and every message."""

from __future__ import annotations

_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def duration_text(seconds: int) -> str:
    """Whole seconds as `367d`, `1d12h`, `1h30m`, `29m58s` or `45s`: the largest unit first,
    the later ones in two digits, trailing zero units left out. `--hold` reads this form."""
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    parts: list[tuple[int, str]] = []
    for unit, size in _UNITS:
        amount, rest = divmod(rest, size)
        if amount or parts:
            parts.append((amount, unit))
    while len(parts) > 1 and parts[-1][0] == 0:
        parts.pop()
    if not parts:
        return "0s"
    (first, unit), *later = parts
    return f"{sign}{first}{unit}" + "".join(f"{amount:02d}{name}" for amount, name in later)
