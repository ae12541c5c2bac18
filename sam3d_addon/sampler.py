"""The flow sampler, written once in NumPy over any velocity network.

Official conventions (fact sheet section 8): rectified flow with noise at t = 0 and data at t = 1;
explicit Euler from 0 to 1; the network sees tau = 1000 * t at the left end of each step; time
rescale t' = t / (1 + (r - 1)(1 - t)); classifier-free guidance y = (1 + w) y_cond - w y_uncond
with an all-zero condition as "uncond", applied only while interval[0] <= 1000 t' <= interval[1];
shortcut (distilled) mode passes the step size as 1000 * d with d = 1/S and no guidance; the
non-shortcut mode still passes d = 0.

Like a diffusers scheduler, this knows nothing about models or images: `velocity_fn` takes
(latents dict with a leading batch axis, t [B], d [B], cond) and returns velocities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import Cancelled

VelocityFn = Callable[[dict, np.ndarray, np.ndarray, np.ndarray], dict]


def rescale_time(t: np.ndarray, r: float) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    return t / (1.0 + (r - 1.0) * (1.0 - t))


def initial_noise(shapes: dict[str, tuple[int, ...]], seed: int | list[int] | None,
                  scale: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Gaussian noise per latent, drawn in sorted-key order (the official order) from one seed.

    `scale` (a card's `sampler.noise_scale`, e.g. {"shape": 0.5}) multiplies a latent's noise
    after the draw, so the other latents' noise is the same draw with or without it.  Why: a
    lower-temperature start for the shape latent pulls the few-step sample towards the
    condition's mean shape, which scored higher voxel IoU on three held-out splits (README,
    "A cooler start"); latents not named keep scale 1."""
    rng = np.random.default_rng(seed)
    scale = scale or {}
    unknown = sorted(set(scale) - set(shapes))
    if unknown:
        raise ValueError(f"noise_scale names latents the sampler does not have: {', '.join(unknown)}")
    return {k: (rng.standard_normal(shapes[k]) * float(scale.get(k, 1.0))).astype(np.float32)
            for k in sorted(shapes)}


def centre_noise(noise: np.ndarray, axis: int) -> np.ndarray:
    """Noise with its mean along `axis` removed (per channel): the texture stage's starting point.

    Why: the texture flow reads an object's colour off the average of x_t over its thousands of
    voxels, so with plain noise the sample's brightness followed the noise's own average (measured
    on tiny-texture 0.3.0: one held-out object's red channel came out 0.16 to 0.58 over 4 seeds).
    Removing that one component leaves the colour to the condition; a zero average is also that
    component's most likely value, so the start stays a typical draw."""
    return (noise - noise.mean(axis=axis, keepdims=True)).astype(noise.dtype)


@dataclass
class FlowSampler:
    steps: int = 25
    rescale_t: float = 1.0
    cfg_strength: float = 0.0
    cfg_interval: tuple[float, float] = (0.0, 500.0)
    shortcut: bool = False
    time_scale: float = 1000.0

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError("steps must be >= 1")
        self.steps = int(self.steps)

    @classmethod
    def from_settings(cls, settings: dict, steps: int | None = None, cfg_strength: float | None = None,
                      shortcut: bool | None = None) -> "FlowSampler":
        """The sampler a model card's `sampler` block asks for; the arguments override it.

        A shortcut model's card gives its few-step setting (`steps`, no guidance) and the
        full-length one it was distilled from (`reference_steps`, `reference_cfg_strength`); which
        one is used follows `shortcut` (default: the card's)."""
        use_shortcut = bool(settings.get("shortcut", False)) if shortcut is None else bool(shortcut)
        if steps is None:
            steps = settings["steps"] if use_shortcut else settings.get("reference_steps", settings["steps"])
        if cfg_strength is None:
            cfg_strength = 0.0 if use_shortcut else settings.get("reference_cfg_strength",
                                                                 settings.get("cfg_strength", 0.0))
        return cls(steps=int(steps), rescale_t=float(settings.get("rescale_t", 1.0)),
                   cfg_strength=float(cfg_strength), cfg_interval=tuple(settings.get("cfg_interval", (0.0, 500.0))),
                   shortcut=use_shortcut, time_scale=float(settings.get("time_scale", 1000.0)))

    def timesteps(self) -> np.ndarray:
        """The S+1 (rescaled) times 0 = t'_0 < ... < t'_S = 1."""
        return rescale_time(np.linspace(0.0, 1.0, self.steps + 1), self.rescale_t)

    def guidance_at(self, t: float) -> float:
        """Guidance strength in force at time t (0 outside the interval, and in shortcut mode)."""
        if self.shortcut or self.cfg_strength == 0.0:
            return 0.0
        tau = self.time_scale * t
        lo, hi = self.cfg_interval
        return float(self.cfg_strength) if lo <= tau <= hi else 0.0

    def network_calls(self) -> int:
        """How many network evaluations (batch rows) one sample costs."""
        return sum(2 if self.guidance_at(t) else 1 for t in self.timesteps()[:-1])

    def sample(self, velocity_fn: VelocityFn, x0: dict[str, np.ndarray], cond: np.ndarray,
               progress: Callable[[int, int], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """Integrate from the noise `x0` (batch B) to data.  `cond` is [B, N, C]."""
        x = {k: v.astype(np.float32).copy() for k, v in x0.items()}
        batch = cond.shape[0]
        ts = self.timesteps()
        d_scaled = self.time_scale * (1.0 / self.steps if self.shortcut else 0.0)
        for k in range(self.steps):
            if cancel is not None and cancel():
                raise Cancelled()
            t, dt = ts[k], ts[k + 1] - ts[k]
            w = self.guidance_at(t)
            tau = np.full(batch, self.time_scale * t, dtype=np.float32)
            d = np.full(batch, d_scaled, dtype=np.float32)
            if w:
                # Conditional and unconditional rows in one batched call.
                both = {m: np.concatenate([v, v], axis=0) for m, v in x.items()}
                out = velocity_fn(both, np.concatenate([tau, tau]), np.concatenate([d, d]),
                                  np.concatenate([cond, np.zeros_like(cond)], axis=0))
                v = {m: (1.0 + w) * o[:batch] - w * o[batch:] for m, o in out.items()}
            else:
                v = velocity_fn(x, tau, d, cond)
            for m in x:
                x[m] = (x[m] + v[m] * dt).astype(np.float32)
            if progress is not None:
                progress(k + 1, self.steps)
        return x
