"""Shared by the benchmarks: each one owns a marked section of a Markdown file and rewrites only that."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["markers", "write_section"]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: Path, start: str, end: str, body: str) -> None:
    """Replace the text between ``start`` and ``end`` (or append the section at the end of the file); the rest of
    the file (other benchmarks' sections) is left byte for byte."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{body.rstrip(chr(10))}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: section, text, count=1, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
