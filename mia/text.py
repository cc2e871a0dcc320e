"""Text from data shown to people: escaped for the console, Markdown and plots, and shortened.

Offer ids, categories and cells come from delivered files. They are shown as text and never
interpreted: no console markup or terminal escape sequences, no Markdown, no matplotlib mathtext.
"""

from __future__ import annotations

import re

# C0 and C1 control characters (escape sequences, NUL, newlines, tabs) and the Unicode bidi
# controls, which reorder what a reader sees (U+202E shows "exe.txt" for "txt.exe"). The pattern
# is also a polars (Rust regex) pattern.
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
_CONTROL = re.compile(CONTROL_CHARACTERS)
_CONTROL_EXCEPT_NEWLINE = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
# Characters that Markdown (GitHub's included: `$` starts math) would read as syntax; `_`
# only where it can open or close emphasis, so that `data_addon` stays as it is.
_MARKDOWN_SYNTAX = re.compile(r"([\\`*\[\]<>|~$&#]|(?<![^\W_])_|_(?![^\W_]))")
SHORT_TEXT = 80


def _escape_control(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with control and bidi characters written as `\\xNN` / `\\uNNNN` escapes."""
    pattern = _CONTROL_EXCEPT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(_escape_control, text)


def shorten(text: str, limit: int = SHORT_TEXT) -> str:
    """`text` cut to `limit` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def markdown_text(text: str) -> str:
    """`text` as literal Markdown (a table cell included): syntax and controls escaped."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", printable(text))


def plot_text(text: str) -> str:
    """`text` as a literal matplotlib label: dollar signs never start mathtext."""
    return printable(text).replace("$", r"\$")
