"""The 3Dfy pipeline: photo + masks -> meshes placed in Blender's world, plus the matched camera.

A small predictor API in the spirit of segment-anything's: build it once (sessions are created
lazily and cached), call `run` as often as you like, `release` to free device memory.  The
sampler lives in `sampler.py`, the pose/axis conversion in `pose.py`, the model contract in
`contract.py`; this module only strings them together.  It never imports bpy.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import pose as pose_mod
from .box_align import align_pose_to_mask
from .contract import DEFAULT_TEXTURE_MODEL, MAX_SAMPLES, POSE_DIMS, available_models, is_sample_count, load_card
from .errors import Cancelled, InputError, ModelError
from .meshing import occupancy_to_mesh
from .preprocess import Photo, prepare_inputs, read_mask, read_photo
from .runtime import SessionCache
from .sampler import FlowSampler, initial_noise

# The Blender camera's sensor width; the lens is derived from the focal length in pixels.
SENSOR_WIDTH_MM = 36.0
# Baked texture sizes run() accepts (pixels per side).
TEXTURE_SIZE_RANGE = (64, 8192)

ProgressFn = Callable[[float, str], None]


@dataclass
class ObjectResult:
    name: str
    mask: str | None
    vertices: np.ndarray  # [V,3] float32, canonical object frame
    faces: np.ndarray  # [F,3] int32
    matrix_world: np.ndarray  # [4,4] Blender world
    rotation: np.ndarray  # [3,3] R in the model camera frame
    translation: np.ndarray  # [3]
    scale: np.ndarray  # [3]
    occupancy: np.ndarray  # [R,R,R] bool
    colors: np.ndarray | None = None  # [V,3|4] float32 in [0,1], when a texture stage ran
    gaussians: dict | None = None  # texture.stage.GAUSSIAN_KEYS -> arrays (canonical frame)
    uvs: np.ndarray | None = None  # [F*3,2] float32 per face corner (faces in order, v up), when baked
    texture: np.ndarray | None = None  # [S,S,3] float32 sRGB in [0,1], row 0 at the top, when baked


@dataclass
class CameraResult:
    matrix_world: np.ndarray
    lens_mm: float
    sensor_width_mm: float
    resolution: tuple[int, int]  # (width, height)
    image_path: str | None
    image: np.ndarray  # HxWx3 uint8
    focal_source: str  # "exif" or "model"


@dataclass
class Result:
    objects: list[ObjectResult]
    camera: CameraResult
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    output: str = "mesh"  # what run() was asked for: "mesh", "gaussians" or "both"


def check_samples(samples) -> int:
    """How many samples to average, as an int; raises InputError outside 1..MAX_SAMPLES."""
    if not is_sample_count(samples):
        raise InputError(f"samples must be a whole number from 1 to {MAX_SAMPLES}, not {repr(samples)[:40]}.")
    return int(samples)


class Sam3DPipeline:
    """3Dfy objects in a photo with one model on one device."""

    def __init__(self, model: str | Path = "tiny", device: str = "auto",
                 notice: Callable[[str], None] | None = None, texture_model: str | Path | None = "auto"):
        """`texture_model`: a texture model name or path; "auto" uses the shipped default when it is
        installed (untextured grey meshes otherwise); None turns the texture stage off."""
        self.card = load_card(model)
        if self.card.kind != "geometry":
            raise ModelError(f"Model '{self.card.name}' is a texture model; pick a geometry model for 3Dfy.")
        self.sessions = SessionCache(self.card, device, notice=notice)
        self.device_request, self.notice = device, notice
        if texture_model == "auto":
            texture_model = DEFAULT_TEXTURE_MODEL if DEFAULT_TEXTURE_MODEL in available_models() else None
        self.texture_model = texture_model
        self._texture = None

    @property
    def texture(self):
        """The texture stage (created on first use), or None when off."""
        if self._texture is None and self.texture_model is not None:
            from .texture.stage import TextureStage

            self._texture = TextureStage(self.texture_model, self.device_request, notice=self.notice)
        return self._texture

    @property
    def device(self) -> str:
        return self.sessions.active_device

    def release(self) -> None:
        self.sessions.release()
        if self._texture is not None:
            self._texture.release()

    # -- stages ---------------------------------------------------------------------------------
    def encode(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions.stage("condition_encoder")(inputs)["cond"]

    def velocity(self, x: dict[str, np.ndarray], t: np.ndarray, d: np.ndarray, cond: np.ndarray) -> dict:
        feeds = dict(x)
        feeds.update(t=t.astype(np.float32), d=d.astype(np.float32), cond=cond)
        out = self.sessions.stage("velocity")(feeds)
        return {k[2:]: v for k, v in out.items()}  # strip "v_"

    def decode(self, shape_latent: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.card.latent_mean, np.float32)
        std = np.asarray(self.card.latent_std, np.float32)
        return self.sessions.stage("structure_decoder")({"shape": shape_latent * std + mean})["logits"]

    def generate(self, inputs: dict[str, np.ndarray], seed: int | None = 0, steps: int | None = None,
                 cfg_strength: float | None = None, shortcut: bool | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None, timings: dict | None = None,
                 mask: np.ndarray | None = None, samples: int | None = None) -> dict:
        """Model inputs (batch 1) -> occupancy logits and the decoded pose in the camera frame.

        With `mask` (the photo's full-size object mask) the pose is aligned with the mask
        (`box_align`: the turn about the up axis, the scale and the sideways place, in the card's
        camera); `flow_pose` keeps the sampled (R, t, s).

        `samples` (default: the card's `sampler.samples`, else 1) draws that many samples in one
        batch and returns the mean of their occupancy logits, with the first sample's pose.  Why:
        each sample commits to one reading of the unseen parts, and their mean keeps what they
        agree on (README, "Mean of samples").  The first sample is the one `samples=1` returns."""
        samples = check_samples(self.card.sampler.get("samples", 1) if samples is None else samples)
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        cond = self.encode(inputs)
        t1 = time.perf_counter()
        sampler = FlowSampler.from_settings(self.card.sampler, steps, cfg_strength, shortcut)
        shapes = {"shape": (1, self.card.shape_tokens, self.card.shape_channels)}
        shapes.update({m: (1, 1, n) for m, n in POSE_DIMS.items()})
        scale = self.card.sampler.get("noise_scale")
        # Sample k > 0 draws from (seed, k): its own stream, apart from every other seed's.
        draws = [initial_noise(shapes, seed if k == 0 or seed is None else [seed, k], scale) for k in range(samples)]
        x0 = {m: np.concatenate([d[m] for d in draws]) for m in shapes}
        x = sampler.sample(self.velocity, x0, np.repeat(cond, samples, axis=0), progress=progress, cancel=cancel)
        t2 = time.perf_counter()
        logits = self.decode(x["shape"])[:, 0].mean(axis=0)
        R, t, s = pose_mod.decode_pose({m: x[m][0, 0] for m in POSE_DIMS}, self.card.pose)
        flow_pose = (R, t, s)
        if mask is not None:
            R, t, s = align_pose_to_mask(logits > self.card.occupancy_threshold, R, t, s, mask,
                                         self.card.camera_fov_deg)
        t3 = time.perf_counter()
        for key, dt in (("encode", t1 - t0), ("sample", t2 - t1), ("decode", t3 - t2)):
            timings[key] = timings.get(key, 0.0) + dt
        return {"logits": logits, "R": R, "t": t, "s": s, "flow_pose": flow_pose}

    # -- the whole job --------------------------------------------------------------------------
    def run(self, image, masks, names: list[str] | None = None, steps: int | None = None,
            seed: int | None = 0, cfg_strength: float | None = None,
            progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
            shortcut: bool | None = None, fit_layout: bool = False, box_align: bool = True, output: str = "mesh",
            bake: bool = True, photo_projection: bool = False, delight: float = 0.0,
            texture_size: int = 512, samples: int | None = None) -> Result:
        """3Dfy every mask of a photo.  Validates all inputs before any model work.

        `fit_layout` runs the layout post-optimisation (`refine.layout`): each object's
        translation, scale and yaw are adjusted so its silhouette through the matched camera fits
        its mask.  Without a point map the model's depth and size are ambiguous; this pins them to
        what the photo shows.  It costs ~30 s per object on a CPU.  Off here, so the API returns
        the model's (box-aligned) pose unless asked; the CLI and the sidebar turn it on by default
        (measured on the example chair with tiny 0.2.0 and box alignment, seeds 0-3: silhouette
        IoU 0.54-0.67 without it, 0.59-0.64 with it; the flow's own pose: 0.27-0.32).

        `box_align` (on by default) sets each sampled pose's scale and sideways place so that the
        object's projected box matches its mask's box, choosing its turn about the up axis by how
        well its silhouette then fills the mask (`box_align.py`; ~50-70 ms).

        `samples`: how many samples each object's shape averages (`generate`; default: the card's).

        `output`: "mesh", "gaussians" or "both".  With a texture stage the mesh is its refined,
        coloured mesh (2x the occupancy resolution) and the Gaussians come from it too; without one
        the mesh is the grey occupancy surface and Gaussians cannot be made.

        `bake` (on by default): once the poses are final (after the layout fit), every coloured mesh
        is UV-unwrapped (xatlas) and its vertex colours baked into a `texture_size`^2 texture
        (`ObjectResult.uvs` / `.texture`; `.colors` stays the model's).  `photo_projection` (off by
        default) also takes the visible side's colours from the photo, optionally de-lit with
        `delight` strength in [0, 1]; see `texture.bake.bake_object_texture`.  It is off because it
        is only as good as the pose: projected photo pixels land on the surface the pose puts
        there, and the tiny geometry model's silhouettes overlap their masks poorly (IoU ~0.2), so
        with it the photo would be painted onto the wrong parts of the mesh.
        """
        if output not in ("mesh", "gaussians", "both"):
            raise InputError(f"output must be mesh, gaussians or both, not {output!r}.")
        if output != "mesh" and self.texture_model is None:
            raise InputError("Gaussians need a texture model; none is installed (use output 'mesh').")
        try:
            delight = float(delight)
            texture_size = int(texture_size)
        except (TypeError, ValueError):
            raise InputError("delight must be a number in [0, 1] and texture_size a whole number of pixels.") from None
        if not 0.0 <= delight <= 1.0:
            raise InputError(f"delight strength must be in [0, 1], not {delight:g}.")
        lo, hi = TEXTURE_SIZE_RANGE
        if not lo <= texture_size <= hi:
            raise InputError(f"texture size must be {lo} to {hi} pixels, not {texture_size}.")
        if samples is not None:
            check_samples(samples)
        if bake and photo_projection and self.texture_model is None:
            raise InputError("Photo projection needs the texture stage; no texture model is installed or it is off.")
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        photo = read_photo(image)
        masks = list(masks)
        if not masks:
            raise InputError("No mask given; paint or choose at least one mask.")
        if names is None:
            names = [Path(m).stem if not isinstance(m, np.ndarray) else f"object_{i + 1}" for i, m in enumerate(masks)]
        mask_arrays = [read_mask(m, photo.size, name=n) for m, n in zip(masks, names)]
        timings["read"] = time.perf_counter() - t_start

        camera, focal_ratio = self.match_camera(photo)
        objects = []
        coarse_meshes = []  # per object, the occupancy surface: what the layout fit projects
        n = len(mask_arrays)
        # The bar: sampling, then the layout fit, then baking (a twentieth).  On a CPU the fit takes
        # ~30 s per object against ~1-3 s of sampling and texturing, so it gets most of the bar.
        bake_share = 0.05 if bake and self.texture_model is not None and output != "gaussians" else 0.0
        layout_share = 0.6 if fit_layout else 0.0
        span = 1.0 - layout_share - bake_share
        for i, (mask, name, src) in enumerate(zip(mask_arrays, names, masks)):
            def step_progress(k, total, i=i):
                if progress:
                    progress(span * (i + 0.1 + 0.8 * k / total) / n, f"{name}: step {k}/{total}")
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(span * i / n, f"{name}: encoding")
            inputs = prepare_inputs(photo.rgb, mask, self.card.input_size, self.card.crop_box_factor)
            out = self.generate(inputs, seed=None if seed is None else seed + i, steps=steps,
                                cfg_strength=cfg_strength, shortcut=shortcut,
                                progress=step_progress, cancel=cancel, timings=timings,
                                mask=mask if box_align else None, samples=samples)
            t_mesh = time.perf_counter()
            occupancy = out["logits"] > self.card.occupancy_threshold
            verts, faces = occupancy_to_mesh(out["logits"], level=self.card.occupancy_threshold)
            timings["mesh"] = timings.get("mesh", 0.0) + time.perf_counter() - t_mesh
            coarse_meshes.append((verts, faces))
            colors = gaussians = None
            if self.texture is not None and occupancy.any():
                if progress:
                    progress(span * (i + 0.9) / n, f"{name}: texture")
                tex_inputs = prepare_inputs(photo.rgb, mask, self.texture.card.input_size, self.texture.card.crop_box_factor)
                tex = self.texture.run(occupancy, tex_inputs, output=output, seed=None if seed is None else seed + i,
                                       cancel=cancel)
                for key, dt in tex.timings.items():
                    timings[key] = timings.get(key, 0.0) + dt
                if tex.vertices is not None and len(tex.vertices):
                    verts, faces, colors = tex.vertices, tex.faces, tex.colors
                gaussians = tex.gaussians
            t, s = pose_mod.retarget_to_focal(out["t"], out["s"], focal_ratio)
            objects.append(ObjectResult(
                name=name, mask=None if isinstance(src, np.ndarray) else str(src),
                vertices=verts, faces=faces,
                matrix_world=pose_mod.camera_pose_to_object_matrix(out["R"], t, s, camera.matrix_world),
                rotation=out["R"], translation=t, scale=s,
                occupancy=occupancy, colors=colors, gaussians=gaussians,
            ))
        if fit_layout and objects:
            if progress:
                progress(span + 0.2 * layout_share, "fitting the layout to the masks")
            from .refine.layout import fit_layout as fit

            t_fit = time.perf_counter()
            def fit_progress(fraction, text):
                if progress:
                    progress(span + layout_share * (0.2 + 0.8 * fraction), f"fitting the layout: {text}")

            # The fit projects each object hundreds of times; it uses the occupancy surface, which has
            # the refined mesh's outline in the same canonical frame at a quarter of its triangles
            # (measured on the example chair: 112 s with the refined mesh, ~30 s with this one).
            proxies = [dataclasses.replace(o, vertices=v, faces=f) for o, (v, f) in zip(objects, coarse_meshes)]
            fitted = fit(proxies, camera, {o.name: m for o, m in zip(objects, mask_arrays)}, seed=seed or 0,
                         cancel=cancel, progress=fit_progress)
            for o in objects:
                if o.name in fitted:
                    o.matrix_world = fitted[o.name]
                    o.rotation, o.translation, o.scale = pose_mod.object_matrix_to_camera_pose(o.matrix_world, camera.matrix_world)
            timings["layout"] = time.perf_counter() - t_fit
        if bake:
            self._bake(objects, mask_arrays, photo, camera, photo_projection, delight, texture_size,
                       progress, cancel, 1.0 - bake_share, timings)
        if progress:
            progress(1.0, "done")
        timings["total"] = time.perf_counter() - t_start
        return Result(objects=objects, camera=camera, timings=timings, device=self.device, output=output)

    @staticmethod
    def _bake(objects, mask_arrays, photo, camera, photo_projection, delight, texture_size, progress, cancel,
              start, timings) -> None:
        """The bake step: UVs + a texture for every coloured mesh, with the final poses."""
        from .texture.bake import bake_object_texture

        todo = [(o, m) for o, m in zip(objects, mask_arrays) if o.colors is not None and len(o.faces)]
        # The focal length in pixels the camera was matched with (lens_mm = f_px * sensor / longer side).
        focal_px = camera.lens_mm * max(camera.resolution) / camera.sensor_width_mm
        for k, (o, mask) in enumerate(todo):
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(start + (1.0 - start) * k / len(todo), f"{o.name}: baking texture")
            t0 = time.perf_counter()
            projection = {}
            if photo_projection:
                projection = dict(photo=photo.rgb, mask=mask, rotation=o.rotation, translation=o.translation,
                                  scale=o.scale, focal_px=focal_px, delight_strength=delight)
            baked = bake_object_texture(o.vertices, o.faces, o.colors, texture_size, **projection)
            o.uvs, o.texture = baked.uvs, baked.texture
            timings["bake"] = timings.get("bake", 0.0) + time.perf_counter() - t0

    def match_camera(self, photo: Photo) -> tuple[CameraResult, float]:
        """The Blender camera for the photo, and f_photo / f_train (see `pose.retarget_to_focal`)."""
        w, h = photo.size
        longer = max(w, h)
        if photo.focal_px:
            focal_px, source = photo.focal_px, "exif"
        else:
            focal_px, source = pose_mod.fov_to_focal_px(self.card.camera_fov_deg, longer), "model"
        ratio = pose_mod.focal_ratio(focal_px, longer, self.card.camera_fov_deg)
        cam = CameraResult(
            matrix_world=pose_mod.default_camera_matrix_world(),
            lens_mm=float(focal_px * SENSOR_WIDTH_MM / longer), sensor_width_mm=SENSOR_WIDTH_MM,
            resolution=(w, h), image_path=photo.path, image=photo.rgb, focal_source=source,
        )
        return cam, ratio
