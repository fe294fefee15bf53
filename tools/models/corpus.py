"""Real English sentences that ship offline: the quotations of Debian's ``fortunes`` package
(``apt-get install fortunes``, files under ``/usr/share/games/fortunes``), used to score
sentence encoders on text they were not calibrated on. Nothing is downloaded.

A quotation is kept when it is prose: its attribution (``-- Author``) removed, one to three
lines, 30 to 200 characters, mostly letters, and no ASCII art (the ``art``/``ascii-art`` files
are skipped). The order is fixed (files by name, quotations as they stand), so a prefix of the
list is the same on every machine with the same package version.
"""
from __future__ import annotations

import re
from pathlib import Path

from lcpaq.ir.errors import ConfigError

FORTUNES = Path("/usr/share/games/fortunes")
SKIPPED = frozenset({"art", "ascii-art", "translate-me", "perl"})
_ATTRIBUTION = re.compile(r"^\s*--")


def _prose(entry: str) -> str | None:
    lines = [ln for ln in entry.strip("\n").splitlines() if ln.strip()]
    while lines and _ATTRIBUTION.match(lines[-1]):
        lines.pop()
    if not 1 <= len(lines) <= 3:
        return None
    text = " ".join(ln.strip() for ln in lines)
    letters = sum(c.isalpha() or c == " " for c in text)
    if not 30 <= len(text) <= 200 or letters < 0.85 * len(text) or "--" in text:
        return None
    return re.sub(r"\s+", " ", text)


def fortune_sentences(limit: int | None = None, root: Path = FORTUNES) -> list[str]:
    """Up to ``limit`` distinct prose quotations from the fortunes files under ``root``, in a
    fixed order. Raises ConfigError with the install command if the package is missing."""
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.suffix and p.name not in SKIPPED) if root.is_dir() else []
    if not files:
        raise ConfigError(f"no fortunes corpus under {root}: install it with `apt-get install fortunes` (Debian)")
    seen: dict[str, None] = {}
    for path in files:
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = _prose(entry)
            if text is not None:
                seen.setdefault(text)
            if limit is not None and len(seen) >= limit:
                return list(seen)
    return list(seen)
