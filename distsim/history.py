"""The history buffer of refined images (Shrivastava et al. 2017, section 2.3).

D is shown, at each step, half current refined images and half refined images from the past,
so that R cannot win by drifting to artefacts D has forgotten. After each D step, b/2 slots of
the buffer are replaced at random by the new refined images.

Buffer semantics (one logical global buffer, whatever the number of ranks):
- It fills first: new images go into the next empty slots, in order, until all B are used.
  (Public implementations that only ever replace slots of an empty buffer never fill it.)
- Once full, each push replaces n slots chosen uniformly without replacement.
- `sample(n)` draws n filled slots uniformly without replacement.
- All choices come from one generator on the buffer's device, seeded identically on every
  rank, and every rank pushes the same gathered images, so every rank holds the same buffer
  as single-process training with the global batch would. Drawing on the device keeps the
  hot step free of host work and host-to-device copies.

Sharded (``--history-mode sharded``): with W ranks, each rank keeps B/W slots of its own
refined images, pushes its own b/2 per D step and samples its b/2 from them, with a generator
of its own. Nothing is exchanged. Each slot is then replaced at the same rate as in the
global buffer (b/2 new images into B/W slots, against W b/2 into B), so the age of a sampled
image (how many D steps ago it was refined) has the same distribution: each sample is uniform
over the last ~B refined images of the run, drawn from the sampling rank's share of them.
What is lost is exact world-size invariance (which images share a batch differs).

The buffer knows nothing of ranks: the caller gathers images and slices samples.
"""

from __future__ import annotations

import torch


class HistoryBuffer:
    def __init__(
        self,
        capacity: int,
        item_shape: tuple[int, ...],
        *,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"history buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.images = torch.zeros(
            (capacity, *item_shape), device=device, dtype=dtype
        )  # (B, C, H, W)
        # Host-side count: deterministic on every rank, so reading it never syncs the device.
        self.count = 0
        self.seed = seed
        self.generator = torch.Generator(device=self.images.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def sample_indices(self, n: int) -> torch.Tensor:
        """n distinct filled slots, uniformly at random: (n,) int64 on the buffer's device."""
        if n > self.count:
            raise ValueError(f"cannot sample {n} images from a buffer holding {self.count}")
        return self._randperm(self.count)[:n]

    def sample(self, n: int) -> torch.Tensor:
        return self.images[self.sample_indices(n)]  # (n, C, H, W)

    def _randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator, device=self.images.device)

    def push(self, images: torch.Tensor) -> None:
        """Store new images (n, C, H, W): fill empty slots first, then replace random ones."""
        n = images.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot push {n} images into a buffer of {self.capacity} slots")
        images = images.detach().to(self.images.dtype)
        free = min(n, self.capacity - self.count)
        if free > 0:
            self.images[self.count : self.count + free] = images[:free]
        rest = n - free
        if rest > 0:
            # Replace among slots that held images before this push, never the ones just filled.
            old = self.count
            self.images[self._randperm(old)[:rest]] = images[free:]
        self.count += free

    def state_dict(self) -> dict[str, object]:
        return {
            "images": self.images[: self.count].cpu(),
            "count": self.count,
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
            "generator_device": self.images.device.type,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        images = state["images"]
        assert isinstance(images, torch.Tensor)
        count = int(state["count"])  # type: ignore[arg-type]
        if count > self.capacity:
            raise ValueError(
                f"checkpoint buffer holds {count} images, more than this run's --history-size "
                f"{self.capacity}"
            )
        if tuple(images.shape[1:]) != tuple(self.images.shape[1:]):
            raise ValueError(
                f"checkpoint buffer images are {tuple(images.shape[1:])}, this run's are "
                f"{tuple(self.images.shape[1:])}"
            )
        self.images.zero_()
        self.images[:count] = images.to(self.images.device, self.images.dtype)
        self.count = count
        if state.get("generator_device", "cpu") == self.images.device.type:
            self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        else:
            # A CPU generator's state means nothing to a CUDA one (and back): draw on from a
            # seed of (seed, count), deterministic though not the stream never stopping had.
            self.generator.manual_seed(self.seed * 1_000_003 + count)


def merged_images(states: list[dict[str, object]]) -> torch.Tensor:
    """Every image held by a list of buffer states (a sharded buffer's ranks, or one
    replicated buffer), shard by shard: (N, C, H, W) on the CPU."""
    images = [s["images"] for s in states]
    assert all(isinstance(x, torch.Tensor) for x in images)
    return torch.cat(images)  # type: ignore[arg-type]


def deal(images: torch.Tensor, buffer: HistoryBuffer, rank: int, world: int) -> None:
    """Fill `buffer` (rank `rank` of `world`) with its round-robin share of `images`, and seed
    its generator from (its seed, rank): for a resume whose buffer layout changed."""
    share = images[rank::world][: buffer.capacity]
    buffer.images.zero_()
    buffer.images[: len(share)] = share.to(buffer.images.device, buffer.images.dtype)
    buffer.count = len(share)
    buffer.generator.manual_seed(buffer.seed * 1_000_003 + rank)
