"""DINOv2-layout vision transformer (with registers) and the official `Dino` embedder wrapper.

Parameter names follow DINOv2's `vision_transformer.py` so official checkpoints load strictly:
cls_token, pos_embed, register_tokens, mask_token, patch_embed.proj, blocks.N.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm.  The same `Block` (without
LayerScale) is the timm block inside PointPatchEmbed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_LN_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as DINOv2 and timm


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block; `layer_scale` adds DINOv2's ls1/ls2 (timm's block has none)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DINOv2 ViT with registers.  Inputs must be `input_size` square (the Dino wrapper resizes)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid * config.grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        # Masked-image-modelling token of DINOv2 training: kept for checkpoint compatibility only.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, layer_scale=True) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B,3,S,S] (normalised) -> (x_norm_clstoken [B,D], x_norm_patchtokens [B,P,D])."""
        patches = self.patch_embed(x)
        batch = patches.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), patches], dim=1) + self.pos_embed
        # Registers go after CLS and carry no position embedding (DINOv2 order: CLS, registers, patches).
        tokens = torch.cat(
            [tokens[:, :1], self.register_tokens.expand(batch, -1, -1), tokens[:, 1:]], dim=1
        )
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens[:, 0], tokens[:, 1 + self.config.num_register_tokens:]


class Dino(nn.Module):
    """The official Dino embedder: resize, 1->3 channels, ImageNet normalisation, ViT tokens.

    Output tokens = [x_norm_clstoken, x_norm_patchtokens] (prenorm_features=false: registers
    dropped), i.e. 1 + grid^2 tokens.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.input_size = config.input_size
        self.backbone = VisionTransformer(config)
        # Not in the official checkpoints (persistent=False there too).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        cls, patches = self.backbone((x - self.mean) / self.std)
        return torch.cat([cls[:, None], patches], dim=1)
