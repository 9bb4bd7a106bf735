"""DataLoaders over the two streams (``distsim.data.streams``), with one-line errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from distsim.data.shardsets import OnError, open_shards
from distsim.data.streams import BatchStream, EpochStream, Remainder
from shards.format import ShardError


class ShardLoader(DataLoader):
    """A DataLoader that re-raises a worker's ShardError as its own one-line message.

    (DataLoader wraps worker exceptions in a message holding the worker's traceback.) After
    such an error the workers are stopped at once. ``close()`` (or ``with loader:``) stops
    persistent workers when you are done: left to the garbage collector inside a reference
    cycle (an exception's traceback, for one), each worker costs a 5 s join timeout.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._one_line_errors(super().__iter__())

    def _one_line_errors(self, batches: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from batches
        except ShardError as e:
            self._stop(batches)
            text = str(e)
            if not text.startswith("Caught ShardError"):
                raise
            last = text.rstrip().rsplit("\n", 1)[-1]  # "shards.format.ShardError: <message>"
            raise ShardError(last.split("ShardError: ", 1)[-1]) from None

    def _stop(self, batches: Iterator[Any] | None) -> None:
        # DataLoader has no public way to stop its workers early.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if batches is getattr(self, "_iterator", None):
            self._iterator = None  # a persistent iterator cannot be reused after shutdown

    def close(self) -> None:
        """Stop persistent workers now; iterating again starts new ones."""
        self._stop(getattr(self, "_iterator", None))

    def __enter__(self) -> ShardLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_epoch(self, epoch: int) -> None:
        """For an EpochStream: the epoch the next ``iter(loader)`` reads."""
        if not isinstance(self.dataset, EpochStream):
            raise TypeError("set_epoch needs a loader over an EpochStream")
        self.dataset.set_epoch(epoch)


def make_loader(
    directory: str | Path,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int = 1,
    labels: Sequence[str] = ("gaze",),
    pin_memory: bool = False,
    shuffle_buffer: int = 4,
    *,
    on_error: OnError = "raise",
    verify: bool = False,
    verify_blocks: bool = True,
    start: int = 0,
    max_images: int | None = None,
) -> ShardLoader:
    """A DataLoader over ``BatchStream``; batches are already formed, so batch_size=None.

    ``start=s`` yields exactly (bitwise) the batches that ``start=0`` yields from its s-th
    (0-based) on, given the same other arguments, ``num_workers`` included (the order depends
    on it), without reading the s batches before: resume a run at the batch it stopped at.
    Each ``iter(loader)`` starts again at ``start``. ``loader.dataset.skipped_shards`` lists
    shards dropped under ``on_error="skip"``. ``max_images=n``: only the set's first n images.
    ``verify_blocks=False`` skips the per-block checksums (to measure what they cost).
    """
    manifest = open_shards(directory, on_error=on_error)
    stream = BatchStream(
        directory,
        manifest,
        batch_size,
        rank,
        world_size,
        seed,
        labels,
        shuffle_buffer,
        on_error=on_error,
        verify=verify,
        verify_blocks=verify_blocks,
        start=start,
        max_images=max_images,
    )
    return ShardLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def make_epoch_loader(
    directory: str | Path,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int = 1,
    labels: Sequence[str] = ("gaze",),
    pin_memory: bool = False,
    *,
    epoch: int = 0,
    shuffle: bool = True,
    remainder: Remainder = "split",
    with_index: bool = False,
    on_error: OnError = "raise",
    verify: bool = False,
    verify_blocks: bool = True,
) -> ShardLoader:
    """A DataLoader over ``EpochStream``: ``len(loader)`` batches per pass on every rank.

    Call ``loader.set_epoch(e)`` before each pass for a new order.
    """
    manifest = open_shards(directory, on_error=on_error)
    stream = EpochStream(
        directory,
        manifest,
        batch_size,
        rank,
        world_size,
        seed,
        labels,
        epoch=epoch,
        shuffle=shuffle,
        remainder=remainder,
        with_index=with_index,
        on_error=on_error,
        verify=verify,
        verify_blocks=verify_blocks,
    )
    return ShardLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def first_images(directory: str | Path, n: int, *, on_error: OnError = "raise") -> torch.Tensor:
    """The first n images of a shard set, in stored order: (n, C, H, W) in the stored dtype."""
    loader = make_epoch_loader(
        directory, 256, 0, 1, 0, num_workers=0, labels=(), shuffle=False, on_error=on_error
    )
    parts, got = [], 0
    with loader:
        for batch in loader:
            parts.append(batch["image"])
            got += len(batch["image"])
            if got >= n:
                break
    return torch.cat(parts)[:n]
