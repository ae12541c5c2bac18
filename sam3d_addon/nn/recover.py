"""Rebuild torch weights from a shipped model directory (its ONNX graphs), to train on from it.

Why: training runs (`runs/`) live on the machine that made them, and a machine is not kept from
one working session to the next; the shipped graphs in `models/` are the one lasting copy of a
model's weights.  `sam3d train --init models/tiny` goes on from them.

How: the exporter keeps most parameters under their own names, but tracing folds some into
anonymous constants: every Linear weight becomes its transpose (`onnx::MatMul_N`), and a few
parameters used in sums become the summed slices (`onnx::Add_N`).  Named initializers are taken
as they are; each anonymous MatMul weight is matched to the one missing Linear weight whose name
shares the most parts with the scope of the node that uses it (the scope is the module path
the tracer recorded, e.g. `/generator/blocks.0/shape/to_q/MatMul`) and whose shape is its
transpose; ties go in graph order to the first in state-dict order.  The few known folded sums
are handled by name in state_dict_from_graph.  Nothing here is trusted on its own: `recover_modules` runs each graph in
ONNX Runtime and the rebuilt module in torch on the same random inputs and refuses (ModelError)
unless they agree, so a wrong match cannot pass silently.

The sparse-structure *encoder* is used only in training; exports now ship it as
`structure_encoder.onnx` (training-only, outside the runtime contract).  Where it is missing
(older exports), `refit_encoder` trains a new one for the frozen decoder (see there).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

# graph file stem -> (bundle module, the prefix its parameters carry in the graph)
GRAPHS = {
    "condition_encoder": ("condition_encoder", "condition_encoder."),
    "velocity": ("generator", "generator."),
    "structure_decoder": ("decoder", "decoder."),
    "structure_encoder": ("encoder", "encoder."),
}
ENCODER_FILE = "structure_encoder.onnx"
FP16_SUFFIX = "__fp16"
# Parameters the forward pass never reads (so no graph can hold them): kept as initialised.
UNUSED = re.compile(r"(^|\.)mask_token$|^idx_emb$")
# ONNX Runtime vs torch on the same inputs (float32 compute on both sides)
AGREEMENT_TOL = 2e-3


def _initializers(path: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, str, str]]]:
    """(initializer name -> float32 array with the fp16 storage suffix removed,
    [(initializer, consuming op, consuming node's name)] in graph order)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {}
    for init in model.graph.initializer:
        values[init.name.removesuffix(FP16_SUFFIX)] = numpy_helper.to_array(init).astype(np.float32)
    uses = []
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        for name in node.input:
            if name in values:
                uses.append((name, node.op_type, node.name))
    return values, uses


def _scope_parts(node_name: str, prefix: str) -> list[str]:
    """'/generator/blocks.0/self_attn/shape_3/MatMul' -> ['blocks', '0', 'self_attn', 'shape']."""
    parts = [p for p in node_name.split("/") if p][:-1]  # the op itself last
    if parts and parts[0] == prefix.rstrip("."):
        parts = parts[1:]
    out = []
    for part in parts:
        out.extend(re.sub(r"_\d+$", "", piece) for piece in part.split("."))
    return out


def _score(key: str, scope: list[str]) -> int:
    """How many scope parts the parameter name holds (as a multiset)."""
    pool = key.split(".")[:-1]
    score = 0
    for part in scope:
        if part in pool:
            pool.remove(part)
            score += 1
    return score


def state_dict_from_graph(path: Path, module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The module's state dict rebuilt from one exported graph (see the module docstring)."""
    values, uses = _initializers(path)
    state = module.state_dict()
    rebuilt: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        value = values.get(prefix + key)
        if value is not None and tuple(value.shape) == tuple(tensor.shape):
            rebuilt[key] = torch.from_numpy(value.copy())
    missing = [k for k in state if k not in rebuilt]
    seen = set()
    for name, op, node in uses:
        if not name.startswith("onnx::") or name in seen:
            continue
        seen.add(name)
        value = values[name]
        if op == "MatMul" and value.ndim == 2:
            candidates = [k for k in missing if k.endswith(".weight") and k not in rebuilt
                          and tuple(state[k].shape) == value.shape[::-1]]
            if not candidates:
                raise ModelError(f"{path.name}: no parameter fits the folded weight {name} of {node}.")
            scope = _scope_parts(node, prefix)
            best = max(candidates, key=lambda k: _score(k, scope))  # max keeps the first of ties
            rebuilt[best] = torch.from_numpy(value.T.copy())
    # Parameters folded into sums (condition encoder): idx_emb rows CROPPED (0) and FULL (1) are
    # held as two [C] constants (further rows are never read), and the point embedder's pos_embed
    # [1, D, g, g] as pos_embed.flatten(2).transpose(1, 2).
    adds = [(n, node) for n, op, node in uses if op == "Add" and n.startswith("onnx::")]
    if "idx_emb" in state and "idx_emb" not in rebuilt:
        rows = list(dict.fromkeys(n for n, _ in adds if values[n].shape == state["idx_emb"].shape[1:]))
        idx = state["idx_emb"].clone()
        for row, name in enumerate(rows[:idx.shape[0]]):
            idx[row] = torch.from_numpy(values[name])
        rebuilt["idx_emb"] = idx
    key = "module_list.2.pos_embed"
    if key in state and key not in rebuilt:
        target = state[key]  # [1, D, g, g]
        flat = (1, target.shape[2] * target.shape[3], target.shape[1])
        match = [n for n, node in adds if values[n].shape == flat and "module_list.2" in node]
        if match:
            rebuilt[key] = torch.from_numpy(values[match[0]]).transpose(1, 2).reshape(target.shape).contiguous()
    for key in state:
        if key not in rebuilt and UNUSED.search(key):
            rebuilt[key] = state[key].clone()
    # The exporter stores equal tensors once, under the first one's name (e.g. norms a short
    # run has not moved yet): take the value a node in this parameter's own scope reads.
    for key in [k for k in state if k not in rebuilt]:
        scored = [(_score(key, _scope_parts(node, prefix)), name) for name, _, node in uses
                  if values[name].shape == tuple(state[key].shape)]
        score, name = max(scored, key=lambda x: x[0], default=(0, None))
        if score >= 2:
            rebuilt[key] = torch.from_numpy(values[name].copy())
    still = [k for k in state if k not in rebuilt]
    if still:
        raise ModelError(f"{path.name}: cannot rebuild {len(still)} parameters, e.g. {', '.join(still[:3])}.")
    return rebuilt


def _onnx_vs_torch(path: Path, graph: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between ONNX Runtime and torch outputs on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {n: inputs[n].numpy() for n in names}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = graph(*(inputs[n] for n in names))
    want = want if isinstance(want, (tuple, list)) else (want,)
    return max(float(np.max(np.abs(g - w.numpy()))) for g, w in zip(got, want))


def recover_modules(model_dir: str | Path, bundle, encoder_required: bool = False) -> dict[str, Any]:
    """Load the shipped graphs' weights into `bundle` (in place) and check each graph against
    the rebuilt module.  Returns {"max_abs_diff": {graph: float}, "encoder": bool (found)}."""
    from .export import EXPORT_BATCH, example_inputs, io_spec, stage_graphs

    model_dir = Path(model_dir)
    spec = io_spec(bundle.config)
    spec["structure_encoder"] = encoder_io_spec(bundle.config)
    graphs = dict(stage_graphs(bundle), structure_encoder=EncoderGraph(bundle.encoder))
    report: dict[str, Any] = {"max_abs_diff": {}, "encoder": False}
    generator = torch.Generator().manual_seed(0)
    for stem, (attr, prefix) in GRAPHS.items():
        path = model_dir / f"{stem}.onnx"
        if not path.is_file():
            if stem == "structure_encoder" and not encoder_required:
                continue
            raise ModelError(f"{model_dir} has no {path.name}; cannot rebuild the model from it.")
        module = getattr(bundle, attr)
        module.load_state_dict(state_dict_from_graph(path, module, prefix))
        module.eval()
        inputs = example_inputs(spec[stem], EXPORT_BATCH, generator)
        if stem == "structure_encoder":
            inputs["occupancy"] = (inputs["occupancy"] > 0).float()
        diff = _onnx_vs_torch(path, graphs[stem], inputs)
        report["max_abs_diff"][stem] = diff
        if not np.isfinite(diff) or diff > AGREEMENT_TOL:
            raise ModelError(f"{path.name}: the rebuilt weights do not reproduce the graph "
                             f"(largest difference {diff:.3g} > {AGREEMENT_TOL}).")
        report["encoder"] = report["encoder"] or stem == "structure_encoder"
    return report


class EncoderGraph(nn.Module):
    """Occupancy [B, 1, R, R, R] -> posterior (mean, logvar) [B, C, r, r, r] (training only)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, occupancy):
        return self.encoder(occupancy)


def encoder_io_spec(config) -> dict[str, list[dict[str, Any]]]:
    r, c, g = config.vae.resolution, config.vae.latent_channels, config.vae.latent_resolution
    grid = ["B", c, g, g, g]
    return {"inputs": [{"name": "occupancy", "shape": ["B", 1, r, r, r], "dtype": "float32"}],
            "outputs": [{"name": "mean", "shape": grid, "dtype": "float32"},
                        {"name": "logvar", "shape": grid, "dtype": "float32"}]}


@torch.no_grad()
def flow_anchors(bundle, latent_mean, latent_std, sampler: dict, images: dict[str, np.ndarray], seed: int = 0,
                 batch: int = 32, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shape latents the model's own flow samples (the card's shortcut sampler, no point map) for
    training images (uint8 IMAGE_KEYS batches, as GeometryArrays.images) and their decoded
    occupancies: (occupancy bool [M, R, R, R], normalised latents [M, T, C]).  They pin a
    refitted encoder to the latent space the flow was trained in (see refit_encoder)."""
    from ..train.data import condition_tensors
    from .bundle import sample_flow
    from .vae import tokens_to_grid

    cfg = bundle.config
    mean = torch.tensor(latent_mean, dtype=torch.float32)
    std = torch.tensor(latent_std, dtype=torch.float32)
    bundle.eval_mode()

    total = len(next(iter(images.values())))
    occupancy, latents = [], []
    for start in range(0, total, batch):
        inputs = condition_tensors({k: v[start:start + batch] for k, v in images.items()})
        cond = bundle.condition_encoder(**inputs)
        x = sample_flow(bundle, cond, seed + start, sampler)
        z = torch.from_numpy(x["shape"])
        logits = bundle.decoder(tokens_to_grid(z * std + mean, cfg.vae.latent_resolution))
        occupancy.append(logits[:, 0].numpy() > 0)
        latents.append(x["shape"].astype(np.float32))
        if progress is not None:
            progress(min(start + batch, total), total)
    return np.concatenate(occupancy), np.concatenate(latents)


def refit_encoder(encoder: nn.Module, latent_mean, latent_std, anchors: tuple[np.ndarray, np.ndarray],
                  steps: int = 1000, batch: int = 16, lr: float = 1e-3, seed: int = 0,
                  progress: Callable[[int, int, float], None] | None = None) -> float:
    """Train a new sparse-structure encoder for a frozen decoder (models shipped before the encoder
    graph was): the loss is the distance, in normalised latent units, between the encoding of a
    decoded flow sample and that sample's latent (`flow_anchors`).  Why these targets and not the
    VAE's reconstruction loss: many latents decode to the same grid, and an encoder fitted to
    reconstruction alone finds its own, leaving the flow to relearn its targets; and on a CPU the
    32^3 decoder's backward pass would be most of each step's cost.  Reconstruction comes out of it
    anyway (held-out vIoU 0.931 on tiny 0.3.2, see the README).  Returns the last loss."""
    import torch.nn.functional as F

    from .vae import grid_to_tokens

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean_t = torch.tensor(latent_mean, dtype=torch.float32)
    std_t = torch.tensor(latent_std, dtype=torch.float32)
    encoder.train()
    anchor_occ, anchor_z = anchors
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.zeros(())
    for step in range(steps):
        for group in opt.param_groups:  # cosine decay
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        pick = rng.integers(len(anchor_occ), size=batch)
        mean, _ = encoder(torch.from_numpy(anchor_occ[pick].astype(np.float32))[:, None])
        loss = F.mse_loss((grid_to_tokens(mean) - mean_t) / std_t, torch.from_numpy(anchor_z[pick]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    encoder.eval()
    return loss.item()


@torch.no_grad()
def encoder_checks(encoder: nn.Module, decoder: nn.Module, latent_mean, latent_std, occupancy: np.ndarray,
                   anchors: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Held-out figures of an encoder: reconstruction vIoU (posterior mean) and the anchors'
    mean squared latent error in normalised units (1.0 = as far as the prior's spread)."""
    from ..metrics import voxel_iou
    from .vae import grid_to_tokens

    encoder.eval(), decoder.eval()
    occ = torch.from_numpy(occupancy.astype(np.float32))[:, None]
    pred = decoder(encoder(occ)[0])[:, 0].numpy() > 0
    a_occ, a_z = anchors
    a_mean = encoder(torch.from_numpy(a_occ.astype(np.float32))[:, None])[0]
    a_norm = (grid_to_tokens(a_mean) - torch.tensor(latent_mean)) / torch.tensor(latent_std)
    return {"reconstruction_viou": float(np.mean([voxel_iou(p, o) for p, o in zip(pred, occupancy)])),
            "anchor_mse": float(torch.mean((a_norm - torch.from_numpy(a_z)) ** 2))}
