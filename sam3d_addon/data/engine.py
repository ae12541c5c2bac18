"""The synthetic data engine: `sam3d data --out DIR --n N` (render-paste training data).

One sample = one procedural target object on an invisible ground, an optional occluder, random
material and lighting, rendered by Cycles (CPU, few samples, no denoising, film transparent)
with object-index and depth passes, pasted over a procedural background.  Saved as
`DIR/{train,test}/NNNNNN.npz` (keys in SAMPLE_KEYS, documented in dataset.py) plus
`DIR/meta.json`.  With `--texture` (texture=True) each sample also holds the target's albedo
seen from texture_views.N_VIEWS cameras and the albedo of its surface voxels (TEXTURE_KEYS,
see texture_views.py and dataset.py), rendered in a second, unlit Cycles scene.

Determinism: everything random in a sample comes from one numpy Generator seeded with
SeedSequence([seed, split_id, index]) (and Cycles' own seed derived from it), so a sample depends
only on (seed, split, index): re-running reproduces it, the splits never share a sample
whatever N is, and an interrupted run resumes by skipping the files already written.

The bridge (bpy) is imported lazily, inside the functions that render.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from .. import pose as pose_lib
from ..errors import InputError
from . import backgrounds, camera, occupancy, scene, shapes, texture_views

VERSION = 1
FORMAT = "sam3d-blender/data"
FOV_DEG = 50.0
SPLITS = {"train": 0, "test": 1}
DEFAULT_RESOLUTION = 128
DEFAULT_RENDER_SAMPLES = 10
OCCLUDER_PROBABILITY = 0.45  # a few placements fail: about 40 % of samples end up occluded

SAMPLE_KEYS = ("rgb", "mask", "amodal_mask", "depth", "pointmap", "occupancy", "occupancy_shape",
               "rotation", "translation", "scale", "vertices", "faces", "category", "seed", "occluded",
               "fov_deg")
TEXTURE_KEYS = texture_views.TEXTURE_KEYS  # added by --texture


MIN_VISIBLE_PIXELS = 16
MIN_VISIBLE_FRACTION = 0.2
MAX_ATTEMPTS = 5


def sample_seed_sequence(seed: int, split: str, index: int, attempt: int = 0) -> np.random.SeedSequence:
    """The sample's seed; a re-roll (attempt > 0, when the target ended up nearly invisible)
    appends the attempt number."""
    entropy = [int(seed), SPLITS[split], int(index)] + ([int(attempt)] if attempt else [])
    return np.random.SeedSequence(entropy)


def sample_path(out_dir, split: str, index: int) -> Path:
    return Path(out_dir) / split / f"{index:06d}.npz"


def make_sample(seed: int, split: str, index: int, resolution: int = DEFAULT_RESOLUTION,
                render_samples: int = DEFAULT_RENDER_SAMPLES, threads: int = 0,
                occluder_probability: float = OCCLUDER_PROBABILITY, texture: bool = False) -> dict:
    """Generate one sample (arrays and scalars, as saved); depends only on (seed, split, index)
    and the settings (resolution, render samples; occluder_probability is for tests).
    texture: also record the texture ground truth (TEXTURE_KEYS); the other keys are the same
    with or without it.

    A target that ends up nearly invisible (fewer than MIN_VISIBLE_PIXELS pixels or less than
    MIN_VISIBLE_FRACTION of its silhouette) is re-rolled with the next attempt's seed.
    """
    for attempt in range(MAX_ATTEMPTS):
        sample, context = _make_sample_attempt(seed, split, index, attempt, resolution, render_samples,
                                               threads, occluder_probability)
        if sample["mask"].sum() >= MIN_VISIBLE_PIXELS and sample["visible_fraction"] >= MIN_VISIBLE_FRACTION:
            break
    if texture:
        sample.update(texture_ground_truth(*context, threads=threads))
    return sample


def texture_ground_truth(target_spec: dict, grid: np.ndarray, photo_camera: np.ndarray,
                         object_matrix: np.ndarray, sample_seed: int, threads: int = 0) -> dict:
    """The texture keys of a sample: albedo views of the target alone and its surface voxels'
    albedo (texture_views.py), from the target's scene spec, canonical occupancy grid, and the
    photo camera / object matrices Blender evaluated."""
    from .. import blender_bridge  # bpy lives there only

    cameras = texture_views.view_cameras(target_spec["vertices"], object_matrix, photo_camera, FOV_DEG)
    views = blender_bridge.data_render_albedo_views(
        target_spec, cameras, FOV_DEG, texture_views.VIEW_RESOLUTION, samples=texture_views.VIEW_SAMPLES,
        seed=(sample_seed + 1) & 0x7FFFFFFF, threads=threads)
    alpha = np.rint(views["alpha"] * 255).astype(np.uint8)
    albedo_srgb = backgrounds.linear_to_srgb(views["albedo"])
    albedo_u8 = np.where(alpha[..., None] > 0, np.rint(albedo_srgb * 255), 0).astype(np.uint8)
    # the voxel albedo comes from the same cameras at a finer resolution (see texture_views.py)
    fine = blender_bridge.data_render_albedo_views(
        target_spec, cameras, FOV_DEG, texture_views.VOXEL_VIEW_RESOLUTION, samples=texture_views.VIEW_SAMPLES,
        seed=(sample_seed + 2) & 0x7FFFFFFF, threads=threads)
    coords, voxel_linear, observed = texture_views.voxel_albedo(
        grid, fine["albedo"], np.rint(fine["alpha"] * 255), fine["depth"], fine["camera_matrices"],
        fine["object_matrix"], FOV_DEG)
    return {
        "tex_views_albedo": albedo_u8,
        "tex_views_alpha": alpha,
        "tex_views_camera": views["camera_matrices"].astype(np.float64),
        "tex_views_depth": np.where(alpha > 0, views["depth"], np.inf).astype(np.float32),
        "tex_voxel_coords": coords.astype(np.int16),
        "tex_voxel_albedo": np.rint(backgrounds.linear_to_srgb(voxel_linear) * 255).astype(np.uint8),
        "tex_voxel_observed": observed.astype(bool),
    }


def sample_scene_spec(seed: int, split: str, index: int, attempt: int = 0,
                      occluder_probability: float = OCCLUDER_PROBABILITY):
    """(target shape, scene spec, the sample's own seed, the photo's Generator) of one sample
    attempt: everything but the renders (spec.objects[0]["material"] is the target's material)."""
    seq = sample_seed_sequence(seed, split, index, attempt)
    sample_seed = int(seq.generate_state(1, dtype=np.uint32)[0])
    # independent streams: the object and the scene do not change with the image resolution
    shape_rng, scene_rng, photo_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    target = shapes.random_shape(shape_rng)
    spec = scene.sample_scene(scene_rng, target, FOV_DEG, occluder_probability)
    return target, spec, sample_seed, photo_rng


def _make_sample_attempt(seed, split, index, attempt, resolution, render_samples, threads,
                         occluder_probability) -> tuple[dict, tuple]:
    from .. import blender_bridge  # bpy lives there only

    target, spec, sample_seed, photo_rng = sample_scene_spec(seed, split, index, attempt, occluder_probability)
    grid = occupancy.occupancy_grid(target.vertices, target.faces)
    background = backgrounds.random_background(photo_rng, resolution)
    exposure_goal, grain = photo_rng.uniform(0.7, 1.0), photo_rng.uniform(0.0, 0.012)

    out = blender_bridge.data_render(spec.objects, spec.camera_matrix, FOV_DEG, resolution, spec.lighting,
                                     samples=render_samples, seed=sample_seed & 0x7FFFFFFF,
                                     shadow_catcher=spec.shadow_catcher, threads=threads)
    # pose from the matrices Blender evaluated (the one conversion in pose.py)
    R, t, s = pose_lib.object_matrix_to_camera_pose(out["object_matrices"][0], out["camera_matrix"])
    mask = out["index"] == 1
    points = camera.canonical_to_p3d_camera(target.vertices, R, t, s)
    # amodal: the target's silhouette through the same camera (the pixels the renderer saw are
    # added so that amodal >= visible holds exactly, also where a pixel centre sits on an edge)
    amodal = camera.silhouette(points, target.faces, FOV_DEG, resolution) | mask
    depth = out["depth"]

    # exposure: put the bright end of the rendered objects near white, with some spread
    rgba = out["rgba"]
    objects = out["index"] > 0
    if objects.any():
        luminance = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
        bright = float(np.percentile(luminance[objects], 95))
        exposure = float(np.clip(exposure_goal / max(bright, 1e-4), 0.25, 4.0))
    else:
        exposure = 1.0
    rgb = backgrounds.composite(rgba, background, exposure, grain, photo_rng)

    visible_fraction = float(mask.sum() / max(amodal.sum(), 1))
    packed, grid_shape = occupancy.pack_occupancy(grid)
    context = (spec.objects[0], grid, out["camera_matrix"], out["object_matrices"][0], sample_seed)
    return {
        "rgb": rgb,
        "mask": mask,
        "amodal_mask": amodal,
        "depth": depth.astype(np.float32),
        "pointmap": camera.pointmap_from_depth(depth, FOV_DEG),
        "occupancy": packed,
        "occupancy_shape": grid_shape,
        "rotation": R.astype(np.float32),
        "translation": t.astype(np.float32),
        "scale": s.astype(np.float32),
        "vertices": target.vertices.astype(np.float32),
        "faces": target.faces.astype(np.int32),
        "category": np.array(target.category),
        "seed": np.int64(sample_seed),
        "occluded": np.bool_(len(spec.objects) > 1 and visible_fraction < 0.98),
        "fov_deg": np.float32(FOV_DEG),
        # extras
        "visible_fraction": np.float32(visible_fraction),
        "occluder_category": np.array(spec.occluder_category),
        "split": np.array(split),
        "index": np.int64(index),
        "attempt": np.int64(attempt),
        "base_seed": np.int64(seed),
        "size_m": np.float32(target.size_m),
        "camera_matrix_world": out["camera_matrix"].astype(np.float64),
        "object_matrix_world": out["object_matrices"][0].astype(np.float64),
        "focal_px": np.float32(camera.focal_px(FOV_DEG, resolution)),
    }, context


def save_sample(path, sample: dict) -> None:
    """Write atomically (temporary file, then rename) so that a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **sample)
    os.replace(tmp, path)


def is_valid_sample(path, texture: bool = False) -> bool:
    """A complete sample file: a readable zip holding every documented key (and the texture
    keys for a texture data set).  (Files are written atomically, so a listing is enough; a
    cut-off file has no readable zip directory.)"""
    wanted = set(SAMPLE_KEYS) | (set(TEXTURE_KEYS) if texture else set())
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            return wanted <= names
    except (OSError, zipfile.BadZipFile):
        return False


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise InputError(f"--{name} must be an integer, got {value!r}.") from None
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise InputError(f"--{name} must be {bound}, got {value}.")
    return value


def _worker(task):
    """Process-pool entry: generate and save one sample; returns (split, index, seconds)."""
    out_dir, seed, split, index, resolution, render_samples, threads, texture = task
    start = time.perf_counter()
    save_sample(sample_path(out_dir, split, index),
                make_sample(seed, split, index, resolution, render_samples, threads, texture=texture))
    return split, index, time.perf_counter() - start


def generate(out_dir, n_train: int, n_test: int = 64, seed: int = 0, resolution: int = DEFAULT_RESOLUTION,
             progress=None, workers: int = 1, render_samples: int = DEFAULT_RENDER_SAMPLES,
             texture: bool = False) -> dict:
    """Generate (or complete) a dataset in out_dir; returns the meta dict also saved as meta.json.

    progress: optional callable(done, total, message) called after each sample.
    workers: processes rendering in parallel (each imports bpy; Cycles threads are shared out).
    texture: also record the texture ground truth (TEXTURE_KEYS) in every sample.
    """
    texture = bool(texture)
    n_train = _check_int("n", n_train, 0)
    n_test = _check_int("n-test", n_test, 0)
    seed = _check_int("seed", seed, 0, 2 ** 63 - 1)
    resolution = _check_int("resolution", resolution, 16, 2048)
    workers = _check_int("workers", workers, 1, 256)
    render_samples = _check_int("samples", render_samples, 1, 4096)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory.")
    meta_path = out / "meta.json"
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if "format" in old:  # data sets from before --texture have no "texture" entry
            old.setdefault("texture", False)
        for key, value in (("seed", seed), ("resolution", resolution), ("texture", texture)):
            if key in old and old[key] != value:
                raise InputError(f"{out} holds data made with {key} {old[key]}, not {value}; "
                                 "use another --out or the same settings.")
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)

    wanted = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    todo = [(split, i) for split, i in wanted if not is_valid_sample(sample_path(out, split, i), texture)]
    skipped = len(wanted) - len(todo)
    total = len(wanted)
    done = skipped
    start = time.perf_counter()
    seconds = []

    def report(split, index, dt):
        nonlocal done
        done += 1
        seconds.append(dt)
        if progress is not None:
            elapsed = time.perf_counter() - start
            rate = elapsed / len(seconds)
            eta = rate * (total - done)
            progress(done, total, f"{split}/{index:06d} {rate:.2f} s/sample, eta {eta:.0f} s")

    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    tasks = [(str(out), seed, split, i, resolution, render_samples, threads, texture) for split, i in todo]
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            report(*_worker(task))
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: bpy is not fork-safe
        with ctx.Pool(workers) as pool:
            for result in pool.imap_unordered(_worker, tasks):
                report(*result)

    elapsed = time.perf_counter() - start
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "seed_rule": "numpy.random.SeedSequence([seed, split_id, index]) (+ [attempt] on a re-roll of a "
                     "nearly invisible target); split_id: train 0, test 1",
        "splits": SPLITS,
        "resolution": resolution,
        "fov_deg": FOV_DEG,
        "fov_spans": "longer image side (square images)",
        "camera_frame": "PyTorch3D: +x left, +y up, +z forward; p_cam = R^T (s * p_obj) + t",
        "grid": {"resolution": occupancy.GRID_RESOLUTION, "bounds": [-0.5, 0.5],
                 "cell_centres": "(c + 0.5) / R - 0.5", "axes": "x, y, z = array dims 0, 1, 2", "solid": True},
        "render": {"engine": "CYCLES", "device": "CPU", "samples": render_samples, "denoise": False,
                   "occluder_probability": OCCLUDER_PROBABILITY},
        "categories": list(shapes.CATEGORIES),
        "keys": list(SAMPLE_KEYS) + (list(TEXTURE_KEYS) if texture else []),
        "texture": texture,
        "generated": len(todo),
        "skipped_existing": skipped,
        "generation_seconds": round(elapsed, 3),
        "seconds_per_sample": round(elapsed / len(todo), 4) if todo else None,
        "workers": workers,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if texture:
        meta["texture_views"] = texture_views.settings()
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def add_data_arguments(parser) -> None:
    """The `sam3d data` options, for the CLI's argparse subparser."""
    parser.add_argument("--out", required=True, help="output directory (resumes if it exists)")
    parser.add_argument("--n", type=int, required=True, help="number of training samples")
    parser.add_argument("--n-test", type=int, default=64, help="number of held-out samples (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, help="image size in pixels (default 128)")
    parser.add_argument("--samples", type=int, default=DEFAULT_RENDER_SAMPLES, help="Cycles samples per pixel (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="parallel render processes (default 1)")
    parser.add_argument("--texture", action="store_true",
                        help="also record texture ground truth: albedo views and surface-voxel albedo")


def main_data(args=None, **kwargs) -> int:
    """Run the data engine from parsed CLI args (argparse Namespace) or keyword arguments.

    Keys: out, n, n_test (64), seed (0), resolution (128), samples (10), workers (1), texture (False).
    Prints progress to stderr and a one-line summary to stdout; returns the exit status 0.
    Bad arguments raise InputError (one line).
    """
    opts = dict(vars(args)) if args is not None else {}
    opts.update(kwargs)
    if not opts.get("out"):
        raise InputError("sam3d data needs --out DIR.")
    if opts.get("n") is None:
        raise InputError("sam3d data needs --n N (number of training samples).")

    def progress(done, total, message):
        print(f"\rdata {done}/{total} {message}   ", end="" if done < total else "\n", file=sys.stderr, flush=True)

    meta = generate(opts["out"], opts["n"], opts.get("n_test", 64), opts.get("seed", 0),
                    opts.get("resolution", DEFAULT_RESOLUTION), progress, opts.get("workers", 1),
                    opts.get("samples", DEFAULT_RENDER_SAMPLES), texture=bool(opts.get("texture", False)))
    per = meta["seconds_per_sample"]
    print(f"data: {meta['n_train']} train + {meta['n_test']} test samples in {opts['out']} "
          f"({meta['generated']} generated, {meta['skipped_existing']} already there"
          + (f", {per:.2f} s/sample" if per else "") + ")")
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m sam3d_addon.data.engine --out D --n N`
    import argparse

    _parser = argparse.ArgumentParser(prog="sam3d data", description=__doc__.split("\n")[0])
    add_data_arguments(_parser)
    try:
        raise SystemExit(main_data(_parser.parse_args()))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
