"""`sam3d train-texture`: the texture & refinement stage's training recipe (tiny preset).

The stage works on the *surface voxels* of the geometry stage's 32^3 occupancy (a structured
latent: 8 channels per active voxel), in two stages:

1. Structured-latent VAE.  A training-only encoder reads, per surface voxel, the ground-truth
   albedo and the signed distances of its 8 children on the 64^3 grid, and gives a latent; the two
   shipped decoders learn to read it back: the mesh decoder an SDF and an RGB colour per child
   (the refined geometry at twice the resolution, and its colour), the Gaussian decoder G
   Gaussians per voxel.  With no differentiable splatting on this machine the Gaussians are
   trained by proxies: their colour to the voxel's albedo, their centres onto the ground-truth
   surface (nearest sampled surface point), opacity towards 1 and a size prior of half a voxel.
2. Flow.  The sparse latent flow transformer (`nn.slat`, tiny preset) learns the velocity from
   noise to the normalised latents, conditioned on the tokens of its own small condition encoder
   (the geometry model's embedder layout, `nn.condition`, tiny preset) over the photo crop and
   the mask, with condition dropout for classifier-free guidance, training times shifted towards
   the noise end and a colour target on its data estimate (see `train_flow`).

Colour is relative to the photo (the tiny preset's `color_reference`, `texture.reference`): the
encoder reads each voxel's albedo relative to the crop's mean colour and the decoders' colours
are turned back into sRGB with the same reference before every colour loss.

Data: a `sam3d data --texture` set (albedo views and per-voxel albedo, see
`sam3d_addon/data/texture_views.py`).  Colours are sRGB in [0, 1] (what textures store).
Every stage checkpoints to OUT/state.pt (rerun to resume) and logs to OUT/train_log.jsonl; the
result goes to OUT/texture_model.pt.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contract import COLOR_REFERENCE_PREDICTED, NOISE_CENTRED
from ..data.dataset import list_samples, load_sample
from ..errors import InputError
from ..nn.condition import EmbedderFuser
from ..nn.config import get_config
from ..nn.slat import build_slat_flow, levels_for
from ..nn.slat_decoders import SLatTrunk, build_slat_decoders, get_slat_decoder_config, mesh_subdivisions
from ..preprocess import prepare_inputs
from ..texture.reference import COLOR_CLIP, REFERENCE_CLIP, relative_colors
from ..texture.voxels import SDF_CLAMP, fine_sdf_at
from .data import IMAGE_KEYS, condition_tensors
from .loop import stage_values, train_stage

TEXTURE_PRESET = "tiny"
ENCODER_IN = 3 + 8  # albedo + the 8 children's SDF
ALBEDO_FEATURES = 19  # TextureConditionEncoder.colour_statistics
LUMINANCE = (0.2126, 0.7152, 0.0722)


def _logit(x: torch.Tensor) -> torch.Tensor:
    """logit with the reference clip (texture.reference.REFERENCE_CLIP), written out for ONNX."""
    x = x.clamp(*REFERENCE_CLIP)
    return torch.log(x / (1.0 - x))


@dataclass
class TextureSchedule:
    vae_steps: int = 3000
    vae_objects: int = 4  # objects per step (the sparse graphs run one object at a time)
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    flow_steps: int = 3000
    flow_objects: int = 4
    flow_lr: float = 5e-4
    warmup: int = 100
    p_uncond: float = 0.1
    # The flow's colour target: the mesh decoder's colour of the flow's own data estimate
    # x_t + (1 - t) v, against the voxels' albedo (see `train_flow`).
    flow_rgb_weight: float = 1.0
    # Training times t = sigmoid(n - log(shift)), n ~ N(0, 1): shift > 1 puts more of them near the
    # noise end (see `train_flow`); the card's sampler uses the same rescale (rescale_t = shift).
    flow_t_shift: float = 8.0
    sdf_weight: float = 1.0
    rgb_weight: float = 1.0
    gaussian_weight: float = 0.5
    steps: int = 25  # inference defaults written into the card
    # No guidance: measured on 16 held-out objects (0.3.0, centred noise), PSNR 15.8 dB at w = 0,
    # 15.2 at w = 1, 14.2 at w = 3.
    cfg_strength: float = 0.0


@dataclass
class TextureObject:
    coords: np.ndarray  # [S, 3] int64 surface voxels (32^3)
    albedo: np.ndarray  # [S, 3] float32 sRGB in [0, 1]
    child_sdf: np.ndarray  # [S, 8] float32 fine-voxel units, clamped
    surface: np.ndarray  # [P, 3] float32 ground-truth surface samples, canonical frame
    images: dict  # condition inputs (uint8 images [C, S, S])
    path: str
    reference: np.ndarray  # [3] the object's mean albedo: the colour reference in training (see `train_albedo_head`)


def _load_texture_object(task) -> TextureObject:
    import trimesh

    i, p, input_size, surface_points = task
    s = load_sample(p)
    if "tex_voxel_coords" not in s:
        raise InputError(f"{p} has no texture ground truth; generate data with `sam3d data --texture`.")
    occ = s["occupancy"]
    # the engine stores the surface voxels (texture.voxels.surface_voxel_coords) with their albedo
    coords = s["tex_voxel_coords"].astype(np.int64)
    albedo = s["tex_voxel_albedo"].astype(np.float32) / 255.0
    fine, _ = mesh_subdivisions(coords, 1)
    child = fine_sdf_at(s["vertices"], s["faces"], fine, 2 * occ.shape[0]).reshape(-1, 8)
    mesh = trimesh.Trimesh(s["vertices"], s["faces"], process=False)
    rng = np.random.default_rng(i)
    surface = trimesh.sample.sample_surface(mesh, surface_points, seed=rng)[0].astype(np.float32)
    inputs = prepare_inputs(s["rgb"], s["mask"], input_size)
    images = {k: np.clip(inputs[k][0] * 255.0 + 0.5, 0, 255).astype(np.uint8) for k in IMAGE_KEYS}
    reference = albedo.mean(axis=0).astype(np.float32)
    return TextureObject(coords, albedo, child.astype(np.float32), surface, images, str(p), reference)


def load_texture_objects(data_dir, split: str, input_size: int, limit: int | None = None,
                         surface_points: int = 4096, progress=None, workers: int | None = None) -> list[TextureObject]:
    """The split's objects with their training targets.  The exact SDF at every fine voxel
    (`fine_sdf_at`, ~0.5 s each) dominates, so objects load in `workers` processes (default:
    the CPU count); each object's result does not depend on how they are spread."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    paths = list_samples(data_dir, split)
    if limit:
        paths = paths[:limit]
    tasks = [(i, p, input_size, surface_points) for i, p in enumerate(paths)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if workers == 1 or len(tasks) < 8:
        iterator = map(_load_texture_object, tasks)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        iterator = pool.map(_load_texture_object, tasks, chunksize=8)
    objects = []
    try:
        for obj in iterator:
            objects.append(obj)
            if progress:
                progress(len(objects), len(paths))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return objects


def condition_inputs(objects: list[TextureObject]) -> dict[str, torch.Tensor]:
    # the texture stage sees no point map
    return condition_tensors({k: np.stack([o.images[k] for o in objects]) for k in IMAGE_KEYS})


class SLatEncoder(SLatTrunk):
    """Training-only: per-voxel ground truth (albedo, children's SDF) -> latent mean and log-variance."""

    def __init__(self, config):
        from dataclasses import replace

        super().__init__(replace(config, latent_channels=ENCODER_IN))
        self.out_layer = nn.Linear(config.model_channels, 2 * config.latent_channels)

    def forward(self, feats, coords):
        h = self.trunk(feats, coords)
        mean, logvar = self.out_layer(F.layer_norm(h, (h.shape[-1],))).chunk(2, dim=-1)
        return mean, logvar.clamp(-10, 4)


class TextureConditionEncoder(nn.Module):
    """The texture flow's condition: the geometry model's embedder tokens of the photo (crop, mask,
    full image) plus a colour embedding of the masked crop (mean and standard deviation of its
    colour), added to every token and appended as one more.

    Why: SAM 3D conditions on DINOv2 features, which carry colour; our tiny ViT is trained from
    scratch in minutes, and with its tokens alone the flow learnt the data set's mean colour and
    ignored the photo (measured: the same purple-grey for every held-out object).  The colour
    statistics are computed in the graph from the same inputs, so the contract is unchanged.
    The colour embedding ends in a LayerNorm, so it has the scale of the flow's time embedding:
    without it the tokens' spread across objects was ~1 % of the time embedding's norm and the
    flow learnt to ignore the condition (measured: its t = 0 prediction was the same with and
    without the condition, and every white object came out mid-grey).
    """

    def __init__(self, config):
        super().__init__()
        self.embedder = EmbedderFuser(config)
        channels = config.cond_channels
        self.colour = nn.Sequential(nn.Linear(6, channels), nn.SiLU(), nn.Linear(channels, channels),
                                    nn.LayerNorm(channels))
        # The object's albedo (see `albedo`): a linear read of the crop's colour statistics.  Zero
        # weights: untrained, it says "the crop's mean colour" (0.3.0's reference).
        self.albedo_head = nn.Linear(ALBEDO_FEATURES, 3)
        nn.init.zeros_(self.albedo_head.weight)
        nn.init.zeros_(self.albedo_head.bias)
        self.register_buffer("albedo_mu", torch.zeros(ALBEDO_FEATURES))
        self.register_buffer("albedo_sd", torch.ones(ALBEDO_FEATURES))

    @staticmethod
    def masked_mean_std(image, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight [B, 1, S, S], area [B, 1], mean [B, 3], std [B, 3]) of the crop's masked colour."""
        weight = mask[:, :1]
        area = weight.sum(dim=(2, 3)).clamp(min=1.0)
        mean = (image * weight).sum(dim=(2, 3)) / area
        std = (((image - mean[:, :, None, None]) ** 2 * weight).sum(dim=(2, 3)) / area).clamp(min=0.0).sqrt()
        return weight, area, mean, std

    @staticmethod
    def colour_statistics(image, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked mean colour [B, 3], features [B, ALBEDO_FEATURES]) of a prepared crop: the mean
        and spread of the masked colour, the means weighted towards its brightest and darkest
        pixels (luminance^p and (1 - luminance)^p, p = 4, 16; the lit and the shadowed side), in
        logits, and the fraction of clipped pixels (an over-exposed photo)."""
        weight, area, mean, std = TextureConditionEncoder.masked_mean_std(image, mask)
        lum = (image * torch.tensor(LUMINANCE, dtype=image.dtype).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        feats = [_logit(mean), std / 0.15]
        for p in (4.0, 16.0):
            for w in (weight * lum.clamp(min=0.0) ** p, weight * (1.0 - lum).clamp(min=0.0) ** p):
                feats.append(_logit((image * w).sum(dim=(2, 3)) / (w.sum(dim=(2, 3)) + 1e-6)))
        clipped = (image.amax(dim=1, keepdim=True) > 0.97).to(image.dtype)
        feats.append((clipped * weight).sum(dim=(2, 3)) / area)
        return mean, torch.cat(feats, dim=1)

    def albedo(self, image, mask) -> torch.Tensor:
        """[B, 3] sRGB: the crop's mean colour shifted in logit space by the head.  Why: the photo's
        mean is the object's albedo times the light (the renders' suns and skies make it ~2x too
        bright on average), and the texture bench's scenes differ mostly in that one colour per
        object (painting each voxel's true albedo scores 18.95 dB, its true mean 18.92)."""
        mean, feats = self.colour_statistics(image, mask)
        shift = self.albedo_head((feats - self.albedo_mu) / self.albedo_sd)
        return torch.sigmoid(_logit(mean) + shift)

    def forward(self, image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap):
        tokens = self.embedder(image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap)
        _, _, mean, std = self.masked_mean_std(image, mask)
        stats = torch.cat([(mean - 0.5) / 0.25, std / 0.15], dim=1)  # ~unit scale
        colour = self.colour(stats)[:, None]  # [B, 1, C]
        return torch.cat([tokens + colour, colour], dim=1)


class TextureBundle(nn.Module):
    def __init__(self, preset: str = TEXTURE_PRESET):
        super().__init__()
        self.preset = preset
        self.encoder = SLatEncoder(get_slat_decoder_config(preset))
        self.gaussian_decoder, self.mesh_decoder = build_slat_decoders(preset)
        self.flow = build_slat_flow(preset)
        self.condition_encoder = TextureConditionEncoder(get_config(preset).condition)


def absolute_colors_torch(relative: torch.Tensor, reference: np.ndarray) -> torch.Tensor:
    """`texture.reference.absolute_colors` in torch (differentiable), for the losses."""
    ref = torch.from_numpy(np.clip(np.asarray(reference, np.float32), *REFERENCE_CLIP))
    return torch.sigmoid(torch.logit(relative.clamp(*COLOR_CLIP)) + torch.logit(ref))


def decoded_colors(decoder, colors: torch.Tensor, obj: TextureObject) -> torch.Tensor:
    """A decoder's colour output as sRGB: relative to the object's reference when the preset says so."""
    return absolute_colors_torch(colors, obj.reference) if decoder.config.color_reference else colors


def encoder_features(obj: TextureObject, color_reference: bool = True) -> torch.Tensor:
    """Per voxel: its colour (relative to the object's reference colour when the decoders' preset
    works that way, so the latent holds what the photo's mean does not say), in [-1, 1], and its
    8 children's clamped SDF."""
    sdf = np.clip(obj.child_sdf, -SDF_CLAMP, SDF_CLAMP) / SDF_CLAMP
    color = relative_colors(obj.albedo, obj.reference) if color_reference else obj.albedo
    return torch.from_numpy(np.concatenate([color * 2 - 1, sdf], axis=1).astype(np.float32))


def gaussian_losses(decoder, feats, coords_t, obj: TextureObject):
    from scipy.spatial import cKDTree

    xyz, scales, _, opacities, colors = decoder(feats, coords_t)
    g = xyz.shape[1]
    flat = xyz.reshape(-1, 3)
    _, idx = cKDTree(obj.surface).query(flat.detach().numpy())
    target = torch.from_numpy(obj.surface[idx])
    position = (flat - target).pow(2).sum(-1).mean() * (decoder.config.resolution ** 2)  # voxel units^2
    albedo = torch.from_numpy(obj.albedo)[:, None, :].expand(-1, g, -1)
    color = (decoded_colors(decoder, colors, obj) - albedo).abs().mean()
    opacity = F.binary_cross_entropy(opacities.clamp(1e-4, 1 - 1e-4), torch.ones_like(opacities))
    size = (torch.log(scales * decoder.config.resolution) - math.log(0.5)).abs().mean()
    return position + color + 0.1 * opacity + 0.1 * size, {"g_pos": position.item(), "g_rgb": color.item()}


def mesh_losses(decoder, feats, coords_t, subdivisions, obj: TextureObject):
    sdf, rgb = decoder(feats, coords_t, *subdivisions)
    target = torch.from_numpy(np.clip(obj.child_sdf.reshape(-1), -SDF_CLAMP, SDF_CLAMP))
    sdf_loss = F.l1_loss(sdf.clamp(-SDF_CLAMP, SDF_CLAMP), target)
    albedo = torch.from_numpy(np.repeat(obj.albedo, 8, axis=0))
    near = (target.abs() < 1.5).float()[:, None]  # colour matters where the surface is
    rgb_loss = ((decoded_colors(decoder, rgb, obj) - albedo).abs() * near).sum() / (3 * near.sum().clamp(min=1))
    return sdf_loss, rgb_loss


class TextureTrainer:
    def __init__(self, data_dir, out, seed: int = 0, schedule: TextureSchedule | None = None,
                 limit: int | None = None, init: str | Path | None = None):
        self.data_dir, self.out, self.seed = Path(data_dir), Path(out), seed
        self.schedule = schedule or TextureSchedule()
        self.limit = limit
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        self.model = TextureBundle()
        self.color_reference = self.model.mesh_decoder.config.color_reference
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = {"stage": "vae", "step": 0, "seconds": {}}
        self.latent_mean = self.latent_std = None
        self.heldout = {}
        self.init = None
        if init is not None and not (self.out / "state.pt").is_file():
            self.init_from(init)

    def init_from(self, checkpoint) -> None:
        """Start from another run's weights (a warm start): every parameter it has is loaded, the
        others (e.g. the albedo head, absent before 0.4.0) keep their initial values.  Its training
        seconds are kept in the state, so the card counts them."""
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        missing, unexpected = self.model.load_state_dict(saved["state_dict"], strict=False)
        if unexpected:
            raise InputError(f"{checkpoint} is not a {TEXTURE_PRESET} texture checkpoint ({unexpected[0]} is unknown).")
        self.init = {"checkpoint": str(checkpoint), "missing": missing,
                     "seconds": saved.get("meta", {}).get("seconds", {})}
        self.state["seconds"].update({f"init_{k}": float(v) for k, v in self.init["seconds"].items()})

    def save_state(self, optimizer=None):
        state = {"schedule": asdict(self.schedule), "state": self.state, "model": self.model.state_dict(),
                 "latent_mean": self.latent_mean, "latent_std": self.latent_std, "heldout": self.heldout,
                 "optimizer": optimizer.state_dict() if optimizer else None}
        partial = self.out / "state.pt.partial"
        torch.save(state, partial)
        partial.replace(self.out / "state.pt")

    def load_state(self):
        path = self.out / "state.pt"
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(saved["model"])
        self.state, self.heldout = saved["state"], saved.get("heldout", {})
        self.latent_mean, self.latent_std = saved["latent_mean"], saved["latent_std"]
        print(f"train-texture: resuming at stage {self.state['stage']} step {self.state['step']}", file=sys.stderr)
        return saved

    def _loop(self, name, total, params, lr, step_fn, resume, budget):
        return train_stage(self, name, total, params, lr, step_fn, resume, budget, log_every=50, save_every=250)

    def run(self, minutes: dict | None = None) -> Path:
        saved = self.load_state()
        size = get_config(TEXTURE_PRESET).condition.vit.input_size
        t0 = time.time()
        objects = load_texture_objects(self.data_dir, "train", size, limit=self.limit)
        print(f"train-texture: {len(objects)} objects loaded in {time.time() - t0:.0f} s", file=sys.stderr)
        # Loading computes the exact SDF targets: real work of the run, so the card counts it.
        self.state["seconds"].setdefault("load", 0.0)
        self.state["seconds"]["load"] += time.time() - t0
        if len(objects) < 4:
            raise InputError(f"Only {len(objects)} texture samples in {self.data_dir}; generate more with `sam3d data --texture`.")
        self.cache = {}
        minutes = minutes or {}
        if not self.state.get("albedo_head"):
            self.train_albedo_head(objects)
            self.state["albedo_head"] = True
        for stage, fn in (("vae", self.train_vae), ("flow", self.train_flow)):
            if self.state["stage"] == "done" or (stage == "vae" and self.state["stage"] == "flow"):
                continue
            budget = minutes.get(stage)
            fn(objects, saved if saved and saved["state"]["stage"] == stage else None,
               None if budget is None else budget * 60.0)
            saved = None
            self.state = {"stage": "flow" if stage == "vae" else "done", "step": 0, "seconds": self.state["seconds"],
                          "albedo_head": True}
            self.save_state()
        return self.write_model(len(objects))

    def train_albedo_head(self, objects, steps: int = 2000, floor: float = 0.01) -> None:
        """The condition encoder's albedo head (`TextureConditionEncoder.albedo`), full batch.

        Colour is relative to a reference in this model: in training the reference is each
        object's true mean albedo (so the latent only holds how voxels differ from it), at run
        time it is this head's reading of the photo.  The loss is the per-object log of the squared
        error (plus a floor, the size of the geometry's share of a render's error): the texture
        bench averages PSNR, a log, over objects, and a plain squared error taught the head to
        darken every photo by the average amount, which ruins the objects whose photo already
        shows their albedo (measured with the same features: held-out mean PSNR of the colour
        alone 16.8 dB with this loss, against 15.7 for the photo's mean)."""
        t0 = time.time()
        enc = self.model.condition_encoder
        with torch.no_grad():
            inputs = condition_inputs(objects)
            mean, feats = enc.colour_statistics(inputs["image"], inputs["mask"])
            enc.albedo_mu.copy_(feats.mean(dim=0))
            enc.albedo_sd.copy_(feats.std(dim=0) + 1e-6)
        target = torch.from_numpy(np.stack([o.reference for o in objects]))
        head = enc.albedo_head
        optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(steps):
            pred = torch.sigmoid(_logit(mean) + head((feats - enc.albedo_mu) / enc.albedo_sd))
            loss = torch.log(((pred - target) ** 2).mean(dim=1) + floor).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            base = torch.log(((mean.clamp(*REFERENCE_CLIP) - target) ** 2).mean(dim=1) + floor).mean()
        self.state["seconds"]["albedo_head"] = time.time() - t0
        print(f"train-texture: albedo head, log error {loss.item():.3f} (the photo's mean colour: {base.item():.3f}), "
              f"{time.time() - t0:.0f} s", file=sys.stderr)

    def _indices(self, obj_id: int, obj: TextureObject):
        if obj_id not in self.cache:
            coords_t = torch.from_numpy(obj.coords)
            _, maps = mesh_subdivisions(obj.coords, 1)
            levels = levels_for(obj.coords, self.model.flow.config)
            self.cache[obj_id] = (coords_t, [torch.from_numpy(m) for m in maps], levels)
        return self.cache[obj_id]

    def train_vae(self, objects, resume, budget):
        s, m = self.schedule, self.model

        def step_fn(step):
            total, parts = 0.0, {"sdf": 0.0, "rgb": 0.0, "kl": 0.0, "g_pos": 0.0, "g_rgb": 0.0}
            for i in self.rng.integers(0, len(objects), s.vae_objects):
                obj = objects[i]
                coords_t, subdiv, _ = self._indices(int(i), obj)
                mean, logvar = m.encoder(encoder_features(obj, self.color_reference), coords_t)
                z = mean + torch.randn(mean.shape, generator=self.generator) * torch.exp(0.5 * logvar)
                sdf_loss, rgb_loss = mesh_losses(m.mesh_decoder, z, coords_t, subdiv, obj)
                g_loss, g_parts = gaussian_losses(m.gaussian_decoder, z, coords_t, obj)
                kl = 0.5 * torch.mean(mean.pow(2) + logvar.exp() - 1.0 - logvar)
                total = total + s.sdf_weight * sdf_loss + s.rgb_weight * rgb_loss + s.gaussian_weight * g_loss + s.kl_weight * kl
                parts["sdf"] += sdf_loss.item() / s.vae_objects
                parts["rgb"] += rgb_loss.item() / s.vae_objects
                parts["kl"] += kl.item() / s.vae_objects
                for k, v in g_parts.items():
                    parts[k] += v / s.vae_objects
            return total / s.vae_objects, parts

        params = [p for mod in (m.encoder, m.mesh_decoder, m.gaussian_decoder) for p in mod.parameters()]
        self._loop("vae", s.vae_steps, params, s.vae_lr, step_fn, resume, budget)

    @torch.no_grad()
    def encode_latents(self, objects) -> list[torch.Tensor]:
        self.model.encoder.eval()
        lat = [self.model.encoder(encoder_features(o, self.color_reference), self._indices(i, o)[0])[0]
               for i, o in enumerate(objects)]
        self.model.encoder.train()
        if self.latent_mean is None:
            allz = torch.cat(lat)
            self.latent_mean = allz.mean(0).tolist()
            self.latent_std = allz.std(0).clamp(min=1e-3).tolist()
        mean, std = torch.tensor(self.latent_mean), torch.tensor(self.latent_std)
        return [(z - mean) / std for z in lat]

    def train_flow(self, objects, resume, budget):
        """Flow matching over the normalised latents, plus a colour target on the flow's data
        estimate.  Why the colour target: the latent at t >= 0.5 already fixes the object's colour,
        so colour is decided at small t, where the velocity loss is dominated by the noise's own
        variance and the condition's gradient is weak.  Measured on 0.2.0 (trained without it): its
        t = 0 estimate of a white object decoded to 0.41 grey with and without the condition, and
        samples came out compressed to mid-grey.  Decoding x_t + (1 - t) v with the frozen mesh
        decoder and asking its colour to match the albedo puts the photo's colour into the loss at
        every t.  For the same reason the training times are shifted towards the noise end
        (`flow_t_shift`; the card's sampler rescales its steps alike): an object's colour is shared
        by thousands of voxels, so the network can read it off x_t's average at any t that is not
        close to 0, and only the times near 0 teach it to take the colour from the condition.
        Measured, fine-tuning 0.2.0 for 8 min on 600 objects with both: a white object's sample went
        from 0.48 to 0.69 grey, and PSNR on 16 held-out objects from 13.3 to 14.2 dB."""
        s, m = self.schedule, self.model
        latents = self.encode_latents(objects)
        mean, std = torch.tensor(self.latent_mean), torch.tensor(self.latent_std)
        for p in m.mesh_decoder.parameters():  # trained in the VAE stage; a fixed reader here
            p.requires_grad_(False)

        def step_fn(step):
            idx = self.rng.integers(0, len(objects), s.flow_objects)
            cond = m.condition_encoder(**condition_inputs([objects[i] for i in idx]))
            keep = (torch.rand(len(idx), generator=self.generator) >= s.p_uncond).float()
            cond = cond * keep.view(-1, 1, 1)
            total, flow_sum, rgb_sum = 0.0, 0.0, 0.0
            for b, i in enumerate(idx):
                obj = objects[i]
                coords_t, subdiv, levels = self._indices(int(i), obj)
                x1 = latents[i][None]
                t = torch.sigmoid(torch.randn(1, generator=self.generator) - math.log(s.flow_t_shift))
                x0 = torch.randn(x1.shape, generator=self.generator)
                xt = (1 - t) * x0 + t * x1
                v = m.flow(xt, 1000.0 * t, cond[b:b + 1], levels)
                flow_loss = F.mse_loss(v, x1 - x0)
                total = total + flow_loss
                flow_sum += flow_loss.item()
                if s.flow_rgb_weight > 0 and keep[b] > 0:  # the unconditional branch has no colour to match
                    estimate = (xt + (1 - t) * v)[0] * std + mean
                    _, rgb_loss = mesh_losses(m.mesh_decoder, estimate, coords_t, subdiv, obj)
                    total = total + s.flow_rgb_weight * rgb_loss
                    rgb_sum += rgb_loss.item()
            n = len(idx)
            return total / n, {"flow": flow_sum / n, "rgb": rgb_sum / n}

        head = {id(p) for p in m.condition_encoder.albedo_head.parameters()}  # fitted before, on its own loss
        params = list(m.flow.parameters()) + [p for p in m.condition_encoder.parameters() if id(p) not in head]
        self._loop("flow", s.flow_steps, params, s.flow_lr, step_fn, resume, budget)

    def write_model(self, n_train: int) -> Path:
        path = self.out / "texture_model.pt"
        torch.save({"format": "sam3d-blender/texture-checkpoint", "preset": TEXTURE_PRESET,
                    "color_reference": COLOR_REFERENCE_PREDICTED,
                    "state_dict": self.model.state_dict(), "latent_mean": self.latent_mean,
                    "latent_std": self.latent_std,
                    "sampler": {"steps": self.schedule.steps, "cfg_strength": self.schedule.cfg_strength,
                                "cfg_interval": [0.0, 500.0], "rescale_t": self.schedule.flow_t_shift, "time_scale": 1000.0,
                                "noise": NOISE_CENTRED},
                    "meta": {"data": str(self.data_dir), "train_samples": n_train,
                             **({"init": {k: self.init[k] for k in ("checkpoint", "missing")}} if self.init else {}),
                             "seconds": {k: round(v, 1) for k, v in self.state["seconds"].items()},
                             "schedule": asdict(self.schedule), "seed": self.seed, "device": "cpu",
                             "torch": torch.__version__}}, path)
        print(f"train-texture: wrote {path}", file=sys.stderr)
        return path


def train_texture_main(args) -> int:
    schedule = TextureSchedule()
    steps = stage_values(args.steps, "--steps", ("vae", "flow"), int)
    if steps:
        schedule = TextureSchedule(vae_steps=steps["vae"], flow_steps=steps["flow"],
                                   warmup=max(1, min(100, steps["flow"] // 10)))
    minutes = stage_values(args.minutes, "--minutes", ("vae", "flow"))
    TextureTrainer(args.data, args.out, seed=args.seed, schedule=schedule, limit=args.limit,
                   init=getattr(args, "init", None)).run(minutes)
    return 0
