"""Dense sparse-structure VAE: shape latent grid <-> occupancy logits (fact sheet section 5).

The decoder's names and shapes follow the official `SparseStructureDecoder` (input_layer,
middle_block.N, blocks.N, out_layer.{0,2}); the encoder mirrors it (strided-conv downsamples) and
returns the posterior's mean and log-variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import StructureVAEConfig

CHANNEL_LN_EPS = 1e-5


def tokens_to_grid(tokens: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B, r^3, C] -> [B, C, r, r, r]; token n <-> (n // r^2, (n // r) % r, n % r)."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, resolution, resolution, resolution)


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """[B, C, r, r, r] -> [B, r^3, C] (inverse of tokens_to_grid)."""
    return grid.flatten(2).transpose(1, 2)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of [B, C, X, Y, Z] (official ChannelLayerNorm32, eps 1e-5)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=CHANNEL_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Explicit permutations: movedim(1, -1) exports a negative Transpose perm ORT rejects.
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class ResBlock3d(nn.Module):
    """x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Upsample3d(nn.Module):
    """Conv to 8 x out channels, then 3-D pixel shuffle.

    Channel c*8 + 4i + 2j + k of voxel (x, y, z) becomes channel c of voxel (2x+i, 2y+j, 2z+k).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 8 * out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        batch, channels, size_x, size_y, size_z = h.shape
        h = h.reshape(batch, channels // 8, 2, 2, 2, size_x, size_y, size_z)
        h = h.permute(0, 1, 5, 2, 6, 3, 7, 4)
        return h.reshape(batch, channels // 8, 2 * size_x, 2 * size_y, 2 * size_z)


class Downsample3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class StructureDecoder(nn.Module):
    """Latent grid [B, latent_channels, r, r, r] -> occupancy logits [B, 1, R, R, R]."""

    def __init__(self, config: StructureVAEConfig):
        super().__init__()
        channels = config.decoder_channels
        self.config = config
        self.input_layer = nn.Conv3d(config.latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*(ResBlock3d(channels[0]) for _ in range(config.num_res_blocks_middle)))
        blocks: list[nn.Module] = []
        for index, width in enumerate(channels):
            blocks.extend(ResBlock3d(width) for _ in range(config.num_res_blocks))
            if index + 1 < len(channels):
                blocks.append(Upsample3d(width, channels[index + 1]))
        self.blocks = nn.Sequential(*blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], config.out_channels, 3, padding=1)
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.blocks(self.middle_block(self.input_layer(latent))))


class StructureEncoder(nn.Module):
    """Occupancy [B, 1, R, R, R] in {0, 1} -> (mean, logvar), each [B, latent_channels, r, r, r]."""

    def __init__(self, config: StructureVAEConfig):
        super().__init__()
        channels = config.encoder_channels
        self.config = config
        self.input_layer = nn.Conv3d(config.out_channels, channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for index, width in enumerate(channels):
            blocks.extend(ResBlock3d(width) for _ in range(config.num_res_blocks))
            if index + 1 < len(channels):
                blocks.append(Downsample3d(width, channels[index + 1]))
        self.blocks = nn.Sequential(*blocks)
        self.middle_block = nn.Sequential(*(ResBlock3d(channels[-1]) for _ in range(config.num_res_blocks_middle)))
        self.out_layer = nn.Sequential(
            ChannelLayerNorm(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], 2 * config.latent_channels, 3, padding=1)
        )

    def forward(self, occupancy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.out_layer(self.middle_block(self.blocks(self.input_layer(occupancy))))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar
