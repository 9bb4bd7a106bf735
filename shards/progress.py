"""Progress that is seen wherever the output goes: a tqdm bar on a terminal, and on a log file
(SLURM's, a redirect, a pipe) a plain line every half minute and at the end, where a bar
would either be hidden or fill the log with carriage returns.

    with Progress(total=20_000, desc="sim-eyes real", unit="img") as bar:
        for batch in work:
            bar.update(len(batch))
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``total`` units of work (any unit: images, weighted steps). ``enabled=False`` says
    nothing at all; ``every`` is the seconds between log lines when not on a terminal."""

    def __init__(
        self,
        total: float,
        desc: str,
        *,
        unit: str = "it",
        initial: float = 0,
        enabled: bool = True,
        every: float = 30.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = initial
        self.enabled = enabled
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.start_units = initial
        self.bar: tqdm | None = None
        if enabled and self.stream.isatty():
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
        self.last = now
        rate = (self.done - self.start_units) / max(now - self.started, 1e-9)
        pct = 100 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        text = f"{self.desc}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%)"
        text += f", {rate:,.1f} {self.unit}/s"
        if self.done < self.total and eta == eta:
            text += f", {_duration(eta)} left"
        if self.postfix:
            text += f"; {self.postfix}"
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.done != self.start_units:
            self._line()  # the end is always reported
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
