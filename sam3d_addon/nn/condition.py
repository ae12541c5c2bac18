"""Condition embedder of the geometry model: the official `EmbedderFuser` with its three embedders.

Token order of the output (official): image, rgb_image, mask, rgb_image_mask (ViT tokens each),
pointmap, rgb_pointmap (PointPatchEmbed window tokens each).  Object-crop inputs get idx_emb row 0,
full-image inputs row 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConditionConfig, PointEmbedConfig
from .vit import Block, Dino

CROPPED, FULL = 0, 1
PROJECTION_LN_EPS = 1e-5


def nearest_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source rows of torch's 'nearest' resize: floor(i * in/out) in float32, clamped."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    index = torch.floor(torch.arange(out_size, dtype=torch.float32) * scale).long()
    return index.clamp(max=in_size - 1)


def resize_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """F.interpolate(mode='nearest') of [B,C,H,W] as two gathers with constant indices.

    The exported ONNX Resize computes source pixels from a rounded reciprocal scale and picks
    different rows for some sizes (112 -> 64); constant gathers are exact in both runtimes.
    """
    # int(): the input size is static, so the indices are graph constants.
    rows = nearest_indices(int(x.shape[-2]), size).to(x.device)
    cols = nearest_indices(int(x.shape[-1]), size).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class PointPatchEmbed(nn.Module):
    """Camera-frame pointmap [B,3,H,W] -> one token per patch_size^2 window.

    Each window is the sequence [cls_token; its pixels in row-major order] through one transformer
    block; the window's CLS output plus `pos_embed` is its token.  Non-finite points (NaN marks "no
    point") are replaced by the learnt `invalid_xyz_token` after the projection.
    """

    def __init__(self, config: PointEmbedConfig):
        super().__init__()
        dim, grid = config.embed_dim, config.grid
        self.config = config
        self.point_proj = nn.Linear(3, dim)
        self.invalid_xyz_token = nn.Parameter(torch.zeros(dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, 1 + config.patch_size ** 2, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, grid, grid))
        self.blocks = nn.ModuleList([Block(dim, config.num_heads, config.mlp_ratio, layer_scale=False)])
        for param in (self.invalid_xyz_token, self.cls_token, self.pos_embed_window, self.pos_embed):
            nn.init.normal_(param, std=0.02)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        size, patch, grid = self.config.input_size, self.config.patch_size, self.config.grid
        if tuple(points.shape[-2:]) != (size, size):
            points = resize_nearest(points, size)
        points = points.permute(0, 2, 3, 1)  # [B,S,S,3]
        valid = torch.isfinite(points).all(dim=-1, keepdim=True)
        features = self.point_proj(torch.where(valid, points, torch.zeros_like(points)))
        features = torch.where(valid, features, self.invalid_xyz_token)
        batch, dim = features.shape[0], features.shape[-1]
        windows = (
            features.reshape(batch, grid, patch, grid, patch, dim)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(batch * grid * grid, patch * patch, dim)
        )
        windows = torch.cat([self.cls_token.expand(windows.shape[0], -1, -1), windows], dim=1)
        windows = windows + self.pos_embed_window
        for block in self.blocks:
            windows = block(windows)
        tokens = windows[:, 0].reshape(batch, grid * grid, dim)
        return tokens + self.pos_embed.flatten(2).transpose(1, 2)


class SwiGLUFeedForward(nn.Module):
    """llama3 FeedForward: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, out_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class EmbedderFuser(nn.Module):
    """Six condition images -> condition tokens [B, N, cond_channels]."""

    def __init__(self, config: ConditionConfig):
        super().__init__()
        self.config = config
        self.module_list = nn.ModuleList([Dino(config.vit), Dino(config.vit), PointPatchEmbed(config.point)])
        self.projection_nets = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim, eps=PROJECTION_LN_EPS),
                SwiGLUFeedForward(dim, config.projection_hidden, config.cond_channels),
            )
            for dim in (config.vit.embed_dim, config.vit.embed_dim, config.point.embed_dim)
        )
        self.idx_emb = nn.Parameter(torch.zeros(config.num_groups, config.cond_channels))
        nn.init.normal_(self.idx_emb, std=0.02)

    def _embed_pair(self, index: int, cropped: torch.Tensor, full: torch.Tensor) -> list[torch.Tensor]:
        # Both inputs of one embedder go through it as one batch: same result, half the calls.
        tokens = self.projection_nets[index](self.module_list[index](torch.cat([cropped, full], dim=0)))
        cropped_tokens, full_tokens = tokens.unflatten(0, (2, -1)).unbind(0)  # no batch size baked into ONNX
        return [cropped_tokens + self.idx_emb[CROPPED], full_tokens + self.idx_emb[FULL]]

    def forward(self, image: torch.Tensor, mask: torch.Tensor, rgb_image: torch.Tensor,
                rgb_image_mask: torch.Tensor, pointmap: torch.Tensor, rgb_pointmap: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            self._embed_pair(0, image, rgb_image)
            + self._embed_pair(1, mask, rgb_image_mask)
            + self._embed_pair(2, pointmap, rgb_pointmap),
            dim=1,
        )
