"""Structured-latent decoders: 3D Gaussians per voxel, and a subdivided SDF + colour field (mesh).

Both share the official trunk (fact sheet sections 6 and 7): `input_layer` + absolute position
embedding of the voxel coords, then transformer blocks (pre-LN, no modulation, no cross-attention)
with Swin-style windowed attention (window id = floor((coord + shift) / window), shift 0 / window/2
in even / odd blocks).  The windows are index maps computed outside the graph
(`sparse_index.window_partition`): tokens are gathered into [W, M] windows, attend within them,
and are gathered back, so memory grows with W M^2, not with the N^2 of a masked full attention
(a 20k-voxel object: ~0.1 GB instead of several GB).

* `SLatGaussianDecoder`: out_layer -> 14 G channels per voxel, decoded in the graph to G Gaussians
  (offset in the voxel, scale, rotation (w,x,y,z), opacity, RGB) with the official activations.
* `SLatMeshDecoder`: subdivide blocks (each voxel -> 8 children, sparse convs, GroupNorm) then
  out_layer.  Official representation: 101 FlexiCubes channels on the 4x grid; the `tiny`
  representation `sdf_rgb`: a signed distance (negative inside, in fine-voxel units) and RGB in
  [0, 1] on the 2x grid, meshed by `sam3d_addon.texture.voxels`.

Parameter names and shapes follow the official `slat_decoder_gs` / `slat_decoder_mesh` for the
`official` presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .flow import FeedForwardNet
from .slat import BLOCK_LN_EPS, OUTPUT_LN_EPS, SparseSelfAttention, coords_position_embedding
from ..sparse_index import decoder_window_maps, subdivision_maps, window_shifts
from .sparse import SparseConv3d, SparseGroupNorm, sparse_upsample

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic: rgb = 0.5 + SH_C0 * dc


@dataclass(frozen=True)
class SLatDecoderConfig:
    resolution: int = 64
    latent_channels: int = 8
    model_channels: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int | None = 8  # None: full attention
    # Gaussians
    num_gaussians: int = 32
    voxel_size: float = 1.5
    scaling_bias: float = 0.004
    opacity_bias: float = 0.1
    filter_3d: float = 0.0009
    # Mesh
    upsample_channels: tuple[int, ...] = (192, 96)  # one subdivide (x2) block per entry
    num_groups: int = 32
    representation: str = "flexicubes"  # or "sdf_rgb"
    # Colour outputs relative to a reference colour of the object (`texture.reference`); the
    # official decoders give absolute colour.
    color_reference: bool = False

    @property
    def mesh_out_channels(self) -> int:
        return 101 if self.representation == "flexicubes" else 4


SLAT_DECODER_PRESETS = {
    "official": SLatDecoderConfig(),
    "official_gs_4": SLatDecoderConfig(num_gaussians=4),
    "tiny": SLatDecoderConfig(resolution=32, model_channels=64, num_blocks=2, num_heads=2, window_size=8,
                              num_gaussians=4, upsample_channels=(32,), num_groups=8, representation="sdf_rgb",
                              color_reference=True),
}


def get_slat_decoder_config(name: str) -> SLatDecoderConfig:
    try:
        return SLAT_DECODER_PRESETS[name]
    except KeyError:
        presets = ", ".join(sorted(SLAT_DECODER_PRESETS))
        raise KeyError(f"unknown slat decoder config {name!r}; presets: {presets}") from None


def window_mask(coords: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """[N, N] bool: voxels in the same Swin window (window id = floor((coord + shift) / window)).
    The reference the gathered windows are tested against; the graphs never build it."""
    ids = torch.div(coords + shift, window, rounding_mode="floor")
    return (ids[:, None, :] == ids[None, :, :]).all(dim=-1)


class SparseTransformerBlock(nn.Module):
    """x += Attn(LN(x)); x += MLP(LN(x)); LN without affine, eps 1e-6."""

    def __init__(self, config: SLatDecoderConfig, shift: int):
        super().__init__()
        self.channels, self.shift, self.window = config.model_channels, shift, config.window_size
        self.attn = SparseSelfAttention(config.model_channels, config.num_heads, qk_rms_norm=False)
        self.mlp = FeedForwardNet(config.model_channels, config.mlp_ratio)

    def forward(self, x: torch.Tensor, windows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """windows: (gather [W, M], slot [N]) of this block's shift; None: full attention."""
        h = F.layer_norm(x, (self.channels,), eps=BLOCK_LN_EPS)
        if windows is None:
            a = self.attn(h)
        else:
            gather, slot = windows
            padded = torch.cat([h, h.new_zeros(1, self.channels)])  # row N: the padding token
            a = self.attn.forward_windows(padded[gather], gather < x.shape[0]).reshape(-1, self.channels)[slot]
        x = x + a
        return x + self.mlp(F.layer_norm(x, (self.channels,), eps=BLOCK_LN_EPS))


