"""`sam3d train`: the geometry model's training recipe, in four stages and an optional fifth.

1. VAE: occupancy grid -> latent grid -> occupancy logits (BCE + a small KL term).
2. Encoder: the condition encoder is pre-trained with a small regression probe that predicts the
   shape latent and the pose directly.  SAM 3D starts from a pre-trained, frozen DINOv2; our tiny
   ViT has no such start, and learning the image features through the flow loss alone was the
   slowest part of training on CPU.  When the flow has a `condition_layout` read (tiny), the probe
   is linear read-outs over that very module, so it is pre-trained too; otherwise learned queries
   cross-attend to the tokens (`ConditionProbe`).  The read-outs are training-only, not exported.
3. Flow: the MoT flow transformer over (shape latent, pose) with the paper's per-modality weighted
   flow-matching loss (shape 1.0, rotation 0.1, translation 1.0, scale 0.1), condition dropout for
   classifier-free guidance (the "uncond" branch is an all-zero condition, as in the official
   model) and point-map dropout so the model works with and without a point map.
   The pre-trained encoder keeps learning here at a reduced rate (`encoder_lr_scale`).
4. Shortcut distillation (paper Algorithm 2): the model learns, for a step size 2d input, the
   average velocity of two CFG-guided steps of size d taken by a frozen teacher (the stage-2 model
   at d = 0 for the smallest level, the student itself, stop-grad, above), plus the flow-matching
   term at d = 0, so 4 steps replace 25.
5. Decoder (only when `--stages` names it; e.g. `--init models/tiny --stages decoder` on samples
   the flow has not seen): the structure decoder is fitted to the shortcut sampler's own samples
   of the training photos, with the true occupancy as target (`Trainer.train_decoder`).

Every stage checkpoints to OUT/state.pt (resumable: rerun the same command) and appends to
OUT/train_log.jsonl; the final model goes to OUT/model.pt in the export format of
`sam3d_addon.nn.checkpoint`.  Training runs on CUDA when torch sees a GPU (`--device`); random
numbers are drawn on the CPU either way, so a run's batches and noise do not depend on the device.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import POSE_DIMS
from ..errors import InputError
from ..nn.bundle import ModelBundle, build_models, sample_flow
from ..nn.checkpoint import save_checkpoint
from ..nn.vae import grid_to_tokens, tokens_to_grid
from ..pose import encode_pose
from . import latent_cache
from .data import IMAGE_KEYS, POINT_KEYS, GeometryArrays, TrainingData, condition_tensors, pose_statistics


@dataclass
class Schedule:
    """Steps, batch sizes and learning rates of the three stages (per preset)."""

    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    encoder_steps: int = 1500
    encoder_batch: int = 32
    encoder_lr: float = 1e-3
    # Probe loss weights: rotation is weighted up here (the flow loss keeps the paper's 0.1).
    probe_weights: dict = field(default_factory=lambda: {
        "shape": 1.0, "rotation6d": 1.0, "translation": 1.0, "scale": 0.5})
    encoder_lr_scale: float = 0.2
    flow_steps: int = 6000
    flow_batch: int = 32
    flow_lr: float = 5e-4
    distill_steps: int = 1500
    distill_batch: int = 32
    distill_lr: float = 1e-4
    warmup: int = 200
    p_uncond: float = 0.1
    # Most batches see no point map: the add-on has none at run time, and with half the batches
    # carrying one the model learned to read translation from the points and not the image.
    p_drop_points: float = 0.9
    loss_weights: dict = field(default_factory=lambda: {
        "shape": 1.0, "rotation6d": 0.1, "translation": 1.0, "scale": 0.1, "translation_scale": 0.1})
    # Inference defaults written into the card.
    shortcut_steps: int = 4
    reference_steps: int = 25
    cfg_strength: float = 1.0
    rescale_t: float = 1.0
    # Shortcut levels: the student learns steps of 2d for these d (fractions of the whole path).
    distill_levels: tuple = (1 / 32, 1 / 16, 1 / 8)
    # Fraction of the samples seen mirrored left-right (Batches says why that is exact); 0 = off.
    hflip: float = 0.0
    # Photometric jitter strength (photometric_jitter); 0 = off.
    jitter: float = 0.0
    # --init from a model folder without its encoder graph (older exports): the encoder is
    # refitted on this many of the flow's own samples (nn/recover.py: refit_encoder).
    refit_steps: int = 1000
    refit_batch: int = 16
    refit_lr: float = 1e-3
    refit_anchors: int = 2048
    # The decoder stage (`--stages decoder`, after distillation): the structure decoder is fitted
    # to the shortcut sampler's own samples of the training photos, the true occupancy as target
    # (Trainer.train_decoder says why).  Off unless named in --stages.
    decoder_steps: int = 2000
    decoder_batch: int = 32
    decoder_lr: float = 1e-4
    decoder_iou_weight: float = 1.0  # the soft-IoU term beside the per-voxel BCE
    # The shape latent's starting-noise factor at sampling time (the card's sampler.noise_scale,
    # README "A cooler start"): written to the card when not 1, and the decoder stage samples so.
    shape_noise_scale: float = 1.0


SCHEDULES = {"tiny": Schedule()}
# The stages in the order they run; `decoder` runs only when --stages names it.
STAGES = ("vae", "encoder", "flow", "distill", "decoder")
DEFAULT_STAGES = STAGES[:4]


def _log(out: Path, record: dict) -> None:
    record = {"time": round(time.time(), 1), **record}
    with open(out / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _progress(stage: str, step: int, total: int, loss: float | None, t0: float, start: int) -> None:
    if step % 25 and step != total:
        return
    rate = (step - start) / max(time.time() - t0, 1e-6)
    eta = (total - step) / max(rate, 1e-6)
    filled = int(25 * step / total)
    shown = "" if loss is None else f"loss {loss:.4f} "
    print(f"\r{stage:8s} [{'#' * filled}{'.' * (25 - filled)}] {step}/{total} {shown}"
          f"{rate:.1f} it/s eta {eta / 60:.1f} min", end="\n" if step == total else "", file=sys.stderr, flush=True)


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


MIRROR_X = np.diag([-1.0, 1.0, 1.0])


def mirrored_pose(rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pose of the mirror image (photo flipped left-right, camera x -> -x) of an object whose
    canonical shape is mirrored in its own x (occupancy reversed along axis 0):
    p_cam = R^T (s p) + t becomes F p_cam = (F R F)^T (s F p) + F t, F = diag(-1, 1, 1); F R F is
    again a rotation."""
    return MIRROR_X @ rotation @ MIRROR_X, translation @ MIRROR_X


