"""Text from untrusted code (a plug-in's error message, a traceback) made safe for each medium.

A message may hold anything: ANSI escapes, NUL and other control characters, Markdown
fences, HTML. One function per medium, used by every writer:

- ``terminal(text)``: ANSI escape sequences and control characters removed (newlines and
  tabs kept), so nothing a plug-in prints can move the cursor or recolour the gate's verdict;
- ``xml(text)``: only the characters XML 1.0 allows (ANSI escapes removed, other forbidden
  characters written as ``\\xNN``), for JUnit attributes and text;
- ``markdown_block(text)``: a fenced code block whose fence is longer than any run of
  backticks in the text, so the text can never close it; ``markdown_inline(text)``: one
  line with Markdown's and HTML's special characters escaped (table cells, headings);
- ``html(text)``: escaped, after the terminal clean-up.

The lengths and counts the reports show live here too, in one place.
"""

from __future__ import annotations

import html as _html
import re

# How many failures (and XPASSes) each medium shows in full before it says "N more".
SHOWN_FAILURES_TERMINAL = 5
SHOWN_FAILURES_REPORT = 20
# A stored message is kept whole up to this many characters (a plug-in could raise with megabytes).
MESSAGE_CHARS = 20_000
# A one-line summary (JUnit's message attribute, a stored error's reason, an exit's tail).
SUMMARY_CHARS = 200
# What a progress bar says it is doing.
PROGRESS_CHARS = 60
# Off a terminal (a CI log), a progress line every this many implementation x case steps.
PROGRESS_EVERY = 25
# Lines of a message the terminal shows without --traceback.
TERMINAL_MESSAGE_LINES = 12

# ANSI escape sequences.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"               # CSI: ESC [ ... final byte
                   r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"   # OSC: ESC ] ... BEL or ESC backslash
                   r"|\x1b[@-Z\\-_]"                       # two-character escapes
                   r"|\x9b[0-?]*[ -/]*[@-~]")                # CSI as one 8-bit byte
# C0 and C1 control characters except tab and newline, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What XML 1.0 forbids: C0 controls but tab, newline and carriage return; surrogates; U+FFFE, U+FFFF.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", str(text))


def terminal(text: str) -> str:
    """ANSI escapes and control characters removed; a carriage return ends a line."""
    text = strip_ansi(text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def xml(text: str) -> str:
    """Characters XML 1.0 can hold: ANSI escapes gone, the rest of the forbidden written \\xNN."""
    text = strip_ansi(text).replace("\r\n", "\n")
    return _XML_FORBIDDEN.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def markdown_block(text: str) -> list[str]:
    """The lines of a fenced code block holding ``text`` verbatim (after the terminal
    clean-up): the fence is one backtick longer than the longest run in the text."""
    text = terminal(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *text.split("\n"), fence]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!&~])")


def markdown_inline(text) -> str:
    """One line of plain text in Markdown: newlines become spaces, specials are escaped."""
    flat = " ".join(terminal(str(text)).split("\n"))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def html(text: str) -> str:
    return _html.escape(terminal(text))


def one_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    """The first non-empty line, cleaned for the terminal, cut to ``limit`` characters."""
    lines = [line.strip() for line in terminal(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[:limit - 3] + "..."


def capped(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` whole when it fits in ``limit`` characters, else its head and tail."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"
