"""ONNX export of the geometry model and its `model.json` card (layout: sam3d_addon/contract.py).

Three fp32 graphs with a dynamic batch axis B: condition_encoder.onnx, velocity.onnx and
structure_decoder.onnx.  The card is assembled from the config (sizes, io) and `card_fields`
(latent statistics, pose statistics, sampler, camera, training facts), then read back with
`contract.load_card` so that a written model is always a loadable one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..contract import (
    CONDITION_INPUTS, CONTRACT_NAME, CONTRACT_VERSION, MODALITIES, POSE_DIMS, STAGES, ModelCard, check_sampler,
    load_card,
)
from .bundle import ModelBundle, build_models
from .checkpoint import load_checkpoint
from .config import ModelConfig
from .flow import ShapePoseFlow
from .fp16_weights import check_weights, round_module_fp16_, store_initializers_fp16, weight_card
from .recover import EncoderGraph, encoder_io_spec
from .vae import StructureDecoder, tokens_to_grid
from .vit import IMAGENET_MEAN, IMAGENET_STD

BATCH_AXIS = "B"
EXPORT_BATCH = 2  # traced with B=2 so no size-1 broadcast gets baked into the graphs
FILES = {stage: f"{stage}.onnx" for stage in STAGES}
# Written beside the runtime graphs but outside the contract: the add-on never reads them.  The
# sparse-structure encoder turns occupancy grids into the flow's latents, so with it the shipped
# files are all `sam3d train --init models/NAME` needs to train on (recover.py).
TRAINING_FILES = {"structure_encoder": "structure_encoder.onnx"}
# Written by the exporter itself; card_fields may not override them.
RESERVED_CARD_KEYS = ("contract", "contract_version", "files", "io", "sha256", "weights", "training_files")
# Sampler defaults: the official stage-1 values in effect (fact sheet section 8).
DEFAULT_SAMPLER = {
    "steps": 25,
    "shortcut": False,
    "cfg_strength": 7.0,
    "cfg_interval": [0.0, 500.0],
    "rescale_t": 3.0,
    "time_scale": 1000.0,
    "reference_steps": 25,
    "reference_cfg_strength": 7.0,
}
# A field of view for development exports of untrained models only.
DEVELOPMENT_FOV_DEG = 60.0


class ConditionGraph(nn.Module):
    def __init__(self, condition_encoder: nn.Module):
        super().__init__()
        self.condition_encoder = condition_encoder

    def forward(self, image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap):
        return self.condition_encoder(image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap)


class VelocityGraph(nn.Module):
    """Flat-tensor interface of the flow network, in contract order."""

    def __init__(self, generator: ShapePoseFlow):
        super().__init__()
        self.generator = generator

    def forward(self, shape, rotation6d, translation, scale, translation_scale, t, d, cond):
        latents = dict(zip(MODALITIES, (shape, rotation6d, translation, scale, translation_scale)))
        velocity = self.generator(latents, t, cond, d)
        return tuple(velocity[modality] for modality in MODALITIES)


class DecoderGraph(nn.Module):
    """Shape latent tokens [B, T, C] -> occupancy logits; the token -> grid reshape is in-graph."""

    def __init__(self, decoder: StructureDecoder):
        super().__init__()
        self.decoder = decoder
        self.latent_resolution = decoder.config.latent_resolution

    def forward(self, shape):
        return self.decoder(tokens_to_grid(shape, self.latent_resolution))


def io_spec(config: ModelConfig) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Names, shapes ("B" = batch) and dtypes of every graph's inputs and outputs."""
    size = config.condition.vit.input_size
    tokens, channels = config.flow.shape_tokens, config.flow.shape_channels
    cond = ["B", config.condition.num_tokens, config.condition.cond_channels]
    resolution = config.vae.resolution

    def tensor(name: str, shape: list) -> dict[str, Any]:
        return {"name": name, "shape": shape, "dtype": "float32"}

    latents = [tensor("shape", ["B", tokens, channels])]
    latents += [tensor(m, ["B", 1, POSE_DIMS[m]]) for m in MODALITIES[1:]]
    return {
        "condition_encoder": {
            "inputs": [tensor(name, ["B", 1 if "mask" in name else 3, size, size]) for name in CONDITION_INPUTS],
            "outputs": [tensor("cond", cond)],
        },
        "velocity": {
            "inputs": latents + [tensor("t", ["B"]), tensor("d", ["B"]), tensor("cond", cond)],
            "outputs": [dict(spec, name=f"v_{spec['name']}") for spec in latents],
        },
        "structure_decoder": {
            "inputs": [tensor("shape", ["B", tokens, channels])],
            "outputs": [tensor("logits", ["B", 1, resolution, resolution, resolution])],
        },
    }


