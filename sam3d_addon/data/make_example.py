"""Render the bundled example photo with the data engine (reproducible: fixed seed).

    python -m sam3d_addon.data.make_example [--out examples]

Writes, in the output folder:
  chair.png         RGB 256x256: a procedural chair and a vase beside it on a procedural background
  chair_mask.png    visible mask of the chair (0/255)
  vase_mask.png     visible mask of the vase (0/255)
  example_gt.json   ground truth: per object R, t, s in the PyTorch3D camera frame
                    (p_cam = R^T (s * p_obj) + t), category, mask file; fov_deg; resolution
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sam3d_addon import pose as pose_lib  # noqa: E402
from sam3d_addon.data import backgrounds, camera, scene, shapes  # noqa: E402
from sam3d_addon.data.engine import FOV_DEG  # noqa: E402

SEED = 7
RESOLUTION = 256
RENDER_SAMPLES = 64
REPO = Path(__file__).resolve().parents[2]


def _material(base_srgb, roughness, metallic=0.0, pattern_srgb=None, pattern_scale=8.0):
    material = {"base_color": backgrounds.srgb_to_linear(np.asarray(base_srgb, float)),
                "roughness": roughness, "metallic": metallic}
    if pattern_srgb is not None:
        material["pattern"] = {"color": backgrounds.srgb_to_linear(np.asarray(pattern_srgb, float)),
                               "scale": pattern_scale, "detail": 4.0}
    return material


def build_example(seed: int = SEED, resolution: int = RESOLUTION, render_samples: int = RENDER_SAMPLES) -> dict:
    """Render the example; returns rgb, masks (by name) and the ground truth dict."""
    from sam3d_addon import blender_bridge

    rng = np.random.default_rng(seed)
    chair = shapes.make_shape("chair", rng)
    vase = shapes.make_shape("vase", rng)
    vase.size_m = 0.45

    # the chair at the origin, turned three-quarters towards the camera; the vase to its right
    view_azimuth = math.radians(-70.0)  # camera direction seen from the chair
    to_camera = np.array([math.cos(view_azimuth), math.sin(view_azimuth)])
    side = np.array([-to_camera[1], to_camera[0]])
    chair_spec = scene.resting_spec(chair, (0.0, 0.0), view_azimuth + math.radians(90 + 35), 1,
                                    _material((0.5, 0.27, 0.12), 0.5, pattern_srgb=(0.32, 0.16, 0.06), pattern_scale=6.0))
    vase_xy = -side * 0.75 * chair.size_m + to_camera * 0.15
    vase_spec = scene.resting_spec(vase, vase_xy, 0.3, 2, _material((0.16, 0.36, 0.62), 0.25))

    centre = np.array([*(vase_xy * 0.4), 0.42 * chair.size_m])
    elevation, distance = math.radians(22.0), 2.7 * chair.size_m
    eye = centre + distance * np.array([math.cos(elevation) * to_camera[0], math.cos(elevation) * to_camera[1],
                                        math.sin(elevation)])
    camera_matrix = camera.look_at(eye, centre)
    lighting = {"sun_direction": -np.array([0.35, 0.55, 0.75]), "sun_strength": 3.0,
                "sun_color": np.array([1.0, 0.93, 0.84]), "sun_angle_deg": 6.0,
                "world_color": np.array([0.62, 0.7, 0.85]), "world_strength": 0.6}
    out = blender_bridge.data_render([chair_spec, vase_spec], camera_matrix, FOV_DEG, resolution, lighting,
                                     samples=render_samples, seed=seed, shadow_catcher=True)

    # a room: warm wall over a tiled floor, from the procedural backgrounds
    bg_rng = np.random.default_rng(seed + 1)
    x, y = np.meshgrid((np.arange(resolution) + 0.5) / resolution, (np.arange(resolution) + 0.5) / resolution)
    wall = np.array([0.86, 0.8, 0.7]) * (0.9 + 0.1 * backgrounds._fractal_noise(bg_rng, resolution))[..., None]
    tiles = ((np.floor(x * 9 + y * 3) + np.floor(y * 14)) % 2)[..., None]
    floor = np.array([0.55, 0.5, 0.45]) * (1 - 0.12 * tiles) * (0.75 + 0.25 * y[..., None])
    horizon = 0.42
    background = np.where((y < horizon)[..., None], wall, floor)
    background = backgrounds.ndimage.gaussian_filter(background, sigma=(0.8, 0.8, 0))

    rgb = backgrounds.composite(out["rgba"], background, exposure=1.0)

    gt = {"fov_deg": FOV_DEG, "resolution": [resolution, resolution], "image": "chair.png",
          "camera_frame": "PyTorch3D: +x left, +y up, +z forward; p_cam = R^T (s * p_obj) + t",
          "canonical_frame": "Z-up object, bounding-box centred, largest extent 1",
          "camera_matrix_world_blender": out["camera_matrix"].tolist(), "objects": []}
    masks = {}
    for spec, name, index, matrix in zip((chair_spec, vase_spec), ("chair", "vase"), (1, 2), out["object_matrices"]):
        R, t, s = pose_lib.object_matrix_to_camera_pose(matrix, out["camera_matrix"])
        masks[name] = out["index"] == index
        gt["objects"].append({"name": name, "category": spec["category"], "mask": f"{name}_mask.png",
                              "R": R.tolist(), "t": t.tolist(), "s": s.tolist(), "size_m": float(spec["scale"]),
                              "object_matrix_world_blender": matrix.tolist(),
                              "visible_pixels": int(masks[name].sum())})
    return {"rgb": rgb, "masks": masks, "gt": gt}


def main(argv=None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description="Render the bundled example photo.")
    parser.add_argument("--out", default=str(REPO / "examples"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    example = build_example()
    Image.fromarray(example["rgb"]).save(out / "chair.png", optimize=True)
    for name, mask in example["masks"].items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}_mask.png", optimize=True)
    (out / "example_gt.json").write_text(json.dumps(example["gt"], indent=1) + "\n")
    print(f"wrote {out}/chair.png, chair_mask.png, vase_mask.png, example_gt.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
