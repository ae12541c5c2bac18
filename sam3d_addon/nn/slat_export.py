"""ONNX export of the texture-stage networks (sparse flow, Gaussian and mesh decoders).

Every graph takes one object: voxel features with a dynamic voxel axis and the integer index
maps of `sparse.py` (computed by the caller in NumPy, never in the graph).  Axis names: N fine
voxels, M coarse voxels (after each downsample: M1, M2, ...), T condition tokens, S subdivided
voxels of the mesh decoder (S1 = 8 N, ...).  The legacy TorchScript exporter is used, as in
`export.py` (exact, fast, dynamic_axes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .fp16_weights import check_weights, round_module_fp16_, store_initializers_fp16
from .slat import SLatFlowModel, level_names, levels_for

# Voxels of the example the graphs are traced with: a few hundred, so no size-1 broadcast is baked in.
_TRACE_FILL = 0.05


def _axis(name: str) -> str:
    level = int(name.rsplit("_", 1)[1])
    return "N" if level == 0 else f"M{level}"


class SLatFlowGraph(nn.Module):
    """Flat-tensor interface: feats, t, cond, then the index maps in `level_names` order."""

    def __init__(self, model: SLatFlowModel):
        super().__init__()
        self.model = model
        self.index_names = level_names(model.config.num_downsamples)

    def forward(self, feats, t, cond, *index):
        return self.model(feats, t, cond, dict(zip(self.index_names, index)))


def slat_flow_io(model: SLatFlowModel) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes (strings = dynamic axes) and dtypes of the flow graph."""
    config = model.config
    inputs = [
        {"name": "feats", "shape": [1, "N", config.in_channels], "dtype": "float32"},
        {"name": "t", "shape": [1], "dtype": "float32"},
        {"name": "cond", "shape": [1, "T", config.cond_channels], "dtype": "float32"},
    ]
    for name in level_names(config.num_downsamples):
        kind, level = name.rsplit("_", 1)
        rows = "N" if kind == "parent" and level == "1" else (f"M{int(level) - 1}" if kind == "parent" else _axis(name))
        width = {"neighbours": 27, "children": 8, "coords": 3}.get(kind)
        inputs.append({"name": name, "shape": [rows] if width is None else [rows, width], "dtype": "int64"})
    outputs = [{"name": "velocity", "shape": [1, "N", config.out_channels], "dtype": "float32"}]
    return {"inputs": inputs, "outputs": outputs}


def example_voxels(resolution: int, seed: int = 0, fill: float = _TRACE_FILL) -> np.ndarray:
    """Random active voxels [N, 3] of a resolution^3 grid (a random blob, not a uniform spray)."""
    rng = np.random.default_rng(seed)
    axis = (np.arange(resolution) + 0.5) / resolution - 0.5
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    radius = 0.3 + 0.1 * np.sin(6 * grid[..., 0] + rng.uniform(0, 6)) * np.cos(5 * grid[..., 1])
    shell = np.abs(np.linalg.norm(grid, axis=-1) - radius) < 1.0 / resolution
    keep = shell | (rng.random(shell.shape) < fill * 0.1)
    return np.argwhere(keep).astype(np.int64)


