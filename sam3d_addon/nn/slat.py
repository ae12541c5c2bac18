"""The texture & refinement flow network: the official `SLatFlowModel` (fact sheet section 4).

A flow-matching velocity over a *structured latent*: `in_channels` features on every active
voxel of the geometry stage's occupancy.  Sparse res blocks (submanifold convs, adaLN-style time
conditioning) take the voxels down `len(io_block_channels)` times; full self-attention over the
coarse tokens (QK RMS norm), cross-attention to the condition tokens and adaLN-modulated MLPs
run there; the out blocks come back up with skip concatenation.  The sparse parts use the
gather formulation of `sparse.py`: one object per call (batch 1), the voxel count N dynamic, and
the index maps given as inputs (`sparse_index.level_index_maps`), so the graph exports to ONNX.

Parameter names and shapes equal the official checkpoint's for the `official` preset (test:
tests/test_texture_sparse.py).  Everything here is fp32; the official blocks are fp16 and
`load_state_dict` casts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .flow import CrossAttention, FeedForwardNet, MultiHeadRMSNorm, TimestepEmbedder
from ..sparse_index import level_index_maps, level_names  # noqa: F401  (level_names re-exported)
from .sparse import SparseConv3d, sparse_downsample, sparse_upsample

BLOCK_LN_EPS = 1e-6
OUTPUT_LN_EPS = 1e-5


@dataclass(frozen=True)
class SLatFlowConfig:
    resolution: int = 64  # the fine grid of the active voxels
    in_channels: int = 8
    out_channels: int = 8
    model_channels: int = 1024
    cond_channels: int = 1024
    num_blocks: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_io_res_blocks: int = 2
    io_block_channels: tuple[int, ...] = (128,)  # one downsample x2 per entry
    time_features: int = 256
    use_skip_connection: bool = True
    # The mean of the condition tokens, projected, is added to the time embedding, so every block
    # (the voxel-level res blocks too) is modulated by the condition, not only the cross-attention.
    # The official model has no such path; the tiny one needs it to carry the photo's colour to
    # every voxel (see TextureConditionEncoder).
    pooled_cond_modulation: bool = False

    @property
    def num_downsamples(self) -> int:
        return len(self.io_block_channels)


SLAT_FLOW_PRESETS = {
    "official": SLatFlowConfig(),
    # Trains on two CPU cores: 32^3 voxels (the tiny geometry model's occupancy grid), attention on 16^3.
    "tiny": SLatFlowConfig(resolution=32, model_channels=64, cond_channels=128, num_blocks=2, num_heads=2,
                           io_block_channels=(32,), pooled_cond_modulation=True),
}


def get_slat_flow_config(name: str) -> SLatFlowConfig:
    try:
        return SLAT_FLOW_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown slat flow config {name!r}; presets: {', '.join(sorted(SLAT_FLOW_PRESETS))}") from None


def coords_position_embedding(coords: torch.Tensor, channels: int) -> torch.Tensor:
    """Official AbsolutePositionEmbedder of integer voxel coords [M, 3] -> [M, channels].

    Per axis [sin(a w), cos(a w)], w_j = 10000^(-j/F), F = channels // 6, zero-padded to `channels`.
    """
    freq_dim = channels // 3 // 2
    freqs = 1.0 / 10000.0 ** (torch.arange(freq_dim, dtype=torch.float32, device=coords.device) / freq_dim)
    args = coords.to(torch.float32)[:, :, None] * freqs  # [M, 3, F]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(1)
    return F.pad(embedding, (0, channels - 6 * freq_dim))


class SparseResBlock3d(nn.Module):
    """Official SparseResBlock3d; `resample` is None, "down" or "up" (applied before the convs)."""

    def __init__(self, in_channels: int, emb_channels: int, out_channels: int, resample: str | None = None):
        super().__init__()
        self.out_channels = out_channels
        self.resample = resample
        self.norm1 = nn.LayerNorm(in_channels, eps=BLOCK_LN_EPS)
        self.conv1 = SparseConv3d(in_channels, out_channels, 3)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.skip_connection = nn.Linear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, neighbours: torch.Tensor,
                resample_index: torch.Tensor | None = None) -> torch.Tensor:
        """x [N_in, C_in]; emb [1, E]; neighbours of the output grid; children (down) / parent (up)."""
        scale, shift = self.emb_layers(emb).chunk(2, dim=1)  # scale first (fact sheet 4.3)
        if self.resample == "down":
            x = sparse_downsample(x, resample_index)
        elif self.resample == "up":
            x = sparse_upsample(x, resample_index)
        h = self.conv1(F.silu(self.norm1(x)), neighbours)
        h = F.layer_norm(h, (self.out_channels,), eps=BLOCK_LN_EPS) * (1 + scale) + shift
        h = self.conv2(F.silu(h), neighbours)
        return h + self.skip_connection(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L, H, D] in and out; mask (bool, True = attend) broadcasts to [B, H, Lq, Lk]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class SparseSelfAttention(nn.Module):
    """Full (or masked) self-attention over one object's voxel tokens, optional QK RMS norm."""

    def __init__(self, channels: int, num_heads: int, qk_rms_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, channels // num_heads
        self.to_qkv = nn.Linear(channels, 3 * channels)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(num_heads, channels // num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(num_heads, channels // num_heads)
        self.qk_rms_norm = qk_rms_norm
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        q, k, v = self.to_qkv(x).reshape(1, -1, 3, self.num_heads, self.head_dim).unbind(2)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        return self.to_out(attention(q, k, v, mask).flatten(2)[0])

    def forward_windows(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [W, M, C]: tokens grouped by attention window (`sparse_index.window_partition`),
        valid [W, M] (False: padding) -> [W, M, C]; each token attends to the valid tokens of its
        own window only, which is the [N, N] window-masked attention at W M^2 cost."""
        q, k, v = self.to_qkv(x).reshape(x.shape[0], x.shape[1], 3, self.num_heads, self.head_dim).unbind(2)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        return self.to_out(attention(q, k, v, valid[:, None, None, :]).flatten(2))


class ModulatedSparseCrossBlock(nn.Module):
    """adaLN-modulated self-attention, plain cross-attention (affine norm2), modulated MLP (fact sheet 2.4)."""

    def __init__(self, config: SLatFlowConfig):
        super().__init__()
        channels = config.model_channels
        self.channels = channels
        self.norm2 = nn.LayerNorm(channels, eps=BLOCK_LN_EPS)
        self.self_attn = SparseSelfAttention(channels, config.num_heads, qk_rms_norm=True)
        self.cross_attn = CrossAttention(channels, config.cond_channels, config.num_heads)
        self.mlp = FeedForwardNet(channels, config.mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def _modulate(self, x, shift, scale):
        return F.layer_norm(x, (self.channels,), eps=BLOCK_LN_EPS) * (1 + scale) + shift

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [N, C] tokens of one object; c [1, C]; cond [1, T, C_cond]."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa * self.self_attn(self._modulate(x, shift_msa, scale_msa))
        x = x + self.cross_attn(self.norm2(x)[None], cond)[0]
        return x + gate_mlp * self.mlp(self._modulate(x, shift_mlp, scale_mlp))


class SLatFlowModel(nn.Module):
    """Velocity of the structured latent of one object given time and condition tokens."""

    def __init__(self, config: SLatFlowConfig):
        super().__init__()
        self.config = config
        channels, io = config.model_channels, list(config.io_block_channels)
        skip = 2 if config.use_skip_connection else 1
        self.t_embedder = TimestepEmbedder(channels, config.time_features)
        if config.pooled_cond_modulation:
            self.cond_embedder = nn.Linear(config.cond_channels, channels)
        self.input_layer = nn.Linear(config.in_channels, io[0])
        # (block, level of its output grid); each io level ends with a downsample block.
        self.input_blocks = nn.ModuleList()
        self._input_levels: list[int] = []
        for level, (chs, next_chs) in enumerate(zip(io, io[1:] + [channels])):
            for _ in range(config.num_io_res_blocks - 1):
                self.input_blocks.append(SparseResBlock3d(chs, channels, chs))
                self._input_levels.append(level)
            self.input_blocks.append(SparseResBlock3d(chs, channels, next_chs, resample="down"))
            self._input_levels.append(level + 1)
        self.blocks = nn.ModuleList(ModulatedSparseCrossBlock(config) for _ in range(config.num_blocks))
        self.out_blocks = nn.ModuleList()
        self._out_levels: list[int] = []
        for level, (chs, prev_chs) in reversed(list(enumerate(zip(io, io[1:] + [channels])))):
            self.out_blocks.append(SparseResBlock3d(prev_chs * skip, channels, chs, resample="up"))
            self._out_levels.append(level)
            for _ in range(config.num_io_res_blocks - 1):
                self.out_blocks.append(SparseResBlock3d(chs * skip, channels, chs))
                self._out_levels.append(level)
        self.out_layer = nn.Linear(io[0], config.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, levels: dict[str, torch.Tensor],
                unconditional: bool = False) -> torch.Tensor:
        """x [1, N, in] voxel features; t [1] scaled time (1000 t); cond [1, T, C_cond];
        levels: `sparse_index.level_index_maps` of the voxels.  Returns the velocity [1, N, out]."""
        if unconditional:
            cond = cond * 0  # the official CFG branch
        c = self.t_embedder(t)
        if self.config.pooled_cond_modulation:
            c = c + self.cond_embedder(cond.mean(dim=1))
        h = self.input_layer(x[0])
        skips = []
        for block, level in zip(self.input_blocks, self._input_levels):
            index = levels[f"children_{level}"] if block.resample == "down" else None
            h = block(h, c, levels[f"neighbours_{level}"], index)
            skips.append(h)
        coarse = self.config.num_downsamples
        h = h + coords_position_embedding(levels[f"coords_{coarse}"], self.config.model_channels)
        for block in self.blocks:
            h = block(h, c, cond)
        for block, level, skip in zip(self.out_blocks, self._out_levels, reversed(skips)):
            if self.config.use_skip_connection:
                h = torch.cat([h, skip], dim=1)
            index = levels[f"parent_{level + 1}"] if block.resample == "up" else None
            h = block(h, c, levels[f"neighbours_{level}"], index)
        h = F.layer_norm(h, (self.config.io_block_channels[0],), eps=OUTPUT_LN_EPS)
        return self.out_layer(h)[None]


def build_slat_flow(name: str, device: str | torch.device | None = None) -> SLatFlowModel:
    """A freshly initialised flow network of a preset; device 'meta' builds without weights."""
    with torch.device(device or "cpu"):
        return SLatFlowModel(get_slat_flow_config(name))


def levels_for(coords, config: SLatFlowConfig, device=None) -> dict[str, torch.Tensor]:
    """The index tensors the flow network needs for voxels `coords` [N, 3]."""
    maps = level_index_maps(coords, config.num_downsamples)
    return {name: torch.as_tensor(value, device=device) for name, value in maps.items()}

