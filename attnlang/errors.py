"""Errors with a position: every user-facing failure of attnlang is an `AttnlangError`.

An error carries the file, line and column of the offending token and renders as

    window.attn:3:29: error: unknown name 'windw'; did you mean 'window'?
        mask q >= k and q - k < windw
                                ^~~~~

so the CLI can print it as is and exit with status 2, never a traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

__all__ = ["AttnlangError", "AttnlangWarning", "Source", "Span", "decode_source", "did_you_mean"]


@dataclass(frozen=True)
class Source:
    """A program text and the name it is reported under."""

    text: str
    filename: str = "<string>"

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 1 <= line <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """Where a node came from: 1-based line and column, end column exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int
    source: Source | None = field(default=None, compare=False, repr=False)

    @property
    def filename(self) -> str:
        return self.source.filename if self.source else "<string>"

    def tag(self) -> str:
        """`file:line`, used to label generated code with where it came from."""
        return f"{self.filename}:{self.line}"


class AttnlangError(Exception):
    """A problem in a pattern program or in the arguments given to attnlang.

    `line` and `column` are 1-based (None when the error is about an argument, not
    about source text). `str(err)` is the full report: position, message, source line
    and a caret under the offending token.
    """

    def __init__(self, message: str, span: Span | None = None, *, note: str | None = None):
        self.message = message
        self.span = span
        self.note = note
        super().__init__(self.render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    @property
    def filename(self) -> str | None:
        return self.span.filename if self.span else None

    def render(self) -> str:
        if self.span is None:
            text = f"error: {self.message}"
            return text + (f"\nnote: {self.note}" if self.note else "")
        span = self.span
        head = f"{span.filename}:{span.line}:{span.column}: error: {self.message}"
        source_line = span.source.line_text(span.line) if span.source else ""
        parts = [head]
        if source_line:
            width = span.end_column - span.column if span.end_line == span.line else 1
            width = max(1, min(width, len(source_line) - span.column + 2))
            parts.append("    " + source_line)
            parts.append("    " + " " * (span.column - 1) + "^" + "~" * (width - 1))
        if self.note:
            parts.append(f"note: {self.note}")
        return "\n".join(parts)


class AttnlangWarning(UserWarning):
    """Something legal that is probably not what was meant (a pattern that allows no pair)."""


def decode_source(data: bytes, filename: str) -> Source:
    """UTF-8 program text, or an `AttnlangError` at the first byte that is not UTF-8."""
    try:
        return Source(bytes(data).decode("utf-8"), filename)
    except UnicodeDecodeError as err:
        before = bytes(data[:err.start]).decode("utf-8")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        shown = Source(bytes(data).decode("utf-8", errors="replace"), filename)
        raise AttnlangError(f"the file is not UTF-8 text: byte 0x{data[err.start]:02x} cannot be decoded "
                            "(save it as UTF-8)", Span(line, column, line, column + 1, shown)) from None


def did_you_mean(name: str, candidates) -> str:
    """A ` did you mean 'x'?` suffix when a close candidate exists, else ''."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
