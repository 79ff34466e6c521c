"""What a run shows while it judges, on stderr.

On a terminal, a rich progress bar (once the run has lasted a few seconds). Elsewhere (a
CI log, a file) a bar would print nothing until the end, or garble the log, so plain lines
instead: one every ``sanitize.PROGRESS_EVERY`` implementation x case steps, and one as
each implementation is done.
"""

from __future__ import annotations

import sys
import time

from attnsuite import sanitize

MODES = ("bar", "lines")


class Progress:
    """``mode``: "bar", "lines", or None (nothing shown). ``total``: implementation x case steps."""

    def __init__(self, mode: str | None, total: int, delay: float = 2.0, stream=None):
        if mode not in (None, *MODES):
            raise ValueError(f"progress: one of {MODES} or None, got {mode!r}")
        self.mode, self.total, self.delay = mode, total, delay
        self.stream = stream or sys.stderr
        self.start, self.done, self.bar, self.task = time.monotonic(), 0, None, None

    def advance(self, text: str | None, steps: int = 1) -> None:
        """Count ``steps`` done; ``text`` (when given) says what runs now."""
        before, self.done = self.done, self.done + steps
        if self.mode == "lines":
            every = sanitize.PROGRESS_EVERY
            if self.done // every > before // every:
                now = f": {sanitize.one_line(text, sanitize.PROGRESS_CHARS)}" if text else ""
                self._line(f"{self.done} of {self.total} implementation x case steps{now}")
        elif self.mode == "bar":
            self._bar(text)

    def finished(self, name: str, summary: str) -> None:
        """One implementation is done: a line in the log (the bar shows it as it goes)."""
        if self.mode == "lines":
            self._line(f"{sanitize.one_line(name)} done: {sanitize.one_line(summary)}")

    def _line(self, text: str) -> None:
        print(f"attnsuite check: [{time.monotonic() - self.start:.0f}s] {text}", file=self.stream,
              flush=True)

    def _bar(self, text: str | None) -> None:
        if self.bar is None and time.monotonic() - self.start > self.delay:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn)
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting the frameworks", total=self.total)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            if text:
                self.bar.update(self.task, description=sanitize.one_line(text, sanitize.PROGRESS_CHARS))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
