"""Scene sampling for one synthetic sample (NumPy only; the bridge turns it into a Blender scene).

World: Blender's, Z-up, the target resting on an invisible ground plane z = 0 at the origin.
Camera: fixed field of view, elevation 5-45 degrees, distance chosen so that the target's
projected extent is 15-60 % of the frame, aimed off-centre by a random amount that keeps it
inside the frame, with a small roll.  In some samples an occluder (another procedural
object) stands on the ground between the camera and the target; its lateral offset is searched
so that the predicted visible fraction of the target (from projected silhouettes) meets a
random goal in [0.4, 0.9].  Lighting: one sun and a uniformly coloured world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..pose import rotation_z
from . import backgrounds, camera, shapes

ELEVATION_DEG = (5.0, 45.0)
FRAME_FILL = (0.15, 0.6)  # larger side of the target's image bounding box / frame size
VISIBLE_FRACTION = (0.4, 0.9)  # goal for occluded targets
ROLL_DEG = 3.0
_SEARCH_RESOLUTION = 64  # silhouettes for the occluder placement search


@dataclass
class SceneSpec:
    objects: list[dict]  # bridge object specs; [0] is the target (pass_index 1), [1] the occluder
    camera_matrix: np.ndarray  # Blender camera matrix_world (4x4)
    lighting: dict
    fov_deg: float
    shadow_catcher: bool
    occluder_category: str = ""
    visible_goal: float = 1.0
    info: dict = field(default_factory=dict)


def world_vertices(spec: dict) -> np.ndarray:
    """Canonical vertices placed as the bridge places them: T(location) Rz(yaw) S(scale)."""
    return (np.asarray(spec["vertices"], float) * spec["scale"]) @ rotation_z(spec["yaw"]).T + np.asarray(spec["location"])


def resting_spec(shape: shapes.Shape, xy, yaw: float, pass_index: int, material: dict) -> dict:
    """Place a canonical shape of metric size shape.size_m on the ground at (x, y)."""
    half_height = shape.size_m * float(shape.vertices[:, 2].max())  # bbox-centred: bottom at -top
    return {"vertices": shape.vertices, "faces": shape.faces, "location": np.array([xy[0], xy[1], half_height]),
            "yaw": float(yaw), "scale": float(shape.size_m), "pass_index": int(pass_index), "material": material,
            "category": shape.category}


def sample_material(rng) -> dict:
    """Principled BSDF parameters (linear colours)."""
    material = {
        "base_color": backgrounds.srgb_to_linear(backgrounds.random_color(rng, value=(0.2, 0.95))),
        "roughness": float(rng.uniform(0.15, 0.95)),
        "metallic": float(rng.uniform(0.3, 1.0)) if rng.random() < 0.25 else 0.0,
    }
    if rng.random() < 0.3:  # two-tone noise pattern
        material["pattern"] = {"color": backgrounds.srgb_to_linear(backgrounds.random_color(rng)),
                               "scale": float(rng.uniform(2.0, 15.0)), "detail": float(rng.uniform(0.0, 6.0))}
    return material


def sample_lighting(rng) -> dict:
    elevation, azimuth = math.radians(rng.uniform(15, 75)), rng.uniform(0, 2 * np.pi)
    to_sun = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    tint = np.array([1.0, 0.85, 0.7]) if rng.random() < 0.5 else np.array([0.8, 0.9, 1.0])
    mix = rng.uniform(0.0, 0.5)
    return {
        "sun_direction": -to_sun,
        "sun_strength": float(rng.uniform(1.5, 5.0)),
        "sun_color": (1 - mix) * np.ones(3) + mix * tint,
        "sun_angle_deg": float(rng.uniform(0.5, 15.0)),
        "world_color": backgrounds.srgb_to_linear(backgrounds.random_color(rng, saturation=(0.0, 0.4), value=(0.5, 1.0))),
        "world_strength": float(rng.uniform(0.2, 1.0)),
    }


def _bounding_radius(spec: dict, axes=slice(None)) -> float:
    return float(spec["scale"] * np.linalg.norm(np.asarray(spec["vertices"])[:, axes], axis=1).max())


def _projected_box(points_world: np.ndarray, camera_matrix, fov_deg) -> np.ndarray:
    """(u_min, v_min, u_max, v_max) of projected points, in units of the image size."""
    uv = camera.project(camera.world_to_p3d_camera(points_world, camera_matrix), fov_deg, 1)
    return np.concatenate([uv.min(axis=0), uv.max(axis=0)])


def sample_camera(rng, target: dict, fov_deg: float) -> np.ndarray:
    """Blender camera matrix_world looking (off-centre) at the target.

    The distance makes the target's projected extent (larger side of its bounding box in the
    image) a random FRAME_FILL fraction of the frame; the aim is then shifted so that the
    target lands anywhere in the frame where its box still fits.
    """
    centre = np.asarray(target["location"], float)
    points = world_vertices(target)
    radius = _bounding_radius(target)
    fill = rng.uniform(*FRAME_FILL)
    elevation, azimuth = math.radians(rng.uniform(*ELEVATION_DEG)), rng.uniform(0, 2 * np.pi)
    direction = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                          math.sin(elevation)])
    # start from the bounding sphere, then correct with the measured extent (about 1 / distance)
    distance = radius / math.sin(math.radians(fov_deg) * fill / 2)
    for _ in range(3):
        centred = camera.look_at(centre + distance * direction, centre)
        box = _projected_box(points, centred, fov_deg)
        extent = float(max(box[2] - box[0], box[3] - box[1]))
        distance = max(distance * extent / fill, radius * 1.1)
    eye = centre + distance * direction
    centred = camera.look_at(eye, centre)
    box = _projected_box(points, centred, fov_deg)
    # shift s (image units): aiming beside the target by angle a moves it by f*tan(a) the other way
    pad = 0.02
    shift_u = rng.uniform(min(box[2] - 1 + pad, 0.0), max(box[0] - pad, 0.0))
    shift_v = rng.uniform(min(pad - box[1], 0.0), max(1 - pad - box[3], 0.0))
    f = camera.focal_px(fov_deg, 1)
    right, up = centred[:3, 0], centred[:3, 1]
    aim = centre + distance * (shift_u / f * right + shift_v / f * up)
    return camera.look_at(eye, aim, roll_deg=rng.uniform(-ROLL_DEG, ROLL_DEG))


def _silhouette_of(spec: dict, camera_matrix, fov_deg, resolution) -> np.ndarray:
    points = camera.world_to_p3d_camera(world_vertices(spec), camera_matrix)
    if np.any(points[:, 2] <= 0.01):
        return np.ones((resolution, resolution), bool)  # at/behind the camera: treat as blocking
    return camera.silhouette(points, spec["faces"], fov_deg, resolution)


def place_occluder(rng, target: dict, occluder_shape: shapes.Shape, camera_matrix, fov_deg, goal: float):
    """An occluder spec between camera and target reaching about `goal` visible fraction, or None."""
    eye = camera_matrix[:3, 3]
    centre = np.asarray(target["location"], float)
    to_eye = eye[:2] - centre[:2]
    ground_distance = float(np.linalg.norm(to_eye))
    forward = to_eye / ground_distance
    side = np.array([-forward[1], forward[0]])
    target_r = _bounding_radius(target, slice(0, 2))
    res = _SEARCH_RESOLUTION
    amodal = _silhouette_of(target, camera_matrix, fov_deg, res)
    if amodal.sum() < 8:
        return None

    # angular size comparable with the target's: metric size scaled by the distance ratio
    along = rng.uniform(0.0, 0.45)  # near the target: its low sight lines are easy to block
    size = target["scale"] * (1.0 - along) * rng.uniform(0.7, 1.3)
    yaw = rng.uniform(0, 2 * np.pi)
    material = sample_material(rng)
    best = None
    for _ in range(5):  # grow the occluder until it can hide enough of the target
        occ_r = size * float(np.linalg.norm(occluder_shape.vertices[:, :2], axis=1).max())
        lo, hi = target_r + occ_r + 0.02 * target_r, ground_distance - occ_r - 0.1 * ground_distance
        if lo >= hi:  # no room between target and camera for an occluder this big
            break
        dist = lo + along * (hi - lo)

        def spec_at(lateral, dist=dist, size=size):
            shape = shapes.Shape(occluder_shape.vertices, occluder_shape.faces, occluder_shape.category, size)
            xy = centre[:2] + forward * dist + side * lateral
            return resting_spec(shape, xy, yaw, 2, material)

        def visible(spec):
            hidden = amodal & _silhouette_of(spec, camera_matrix, fov_deg, res)
            return 1.0 - hidden.sum() / amodal.sum()

        lateral_max = (target_r + occ_r) * (ground_distance - dist) / ground_distance * 1.5
        sign = 1.0 if rng.random() < 0.5 else -1.0
        spec0 = spec_at(0.0)
        v0 = visible(spec0)
        if v0 <= goal:
            lo_l, hi_l = 0.0, lateral_max  # visible fraction grows with the lateral offset
            best = (spec0, v0)
            for _ in range(7):
                mid = (lo_l + hi_l) / 2
                spec = spec_at(sign * mid)
                v = visible(spec)
                if abs(v - goal) < abs(best[1] - goal):
                    best = (spec, v)
                if v < goal:
                    lo_l = mid
                else:
                    hi_l = mid
            return best
        if best is None or v0 < best[1]:
            best = (spec0, v0)
        size *= 1.3
    # an occluder that would hide (almost) nothing is left out
    return best if best is not None and best[1] < 0.97 else None


def sample_scene(rng, target_shape: shapes.Shape, fov_deg: float, occluder_probability: float = 0.4,
                 occluder_shape: shapes.Shape | None = None) -> SceneSpec:
    """Target at the origin, camera, lights, and (with the given probability) an occluder."""
    target = resting_spec(target_shape, (0.0, 0.0), rng.uniform(0, 2 * np.pi), 1, sample_material(rng))
    camera_matrix = sample_camera(rng, target, fov_deg)
    lighting = sample_lighting(rng)
    spec = SceneSpec([target], camera_matrix, lighting, fov_deg, shadow_catcher=bool(rng.random() < 0.5))
    if rng.random() < occluder_probability:
        goal = rng.uniform(*VISIBLE_FRACTION)
        placed = None
        for _ in range(3):  # flat occluders (bowls, tools) often cannot hide enough: try others
            if occluder_shape is None:
                occluder_shape = shapes.random_shape(rng)
            placed = place_occluder(rng, target, occluder_shape, camera_matrix, fov_deg, goal)
            if placed is not None:
                break
            occluder_shape = None
        if placed is not None:
            occluder, predicted = placed
            spec.objects.append(occluder)
            spec.occluder_category = occluder_shape.category
            spec.visible_goal = float(goal)
            spec.info["predicted_visible_fraction"] = float(predicted)
    return spec
