"""Progress that is seen wherever the output goes: a tqdm bar on a terminal, and on a log file
(SLURM's, a redirect, a pipe) a plain line every half minute and at the end, where a bar
would either be hidden or fill the log with carriage returns.

    with Progress(total=20_000, desc="sim-eyes real", unit="img", where=out_dir) as bar:
        for batch in work:
            bar.update(len(batch))

On a log, that prints lines such as

    sim-eyes real -> data/real: 6,144/20,000 img (31%), 204.5 img/s, 1m07s left
    sim-eyes real -> data/real: 20,000/20,000 img (100%), 210.3 img/s

and on a terminal one line ``sim-eyes real -> data/real`` above the bar. Work that ends in an
exception leaves no last line: the error that follows says what happened, alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

EVERY = 30.0  # default seconds between lines on a log (tests shorten it)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``total`` units of work (any unit: images, weighted steps; None: not known ahead), made
    into ``where`` (a directory, if the work writes one). ``enabled=False`` says nothing at
    all; ``every`` is the seconds between log lines when not on a terminal (default
    ``EVERY``)."""

    def __init__(
        self,
        total: float | None,
        desc: str,
        *,
        unit: str = "it",
        initial: float = 0,
        enabled: bool = True,
        every: float | None = None,
        stream: TextIO | None = None,
        where: str | Path | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.where = where
        self.done = initial
        self.enabled = enabled
        self.every = EVERY if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.start_units = self.reported = initial
        self.bar: tqdm | None = None
        if enabled and self.stream.isatty():
            if where is not None:
                print(f"{desc} -> {where}", file=self.stream, flush=True)
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            dynamic_ncols=True, file=self.stream)  # fmt: skip

    def update(self, n: float = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self._line()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def _line(self) -> None:
        now = time.monotonic()
        self.last, self.reported = now, self.done
        rate = (self.done - self.start_units) / max(now - self.started, 1e-9)
        head = self.desc if self.where is None else f"{self.desc} -> {self.where}"
        if self.total is None:
            text = f"{head}: {self.done:,.0f} {self.unit}"
        else:
            pct = 100 * self.done / self.total if self.total else 100.0
            text = f"{head}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%)"
        text += f", {rate:,.1f} {self.unit}/s"
        if self.total is not None and self.done < self.total and rate > 0:
            text += f", {_duration((self.total - self.done) / rate)} left"
        if self.postfix:
            text += f"; {self.postfix}"
        print(text, file=self.stream, flush=True)

    def close(self, *, last_line: bool = True) -> None:
        """End the bar; on a log, report where the work got to unless ``last_line`` is off."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and last_line and self.done != self.reported:
            self._line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(last_line=exc_type is None)