def example_inputs(spec: dict[str, Any], batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random inputs for one stage's io spec: images/masks in [0, 1), times in [0, 1000)."""
    inputs = {}
    for entry in spec["inputs"]:
        shape = [batch if dim == BATCH_AXIS else dim for dim in entry["shape"]]
        if entry["name"] in CONDITION_INPUTS and "pointmap" not in entry["name"]:
            inputs[entry["name"]] = torch.rand(shape, generator=generator)
        elif entry["name"] in ("t", "d"):
            inputs[entry["name"]] = 1000.0 * torch.rand(shape, generator=generator)
        else:
            inputs[entry["name"]] = torch.randn(shape, generator=generator)
    return inputs


def stage_graphs(bundle: ModelBundle) -> dict[str, nn.Module]:
    return {
        "condition_encoder": ConditionGraph(bundle.condition_encoder),
        "velocity": VelocityGraph(bundle.generator),
        "structure_decoder": DecoderGraph(bundle.decoder),
    }


def _export_graph(graph: nn.Module, spec: dict[str, Any], path: Path, opset: int,
                  weights: str = "float16") -> None:
    """Trace `graph` into `path`.  weights="float16" stores its large weights as float16
    (fp16_weights.py), rounding the module's own weights to match first (in place)."""
    import onnx

    input_names = [entry["name"] for entry in spec["inputs"]]
    output_names = [entry["name"] for entry in spec["outputs"]]
    check_weights(weights)
    if weights == "float16":
        round_module_fp16_(graph)
    inputs = example_inputs(spec, EXPORT_BATCH)
    with torch.no_grad(), warnings.catch_warnings():
        # The traced shape checks (resize only when needed, 1-channel masks) are meant to be static,
        # and the legacy TorchScript exporter is chosen on purpose (exact, fast, dynamic_axes).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph.eval(), tuple(inputs[name] for name in input_names), str(path),
            input_names=input_names, output_names=output_names,
            dynamic_axes={name: {0: BATCH_AXIS} for name in input_names + output_names},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    # The legacy exporter silently drops inputs a graph does not use; the contract needs them all.
    model = onnx.load(str(path), load_external_data=False)
    written = [value.name for value in model.graph.input]
    if written != input_names:
        raise RuntimeError(f"{path.name}: exported inputs {written} differ from the contract's {input_names}")
    if weights == "float16":
        store_initializers_fp16(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_card(config: ModelConfig, card_fields: dict[str, Any]) -> dict[str, Any]:
    """The card without file hashes: config-derived defaults, updated by card_fields.

    Dict-valued sections (latent, pose, sampler, camera, ...) are merged key by key; other fields
    replace the default.  card_fields must give camera.fov_deg (the training renders' field of
    view): no default would be right for a trained model.
    """
    reserved = [key for key in RESERVED_CARD_KEYS if key in card_fields]
    if reserved:
        raise ValueError(f"card fields {reserved} are written by the exporter")
    if "fov_deg" not in card_fields.get("camera", {}):
        raise ValueError("card_fields must give camera.fov_deg (the field of view of the training renders)")
    flow, vae = config.flow, config.vae
    card = {
        "contract": CONTRACT_NAME,
        "contract_version": CONTRACT_VERSION,
        "name": config.name,
        "version": "0.0.0",
        "architecture": {"config": config.name},
        "files": dict(FILES),
        "io": io_spec(config),
        "preprocess": {
            "input_size": config.condition.vit.input_size,
            "crop_box_factor": 1.2,
            # Informational: the condition encoder graph normalises its image inputs itself.
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
        },
        "latent": {
            "shape_tokens": flow.shape_tokens,
            "shape_channels": flow.shape_channels,
            "grid": flow.shape_resolution,
            "mean": [0.0] * flow.shape_channels,
            "std": [1.0] * flow.shape_channels,
        },
        "occupancy": {"resolution": vae.resolution, "threshold": 0.0},
        "pose": {
            "rotation_mean": [0.0] * 6, "rotation_std": [1.0] * 6,
            "log_scale_mean": [0.0] * 3, "log_scale_std": [1.0] * 3,
            "translation_mean": [0.0] * 3, "translation_std": [1.0] * 3,
            "camera_frame": "pytorch3d",
        },
        "sampler": dict(DEFAULT_SAMPLER),
        "camera": {},
    }
    for key, value in copy.deepcopy(card_fields).items():
        if isinstance(card.get(key), dict) and isinstance(value, dict):
            card[key].update(value)
        else:
            card[key] = value
    check_sampler(card["sampler"], "being exported")  # before any file is written
    return card


def export_onnx(model_bundle: ModelBundle, out_dir: str | Path, card_fields: dict[str, Any],
                opset: int = 17, weights: str = "float16") -> ModelCard:
    """Write the three graphs and model.json into out_dir; returns the card as load_card reads it.
    With weights="float16" the bundle's large weights are rounded to float16 precision in place
    (what the files hold)."""
    check_weights(weights)
    card = build_card(model_bundle.config, card_fields)  # a bad field is refused before the folder exists
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_bundle.eval_mode()
    for stage, graph in stage_graphs(model_bundle).items():
        _export_graph(graph, card["io"][stage], out_dir / FILES[stage], opset, weights)
    card["weights"] = weight_card(weights)
    card["sha256"] = {stage: _sha256(out_dir / FILES[stage]) for stage in STAGES}
    card["training_files"] = {"structure_encoder": write_encoder_graph(model_bundle, out_dir, opset, weights)}
    (out_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return load_card(out_dir)


def write_encoder_graph(model_bundle: ModelBundle, out_dir: str | Path, opset: int = 17,
                        weights: str = "float16") -> dict[str, Any]:
    """Write the training-only encoder graph into out_dir; returns its card entry
    (`training_files.structure_encoder`)."""
    spec = encoder_io_spec(model_bundle.config)
    path = Path(out_dir) / TRAINING_FILES["structure_encoder"]
    _export_graph(EncoderGraph(model_bundle.encoder.eval()), spec, path, opset, weights)
    return {"file": path.name, "sha256": _sha256(path), "io": spec,
            "use": "training only: `sam3d train --init` rebuilds the model from the graphs; the add-on never reads it"}


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, weights: str = "float16",
                      **card_fields: Any) -> ModelCard:
    """Export a training checkpoint (see checkpoint.py); card_fields add to / override its facts."""
    bundle, checkpoint = load_checkpoint(checkpoint_path)
    fields: dict[str, Any] = {
        "latent": {"mean": checkpoint["latent_mean"], "std": checkpoint["latent_std"]},
        "pose": checkpoint["pose_stats"],
        "sampler": checkpoint["sampler"],
        "camera": checkpoint["camera"],
        "training": checkpoint["meta"],
    }
    for key, value in card_fields.items():
        if isinstance(fields.get(key), dict) and isinstance(value, dict):
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value
    return export_onnx(bundle, out_dir, fields, weights=weights)


def export_random(config_name: str, out_dir: str | Path, seed: int = 0, weights: str = "float16",
                  **card_fields: Any) -> ModelCard:
    """A freshly initialised (untrained) model of the same contract, for development and tests."""
    torch.manual_seed(seed)
    bundle = build_models(config_name)
    fields: dict[str, Any] = {
        "name": f"{config_name}-random",
        "version": f"0.0.0+random.{seed}",
        "camera": {"fov_deg": DEVELOPMENT_FOV_DEG},
        "training": {"untrained": True, "seed": seed},
    }
    fields.update(card_fields)
    return export_onnx(bundle, out_dir, fields, weights=weights)