def slat_flow_example(model: SLatFlowModel, coords: np.ndarray, cond_tokens: int = 16, seed: int = 0) -> dict:
    """Inputs of the flow graph for voxels `coords`, random features/time/condition."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "feats": torch.randn(1, len(coords), config.in_channels, generator=generator),
        "t": 1000.0 * torch.rand(1, generator=generator),
        "cond": torch.randn(1, cond_tokens, config.cond_channels, generator=generator),
    }
    inputs.update(levels_for(coords, config))
    return inputs


def export_graph(graph: nn.Module, inputs: dict[str, torch.Tensor], io: dict, path: str | Path,
                 opset: int = 17, weights: str = "float16") -> Path:
    """Trace `graph` with `inputs` (ordered like io["inputs"]) and write it with io's dynamic axes.
    weights="float16" stores the large weights as float16 (fp16_weights.py), rounding the
    module's own weights to match first (in place)."""
    import onnx

    check_weights(weights)
    if weights == "float16":
        round_module_fp16_(graph)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_names = [entry["name"] for entry in io["inputs"]]
    output_names = [entry["name"] for entry in io["outputs"]]
    dynamic_axes = {}
    for entry in io["inputs"] + io["outputs"]:
        axes = {i: dim for i, dim in enumerate(entry["shape"]) if isinstance(dim, str)}
        if axes:
            dynamic_axes[entry["name"]] = axes
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # "only steps=1 can be constant folded" notes
        torch.onnx.export(
            graph.eval(), tuple(inputs[name] for name in input_names), str(path),
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    written = [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]
    if written != input_names:
        raise RuntimeError(f"{path.name}: exported inputs {written} differ from {input_names}")
    if weights == "float16":
        store_initializers_fp16(path)
    return path


def export_slat_flow(model: SLatFlowModel, path: str | Path, opset: int = 17, weights: str = "float16") -> dict:
    """Write the flow network as ONNX; returns its io spec (for a model card)."""
    model.eval()
    io = slat_flow_io(model)
    inputs = slat_flow_example(model, example_voxels(model.config.resolution))
    export_graph(SLatFlowGraph(model), inputs, io, path, opset, weights)
    return io


# -- decoders ----------------------------------------------------------------------------------

GAUSSIAN_OUTPUTS = (("xyz", 3), ("scales", 3), ("rotations", 4), ("opacities", 1), ("colors", 3))


class DecoderGraph(nn.Module):
    """Flat-tensor interface of a decoder: feats, coords, the window maps (`window_names`), then
    (mesh decoder) the subdivision maps."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.num_windows = len(decoder.shifts)

    def forward(self, feats, coords, *index):
        w = self.num_windows
        windows = [(index[2 * k], index[2 * k + 1]) for k in range(w)] or None
        return self.decoder(feats, coords, *index[2 * w:], windows=windows)


def _decoder_inputs(decoder) -> list[dict[str, Any]]:
    c = decoder.config
    inputs = [{"name": "feats", "shape": ["N", c.latent_channels], "dtype": "float32"},
              {"name": "coords", "shape": ["N", 3], "dtype": "int64"}]
    for k in range(len(decoder.shifts)):  # W_k windows of at most P_k voxels, for shift k
        inputs += [{"name": f"window_gather_{k}", "shape": [f"W{k}", f"P{k}"], "dtype": "int64"},
                   {"name": f"window_slot_{k}", "shape": ["N"], "dtype": "int64"}]
    return inputs


def decoder_window_spec(decoder) -> dict:
    """What the runtime needs to build the window inputs (recorded in the card)."""
    return {"window_size": decoder.config.window_size, "window_shifts": list(decoder.shifts)}


def gaussian_decoder_io(decoder) -> dict[str, list[dict[str, Any]]]:
    c = decoder.config
    return {
        "inputs": _decoder_inputs(decoder),
        "outputs": [{"name": name, "shape": ["N", c.num_gaussians, width], "dtype": "float32"}
                    for name, width in GAUSSIAN_OUTPUTS],
    }


def mesh_decoder_io(decoder) -> dict[str, list[dict[str, Any]]]:
    c = decoder.config
    inputs = _decoder_inputs(decoder)
    for k in range(1, len(c.upsample_channels) + 1):
        inputs += [{"name": f"parent_sub_{k}", "shape": [f"S{k}"], "dtype": "int64"},
                   {"name": f"neighbours_sub_{k}", "shape": [f"S{k}", 27], "dtype": "int64"}]
    last = f"S{len(c.upsample_channels)}"
    if c.representation == "sdf_rgb":
        outputs = [{"name": "sdf", "shape": [last], "dtype": "float32"},
                   {"name": "rgb", "shape": [last, 3], "dtype": "float32"}]
    else:
        outputs = [{"name": "features", "shape": [last, c.mesh_out_channels], "dtype": "float32"}]
    return {"inputs": inputs, "outputs": outputs}


def gaussian_decoder_example(decoder, coords: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = {"feats": torch.randn(len(coords), decoder.config.latent_channels, generator=generator),
              "coords": torch.as_tensor(coords, dtype=torch.int64)}
    for k, (gather, slot) in enumerate(decoder.window_inputs(coords)):
        inputs[f"window_gather_{k}"], inputs[f"window_slot_{k}"] = gather, slot
    return inputs


def mesh_decoder_example(decoder, coords: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
    from .slat_decoders import mesh_subdivisions

    inputs = gaussian_decoder_example(decoder, coords, seed)
    _, maps = mesh_subdivisions(coords, len(decoder.config.upsample_channels))
    for k in range(len(maps) // 2):
        inputs[f"parent_sub_{k + 1}"] = torch.as_tensor(maps[2 * k])
        inputs[f"neighbours_sub_{k + 1}"] = torch.as_tensor(maps[2 * k + 1])
    return inputs


def export_gaussian_decoder(decoder, path: str | Path, opset: int = 17, weights: str = "float16") -> dict:
    decoder.eval()
    io = gaussian_decoder_io(decoder)
    inputs = gaussian_decoder_example(decoder, example_voxels(decoder.config.resolution))
    export_graph(DecoderGraph(decoder), inputs, io, path, opset, weights)
    return io


def export_mesh_decoder(decoder, path: str | Path, opset: int = 17, weights: str = "float16") -> dict:
    decoder.eval()
    io = mesh_decoder_io(decoder)
    inputs = mesh_decoder_example(decoder, example_voxels(decoder.config.resolution))
    export_graph(DecoderGraph(decoder), inputs, io, path, opset, weights)
    return io