class SLatTrunk(nn.Module):
    def __init__(self, config: SLatDecoderConfig):
        super().__init__()
        self.config = config
        self.input_layer = nn.Linear(config.latent_channels, config.model_channels)
        half = (config.window_size or 0) // 2
        self.blocks = nn.ModuleList(SparseTransformerBlock(config, half * (i % 2)) for i in range(config.num_blocks))
        self.shifts = window_shifts(config.window_size, config.num_blocks) if config.window_size else []

    def window_inputs(self, coords) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gather, slot) per distinct shift (`self.shifts`), computed outside the graph."""
        maps = decoder_window_maps(np.asarray(coords), self.config.window_size, self.shifts)
        return [(torch.from_numpy(maps[f"window_gather_{k}"]), torch.from_numpy(maps[f"window_slot_{k}"]))
                for k in range(len(self.shifts))]

    def trunk(self, feats: torch.Tensor, coords: torch.Tensor, windows=None) -> torch.Tensor:
        """windows: `window_inputs(coords)` (computed here when omitted)."""
        if self.shifts and windows is None:
            windows = self.window_inputs(coords)
        h = self.input_layer(feats) + coords_position_embedding(coords, self.config.model_channels)
        for block in self.blocks:
            h = block(h, windows[self.shifts.index(block.shift)] if self.shifts else None)
        return h


def hammersley_offsets(num_points: int, voxel_size: float) -> np.ndarray:
    """Official `offset_perturbation`: atanh((2 h_i - 1) / voxel_size), h_i the 3-D Hammersley points."""
    def radical_inverse(i: int, base: int) -> float:
        value, f = 0.0, 1.0 / base
        while i:
            value += f * (i % base)
            i //= base
            f /= base
        return value

    points = np.array([[i / num_points, radical_inverse(i, 2), radical_inverse(i, 3)] for i in range(num_points)])
    return np.arctanh((2 * points - 1) / voxel_size).astype(np.float32)


class SLatGaussianDecoder(SLatTrunk):
    """Structured latent -> G Gaussians per active voxel (canonical frame [-0.5, 0.5]^3)."""

    def __init__(self, config: SLatDecoderConfig):
        super().__init__(config)
        g = config.num_gaussians
        self.out_layer = nn.Linear(config.model_channels, 14 * g)
        self.register_buffer("offset_perturbation", torch.from_numpy(hammersley_offsets(g, config.voxel_size)))

    def forward(self, feats: torch.Tensor, coords: torch.Tensor, windows=None) -> tuple[torch.Tensor, ...]:
        """feats [N, latent]; coords [N, 3] int64 on the resolution grid; windows: see `trunk`.

        Returns xyz [N,G,3], scales [N,G,3] (std-devs), rotations [N,G,4] (unit, w first),
        opacities [N,G,1] in (0,1), colors [N,G,3] (RGB, 0.5 + SH_C0 * dc; may leave [0,1]).
        """
        c, g = self.config, self.config.num_gaussians
        h = self.trunk(feats, coords, windows)
        raw = self.out_layer(F.layer_norm(h, (c.model_channels,), eps=OUTPUT_LN_EPS))
        raw_xyz, raw_dc, raw_scale = (raw[:, i * g:(i + 3) * g].reshape(-1, g, 3) for i in (0, 3, 6))
        raw_rot = raw[:, 9 * g:13 * g].reshape(-1, g, 4)
        raw_opacity = raw[:, 13 * g:14 * g].reshape(-1, g, 1)
        offset = torch.tanh(raw_xyz + self.offset_perturbation) * (0.5 * c.voxel_size / c.resolution)
        xyz = (coords.to(torch.float32)[:, None, :] + 0.5) / c.resolution + offset - 0.5
        inverse_bias = c.scaling_bias + math.log(-math.expm1(-c.scaling_bias))  # softplus^-1
        scales = torch.sqrt(F.softplus(raw_scale + inverse_bias) ** 2 + c.filter_3d ** 2)
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=raw.device)
        rotations = F.normalize(0.1 * raw_rot + identity, dim=-1)
        opacities = torch.sigmoid(raw_opacity + math.log(c.opacity_bias / (1 - c.opacity_bias)))
        return xyz, scales, rotations, opacities, 0.5 + SH_C0 * raw_dc


class SparseSubdivideBlock3d(nn.Module):
    """Official SparseSubdivideBlock3d: each voxel -> its 8 children, conv-GN-SiLU-conv, 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.act_layers = nn.Sequential(SparseGroupNorm(num_groups, in_channels), nn.SiLU())
        self.out_layers = nn.Sequential(
            SparseConv3d(in_channels, out_channels, 3), SparseGroupNorm(num_groups, out_channels), nn.SiLU(),
            SparseConv3d(out_channels, out_channels, 3),
        )
        self.skip_connection = SparseConv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, parent: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        a = sparse_upsample(self.act_layers(x), parent)
        h = self.out_layers[0](a, neighbours)
        h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)), neighbours)
        return h + self.skip_connection(sparse_upsample(x, parent))


