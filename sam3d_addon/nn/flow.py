"""The stage-1 flow network: a mixture-of-transformers (MoT) DiT over shape and pose latents.

Two token streams share one adaLN modulation per block but have their own weights otherwise:
`shape` (grid^3 shape-latent tokens with a fixed sinusoidal position embedding) and the pose
stream (4 tokens, one per pose latent, learnt position embeddings).  Shape queries attend only to
shape keys; pose queries attend to [pose; shape].  Parameter names follow the official
`SparseStructureFlowTdfyWrapper` (fact sheet section 3) so official checkpoints load strictly; the
pose stream and the pose latents carry the official names (`6drotation_normalized`, ...), while
the public forward speaks the contract's modality names (`rotation6d`, ...).

Dtypes: the official blocks are fp16 (use_fp16); here everything is fp32.  Names and shapes match,
and `load_state_dict` casts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..contract import POSE_DIMS, POSE_MODALITIES
from .config import FlowConfig

# Contract modality name -> official latent name (also the official pose-token order).
OFFICIAL_LATENT_NAMES = {
    "shape": "shape",
    "rotation6d": "6drotation_normalized",
    "translation": "translation",
    "scale": "scale",
    "translation_scale": "translation_scale",
}
SHAPE_STREAM = "shape"
POSE_STREAM = "6drotation_normalized"  # the official name of the merged 4-token pose stream
STREAMS = (SHAPE_STREAM, POSE_STREAM)

BLOCK_LN_EPS = 1e-6
OUTPUT_LN_EPS = 1e-5


def timestep_features(tau: torch.Tensor, num_features: int) -> torch.Tensor:
    """Sinusoidal features of the scaled time tau = 1000 t: [cos(tau f), sin(tau f)] (cos first)."""
    half = num_features // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=tau.device) / half)
    args = tau.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def grid_position_embedding(resolution: int, channels: int) -> torch.Tensor:
    """Fixed sinusoidal embedding of the resolution^3 grid coordinates, [resolution^3, channels].

    Token n <-> (x, y, z) = (n // r^2, (n // r) % r, n % r) (z fastest).  Per axis
    [sin(a w), cos(a w)] with w_j = 10000^(-j/F), F = channels // 6; zero-padded to `channels`.
    """
    freq_dim = channels // 3 // 2
    freqs = 1.0 / 10000.0 ** (torch.arange(freq_dim, dtype=torch.float32) / freq_dim)
    axis = torch.arange(resolution, dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    args = coords[:, :, None] * freqs  # [N, 3, F]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=-1).reshape(coords.shape[0], -1)
    return F.pad(embedding, (0, channels - embedding.shape[1]))


class TimestepEmbedder(nn.Module):
    def __init__(self, channels: int, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.mlp = nn.Sequential(nn.Linear(num_features, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(tau, self.num_features))


class Latent(nn.Module):
    """Input/output projections and position embedding of one latent modality."""

    def __init__(self, in_channels: int, channels: int, fixed_pos_emb: torch.Tensor | None = None):
        super().__init__()
        self.channels = channels
        self.input_layer = nn.Linear(in_channels, channels)
        self.out_layer = nn.Linear(channels, in_channels)
        if fixed_pos_emb is None:
            self.pos_emb = nn.Parameter(torch.zeros(1, channels))
            nn.init.normal_(self.pos_emb, std=0.02)
        else:
            # Persistent: the official checkpoint stores it although it is a closed form.
            self.register_buffer("pos_emb", fixed_pos_emb)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_layer(x) + self.pos_emb

    def to_output(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.layer_norm(h, (self.channels,), eps=OUTPUT_LN_EPS))


class MultiHeadRMSNorm(nn.Module):
    """x / max(|x|, 1e-12) * gamma[h] * sqrt(head_dim), per head; x is [B, L, H, head_dim]."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.scale = head_dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.gamma * self.scale


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, L, H, D] layouts in and out."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class MoTSelfAttention(nn.Module):
    """Per-stream qkv/out projections and QK RMS norms; shape attends to shape, pose to [pose; shape]."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.ModuleDict({s: nn.Linear(channels, 3 * channels) for s in STREAMS})
        self.q_rms_norm = nn.ModuleDict({s: MultiHeadRMSNorm(num_heads, channels // num_heads) for s in STREAMS})
        self.k_rms_norm = nn.ModuleDict({s: MultiHeadRMSNorm(num_heads, channels // num_heads) for s in STREAMS})
        self.to_out = nn.ModuleDict({s: nn.Linear(channels, channels) for s in STREAMS})

    def _qkv(self, stream: str, x: torch.Tensor):
        batch, tokens, channels = x.shape
        qkv = self.to_qkv[stream](x).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.unbind(2)
        return self.q_rms_norm[stream](q), self.k_rms_norm[stream](k), v

    def forward(self, shape: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_shape, k_shape, v_shape = self._qkv(SHAPE_STREAM, shape)
        q_pose, k_pose, v_pose = self._qkv(POSE_STREAM, pose)
        out_shape = _attention(q_shape, k_shape, v_shape)
        # Official training detaches the shape keys/values seen by pose queries: the pose loss
        # does not shape the shape stream through attention.
        out_pose = _attention(q_pose, torch.cat([k_pose, k_shape.detach()], dim=1),
                              torch.cat([v_pose, v_shape.detach()], dim=1))
        return (self.to_out[SHAPE_STREAM](out_shape.flatten(2)),
                self.to_out[POSE_STREAM](out_pose.flatten(2)))


class CrossAttention(nn.Module):
    def __init__(self, channels: int, cond_channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(cond_channels, 2 * channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        q = self.to_q(x).reshape(batch, tokens, self.num_heads, head_dim)
        k, v = self.to_kv(cond).reshape(batch, cond.shape[1], 2, self.num_heads, head_dim).unbind(2)
        return self.to_out(_attention(q, k, v).flatten(2))


class FeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _modulate(x: torch.Tensor, channels: int, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # `channels` as a Python int: a traced x.shape would make the ONNX export fail.
    normed = F.layer_norm(x, (channels,), eps=BLOCK_LN_EPS)
    return normed * (1 + scale[:, None]) + shift[:, None]


class MoTBlock(nn.Module):
    """adaLN-modulated self-attention, plain cross-attention (affine norm2), modulated MLP."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        channels = config.model_channels
        self.channels = channels
        self.norm2 = nn.ModuleDict({s: nn.LayerNorm(channels, eps=BLOCK_LN_EPS) for s in STREAMS})
        self.self_attn = MoTSelfAttention(channels, config.num_heads)
        self.cross_attn = nn.ModuleDict(
            {s: CrossAttention(channels, config.cond_channels, config.num_heads) for s in STREAMS}
        )
        self.mlp = nn.ModuleDict({s: FeedForwardNet(channels, config.mlp_ratio) for s in STREAMS})
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, streams: dict[str, torch.Tensor], c: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        attended = self.self_attn(*(_modulate(streams[s], self.channels, shift_msa, scale_msa) for s in STREAMS))
        out = {}
        for stream, attn in zip(STREAMS, attended):
            x = streams[stream] + gate_msa[:, None] * attn
            x = x + self.cross_attn[stream](self.norm2[stream](x), cond)
            out[stream] = x + gate_mlp[:, None] * self.mlp[stream](_modulate(x, self.channels, shift_mlp, scale_mlp))
        return out


