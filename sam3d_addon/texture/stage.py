"""The texture & refinement stage at run time: coarse occupancy + photo -> coloured refined mesh
and/or 3D Gaussians, through ONNX Runtime (a `kind: texture` model card, `contract.py`).

1. active voxels = the surface voxels of the geometry stage's occupancy;
2. the structured latent is sampled by the one flow sampler (`sampler.FlowSampler`) over the
   sparse flow graph, conditioned on the texture model's own encoder tokens of the photo;
3. the decoders run in spatial chunks of the voxels (a block plus a halo wide enough for every
   window and convolution that reaches into it), so peak memory is bounded by the chunk, not by
   the object; only the block's own voxels are kept from each chunk, so chunking gives the same
   result as one pass.

No torch here: NumPy, SciPy and ONNX Runtime only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..contract import COLOR_REFERENCE_CROP_MEAN, COLOR_REFERENCE_PREDICTED, NOISE_CENTRED, ModelCard, load_texture_card
from ..sparse_index import decoder_window_maps, level_index_maps, subdivision_maps
from ..runtime import SessionCache
from ..sampler import FlowSampler, centre_noise, initial_noise
from .reference import absolute_colors, crop_reference_color
from .voxels import sparse_sdf_to_mesh, surface_voxel_coords

GAUSSIAN_KEYS = ("xyz", "scales", "rotations", "opacities", "colors")
# Objects with more active voxels are decoded in spatial chunks.  Measured on the tiny model
# (`sam3d bench texture`, RSS probe): one pass over a 20.7k-voxel object peaks at ~1.0 GB, chunked
# at ~0.8 GB but ~3x slower; typical objects (2-6k surface voxels at 32^3) decode in one pass.
MAX_CHUNK_VOXELS = 8192


@dataclass
class TextureResult:
    vertices: np.ndarray | None = None  # [V,3] canonical frame
    faces: np.ndarray | None = None
    colors: np.ndarray | None = None  # [V,3] sRGB in [0,1]
    gaussians: dict | None = None  # GAUSSIAN_KEYS -> [N*G, k]
    coords: np.ndarray | None = None  # active voxels
    timings: dict = field(default_factory=dict)


def spatial_chunks(coords: np.ndarray, max_voxels: int, block: int, halo: int):
    """Yield (rows, own) per spatial block: `rows` the voxels of the block grown by `halo` (what a
    decoder must see), `own` a bool mask over `rows` of the block's own voxels.  One chunk when all
    voxels fit."""
    if len(coords) <= max_voxels:
        yield np.arange(len(coords)), np.ones(len(coords), bool)
        return
    keys = coords // block
    for key in np.unique(keys, axis=0):
        lo, hi = key * block - halo, (key + 1) * block + halo
        rows = np.nonzero(((coords >= lo) & (coords < hi)).all(axis=1))[0]
        own = (keys[rows] == key).all(axis=1)
        yield rows, own


class TextureStage:
    """Texture a coarse occupancy with one texture model on one device."""

    def __init__(self, model: str = "tiny-texture", device: str = "auto",
                 notice: Callable[[str], None] | None = None):
        self.card: ModelCard = load_texture_card(model)
        # no arena: peak memory follows the object being decoded, not the largest one so far
        self.sessions = SessionCache(self.card, device, notice=notice, memory_arena=False)

    def release(self) -> None:
        self.sessions.release()

    @property
    def grid(self) -> dict:
        return self.card.data["grid"]

    def _sampler(self, steps: int | None, cfg_strength: float | None) -> FlowSampler:
        return FlowSampler.from_settings(self.card.sampler, steps or None, cfg_strength)

    def encode(self, inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """(condition tokens, the colour reference [3] or None) of prepared photo inputs."""
        out = self.sessions.stage("texture_condition_encoder")(inputs)
        mode = self.card.data["decoders"].get("color_reference", "none")
        if mode == COLOR_REFERENCE_PREDICTED:
            return out["cond"], np.asarray(out["albedo"][0], np.float64)
        if mode == COLOR_REFERENCE_CROP_MEAN:
            return out["cond"], crop_reference_color(inputs["image"], inputs["mask"])
        return out["cond"], None

    def sample_latent(self, coords: np.ndarray, inputs: dict, seed: int | None = 0, steps: int | None = None,
                      cfg_strength: float | None = None, progress=None, cancel=None, cond=None) -> np.ndarray:
        """The structured latent [N, C] (de-normalised) on the active voxels `coords`; `cond`: the
        encoder's tokens when already computed (`encode`)."""
        if cond is None:
            cond = self.encode(inputs)[0]
        maps = level_index_maps(coords, int(self.card.data["flow"]["num_downsamples"]))
        flow = self.sessions.stage("slat_flow")

        def velocity(x, tau, d, cond_rows):
            out = [flow({"feats": x["slat"][b:b + 1], "t": tau[b:b + 1], "cond": cond_rows[b:b + 1], **maps})["velocity"]
                   for b in range(len(tau))]
            return {"slat": np.concatenate(out, axis=0)}

        channels = int(self.card.data["latent"]["channels"])
        x0 = initial_noise({"slat": (1, len(coords), channels)}, seed)
        if self.card.sampler.get("noise") == NOISE_CENTRED:
            x0["slat"] = centre_noise(x0["slat"], axis=1)  # over the voxels, per channel
        x = self._sampler(steps, cfg_strength).sample(velocity, x0, cond, progress=progress, cancel=cancel)
        mean = np.asarray(self.card.data["latent"]["mean"], np.float32)
        std = np.asarray(self.card.data["latent"]["std"], np.float32)
        return x["slat"][0] * std + mean

    def _windows(self, coords: np.ndarray) -> dict:
        d = self.card.data["decoders"]
        return decoder_window_maps(coords, int(d["window_size"]), d["window_shifts"])

    def decode_mesh(self, feats: np.ndarray, coords: np.ndarray, max_voxels: int = MAX_CHUNK_VOXELS):
        """Chunked mesh decoder -> fine coords [8N,3], sdf [8N], rgb [8N,3]."""
        decoder = self.sessions.stage("slat_mesh_decoder")
        d = self.card.data["decoders"]
        fine_all, sdf_all, rgb_all = [], [], []
        for rows, own in spatial_chunks(coords, max_voxels, int(d["chunk_block"]), int(d["chunk_halo"])):
            fine, maps = subdivision_maps(coords[rows], 1)
            out = decoder({"feats": feats[rows], "coords": coords[rows], "parent_sub_1": maps[0],
                           "neighbours_sub_1": maps[1], **self._windows(coords[rows])})
            keep = np.repeat(own, 8)  # children are consecutive per parent
            fine_all.append(fine[keep])
            sdf_all.append(out["sdf"][keep])
            rgb_all.append(out["rgb"][keep])
        return np.concatenate(fine_all), np.concatenate(sdf_all), np.concatenate(rgb_all)

    def decode_gaussians(self, feats: np.ndarray, coords: np.ndarray, max_voxels: int = MAX_CHUNK_VOXELS) -> dict:
        decoder = self.sessions.stage("slat_gaussian_decoder")
        d = self.card.data["decoders"]
        parts = {k: [] for k in GAUSSIAN_KEYS}
        for rows, own in spatial_chunks(coords, max_voxels, int(d["chunk_block"]), int(d["chunk_halo"])):
            out = decoder({"feats": feats[rows], "coords": coords[rows], **self._windows(coords[rows])})
            for k in GAUSSIAN_KEYS:
                parts[k].append(out[k][own])
        # [N, G, k] per chunk -> [N*G, k] rows
        return {k: np.concatenate(v).reshape(-1, v[0].shape[-1]) for k, v in parts.items()}

    def run(self, occupancy: np.ndarray, inputs: dict, output: str = "mesh", seed: int | None = 0,
            steps: int | None = None, cfg_strength: float | None = None, progress=None, cancel=None,
            max_voxels: int = MAX_CHUNK_VOXELS) -> TextureResult:
        """occupancy [R,R,R] bool (the geometry stage's grid), inputs: prepared photo inputs (batch 1)."""
        if output not in ("mesh", "gaussians", "both"):
            raise ValueError(f"output must be mesh, gaussians or both, not {output!r}")
        res = TextureResult(timings={})
        occupancy = np.asarray(occupancy, bool)
        if occupancy.shape[0] != int(self.grid["resolution"]):
            raise ValueError(f"the texture model works on a {self.grid['resolution']}^3 grid, got {occupancy.shape[0]}^3")
        coords = surface_voxel_coords(occupancy)
        res.coords = coords
        if len(coords) == 0:
            return res
        t0 = time.perf_counter()
        cond, reference = self.encode(inputs)
        feats = self.sample_latent(coords, inputs, seed, steps, cfg_strength, progress, cancel, cond=cond)
        res.timings["texture_sample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if output in ("mesh", "both"):
            fine, sdf, rgb = self.decode_mesh(feats, coords, max_voxels)
            if reference is not None:
                rgb = absolute_colors(rgb, reference)
            res.vertices, res.faces, res.colors = sparse_sdf_to_mesh(
                fine, sdf, rgb, 2 * occupancy.shape[0], inside=occupancy)
        if output in ("gaussians", "both"):
            res.gaussians = self.decode_gaussians(feats, coords, max_voxels)
            if reference is not None:
                res.gaussians["colors"] = absolute_colors(res.gaussians["colors"], reference)
        res.timings["texture_decode"] = time.perf_counter() - t0
        return res