class SLatMeshDecoder(SLatTrunk):
    """Structured latent -> per-voxel fields on the 2^k-times subdivided grid."""

    def __init__(self, config: SLatDecoderConfig):
        super().__init__(config)
        channels = [config.model_channels] + list(config.upsample_channels)
        self.upsample = nn.ModuleList(
            SparseSubdivideBlock3d(a, b, config.num_groups) for a, b in zip(channels, channels[1:])
        )
        self.out_layer = nn.Linear(channels[-1], config.mesh_out_channels)

    def forward(self, feats: torch.Tensor, coords: torch.Tensor, *subdivisions: torch.Tensor, windows=None):
        """feats [N, latent]; coords [N, 3]; subdivisions: parent_1, neighbours_1, parent_2, ... from
        `mesh_subdivisions`; windows: see `trunk`.  Returns (sdf [S], rgb [S, 3]) for sdf_rgb,
        else features [S, 101]."""
        h = self.trunk(feats, coords, windows)  # no final layer norm in the mesh decoder
        for k, block in enumerate(self.upsample):
            h = block(h, subdivisions[2 * k], subdivisions[2 * k + 1])
        out = self.out_layer(h)
        if self.config.representation == "sdf_rgb":
            return out[:, 0], torch.sigmoid(out[:, 1:4])
        return out


def mesh_subdivisions(coords, levels: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fine coords after `levels` subdivisions and the index maps [parent_1, neighbours_1, ...]."""
    return subdivision_maps(coords, levels)


def build_slat_decoders(name: str, device: str | torch.device | None = None):
    """(Gaussian decoder, mesh decoder) of a preset; device 'meta' builds without weights."""
    config = get_slat_decoder_config(name)
    with torch.device(device or "cpu"):
        return SLatGaussianDecoder(config), SLatMeshDecoder(config)
