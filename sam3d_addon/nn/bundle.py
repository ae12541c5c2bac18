"""The four networks of one geometry model, built together from a named config."""

from __future__ import annotations

from dataclasses import dataclass

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
