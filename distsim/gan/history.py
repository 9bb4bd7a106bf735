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

Quantised contents, so a checkpoint stores one byte per pixel. The images D is trained on came
from 8-bit eyes (or 16-bit depth crops), and R's tanh outputs are stored in [-1, 1]; at full
precision a buffer of 6400 35x55 eyes made a 50 MB checkpoint for a 0.3 MB refiner. With
``levels`` (``distsim.data.pixels.CODE_LEVELS`` of the data's dtype), every pushed image is
rounded to the nearest of ``levels + 1`` evenly spaced values k / (levels / 2) - 1, k =
0..levels: for uint8 eyes exactly the 256 values their pixels map to
(``distsim.data.pixels.to_unit_range``), which is also how ``distsim.refine`` rounds refined
eyes when it writes them; for depth crops the 65535 valid codes' values
(``distsim.data.depth``). A checkpoint stores the k (uint8, or uint16). Rounding at insertion,
not at saving, is what keeps resume exact: the buffer only ever holds values its codes give back
bitwise, so saving and loading lose nothing and a resumed run goes on as if never stopped.
Rounding only at saving would change the buffer at every resume, and with it the run.

What D sees changes by at most half a code (1/255 for 8-bit data): the real images it is shown
have exactly that resolution, bf16 training stores its buffer about as coarsely (a step of
2^-8 near +-1), and the current half of each refined batch is shown unrounded. The cost is one
elementwise rounding per push, on the device. ``levels`` is used only where the buffer's dtype
represents every code distinctly (``codes_fit``): 16-bit codes do not fit a bf16 buffer, which
is then stored as it is (2 bytes a pixel either way); float data has no codes (``levels=None``).

Checkpoints from before the rounding hold float ``images``; they load, rounded to the codes on
the way in (``state_images`` reads either form).

The buffer knows nothing of ranks: the caller gathers images and slices samples.
"""

from __future__ import annotations

from functools import cache

import torch


def quantize(images: torch.Tensor, levels: int) -> torch.Tensor:
    """[-1, 1] images -> their nearest codes 0..levels, as float32 (round half to even, as
    ``distsim.data.pixels.from_unit_range``)."""
    return images.float().add(1.0).mul_(levels / 2).round_().clamp_(0, levels)


def dequantize(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Codes 0..levels (any dtype) -> float32 images k / (levels / 2) - 1 in [-1, 1]."""
    return codes.float().div(levels / 2).sub_(1.0)


@cache
def codes_fit(levels: int, dtype: torch.dtype) -> bool:
    """Whether every code 0..levels survives dequantize -> `dtype` -> quantize unchanged,
    i.e. a buffer of `dtype` holding rounded images can be stored as codes without loss."""
    codes = torch.arange(levels + 1, dtype=torch.float32)
    return torch.equal(quantize(dequantize(codes, levels).to(dtype), levels), codes)


def _code_dtype(levels: int) -> torch.dtype:
    return torch.uint8 if levels <= 255 else torch.uint16


class HistoryBuffer:
    def __init__(
        self,
        capacity: int,
        item_shape: tuple[int, ...],
        *,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        levels: int | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"history buffer capacity must be positive, got {capacity}")
        if levels is not None and not codes_fit(levels, dtype):
            raise ValueError(f"{levels + 1} codes do not fit a {dtype} buffer distinctly")
        self.capacity = capacity
        self.levels = levels  # None: images are stored as given (module docstring)
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
        images = self.encode(images.detach())
        free = min(n, self.capacity - self.count)
        if free > 0:
            self.images[self.count : self.count + free] = images[:free]
        rest = n - free
        if rest > 0:
            # Replace among slots that held images before this push, never the ones just filled.
            old = self.count
            self.images[self._randperm(old)[:rest]] = images[free:]
        self.count += free

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images as this buffer holds them: in its dtype, rounded to the codes if it has them."""
        if self.levels is not None:
            images = dequantize(quantize(images, self.levels), self.levels)
        return images.to(self.images.dtype)

    def state_dict(self) -> dict[str, object]:
        held = self.images[: self.count]
        if self.levels is None:
            stored: dict[str, object] = {"images": held.cpu()}
        else:  # exact: the buffer holds only values its codes give back (module docstring)
            codes = quantize(held, self.levels).to(_code_dtype(self.levels)).cpu()
            stored = {"codes": codes, "levels": self.levels, "dtype": _dtype_name(held.dtype)}
        return stored | {
            "count": self.count,
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
            "generator_device": self.images.device.type,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        images = state_images(state)
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
        self.images[:count] = self.encode(images.to(self.images.device))
        self.count = count
        if state.get("generator_device", "cpu") == self.images.device.type:
            self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        else:
            # A CPU generator's state means nothing to a CUDA one (and back): draw on from a
            # seed of (seed, count), deterministic though not the stream never stopping had.
            self.generator.manual_seed(self.seed * 1_000_003 + count)


# Buffer dtypes by the name a checkpoint records (a string: torch.load(weights_only) takes it).
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in _DTYPES.items() if d == dtype)


def state_images(state: dict[str, object]) -> torch.Tensor:
    """The images a buffer state holds, as the buffer held them (its dtype): (count, C, H, W)
    on the CPU, from either form a checkpoint may have (float ``images``, or ``codes``)."""
    if "codes" not in state:
        images = state["images"]
        assert isinstance(images, torch.Tensor)
        return images
    codes, levels, dtype = state["codes"], state["levels"], state["dtype"]
    assert isinstance(codes, torch.Tensor) and isinstance(levels, int) and isinstance(dtype, str)
    return dequantize(codes, levels).to(_DTYPES[dtype])


def merged_images(states: list[dict[str, object]]) -> torch.Tensor:
    """Every image held by a list of buffer states (a sharded buffer's ranks, or one
    replicated buffer), shard by shard: (N, C, H, W) on the CPU."""
    return torch.cat([state_images(s) for s in states])


def deal(images: torch.Tensor, buffer: HistoryBuffer, rank: int, world: int) -> None:
    """Fill `buffer` (rank `rank` of `world`) with its round-robin share of `images`, and seed
    its generator from (its seed, rank): for a resume whose buffer layout changed."""
    share = images[rank::world][: buffer.capacity]
    buffer.images.zero_()
    buffer.images[: len(share)] = buffer.encode(share.to(buffer.images.device))
    buffer.count = len(share)
    buffer.generator.manual_seed(buffer.seed * 1_000_003 + rank)
