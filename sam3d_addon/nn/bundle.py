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
def sample_flow(bundle: ModelBundle, cond: torch.Tensor, noise: dict[str, np.ndarray], sampler: dict) -> dict[str, np.ndarray]:
    """The flow's samples for condition tokens `cond` [B, N, C] from starting `noise` (as
    sampler.initial_noise draws it), with the runtime's own FlowSampler and a card-style
    `sampler` section (shortcut mode): training code that needs the model's samples (the encoder
    refit, the decoder stage) samples exactly as the add-on does, only with torch's velocity on
    cond's device.  Returns numpy arrays (normalised latents, as the sampler leaves them)."""
    from ..sampler import FlowSampler

    device = cond.device
    generator = bundle.generator

    def velocity(x, t, d, c):
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        out = generator({m: put(v) for m, v in x.items()}, put(t), put(c), put(d))
        return {m: v.float().cpu().numpy() for m, v in out.items()}

    flow_sampler = FlowSampler.from_settings(sampler, shortcut=True)
    return flow_sampler.sample(velocity, noise, cond.float().cpu().numpy())
