"""A run's TensorBoard log, whose every failure to write is one line naming the log.

TensorBoard writes from a thread of its own: a full disk there prints the thread's traceback,
then is raised again in the caller's next write. While a ``Board`` is open, that thread's
failures are left to the caller alone, which says them in one line
(``shards.cliutil.written``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from shards.cliutil import written


def _is_writer_thread(thread: threading.Thread | None) -> bool:
    return type(thread).__name__ == "_AsyncWriterThread"


class Board:
    """A TensorBoard log at `directory` whose every write fails in one line."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.failed = False
        # Before the writer starts: its thread writes the file's first record at once.
        self._hook = threading.excepthook
        threading.excepthook = self._thread_failed
        try:
            with written(directory):
                self.writer = SummaryWriter(str(directory))
        except OSError:
            threading.excepthook = self._hook
            raise

    def _thread_failed(self, args: threading.ExceptHookArgs) -> None:
        if _is_writer_thread(args.thread):
            self.failed = True  # the writer raises it again on the caller's next write
            return
        self._hook(args)

    def _write(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            with written(self.directory):
                getattr(self.writer, method)(*args, **kwargs)
        except OSError:
            self.failed = True
            raise

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write("add_scalar", tag, value, step)

    def image(self, tag: str, picture: Any, step: int) -> None:
        self._write("add_image", tag, picture, step, dataformats="HWC")

    def flush(self) -> None:
        self._write("flush")

    def close(self) -> None:
        """Stop the writer; after a failure, without raising it a second time."""
        threading.excepthook = self._hook
        try:
            self._write("close")
        except OSError:
            if not self.failed:
                raise