RGB_KEYS = ("image", "rgb_image")


def photometric_jitter(images: dict[str, torch.Tensor], strength: float, rng: np.random.Generator) -> dict:
    """The RGB inputs (in [0, 1], [B, 3, H, W]) with one random colour change per sample, the
    same on its crop and its full image (one photo): per-channel gain (white balance), brightness,
    contrast and saturation, each a factor drawn from [1 - s, 1 + s] (gain: [1 - s/3, 1 + s/3]).

    Why: the condition encoder is trained from scratch and overfits (tiny 0.3.0: held-out vIoU
    0.44 against 0.56 on training samples); lighting and material colour are what a photo varies
    most that says nothing about the shape.  Labels are unchanged, so it is exact.  Random numbers
    come from the CPU generator `rng`, so batches are the same on every device."""
    keys = [k for k in RGB_KEYS if k in images]
    if strength <= 0 or not keys:
        return images
    b = images[keys[0]].shape[0]
    device = images[keys[0]].device
    s = float(strength)

    def draw(shape, spread):
        return torch.from_numpy(rng.uniform(1 - spread, 1 + spread, shape).astype(np.float32)).to(device)

    gain, bright, contrast, sat = draw((b, 3, 1, 1), s / 3), draw((b, 1, 1, 1), s), draw((b, 1, 1, 1), s), draw((b, 1, 1, 1), s)
    out = dict(images)
    for k in keys:
        x = images[k] * gain * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        grey = x.mean(dim=1, keepdim=True)
        out[k] = ((x - grey) * sat + grey).clamp(0.0, 1.0)
    return out


@dataclass
class Pick:
    """One mini-batch's sample indices and which of them are seen mirrored."""

    index: torch.Tensor
    flip: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.index)


