"""Export a texture model (`train/texture.py` checkpoint, or a fresh one) to ONNX + its card.

Four graphs (contract.TEXTURE_STAGES): the texture condition encoder (same inputs as the
geometry encoder), the sparse latent flow, the mesh decoder and the Gaussian decoder.  The
card fixes the contract the runtime (`texture/stage.py`) reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..contract import COLOR_REFERENCE_CROP_MEAN, COLOR_REFERENCE_PREDICTED, CONTRACT_VERSION, TEXTURE_CONTRACT_NAME, TEXTURE_STAGES, ModelCard, load_texture_card
from .export import _export_graph, _sha256, io_spec
from .fp16_weights import check_weights, weight_card
from .config import get_config
from .slat_export import decoder_window_spec, export_gaussian_decoder, export_mesh_decoder, export_slat_flow

FILES = {stage: f"{stage}.onnx" for stage in TEXTURE_STAGES}
# Decoder chunks: blocks of 16^3 coarse voxels grown by a halo of 8 (one attention window of the
# decoders' Swin blocks, which also covers their shifted windows and the two 3^3 convolutions of
# the subdivision block), so a chunk's own voxels decode exactly as in one pass.
CHUNK_BLOCK, CHUNK_HALO = 16, 8


class TextureConditionGraph(torch.nn.Module):
    """The texture condition encoder's graph: the tokens and the albedo head's colour."""

    def __init__(self, condition_encoder: torch.nn.Module):
        super().__init__()
        self.condition_encoder = condition_encoder

    def forward(self, image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap):
        cond = self.condition_encoder(image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap)
        return cond, self.condition_encoder.albedo(image, mask)


def export_texture_model(model, out_dir: str | Path, card_fields: dict[str, Any], opset: int = 17,
                         color_reference: str = COLOR_REFERENCE_PREDICTED, weights: str = "float16") -> ModelCard:
    """`model`: a `train.texture.TextureBundle` (torch).  Writes the graphs and model.json.
    `color_reference`: what the decoders' colours are relative to (contract.py); checkpoints
    trained before the albedo head (0.3.0) are relative to the crop's mean colour."""
    check_weights(weights)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    preset = model.preset
    geometry_config = get_config(preset)
    io = {"texture_condition_encoder": io_spec(geometry_config)["condition_encoder"]}
    # one more token than the geometry encoder: the colour token (train.texture.TextureConditionEncoder)
    io["texture_condition_encoder"]["outputs"][0]["shape"][1] += 1
    io["texture_condition_encoder"]["outputs"].append({"name": "albedo", "shape": ["B", 3], "dtype": "float32"})
    _export_graph(TextureConditionGraph(model.condition_encoder), io["texture_condition_encoder"],
                  out_dir / FILES["texture_condition_encoder"], opset, weights)
    io["slat_flow"] = export_slat_flow(model.flow, out_dir / FILES["slat_flow"], opset, weights)
    io["slat_mesh_decoder"] = export_mesh_decoder(model.mesh_decoder, out_dir / FILES["slat_mesh_decoder"], opset, weights)
    io["slat_gaussian_decoder"] = export_gaussian_decoder(model.gaussian_decoder, out_dir / FILES["slat_gaussian_decoder"],
                                                          opset, weights)
    dec = model.mesh_decoder.config
    card = {
        "contract": TEXTURE_CONTRACT_NAME, "contract_version": CONTRACT_VERSION,
        "name": f"{preset}-texture", "version": "0.0.0", "architecture": {"preset": preset},
        "files": dict(FILES), "io": io,
        "preprocess": {"input_size": geometry_config.condition.vit.input_size, "crop_box_factor": 1.2,
                       "pointmap": "none (all-NaN)"},
        "latent": {"channels": model.flow.config.in_channels, "mean": [0.0] * model.flow.config.in_channels,
                   "std": [1.0] * model.flow.config.in_channels},
        "grid": {"resolution": model.flow.config.resolution, "fine_resolution": 2 * model.flow.config.resolution,
                 "active_voxels": "surface voxels of the occupancy (occupied, >= 1 empty 6-neighbour)",
                 "bounds": [-0.5, 0.5], "sdf_units": "fine voxels, negative inside", "color_space": "sRGB"},
        "flow": {"num_downsamples": model.flow.config.num_downsamples},
        "decoders": {"representation": dec.representation, "num_gaussians": model.gaussian_decoder.config.num_gaussians,
                     "chunk_block": CHUNK_BLOCK, "chunk_halo": CHUNK_HALO, **decoder_window_spec(model.mesh_decoder),
                     # texture.reference: colour outputs are relative to a reference colour
                     "color_reference": color_reference if dec.color_reference else "none"},
        "sampler": {"steps": 25, "cfg_strength": 1.0, "cfg_interval": [0.0, 500.0], "rescale_t": 1.0, "time_scale": 1000.0},
    }
    for key, value in card_fields.items():
        if isinstance(card.get(key), dict) and isinstance(value, dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    card["weights"] = weight_card(weights)
    card["sha256"] = {stage: _sha256(out_dir / FILES[stage]) for stage in TEXTURE_STAGES}
    (out_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return load_texture_card(out_dir)


def export_texture_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, weights: str = "float16",
                              **card_fields: Any) -> ModelCard:
    from ..train.texture import TextureBundle

    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = TextureBundle(ckpt["preset"])
    reference = ckpt.get("color_reference", COLOR_REFERENCE_CROP_MEAN)
    # before the albedo head: its weights are missing and stay zero (the graph's albedo is the crop's mean)
    model.load_state_dict(ckpt["state_dict"], strict=reference == COLOR_REFERENCE_PREDICTED)
    fields = {"latent": {"mean": ckpt["latent_mean"], "std": ckpt["latent_std"]}, "sampler": ckpt["sampler"],
              "training": ckpt["meta"]}
    fields.update(card_fields)
    return export_texture_model(model, out_dir, fields, color_reference=reference, weights=weights)


def export_texture_random(out_dir: str | Path, seed: int = 0, preset: str = "tiny", weights: str = "float16",
                          **card_fields: Any) -> ModelCard:
    """An untrained texture model of the same contract, for development and tests."""
    from ..train.texture import TextureBundle

    torch.manual_seed(seed)
    fields = {"name": f"{preset}-texture-random", "version": f"0.0.0+random.{seed}",
              "training": {"untrained": True, "seed": seed}, "sampler": {"steps": 2}}
    fields.update(card_fields)
    return export_texture_model(TextureBundle(preset), out_dir, fields, weights=weights)