class ConditionLayout(nn.Module):
    """Tiny preset only (not in the official model): condition tokens -> one vector per shape and
    pose token, read through the tokens' fixed order (flatten + MLP) rather than by attention.

    Why: with the same target and data, a cross-attention read from learned queries lost most of
    the shape on CPU budgets (held-out vIoU 0.21 with the tiny ViT) while a flatten read of the same
    encoder reached 0.40 (README, "Where the shape is lost").  The cross-attention stays; this only
    adds a layout-preserving path into the tokens' input.  `features` is also what the encoder
    pre-training probe reads, so the flow starts with a read that already carries the shape.
    """

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.shape_tokens = config.shape_tokens
        self.tokens = config.shape_tokens + len(POSE_MODALITIES)
        self.layout_channels = config.layout_channels
        self.norm = nn.LayerNorm(config.cond_channels)
        self.reduce = nn.Linear(config.cond_channels, config.layout_rank)
        self.mlp = nn.Sequential(
            nn.Dropout(0.1),
            nn.Linear(config.condition_tokens * config.layout_rank, config.layout_hidden), nn.SiLU(),
            nn.Linear(config.layout_hidden, self.tokens * config.layout_channels),
        )
        self.expand = nn.Linear(config.layout_channels, config.model_channels)

    def features(self, cond: torch.Tensor) -> torch.Tensor:
        """[B, condition_tokens, cond_channels] -> [B, shape_tokens + 4, layout_channels]."""
        h = self.reduce(self.norm(cond)).flatten(1)
        return self.mlp(h).reshape(-1, self.tokens, self.layout_channels)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.expand(self.features(cond))