class Batches:
    """Seeded random mini-batches of the stacked training arrays, as torch tensors on `device`.

    The arrays are moved to the device once (uint8 images, ~1 GB for 16k samples) and batches are
    gathered there: on a GPU, copying each batch from host memory would cost more than the step.
    With `hflip` > 0 that fraction of the samples is seen mirrored left-right (an exact
    augmentation: the mirrored photo shows the mirrored shape at the mirrored pose, whose targets
    `mirrored` holds)."""

    def __init__(self, arrays: GeometryArrays, latents: np.ndarray | None, pose_targets: dict | None, seed: int,
                 device: torch.device | str = "cpu", hflip: float = 0.0, mirrored: tuple | None = None,
                 jitter: float = 0.0):
        self.n = len(arrays)
        self.device = torch.device(device)
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.images = {k: put(v) for k, v in arrays.images.items()}
        self.points = {k: put(v) for k, v in arrays.points.items()}
        self.occ = put(arrays.occupancy)
        self.latents = None if latents is None else put(latents)
        self.pose = None if pose_targets is None else {m: put(v) for m, v in pose_targets.items()}
        self.hflip = float(hflip)
        if self.hflip and latents is not None:
            self.mirrored_latents = put(mirrored[0])
            self.mirrored_pose = {m: put(v) for m, v in mirrored[1].items()}
        self.jitter = float(jitter)
        self.point_sign = torch.tensor([-1.0, 1.0, 1.0], device=self.device).view(1, 3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def indices(self, batch: int) -> Pick:
        index = torch.from_numpy(self.rng.integers(0, self.n, batch)).to(self.device)
        flip = None
        if self.hflip:
            flip = torch.from_numpy(self.rng.random(batch) < self.hflip).to(self.device)
        return Pick(index, flip)

    @staticmethod
    def _where(flip, mirrored, plain):
        if flip is None:
            return plain
        return torch.where(flip.view((-1,) + (1,) * (plain.dim() - 1)), mirrored, plain)

    def occupancy(self, pick: Pick) -> torch.Tensor:
        occ = self.occ[pick.index].float()
        return self._where(pick.flip, occ.flip(1), occ)[:, None]  # grid axis 0 is canonical x

    def condition_inputs(self, pick: Pick, p_drop_points: float) -> dict[str, torch.Tensor]:
        out = {}
        for k in IMAGE_KEYS:
            img = self.images[k][pick.index].float() / 255.0
            out[k] = self._where(pick.flip, img.flip(-1), img)
        if self.jitter:
            out = photometric_jitter(out, self.jitter, self.rng)
        drop = torch.from_numpy(self.rng.random(len(pick)) < p_drop_points).to(self.device)
        for k in POINT_KEYS:
            pts = self.points[k][pick.index].float()
            pts = self._where(pick.flip, pts.flip(-1) * self.point_sign, pts)
            # "no point map": NaN everywhere, the encoder's invalid token
            out[k] = torch.where(drop.view(-1, 1, 1, 1), torch.full_like(pts, float("nan")), pts)
        return out

    def targets(self, pick: Pick) -> dict[str, torch.Tensor]:
        i, flip = pick.index, pick.flip
        x1 = {"shape": self.latents[i] if flip is None else self._where(flip, self.mirrored_latents[i], self.latents[i])}
        for m in POSE_DIMS:
            plain = self.pose[m][i]
            x1[m] = (plain if flip is None else self._where(flip, self.mirrored_pose[m][i], plain))[:, None, :]
        return x1


def _sample_time(n: int, generator: torch.Generator) -> torch.Tensor:
    # Logit-normal times (more weight mid-path), as is usual for rectified-flow training.
    return torch.sigmoid(torch.randn(n, generator=generator))


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Normal noise drawn on the CPU generator, then moved: the same numbers on every device."""
    return torch.randn(shape, generator=generator).to(device)


def occupancy_loss(logits: torch.Tensor, target: torch.Tensor, iou_weight: float) -> tuple[torch.Tensor, dict]:
    """Per-voxel BCE plus `iou_weight` x (1 - soft IoU) per grid, for logits and 0/1 targets of
    the same shape [B, 1, R, R, R].  Why the IoU term: BCE weighs every voxel alike, so on a
    thin object the empty space dominates; the benchmark scores the IoU."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    y = target.flatten(1)
    inter = (p * y).sum(1)
    union = (p + y - p * y).sum(1).clamp_min(1.0)
    soft_iou = (inter / union).mean()
    return bce + iou_weight * (1.0 - soft_iou), {"bce": bce.item(), "soft_iou": soft_iou.item()}


def flow_loss(bundle: ModelBundle, cond: torch.Tensor, x1: dict, weights: dict, generator: torch.Generator):
    """Per-modality weighted conditional flow-matching loss at d = 0 (noise t=0, data t=1)."""
    b, dev = cond.shape[0], cond.device
    t = _sample_time(b, generator).to(dev)
    x0 = {m: randn(v.shape, generator, dev) for m, v in x1.items()}
    xt = {m: (1 - t.view(-1, 1, 1)) * x0[m] + t.view(-1, 1, 1) * x1[m] for m in x1}
    v = bundle.generator(xt, 1000.0 * t, cond, d=torch.zeros(b, device=dev))
    parts = {m: F.mse_loss(v[m], x1[m] - x0[m]) for m in x1}
    return sum(weights[m] * parts[m] for m in parts), {m: p.item() for m, p in parts.items()}


def _guided_velocity(model, x, t, d, cond, w):
    """(1 + w) v(cond) - w v(zero cond), in one batched call."""
    b = cond.shape[0]
    both = {m: torch.cat([v, v]) for m, v in x.items()}
    out = model(both, torch.cat([t, t]), torch.cat([cond, torch.zeros_like(cond)]), d=torch.cat([d, d]))
    return {m: (1 + w) * o[:b] - w * o[b:] for m, o in out.items()}


def shortcut_target(student, teacher, x, t, d, cond, w, smallest: bool):
    """Algorithm 2: average velocity of two guided steps of size d (stop-grad)."""
    with torch.no_grad():
        model = teacher if smallest else student
        d_in = torch.zeros_like(d) if smallest else 1000.0 * d
        v1 = _guided_velocity(model, x, 1000.0 * t, d_in, cond, w)
        x_mid = {m: x[m] + d.view(-1, 1, 1) * v1[m] for m in x}
        v2 = _guided_velocity(model, x_mid, 1000.0 * (t + d), d_in, cond, w)
        return {m: (v1[m] + v2[m]) / 2.0 for m in x}


def zero_init_modulation(bundle: ModelBundle) -> None:
    """DiT-style start: zero adaLN modulation, so every block begins as the identity (stabler)."""
    for block in bundle.generator.blocks:
        torch.nn.init.zeros_(block.adaLN_modulation[1].weight)
        torch.nn.init.zeros_(block.adaLN_modulation[1].bias)


class ConditionProbe(torch.nn.Module):
    """Training-only head over the condition tokens: one learned query per shape-latent token and
    one for the pose cross-attend to the tokens; linear read-outs give the latent and the pose."""

    def __init__(self, cond_channels: int, shape_tokens: int, latent_channels: int, pose_dims: int, heads: int = 4):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(1, shape_tokens + 1, cond_channels) * 0.02)
        self.norm = torch.nn.LayerNorm(cond_channels)
        self.attn = torch.nn.MultiheadAttention(cond_channels, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.LayerNorm(cond_channels), torch.nn.Linear(cond_channels, 2 * cond_channels),
                                       torch.nn.GELU(), torch.nn.Linear(2 * cond_channels, cond_channels))
        self.shape_out = torch.nn.Linear(cond_channels, latent_channels)
        self.pose_out = torch.nn.Linear(cond_channels, pose_dims)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.queries.expand(cond.shape[0], -1, -1)
        kv = self.norm(cond)
        h = q + self.attn(q, kv, kv, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.shape_out(h[:, :-1]), self.pose_out(h[:, -1])


class LayoutProbe(torch.nn.Module):
    """Training-only read-outs over the flow's own `condition_layout` features: a linear map per
    shape token to the latent, and one over the pose tokens' features to the pose.  Pre-training
    the encoder through it also pre-trains the flow's layout read (shared module, not a copy)."""

    def __init__(self, layout: torch.nn.Module, latent_channels: int, pose_dims: int):
        super().__init__()
        self.layout = layout
        self.shape_tokens = shape_tokens = layout.shape_tokens
        width = layout.layout_channels
        self.shape_out = torch.nn.Linear(width, latent_channels)
        self.pose_out = torch.nn.Linear((layout.tokens - shape_tokens) * width, pose_dims)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layout.features(cond)
        return self.shape_out(h[:, :self.shape_tokens]), self.pose_out(h[:, self.shape_tokens:].flatten(1))


PROBE_POSE = ("rotation6d", "translation", "scale")


class Paused(Exception):
    """`--stop-after` reached: the state is saved and the same command resumes."""


def train_stage(owner, name, total, params, lr, step_fn, resume, budget, log_every: int = 100, save_every: int = 500,
                deadline: float | None = None):
    """Run one stage of a trainer (`owner`: .state, .schedule.warmup, .out, .save_state(opt)).
    With a time budget (seconds) the step count is fitted to it after the first steps, so the
    cosine schedule still completes; the count used is logged.  At `deadline` (a time.time()) the
    stage checkpoints and raises Paused."""
    if not isinstance(params[0], dict):
        params = [{"params": params, "lr_scale": 1.0}]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    all_params = [p for g in params for p in g["params"]]
    if resume and resume.get("optimizer"):
        opt.load_state_dict(resume["optimizer"])
    start = owner.state["step"] if resume else 0
    schedule_total = total
    total = int(owner.state.get("total", total)) if resume else total
    t0 = time.time()
    spent0 = owner.state["seconds"].get(name, 0.0) if resume else 0.0
    loss_ema = None
    step = start
    while step < total:
        for g in opt.param_groups:
            g["lr"] = g["lr_scale"] * _lr_at(step, total, lr, min(owner.schedule.warmup, total // 10 + 1))
        loss, parts = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(all_params, 1.0)
        opt.step()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        elapsed = time.time() - t0
        owner.state.update(step=step, total=total)
        owner.state["seconds"][name] = spent0 + elapsed
        owner.state.setdefault("steps_run", {})[name] = step  # a budget fits the count: the card says what ran
        if budget is not None and step - start >= 20 and (step - start) % 20 == 0:
            # Fit the step count to the time left, from the speed so far (the machine may be
            # shared), never beyond the schedule's own count.
            per_step = elapsed / (step - start)
            fitted = step + int((budget - spent0 - elapsed) / per_step)
            fitted = max(step + 1, min(fitted, schedule_total))
            if fitted != total:
                total = fitted
                if (step - start) % 200 == 0 or step - start == 20:
                    _log(owner.out, {"stage": name, "event": "steps_fitted_to_budget", "total": total,
                                    "seconds_per_step": round(per_step, 3)})
        _progress(name, step, total, loss_ema, t0, start)
        if step % log_every == 0 or step == total:
            _log(owner.out, {"stage": name, "step": step, "loss": round(loss_ema, 5),
                            **{k: round(float(v), 5) for k, v in parts.items()}, "lr": opt.param_groups[0]["lr"]})
        if step % save_every == 0:
            owner.save_state(opt)
        if deadline is not None and time.time() >= deadline and step < total:
            owner.save_state(opt)
            _log(owner.out, {"stage": name, "event": "paused", "step": step})
            raise Paused(f"{name} step {step}/{total}")
    return opt


class Trainer:
    def __init__(self, config_name: str, data_paths: Path | list[Path], out: Path, seed: int = 0,
                 schedule: Schedule | None = None, limit: int | None = None, device: str = "cpu",
                 stop_after_minutes: float | None = None, init: str | Path | None = None):
        self.config_name = config_name
        self.schedule = schedule or SCHEDULES[config_name]
        self.limit = limit
        self.data = TrainingData(data_paths)  # checks the data first: a bad --data changes nothing
        self.out, self.seed = Path(out), seed
        self.device = torch.device(device)
        self.deadline = None if stop_after_minutes is None else time.time() + 60.0 * stop_after_minutes
        torch.manual_seed(seed)
        # Built on the CPU (the same initial weights on every device), then moved.
        self.bundle = build_models(config_name)
        zero_init_modulation(self.bundle)
        for module in self.bundle.modules().values():
            module.to(self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.state: dict = {"stage": "vae", "step": 0, "seconds": {}}
        self.latent_mean = self.latent_std = None
        self.pose_stats = None
        self.schedule_changes: list[dict] = []
        self.vae_heldout_viou = None
        self.probe_heldout_viou = None
        self.probe: ConditionProbe | None = None
        self.teacher: torch.nn.Module | None = None
        self.latent_cache: dict[bool, tuple] = {}  # mirrored -> (arrays, latents)
        self.data_meta = self.data.meta
        self.init: dict | None = None
        if init is not None and not (self.out / "state.pt").is_file():  # a resumed run has it in its state
            self.init_from(init)  # before the output exists: a bad --init changes nothing
        self.out.mkdir(parents=True, exist_ok=True)

    def init_from(self, path) -> None:
        """Start from a trained model.pt or a shipped model folder (a warm start, e.g. on more
        data): every module's weights, and the latent normalisation and pose statistics the flow
        was trained with (re-deriving them from other data would move the flow's targets).  The
        VAE and the encoder pre-training are done: training goes on at the flow stage (encoder at
        its reduced rate).  The model's training seconds and steps are kept, so the card counts them."""
        from ..nn.checkpoint import load_checkpoint

        path = Path(path)
        if path.is_dir():
            bundle, checkpoint = self._rebuild_from_model_folder(path)
        else:
            bundle, checkpoint = load_checkpoint(path)
        if checkpoint["config"] != self.config_name:
            raise InputError(f"--init {path} is a '{checkpoint['config']}' model, not '{self.config_name}'.")
        trained = bundle.modules()
        for name, module in self.bundle.modules().items():
            module.load_state_dict(trained[name].state_dict())
        meta = checkpoint["meta"]
        self.latent_mean, self.latent_std = checkpoint["latent_mean"], checkpoint["latent_std"]
        self.pose_stats = checkpoint["pose_stats"]
        self.vae_heldout_viou, self.probe_heldout_viou = meta.get("vae_heldout_viou"), meta.get("probe_heldout_viou")
        self.state.update(stage="flow", encoder_pretrained=True)
        self.state["seconds"].update({f"init_{k}": float(v) for k, v in meta.get("seconds", {}).items()})
        self.state["steps_run"] = {f"init_{k}": int(v) for k, v in meta.get("steps_run", {}).items()}
        self.init = {"checkpoint": str(path), "data": meta.get("data"), "train_samples": meta.get("train_samples"),
                     **checkpoint.get("rebuilt", {})}
        if checkpoint.get("encoder_refit_pending"):
            self.state["encoder_refit"] = "pending"  # done in run(), where the training data is at hand

    def _rebuild_from_model_folder(self, path: Path):
        """(bundle, checkpoint-like dict) from a shipped model folder's graphs and card."""
        from ..contract import load_card
        from ..errors import ModelError
        from ..nn.recover import recover_modules

        card = load_card(path)
        if card.kind != "geometry":
            raise ModelError(f"--init {path} is a texture model; pick a geometry model.")
        config = card.data.get("architecture", {}).get("config")
        if config != self.config_name:
            raise InputError(f"--init {path} is a '{config}' model, not '{self.config_name}'.")
        bundle = build_models(config)
        report = recover_modules(card.path, bundle)
        training = card.data.get("training", {})
        checkpoint = {
            "config": config, "latent_mean": list(card.latent_mean), "latent_std": list(card.latent_std),
            "pose_stats": dict(card.data["pose"]), "meta": training,
            "rebuilt": {"model": {"name": card.name, "version": card.version},
                        "rebuilt_max_abs_diff": {k: float(f"{v:.3g}") for k, v in report["max_abs_diff"].items()}},
            "encoder_refit_pending": not report["encoder"],
        }
        return bundle, checkpoint

    def refit_encoder(self, arrays) -> None:
        """The model folder had no encoder graph: fit one to the frozen decoder and the flow's own
        samples of this run's training images (nn/recover.py says why the samples matter)."""
        from ..nn.recover import encoder_checks, flow_anchors, refit_encoder

        s = self.schedule
        t0 = time.time()
        cpu = build_models(self.config_name)  # the anchors and the refit run on the CPU copy
        for name, module in cpu.modules().items():
            module.load_state_dict(getattr(self.bundle, name).state_dict())
        n = min(len(arrays), s.refit_anchors)
        held = max(1, n // 8)  # the last eighth checks the fit
        sampler = {"steps": s.shortcut_steps, "rescale_t": s.rescale_t}
        occ, z = flow_anchors(cpu, self.latent_mean, self.latent_std, sampler,
                              {k: v[:n] for k, v in arrays.images.items()}, seed=self.seed,
                              progress=lambda i, total: _progress("anchors", i, total, None, t0, 0))
        t1 = time.time()
        fit = (occ[:n - held], z[:n - held]) if n > held else (occ, z)
        check = (occ[n - held:], z[n - held:])
        before = encoder_checks(cpu.encoder, cpu.decoder, self.latent_mean, self.latent_std,
                                arrays.occupancy[:held], check)
        refit_encoder(cpu.encoder, self.latent_mean, self.latent_std, fit, steps=s.refit_steps,
                      batch=s.refit_batch, lr=s.refit_lr, seed=self.seed,
                      progress=lambda i, total, loss: _progress("refit", i, total, loss, t1, 0))
        after = encoder_checks(cpu.encoder, cpu.decoder, self.latent_mean, self.latent_std,
                               arrays.occupancy[:held], check)
        self.bundle.encoder.load_state_dict(cpu.encoder.state_dict())
        seconds = time.time() - t0
        self.state["seconds"]["encoder_refit"] = self.state["seconds"].get("encoder_refit", 0.0) + seconds
        self.state["encoder_refit"] = "done"
        self.init["encoder_refit"] = {"steps": s.refit_steps, "anchors": n - held, "held_out": held,
                                      "before": before, "after": after, "seconds": round(seconds, 1)}
        _log(self.out, {"stage": "encoder_refit", **self.init["encoder_refit"]})

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"

    # -- state ------------------------------------------------------------------------------------
    def save_state(self, optimizer=None, extra=None):
        state = {
            "schedule": asdict(self.schedule), "state": self.state, "modules": {k: m.state_dict() for k, m in self.bundle.modules().items()},
            "latent_mean": self.latent_mean, "latent_std": self.latent_std, "pose_stats": self.pose_stats,
            "vae_heldout_viou": self.vae_heldout_viou,
            "probe_heldout_viou": self.probe_heldout_viou,
            "probe": self.probe.state_dict() if self.probe is not None else None,
            # Distillation's frozen teacher (the flow stage's model), so a resumed run keeps it.
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "init": self.init,
            "optimizer": optimizer.state_dict() if optimizer else None, "rng": self.generator.get_state(),
        }
        state.update(extra or {})
        partial = self.out / "state.pt.partial"
        torch.save(state, partial)
        partial.replace(self.out / "state.pt")

    def load_state(self) -> dict | None:
        path = self.out / "state.pt"
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=False)
        for k, m in self.bundle.modules().items():
            m.load_state_dict(saved["modules"][k])
        self.state = saved["state"]
        self.latent_mean, self.latent_std, self.pose_stats = saved["latent_mean"], saved["latent_std"], saved["pose_stats"]
        self.vae_heldout_viou = saved.get("vae_heldout_viou")
        self.probe_heldout_viou = saved.get("probe_heldout_viou")
        self.init = saved.get("init")
        if saved.get("probe") is not None:
            self._build_probe().load_state_dict(saved["probe"])
        self.generator.set_state(saved["rng"])
        print(f"train: resuming at stage {self.state['stage']} step {self.state['step']}", file=sys.stderr)
        changed = {k: [saved["schedule"].get(k), v] for k, v in asdict(self.schedule).items()
                   if saved["schedule"].get(k) != v}
        if changed:  # a resumed run with another schedule: say so in the log and the card
            self.schedule_changes.append({"stage": self.state["stage"], "step": self.state["step"], "changed": changed})
            _log(self.out, {"event": "schedule_changed_on_resume", **self.schedule_changes[-1]})
        return saved

    # -- stages -----------------------------------------------------------------------------------
    def run(self, stages: list[str], minutes: dict[str, float] | None = None) -> Path:
        saved = self.load_state()
        t0 = time.time()
        arrays = self._load("train", limit=self.limit)
        print(f"train: {len(arrays)} training samples loaded in {time.time() - t0:.0f} s "
              f"(device {self.device})", file=sys.stderr)
        if len(arrays) < 8:
            raise InputError(f"Only {len(arrays)} training samples in {self.data.source()}; generate more with `sam3d data`.")
        self.pose_stats = self.pose_stats or pose_statistics(arrays)
        self.fov_deg = self.data.fov_deg()
        if self.state.get("encoder_refit") == "pending":
            self.refit_encoder(arrays)
            self.save_state()
        minutes = minutes or {}
        order = list(STAGES) + ["done"]
        for stage in order[:-1]:
            if order.index(stage) < order.index(self.state["stage"]):
                continue
            if stage not in stages:
                continue
            fn = {"vae": self.train_vae, "encoder": self.train_encoder, "flow": self.train_flow,
                  "distill": self.train_distill, "decoder": self.train_decoder}[stage]
            budget = minutes.get(stage)
            fn(arrays, saved if saved and saved["state"]["stage"] == stage else None,
               None if budget is None else budget * 60.0)
            saved = None
            self.state = {"stage": order[order.index(stage) + 1], "step": 0, "seconds": self.state["seconds"],
                          "steps_run": self.state.get("steps_run", {}),
                          "encoder_pretrained": self.state.get("encoder_pretrained", False)}
            self.save_state()
        return self.write_model(arrays)

    def _load(self, split: str, limit: int | None = None) -> GeometryArrays:
        cond = self.bundle.config.condition
        return self.data.load(split, cond.vit.input_size, cond.point.input_size, limit=limit)

    def _loop(self, name, total, params, lr, step_fn, resume, budget):
        return train_stage(self, name, total, params, lr, step_fn, resume, budget, deadline=self.deadline)

    def train_vae(self, arrays, resume, budget):
        s = self.schedule
        b = self.bundle
        batches = self._batches(arrays, 1)
        pos = float(arrays.occupancy.mean())
        # Up-weight the rarer occupied voxels so thin parts are not ignored.
        pos_weight = torch.tensor(min(4.0, (1 - pos) / max(pos, 1e-3)), device=self.device)

        def step_fn(step):
            occ = batches.occupancy(batches.indices(s.vae_batch))
            mean, logvar = b.encoder(occ)
            z = mean + randn(mean.shape, self.generator, self.device) * torch.exp(0.5 * logvar)
            logits = b.decoder(z)
            bce = F.binary_cross_entropy_with_logits(logits, occ, pos_weight=pos_weight)
            kl = 0.5 * torch.mean(mean.pow(2) + logvar.exp() - 1.0 - logvar)
            return bce + s.kl_weight * kl, {"bce": bce.item(), "kl": kl.item()}

        params = list(b.encoder.parameters()) + list(b.decoder.parameters())
        self._loop("vae", s.vae_steps, params, s.vae_lr, step_fn, resume, budget)
        self.vae_heldout_viou = round(self.vae_heldout_iou(), 4)
        _log(self.out, {"stage": "vae", "event": "heldout_reconstruction_viou", "viou": self.vae_heldout_viou})

    @torch.no_grad()
    def vae_heldout_iou(self, limit: int = 64) -> float:
        """Mean voxel IoU of encode -> decode (posterior mean) on the held-out split."""
        from ..metrics import voxel_iou  # here: metrics pulls in trimesh, which a GPU box may lack
        occ = self._load("test", limit=limit).occupancy
        if not len(occ):
            return float("nan")
        b = self.bundle
        b.encoder.eval(), b.decoder.eval()
        grids = torch.from_numpy(occ.astype(np.float32))[:, None].to(self.device)
        logits = b.decoder(b.encoder(grids)[0])[:, 0].cpu().numpy()
        b.encoder.train(), b.decoder.train()
        return float(np.mean([voxel_iou(p, o) for p, o in zip(logits > 0, occ)]))

    def encode_latents(self, arrays, mirrored: bool = False) -> np.ndarray:
        """Normalised shape latents of the occupancies (mirrored in canonical x if asked); the
        normalisation is always the plain training split's.  Encoded once per run and reused by
        the later stages: the VAE does not change after its own stage; and kept on disk for
        later runs with the same encoder and grids (`latent_cache`)."""
        cached = self.latent_cache.get(mirrored)
        if cached is None or cached[0] is not arrays:
            cached = self.latent_cache[mirrored] = (arrays, self._encode_latents(arrays, mirrored))
        return cached[1]

    @torch.no_grad()
    def _encode_latents(self, arrays, mirrored: bool) -> np.ndarray:
        state = {k: v.detach().cpu().numpy() for k, v in self.bundle.encoder.state_dict().items()}
        key = latent_cache.cache_key(state, arrays.occupancy, mirrored, self.device.type)
        lat = latent_cache.load(key, len(arrays))
        if lat is None:
            lat = self._run_encoder(arrays, mirrored)
            latent_cache.save(key, lat)
        else:
            print(f"train: {len(arrays)} latents{' (mirrored)' if mirrored else ''} read from the cache "
                  f"({latent_cache.cache_dir()})", file=sys.stderr)
        if self.latent_mean is None:
            assert not mirrored, "the plain latents set the normalisation"
            self.latent_mean = lat.mean(axis=(0, 1)).tolist()
            self.latent_std = np.maximum(lat.std(axis=(0, 1)), 1e-3).tolist()
        return ((lat - np.asarray(self.latent_mean, np.float32)) / np.asarray(self.latent_std, np.float32)).astype(np.float32)

    @torch.no_grad()
    def _run_encoder(self, arrays, mirrored: bool) -> np.ndarray:
        """The encoder's means of the grids (mirrored in canonical x if asked), float32 [N, T, C]."""
        self.bundle.encoder.eval()
        out = []
        # ~15 ms a grid on 2 CPU cores: 50,000 samples (twice with hflip) take minutes, so show it
        batch = 64
        t0, total = time.time(), -(-len(arrays) // batch)
        for i in range(0, len(arrays), batch):
            _progress("latents" + (" (mirrored)" if mirrored else ""), i // batch + 1, total, None, t0, 0)
            grids = arrays.occupancy[i:i + batch]
            grids = grids[:, ::-1] if mirrored else grids
            occ = torch.from_numpy(grids.astype(np.float32))[:, None].to(self.device)
            mean, _ = self.bundle.encoder(occ)
            out.append(grid_to_tokens(mean).cpu().numpy())
        self.bundle.encoder.train()
        return np.concatenate(out).astype(np.float32)

    def _pose_targets(self, arrays, mirrored: bool = False) -> dict[str, np.ndarray]:
        enc = []
        for r, t, s in zip(arrays.rotation, arrays.translation, arrays.scale):
            if mirrored:
                r, t = mirrored_pose(r, t)
            enc.append(encode_pose(r, t, s, self.pose_stats))
        out = {m: np.stack([e[m] for e in enc]).astype(np.float32) for m in ("rotation6d", "translation", "scale")}
        out["translation_scale"] = np.zeros((len(arrays), 1), np.float32)  # unused by the pose convention
        return out

    def _batches(self, arrays, seed_offset: int, latents=None) -> Batches:
        """Mini-batches for a stage; with the schedule's hflip, the mirrored targets too (and its
        photometric jitter on the condition images)."""
        hflip = self.schedule.hflip
        if latents is None:  # the VAE stage: occupancy only
            return Batches(arrays, None, None, self.seed + seed_offset, self.device, hflip=hflip)
        mirrored = None
        if hflip:
            mirrored = (self.encode_latents(arrays, mirrored=True), self._pose_targets(arrays, mirrored=True))
        return Batches(arrays, latents, self._pose_targets(arrays), self.seed + seed_offset, self.device,
                       hflip=hflip, mirrored=mirrored, jitter=self.schedule.jitter)

    def _cond(self, batches, idx, drop_cond: bool):
        inputs = batches.condition_inputs(idx, self.schedule.p_drop_points)
        cond = self.bundle.condition_encoder(**inputs)
        if drop_cond:
            keep = (torch.rand(len(idx), generator=self.generator) >= self.schedule.p_uncond).float().to(cond.device)
            cond = cond * keep.view(-1, 1, 1)  # all-zero condition = the unconditional branch
        return cond

    def _build_probe(self) -> torch.nn.Module:
        if self.probe is None:
            cfg = self.bundle.config
            torch.manual_seed(self.seed + 7)
            pose_dims = sum(POSE_DIMS[m] for m in PROBE_POSE)
            layout = self.bundle.generator.condition_layout
            if layout is not None:  # the probe reads (and so pre-trains) the flow's layout read
                self.probe = LayoutProbe(layout, cfg.flow.shape_channels, pose_dims)
            else:
                self.probe = ConditionProbe(cfg.flow.cond_channels, cfg.flow.shape_tokens, cfg.flow.shape_channels,
                                            pose_dims)
            self.probe.to(self.device)
        return self.probe

    def train_encoder(self, arrays, resume, budget):
        s = self.schedule
        latents = self.encode_latents(arrays)
        batches = self._batches(arrays, 4, latents)
        probe = self._build_probe()
        sizes = [POSE_DIMS[m] for m in PROBE_POSE]

        def step_fn(step):
            idx = batches.indices(s.encoder_batch)
            x1 = batches.targets(idx)
            shape, pose = probe(self.bundle.condition_encoder(**batches.condition_inputs(idx, s.p_drop_points)))
            parts = {"shape": F.mse_loss(shape, x1["shape"])}
            for m, p in zip(PROBE_POSE, torch.split(pose, sizes, dim=-1)):
                parts[m] = F.mse_loss(p, x1[m][:, 0])
            loss = sum(s.probe_weights[m] * parts[m] for m in parts)
            return loss, {m: p.item() for m, p in parts.items()}

        # probe.parameters() includes the shared layout read, when there is one.
        params = list(self.bundle.condition_encoder.parameters()) + list(probe.parameters())
        self._loop("encoder", s.encoder_steps, params, s.encoder_lr, step_fn, resume, budget)
        self.state["encoder_pretrained"] = True
        self.probe_heldout_viou = round(self.probe_heldout_iou(), 4)
        _log(self.out, {"stage": "encoder", "event": "probe_heldout_viou", "viou": self.probe_heldout_viou})

    @torch.no_grad()
    def probe_heldout_iou(self, limit: int = 64) -> float:
        """Voxel IoU of the probe's direct latent prediction, decoded, on the held-out split (no
        point map): how much shape the pre-trained image features carry before the flow sees them."""
        test = self._load("test", limit=limit)
        if len(test) == 0:
            return float("nan")
        b = self.bundle
        b.condition_encoder.eval()
        self.probe.eval()  # dropout off (the layout read has some)
        inputs = {k: v.to(self.device) for k, v in condition_tensors(test.images).items()}
        shape, _ = self.probe(b.condition_encoder(**inputs))
        self.probe.train()
        b.condition_encoder.train()
        lat = shape * torch.tensor(self.latent_std, device=self.device) + torch.tensor(self.latent_mean, device=self.device)
        grid = tokens_to_grid(lat, b.config.vae.latent_resolution)
        pred = (b.decoder(grid)[:, 0] > 0).cpu().numpy()
        occ = test.occupancy
        inter = (pred & occ).sum(axis=(1, 2, 3))
        union = (pred | occ).sum(axis=(1, 2, 3))
        return float(np.mean(inter / np.maximum(union, 1)))

    def train_flow(self, arrays, resume, budget):
        s = self.schedule
        latents = self.encode_latents(arrays)
        batches = self._batches(arrays, 2, latents)

        def step_fn(step):
            idx = batches.indices(s.flow_batch)
            cond = self._cond(batches, idx, drop_cond=True)
            return flow_loss(self.bundle, cond, batches.targets(idx), s.loss_weights, self.generator)

        encoder_scale = s.encoder_lr_scale if self.state.get("encoder_pretrained") else 1.0
        groups = [{"params": list(self.bundle.generator.parameters()), "lr_scale": 1.0},
                  {"params": list(self.bundle.condition_encoder.parameters()), "lr_scale": encoder_scale}]
        self._loop("flow", s.flow_steps, groups, s.flow_lr, step_fn, resume, budget)

    def train_distill(self, arrays, resume, budget):
        s = self.schedule
        latents = self.encode_latents(arrays)
        batches = self._batches(arrays, 3, latents)
        teacher = self.teacher = copy.deepcopy(self.bundle.generator).eval()
        if resume and resume.get("teacher") is not None:
            teacher.load_state_dict(resume["teacher"])
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = self.bundle.generator
        levels = list(s.distill_levels)

        def step_fn(step):
            idx = batches.indices(s.distill_batch)
            x1 = batches.targets(idx)
            with torch.no_grad():
                cond = self.bundle.condition_encoder(**batches.condition_inputs(idx, s.p_drop_points))
            fm, parts = flow_loss(self.bundle, cond, x1, s.loss_weights, self.generator)
            # Consistency term: a random level d; times on the grid of 2d so 4-step inference is covered.
            li = int(torch.randint(len(levels), (1,), generator=self.generator))
            d_val = levels[li]
            n_slots = int(round(1.0 / (2 * d_val)))
            slot = torch.randint(n_slots, (cond.shape[0],), generator=self.generator).float().to(cond.device)
            t = slot * 2 * d_val
            d = torch.full((cond.shape[0],), d_val, device=cond.device)
            x0 = {m: randn(v.shape, self.generator, cond.device) for m, v in x1.items()}
            xt = {m: (1 - t.view(-1, 1, 1)) * x0[m] + t.view(-1, 1, 1) * x1[m] for m in x1}
            target = shortcut_target(student, teacher, xt, t, d, cond, s.cfg_strength, smallest=li == 0)
            pred = student(xt, 1000.0 * t, cond, d=1000.0 * 2 * d)
            sc_parts = {m: F.mse_loss(pred[m], target[m]) for m in x1}
            sc = sum(s.loss_weights[m] * sc_parts[m] for m in sc_parts)
            parts = {**{f"fm_{k}": v for k, v in parts.items()}, **{f"sc_{k}": v.item() for k, v in sc_parts.items()}}
            return fm + sc, parts

        self.bundle.condition_encoder.requires_grad_(False)
        self._loop("distill", s.distill_steps, list(student.parameters()), s.distill_lr, step_fn, resume, budget)
        self.bundle.condition_encoder.requires_grad_(True)
        self.teacher = None

    def train_decoder(self, arrays, resume, budget):
        """Fit the structure decoder to what it is given at run time: the distilled 4-step
        sampler's own shape latents for the training photos (no point map, the card's noise
        factor, mirrored as the schedule's hflip says), drawn afresh each step, with each photo's
        true occupancy as the target (per-voxel BCE plus a soft-IoU term).  Why: the VAE decoder
        learned on the encoder's latents of true grids, and a few-step sample is not one.  What
        it learns, measured, is mostly to hedge: +0.03 voxel IoU on four splits, with F1@0.01 and
        the depth worse, so no shipped model uses it (README "A decoder for the flow's own
        samples").  The encoder and so the latent space stay as they are; only the decoder
        moves.  Run it on photos the flow has not trained on, whose samples err as new photos'
        do."""
        s = self.schedule
        cfg = self.bundle.config
        batches = Batches(arrays, None, None, self.seed + 4, self.device, hflip=s.hflip)
        mean = torch.tensor(self.latent_mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(self.latent_std, dtype=torch.float32, device=self.device)
        sampler = self.sampler_settings()  # with the card's noise factor
        self.bundle.condition_encoder.eval(), self.bundle.generator.eval()

        def step_fn(step):
            idx = batches.indices(s.decoder_batch)
            with torch.no_grad():  # the add-on has no point map: never give one here
                cond = self.bundle.condition_encoder(**batches.condition_inputs(idx, p_drop_points=1.0))
            # the noise follows (seed, step), so a resumed run draws what it would have
            x = sample_flow(self.bundle, cond, [self.seed, step], sampler)
            z = torch.from_numpy(x["shape"]).to(self.device) * std + mean
            logits = self.bundle.decoder(tokens_to_grid(z, cfg.vae.latent_resolution))
            return occupancy_loss(logits, batches.occupancy(idx), s.decoder_iou_weight)

        self._loop("decoder", s.decoder_steps, list(self.bundle.decoder.parameters()), s.decoder_lr, step_fn,
                   resume, budget)
        self.bundle.condition_encoder.train(), self.bundle.generator.train()

    def sampler_settings(self) -> dict:
        """The card's sampler section for this run's model."""
        s = self.schedule
        sampler = {"steps": s.shortcut_steps, "shortcut": True, "cfg_strength": 0.0, "cfg_interval": [0.0, 500.0],
                   "rescale_t": s.rescale_t, "time_scale": 1000.0, "reference_steps": s.reference_steps,
                   "reference_cfg_strength": s.cfg_strength}
        if s.shape_noise_scale != 1.0:
            sampler["noise_scale"] = {"shape": s.shape_noise_scale}
        return sampler

    # -- result -------------------------------------------------------------------------------------
    def write_model(self, arrays) -> Path:
        s = self.schedule
        if self.latent_mean is None:
            self.encode_latents(arrays)
        for module in self.bundle.modules().values():
            module.to("cpu")  # the checkpoint loads anywhere
        sampler = self.sampler_settings()
        meta = {
            "data": self.data.source(), "data_meta": {k: self.data_meta.get(k) for k in ("n_train", "n_test", "seed", "resolution", "fov_deg", "version") if k in self.data_meta},
            "train_samples": len(arrays), "seconds": {k: round(v, 1) for k, v in self.state["seconds"].items()},
            "steps_run": dict(self.state.get("steps_run", {})),
            "median_depth": float(np.median(arrays.translation[:, 2])),
            "vae_heldout_viou": self.vae_heldout_viou,
            "probe_heldout_viou": self.probe_heldout_viou,
            "schedule": asdict(s), "schedule_changes": self.schedule_changes, "seed": self.seed,
            **({"init": self.init} if self.init else {}),
            "device": self.device_name(), "torch": torch.__version__,
        }
        path = save_checkpoint(self.out / "model.pt", self.bundle, latent_mean=self.latent_mean, latent_std=self.latent_std,
                               pose_stats=self.pose_stats, sampler=sampler,
                               camera={"fov_deg": self.fov_deg}, meta=meta)
        print(f"train: wrote {path}", file=sys.stderr)
        return path


def stage_values(text: str | None, option: str, stages: tuple[str, ...], cast=float,
                 least: int | None = None) -> dict | None:
    """'A,B,...' (one number per stage, in order; the stages after the first `least`, default
    all, may be left out) -> {stage: value}; None when not given."""
    if not text:
        return None
    least = len(stages) if least is None else least
    kind = "integers" if cast is int else "numbers"
    try:
        values = [cast(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not least <= len(values) <= len(stages):
        names = ",".join(s.upper() for s in stages[:least]) + "".join(f"[,{s.upper()}]" for s in stages[least:])
        count = f"{least} to {len(stages)}" if least < len(stages) else f"{least}"
        raise InputError(f"{option} takes {count} {kind} {names}, got {text!r}.")
    return dict(zip(stages, values))


def schedule_overrides(schedule: Schedule, items: list[str]) -> Schedule:
    """--set KEY=VALUE ... -> a schedule with those fields replaced (value parsed as the field's type)."""
    fields = asdict(schedule)
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise InputError(f"--set takes KEY=VALUE with KEY one of: {', '.join(fields)}; got {item!r}.")
        current = fields[key]
        try:
            if isinstance(current, (dict, list, tuple)):
                value = json.loads(text)
                value = tuple(value) if isinstance(current, tuple) else value
            elif isinstance(current, bool):
                value = {"true": True, "false": False}[text.strip().lower()]
            else:
                value = type(current)(text)
        except (ValueError, KeyError, json.JSONDecodeError):
            raise InputError(f"--set {key}: cannot read {text!r} as {type(current).__name__}.") from None
        changes[key] = value
    return replace(schedule, **changes)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here; use --device cpu.")
    return name


def train_main(args) -> int:
    if args.config not in SCHEDULES:
        raise InputError(f"No training schedule for config '{args.config}'; choose one of: {', '.join(SCHEDULES)}.")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    schedule = SCHEDULES[args.config]
    steps = stage_values(args.steps, "--steps", STAGES, int, least=len(DEFAULT_STAGES))
    if steps:
        schedule = replace(schedule, **{f"{k}_steps": v for k, v in steps.items()},
                           warmup=min(schedule.warmup, max(1, steps["flow"] // 10)))
    schedule = schedule_overrides(schedule, args.set)
    stop_after = args.stop_after
    if stop_after is not None and stop_after <= 0:
        raise InputError(f"--stop-after takes a positive number of minutes, got {stop_after}.")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise InputError(f"--stages: unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}.")
    minutes = stage_values(args.minutes, "--minutes", STAGES, least=len(DEFAULT_STAGES))
    device = pick_device(args.device)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the tiny model's matmuls: TF32 is ample
        torch.backends.cudnn.allow_tf32 = True
    trainer = Trainer(args.config, [Path(d) for d in args.data], Path(args.out), seed=args.seed, schedule=schedule, limit=args.limit,
                      device=device, stop_after_minutes=stop_after, init=args.init)
    try:
        trainer.run(stages, minutes=minutes)
    except Paused as exc:
        print(f"train: stopped after {stop_after:g} min at {exc}; run the same command to resume", file=sys.stderr)
    return 0
