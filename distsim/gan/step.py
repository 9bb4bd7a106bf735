"""Algorithm 1's two updates (Shrivastava et al. 2017) as plain tensor programs.

``SimGANStep`` holds the refiner R, the discriminator D, their optimisers, the losses and the
history buffer. ``refiner_step(x)`` and ``discriminator_step(x, y)`` each take a batch and
return one stacked tensor of statistics (names in ``R_STATS`` and ``D_STATS``), which stays
on the device: the loop around them reads it only at log intervals.

What keeps them fast and compilable:
- No host syncs and no Python branching on tensor values. The only Python decision, whether
  the history buffer holds enough images to sample from, reads a host-side counter.
- R's adversarial loss runs through D with D's parameters detached (``functional_call``), so
  D's gradients are never formed, never all-reduced and never stepped in an R step, without
  toggling ``requires_grad`` (which recompiles or breaks torch.compile's guards, pytorch
  pytorch/pytorch#139476).
- Random draws (history slots, the refiner's noise inputs) come from generators on the
  device, saved in checkpoints.
- A D step refines only the images D uses: b/2 once the buffer supplies the other half.
- Precision is plain ``torch.autocast`` inside the step, with no wrapper that casts outputs
  back to float32; losses are computed in float32 (``distsim.gan.losses``).
- With ``compile=True`` the forward-and-loss part of each step is ``torch.compile``d with
  ``fullgraph=True``; backward runs the compiled backward and the optimiser step runs eager
  (fused on CUDA). If compiling fails, the step says why in one line and runs eager.

The step knows nothing of Accelerate or of how ranks are launched: ``gather`` (an all-gather
along the batch dimension), ``rank`` and ``world_size`` are arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from distsim.gan.discriminator import REAL, REFINED
from distsim.gan.ema import EMA
from distsim.gan.history import HistoryBuffer
from distsim.gan.losses import (
    Psi,
    global_logits,
    local_adversarial_loss,
    patch_accuracy,
    psi_identity,
    saturated_fraction,
    self_regularization_loss,
)
from distsim.gan.noise import indexed_noise

# What each step returns, in order. r_change is mean |R(x) - x| in [-1, 1] units, whatever
# psi is: how far refinement moves pixels (pretraining should end near 0).
R_STATS = ("r_loss", "r_reg", "r_adv", "r_change", "r_saturated")
# d_acc_refined is D's patch accuracy on the current refiner's images; d_acc_history on the
# buffer's (only once the buffer supplies half of D's refined images). d_acc is the mean of
# d_acc_real and d_acc_refined: how well D tells the refiner's images from real ones now,
# 0.5 being chance. It is the one to watch: when D is near chance, its decision threshold
# drifts from step to step and moves d_acc_real and d_acc_refined in opposite directions,
# by up to the whole range, while d_acc stays put.
D_STATS = ("d_loss", "d_loss_real", "d_loss_refined", "d_acc", "d_acc_real", "d_acc_refined")
D_STATS_HISTORY = (*D_STATS, "d_acc_history")

Gather = Callable[[torch.Tensor], torch.Tensor]
PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _warn(text: str) -> None:
    print(f"distsim: warning: {text}", file=sys.stderr, flush=True)


class SimGANStep:
    """R, D, their optimisers, the losses and the history buffer: Algorithm 1's updates.

    ``refiner`` and ``discriminator`` may be DDP-wrapped (their backward then all-reduces
    gradients); ``raw_refiner`` and ``raw_discriminator`` are the bare modules, used where no
    gradient must travel between ranks (refining for D, R's loss through D).
    """

    def __init__(
        self,
        refiner: nn.Module,
        discriminator: nn.Module,
        opt_r: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        *,
        psi: Psi,
        lambda_reg: float,
        raw_refiner: nn.Module | None = None,
        raw_discriminator: nn.Module | None = None,
        adversarial: str = "local",
        history: HistoryBuffer | None = None,
        sharded_history: bool = False,
        gather: Gather | None = None,
        rank: int = 0,
        world_size: int = 1,
        precision: str = "no",
        scaler: torch.amp.GradScaler | None = None,
        noise_channels: int = 0,
        noise_seed: int = 0,
        ema: EMA | None = None,
        r_steps: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        update_if: Callable[[torch.Tensor], bool] | None = None,
        free_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
        warn: Callable[[str], None] = _warn,
    ) -> None:
        if adversarial not in ("local", "global"):
            raise ValueError(f"adversarial must be local or global, got {adversarial!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if world_size > 1 and history is not None and gather is None and not sharded_history:
            raise ValueError("a replicated history buffer over ranks needs a gather function")
        self.refiner, self.discriminator = refiner, discriminator
        self.r_raw = raw_refiner if raw_refiner is not None else refiner
        self.d_raw = raw_discriminator if raw_discriminator is not None else discriminator
        self.opt_r, self.opt_d = opt_r, opt_d
        self.psi, self.lambda_reg = psi, lambda_reg
        # x -> what a refined pixel may equal at no self-regularisation cost in the
        # adversarial phase (losses.self_regularization_loss's `free`).
        self.free_target = free_target
        self.verdicts = global_logits if adversarial == "global" else _same
        self.history = history
        # Sharded: this rank's own B/W slots, nothing exchanged (history.py).
        self.sharded_history = sharded_history and world_size > 1
        self.gather = gather if gather is not None and not self.sharded_history else _same
        self.rank, self.world_size = rank, world_size
        self.device = next(self.r_raw.parameters()).device
        self.precision = precision
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(enabled=False)
        self.noise_channels = noise_channels
        # With a replicated buffer (runs exactly world-size invariant) every rank draws the
        # whole global batch's noise from one shared stream and keeps its own rows, so W ranks
        # at b see the noise one rank at W b would; with a sharded one (hundreds of ranks,
        # invariant only in distribution) each rank draws its own from a stream of its own.
        self.noise_global = not self.sharded_history
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(
            noise_seed * 1_000_003 + (0 if self.noise_global else rank)
        )
        self.ema = ema
        self.r_steps = r_steps  # refiner updates so far (the EMA's clock)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.update_if = update_if
        self.warn = warn
        self._r_forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._r_losses
        self._d_forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._d_losses
        self._refine_nograd: Callable[..., torch.Tensor] = self._refine
        if compile:
            if compile_mode not in COMPILE_MODES:
                raise ValueError(f"compile mode must be one of {COMPILE_MODES}: {compile_mode!r}")
            self._r_forward = self._compiled(self._r_losses, compile_mode)
            self._d_forward = self._compiled(self._d_losses, compile_mode)
            self._refine_nograd = self._compiled(self._refine, compile_mode)

    # --- the two updates ---------------------------------------------------------------------

    def refiner_step(self, synthetic: torch.Tensor, adversarial: bool = True) -> torch.Tensor:
        """One R update on synthetic images (b, C, H, W) in [-1, 1]: self-regularisation only
        (pretraining, ``adversarial=False``) or L_R = adversarial + lambda * reg. Returns
        ``R_STATS`` stacked: (5,)."""
        syn = synthetic.contiguous(memory_format=self.memory_format)
        loss, stats = self._r_forward(syn, self._noise(syn), adversarial)
        if self._update(loss, self.opt_r):
            self.r_steps += 1
            if self.ema is not None:
                batch = syn.shape[0] * self.world_size
                self.ema.update(self.r_raw, self.r_steps * batch, batch)
        return stats

    def discriminator_step(self, synthetic: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """One D update: refined images (half current, half from the history buffer once it
        holds enough) against real ones. Returns ``D_STATS`` or, when the buffer supplied half,
        ``D_STATS_HISTORY`` stacked."""
        history = self.history
        b = synthetic.shape[0]
        # Images pushed into (and sampled from) the buffer per D step: every rank's b/2 in a
        # replicated buffer, this rank's own in a sharded one.
        n_pushed = (b // 2) * (1 if self.sharded_history else self.world_size)
        mixing = history is not None and len(history) >= n_pushed
        # Only what D sees is refined: the even positions (the same images whether a global
        # batch is split over ranks or not) once the buffer supplies the other half.
        current_syn = synthetic[0::2] if mixing else synthetic
        current_syn = current_syn.contiguous(memory_format=self.memory_format)
        refined = self._refine_nograd(current_syn, self._noise(current_syn))  # (b or b/2, ...)
        fake = refined
        if history is not None:
            new = refined if mixing else refined[0::2]  # (b/2, C, H, W)
            # Exchanged in the buffer's dtype: what is stored is all that needs to travel.
            gathered = self.gather(new.to(history.images.dtype).contiguous())  # (W b/2, ...)
            if mixing:
                drawn = history.sample_indices(n_pushed)
                mine = drawn if self.sharded_history else drawn[self.rank * (b // 2) :][: b // 2]
                fake = torch.cat([new, history.images[mine].to(new.dtype)])  # (b, C, H, W)
            history.push(gathered)
        real = real.contiguous(memory_format=self.memory_format)
        loss, stats = self._d_forward(fake, real, b // 2 if mixing else fake.shape[0])
        self._update(loss, self.opt_d)
        return stats

    @torch.no_grad()
    def refine(self, synthetic: torch.Tensor, *, use_ema: bool = True) -> torch.Tensor:
        """R(x) for looking at (grids, realism scores): the EMA refiner when there is one.
        Noise inputs, if any, are image i's ``indexed_noise`` (seed 0): the same at every
        call, and never drawn from the training stream."""
        model = self.ema.model if (use_ema and self.ema is not None) else self.r_raw
        syn = synthetic.contiguous(memory_format=self.memory_format)
        with self._autocast():
            if not self.noise_channels:
                return model(syn).float()
            shape = (self.noise_channels, *syn.shape[2:])
            noise = indexed_noise(range(syn.shape[0]), shape, seed=0).to(syn.device)
            return model(syn, noise.contiguous(memory_format=self.memory_format)).float()

    # --- what compiles -------------------------------------------------------------------------

    def _r_losses(
        self, syn: torch.Tensor, noise: torch.Tensor | None, adversarial: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            # Pretraining leaves a refiner's drop-outs out (refiner.Refiner).
            refined = self.refiner(syn) if noise is None else self.refiner(syn, noise, adversarial)
            # Pretraining teaches R the identity, whatever psi the adversarial phase uses: a
            # psi that makes tone free (standardized) would otherwise let pretraining end on
            # a flattened image instead of the one it was given.
            psi = self.psi if adversarial else psi_identity
            free = self.free_target(syn) if adversarial and self.free_target else None
            reg = self_regularization_loss(refined, syn, psi, free).mean()
            if adversarial:
                logits = self.verdicts(self._frozen_d(refined))
                adv = local_adversarial_loss(logits, REAL).mean()
                loss = adv + self.lambda_reg * reg
            else:
                adv = torch.zeros((), device=syn.device)
                loss = reg
        change = (refined.detach().float() - syn.float()).abs().mean()
        stats = torch.stack([loss.detach(), reg.detach(), adv.detach(), change,
                             saturated_fraction(refined, reference=syn)])  # fmt: skip
        return loss, stats

    def _d_losses(
        self, fake: torch.Tensor, real: torch.Tensor, n_current: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_fake = fake.shape[0]
        with self._autocast():
            both = torch.cat([fake, real])  # (n_fake + b, C, H, W)
            logits = self.verdicts(self.discriminator(both))  # (., 2, h, w)
        logits_fake, logits_real = logits[:n_fake], logits[n_fake:]
        loss_fake = local_adversarial_loss(logits_fake, REFINED).mean()
        loss_real = local_adversarial_loss(logits_real, REAL).mean()
        loss = loss_fake + loss_real
        acc_fake = patch_accuracy(logits_fake.detach(), REFINED)  # (n_fake,)
        acc_real = patch_accuracy(logits_real.detach(), REAL).mean()
        acc_current = acc_fake[:n_current].mean()
        values = [loss.detach(), loss_real.detach(), loss_fake.detach(),
                  (acc_real + acc_current) / 2, acc_real, acc_current]  # fmt: skip
        if n_current < n_fake:
            values.append(acc_fake[n_current:].mean())
        return loss, torch.stack(values)

    def _refine(self, syn: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            out = self.r_raw(syn) if noise is None else self.r_raw(syn, noise)
        return out.float()

    # --- helpers -------------------------------------------------------------------------------

    def _frozen_d(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) with D's weights as constants: gradients reach x, never D's parameters."""
        constants = {k: v.detach() for k, v in self.d_raw.named_parameters()}
        constants |= dict(self.d_raw.named_buffers())
        return functional_call(self.d_raw, constants, (x,))

    def _noise(self, like: torch.Tensor) -> torch.Tensor | None:
        if not self.noise_channels:
            return None
        n, _, h, w = like.shape
        ranks = self.world_size if self.noise_global else 1
        noise = torch.randn(
            (ranks * n, self.noise_channels, h, w),
            generator=self.noise_generator,
            device=like.device,
        )  # (W n or n, noise, H, W): the global batch's rows are rank blocks
        if ranks > 1:
            noise = noise[self.rank * n : (self.rank + 1) * n]
        return noise.contiguous(memory_format=self.memory_format)

    def _autocast(self) -> AbstractContextManager[Any]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        if self.update_if is not None and not self.update_if(loss):
            return False
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return True

    def _compiled(self, fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
        return CompiledOrEager(fn, mode, self.warn)

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "noise_generator": self.noise_generator.get_state(),
            "noise_generator_device": self.device.type,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("noise_generator_device") == self.device.type:
            self.noise_generator.set_state(state["noise_generator"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


class CompiledOrEager:
    """``fn`` through ``torch.compile(fullgraph=True)``; if compiling fails, says why in one line
    and runs ``fn`` eager from then on. (A genuine error in ``fn`` fails eager too, and is
    raised.)"""

    def __init__(self, fn: Callable[..., Any], mode: str, warn: Callable[[str], None]) -> None:
        self.eager = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, fullgraph=True, mode=mode)
        self.warn = warn

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            lines = str(err).strip().splitlines()
            self.warn(
                f"torch.compile failed for {self.eager.__name__} ({type(err).__name__}: "
                f"{lines[0][:200] if lines else ''}); running it eager"
            )
            self.compiled = None
            return self.eager(*args)