class ShapePoseFlow(nn.Module):
    """Velocity of the shape latent and the pose latents given time, shortcut step and condition."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        channels = config.model_channels
        self.config = config
        self.t_embedder = TimestepEmbedder(channels, config.time_features)
        self.d_embedder = TimestepEmbedder(channels, config.time_features) if config.shortcut else None
        shape_pos_emb = grid_position_embedding(config.shape_resolution, channels)
        self.latent_mapping = nn.ModuleDict({"shape": Latent(config.shape_channels, channels, shape_pos_emb)})
        for modality in POSE_MODALITIES:
            self.latent_mapping[OFFICIAL_LATENT_NAMES[modality]] = Latent(POSE_DIMS[modality], channels)
        self.blocks = nn.ModuleList(MoTBlock(config) for _ in range(config.num_blocks))
        self.condition_layout = ConditionLayout(config) if config.condition_tokens else None

    def forward(self, latents: dict[str, torch.Tensor], t: torch.Tensor, cond: torch.Tensor,
                d: torch.Tensor | None = None, unconditional: bool = False) -> dict[str, torch.Tensor]:
        """latents: contract names -> [B, tokens, channels]; t, d: scaled (1000 t, 1000 d), [B] or [1].

        As the official model, d_embedder(d) is added whenever d is given (d = 0 included).
        `unconditional` multiplies the condition by 0 (the official CFG branch).
        """
        if unconditional:
            cond = cond * 0
        mapping = self.latent_mapping
        streams = {
            SHAPE_STREAM: mapping["shape"].to_tokens(latents["shape"]),
            POSE_STREAM: torch.cat(
                [mapping[OFFICIAL_LATENT_NAMES[m]].to_tokens(latents[m]) for m in POSE_MODALITIES], dim=1
            ),
        }
        if self.condition_layout is not None:
            layout = self.condition_layout(cond)
            n_shape = self.condition_layout.shape_tokens
            streams = {SHAPE_STREAM: streams[SHAPE_STREAM] + layout[:, :n_shape],
                       POSE_STREAM: streams[POSE_STREAM] + layout[:, n_shape:]}
        c = self.t_embedder(t)
        if d is not None and self.d_embedder is not None:
            c = c + self.d_embedder(d)
        for block in self.blocks:
            streams = block(streams, c, cond)
        pose_tokens = streams[POSE_STREAM].unbind(1)
        out = {"shape": mapping["shape"].to_output(streams[SHAPE_STREAM])}
        for modality, token in zip(POSE_MODALITIES, pose_tokens):
            out[modality] = mapping[OFFICIAL_LATENT_NAMES[modality]].to_output(token[:, None])
        return out
