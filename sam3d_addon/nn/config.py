"""Architecture configs of the geometry model (stage 1 of SAM 3D) and the named presets.

`official` reproduces the published sizes (fact sheet sections 3 and 5) so that its state dicts
match the official checkpoints name for name and shape for shape.  `tiny` is the same
architecture shrunk until it trains on two CPU cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViTConfig:
    """A DINOv2-layout vision transformer with register tokens (the official `dinov2_vitl14_reg`)."""

    input_size: int = 518  # the Dino wrapper resizes every input to this
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens the Dino wrapper emits: CLS + patches (registers dropped, prenorm_features=false)."""
        return 1 + self.grid * self.grid


@dataclass(frozen=True)
class PointEmbedConfig:
    """The official PointPatchEmbed: per-pixel xyz projection, one transformer block per window."""

    input_size: int = 256  # the pointmap is nearest-resized to this
    patch_size: int = 8
    embed_dim: int = 512
    num_heads: int = 16
    mlp_ratio: float = 2.0

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid


@dataclass(frozen=True)
class ConditionConfig:
    """EmbedderFuser: two Dino ViTs (RGB, mask) and a PointPatchEmbed, each with a SwiGLU projection."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    point: PointEmbedConfig = field(default_factory=PointEmbedConfig)
    cond_channels: int = 1024
    # llama3 FeedForward sizing: hidden = round_up(int(2/3 * multiplier * cond_channels), multiple_of).
    hidden_multiplier: float = 4.0
    hidden_multiple_of: int = 256
    num_groups: int = 3  # idx_emb rows: 0 = cropped object, 1 = full image, 2 = unused

    @property
    def projection_hidden(self) -> int:
        hidden = int(2 * (self.hidden_multiplier * self.cond_channels) / 3)
        return self.hidden_multiple_of * math.ceil(hidden / self.hidden_multiple_of)

    @property
    def num_tokens(self) -> int:
        """image, rgb_image, mask, rgb_image_mask (ViT tokens each), then pointmap, rgb_pointmap."""
        return 4 * self.vit.num_tokens + 2 * self.point.num_tokens


@dataclass(frozen=True)
class FlowConfig:
    """The MoT flow transformer over the shape latent (grid^3 tokens) and 4 pose tokens."""

    model_channels: int = 1024
    cond_channels: int = 1024
    num_blocks: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    shape_channels: int = 8
    shape_resolution: int = 16
    time_features: int = 256  # sinusoidal features of the timestep embedders
    shortcut: bool = True  # adds d_embedder (the shortcut step input)
    # Tiny-preset addition, absent from the official model (0 = off): the number of condition
    # tokens read by the flow's `condition_layout` (flow.ConditionLayout says why it exists).
    condition_tokens: int = 0
    layout_rank: int = 16  # channels kept per condition token before the layout map
    layout_hidden: int = 512
    layout_channels: int = 32  # per output token, expanded to model_channels

    @property
    def shape_tokens(self) -> int:
        return self.shape_resolution ** 3


@dataclass(frozen=True)
class StructureVAEConfig:
    """Dense sparse-structure VAE: latent grid <-> occupancy logits.

    `decoder_channels` run from the latent resolution upwards, one pixel-shuffle upsample between
    consecutive entries; the encoder mirrors them with strided-conv downsamples.
    """

    latent_channels: int = 8
    latent_resolution: int = 16
    decoder_channels: tuple[int, ...] = (512, 128, 32)
    encoder_channels: tuple[int, ...] = (32, 128, 512)
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    out_channels: int = 1

    @property
    def resolution(self) -> int:
        return self.latent_resolution * 2 ** (len(self.decoder_channels) - 1)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    condition: ConditionConfig
    flow: FlowConfig
    vae: StructureVAEConfig


OFFICIAL = ModelConfig(
    name="official",
    condition=ConditionConfig(),
    flow=FlowConfig(),
    # Encoder sizes: the ss_encoder.yaml found beside the official configs (fact sheet section 0).
    vae=StructureVAEConfig(),
)

TINY_CONDITION = ConditionConfig(
    vit=ViTConfig(input_size=84, patch_size=14, embed_dim=128, depth=3, num_heads=2,
                  mlp_ratio=4.0, num_register_tokens=4),
    # 2 heads of 32 channels: the official block uses 16 heads of 32.
    # 16 px point maps (4 windows each): the add-on has no depth at run time, so the point
    # branch only needs to teach pose with/without depth; 64 px cost 16x the point-branch time on CPU.
    point=PointEmbedConfig(input_size=16, patch_size=8, embed_dim=64, num_heads=2, mlp_ratio=2.0),
    cond_channels=128,
    # Official rule with multiple_of 64 instead of 256 (256 would round 341 up to 512, a 50%
    # wider projection than the rule intends at this size): hidden = 384.
    hidden_multiple_of=64,
)

TINY = ModelConfig(
    name="tiny",
    condition=TINY_CONDITION,
    flow=FlowConfig(model_channels=128, cond_channels=128, num_blocks=4, num_heads=2, mlp_ratio=4.0,
                    shape_channels=8, shape_resolution=4, condition_tokens=TINY_CONDITION.num_tokens),
    vae=StructureVAEConfig(latent_channels=8, latent_resolution=4,
                           decoder_channels=(64, 32, 16, 8), encoder_channels=(8, 16, 32, 64),
                           num_res_blocks=1, num_res_blocks_middle=1),
)

PRESETS = {config.name: config for config in (OFFICIAL, TINY)}


def get_config(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; presets: {', '.join(sorted(PRESETS))}") from None
