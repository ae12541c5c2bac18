"""The four networks of one geometry model, built together from a named config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .condition import EmbedderFuser
from .config import ModelConfig, get_config
from .flow import ShapePoseFlow
from .vae import StructureDecoder, StructureEncoder

MODULE_NAMES = ("condition_encoder", "generator", "decoder", "encoder")


@dataclass
class ModelBundle:
    config: ModelConfig
    condition_encoder: EmbedderFuser
    generator: ShapePoseFlow
    decoder: StructureDecoder
    encoder: StructureEncoder

    def modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in MODULE_NAMES}

    def eval_mode(self) -> "ModelBundle":
        for module in self.modules().values():
            module.eval()
        return self


def build_models(config_name: str, device: str | torch.device | None = None) -> ModelBundle:
    """Freshly initialised networks of a preset; device 'meta' builds without allocating weights."""
    config = get_config(config_name)
    with torch.device(device or "cpu"):
        return ModelBundle(
            config=config,
            condition_encoder=EmbedderFuser(config.condition),
            generator=ShapePoseFlow(config.flow),
            decoder=StructureDecoder(config.vae),
            encoder=StructureEncoder(config.vae),
        )


@torch.no_grad()
def sample_flow(bundle: ModelBundle, cond: torch.Tensor, seed, sampler: dict) -> dict[str, np.ndarray]:
    """The flow's samples for condition tokens `cond` [B, N, C], drawn as the add-on draws them:
    starting noise from `seed` (sampler.initial_noise, scaled by the section's `noise_scale` if it
    has one) and the runtime's own FlowSampler for a card-style `sampler` section (shortcut
    mode).  Training code that needs the model's samples (the encoder refit, the decoder stage)
    calls this, with torch's velocity on cond's device.  Returns numpy arrays (normalised
    latents, as the sampler leaves them)."""
    from ..contract import POSE_DIMS
    from ..sampler import FlowSampler, initial_noise

    device = cond.device
    generator = bundle.generator
    n, flow = len(cond), bundle.config.flow
    shapes = {"shape": (n, flow.shape_tokens, flow.shape_channels)}
    shapes.update({m: (n, 1, k) for m, k in POSE_DIMS.items()})
    noise = initial_noise(shapes, seed, sampler.get("noise_scale"))

    def velocity(x, t, d, c):
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        out = generator({m: put(v) for m, v in x.items()}, put(t), put(c), put(d))
        return {m: v.float().cpu().numpy() for m, v in out.items()}

    flow_sampler = FlowSampler.from_settings(sampler, shortcut=True)
    return flow_sampler.sample(velocity, noise, cond.float().cpu().numpy())
