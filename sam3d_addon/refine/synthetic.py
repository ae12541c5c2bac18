"""Synthetic refinement scenes for tests and `sam3d bench refine` (NumPy only).

Objects rest on the ground (z = 0) seen by a camera above and in front; each object's mask is
its visible silhouette through that camera at the ground-truth pose (occluded by nearer
objects, like a SAM mask), so a refiner that recovers the true poses scores IoU ~1.
"""

from __future__ import annotations

import math

import numpy as np

from ..data.camera import look_at
from .scene import CameraState, MaterialState, ObjectState, SceneState, euler_xyz_to_matrix
from .verify import silhouette

CUBE_FACES = np.array([
    [0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
    [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]], np.int32)


def box_mesh(size=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """A closed box centred at the origin, outward counter-clockwise faces."""
    sx, sy, sz = (float(s) / 2 for s in size)
    v = np.array([[-sx, -sy, -sz], [sx, -sy, -sz], [sx, sy, -sz], [-sx, sy, -sz],
                  [-sx, -sy, sz], [sx, -sy, sz], [sx, sy, sz], [-sx, sy, sz]], float)
    return v, CUBE_FACES.copy()


def object_matrix(location, yaw_deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = euler_xyz_to_matrix([0.0, 0.0, yaw_deg]) * float(scale)
    M[:3, 3] = np.asarray(location, float)
    return M


def resting_matrix(vertices: np.ndarray, xy, yaw_deg: float, scale: float, ground_z: float = 0.0) -> np.ndarray:
    """A pose standing on the ground at (x, y): the lowest vertex touches z = ground_z."""
    M = object_matrix([xy[0], xy[1], 0.0], yaw_deg, scale)
    z_min = (vertices @ M[:3, :3].T)[:, 2].min()
    M[2, 3] = ground_z - z_min
    return M


def default_camera(resolution=(128, 96), eye=(0.0, -4.0, 2.0), target=(0.0, 0.0, 0.4)) -> CameraState:
    return CameraState(matrix_world=look_at(eye, target), lens_mm=35.0, sensor_width_mm=36.0,
                       resolution=tuple(int(r) for r in resolution))


def masks_from_state(state: SceneState, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Visible silhouettes (nearer objects occlude) at the camera's resolution, keyed by mask id."""
    cam = state.camera
    wh = size or cam.resolution
    sil = {n: silhouette(o, cam, wh) for n, o in state.objects.items()}
    covered = np.zeros(wh[::-1], bool)
    masks = {}
    for n in sorted(sil, key=lambda k: sil[k][1]):
        masks[state.objects[n].mask_id or n] = sil[n][0] & ~covered
        covered |= sil[n][0]
    return masks


def make_scene(specs, camera: CameraState | None = None) -> SceneState:
    """specs: dicts with name, vertices, faces, xy, yaw_deg, scale (all on the ground)."""
    state = SceneState(camera=camera or default_camera())
    for s in specs:
        M = resting_matrix(s["vertices"], s["xy"], s.get("yaw_deg", 0.0), s.get("scale", 1.0))
        state.objects[s["name"]] = ObjectState(s["name"], M, np.asarray(s["vertices"], float),
                                               np.asarray(s["faces"], np.int32), MaterialState(), mask_id=s["name"])
    state.masks = masks_from_state(state)
    return state


def perturb(state: SceneState, rng: np.random.Generator, trans_m: float = 0.15, yaw_deg: float = 15.0,
            log_scale: float = 0.15, lift_m: float = 0.1, sink_m: float = 0.0) -> SceneState:
    """A copy with every object's pose disturbed (translation, yaw about its origin, scale, and a
    vertical offset in [-sink_m, lift_m])."""
    out = state.copy()
    for ob in out.objects.values():
        M = ob.matrix_world
        R = euler_xyz_to_matrix([0.0, 0.0, rng.uniform(-yaw_deg, yaw_deg)])
        M[:3, :3] = R @ M[:3, :3] * math.exp(rng.uniform(-log_scale, log_scale))
        M[:3, 3] += np.array([rng.uniform(-trans_m, trans_m), rng.uniform(-trans_m, trans_m),
                              rng.uniform(-sink_m, lift_m)])
    return out


BENCH_CATEGORIES = ("chair", "table", "stool", "shelf", "sofa", "cabinet")


def _footprint(vertices: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = vertices @ M[:3, :3].T + M[:3, 3]
    return v.min(axis=0), v.max(axis=0)


def bench_scene(index: int, resolution=(160, 120)) -> SceneState:
    """Held-out benchmark scene `index` (deterministic): 3-4 procedural furniture meshes resting on
    the ground without touching each other, all inside the view of a photo camera whose pose
    varies per scene; masks are the visible silhouettes at these (true) poses."""
    from ..data.shapes import make_shape

    rng = np.random.default_rng([int(index), 0x5A3D])
    for _ in range(100):
        az = math.radians(rng.uniform(-30.0, 30.0))
        elev = math.radians(rng.uniform(18.0, 35.0))
        dist = rng.uniform(4.6, 5.6)
        target = np.array([0.0, 0.4, 0.35])
        eye = target + dist * np.array([math.sin(az) * math.cos(elev), -math.cos(az) * math.cos(elev), math.sin(elev)])
        camera = default_camera(resolution, eye=tuple(eye), target=tuple(target))
        # ground axes of this view: objects are laid out across and along the line of sight
        across = np.array([math.cos(az), math.sin(az)])
        along = np.array([-math.sin(az), math.cos(az)])
        specs, placed = [], []
        n = int(rng.integers(3, 5))
        for k in range(n):
            shape = make_shape(BENCH_CATEGORIES[int(rng.integers(len(BENCH_CATEGORIES)))], rng)
            verts = shape.vertices * shape.size_m
            for _try in range(60):
                xy = target[:2] + rng.uniform(-1.3, 1.3) * across + rng.uniform(-0.8, 0.9) * along
                yaw = float(rng.uniform(-180.0, 180.0))
                M = resting_matrix(verts, xy, yaw, 1.0)
                lo, hi = _footprint(verts, M)
                gap = float(rng.uniform(0.0, 0.1))
                if all(min(hi[0], phi[0]) + gap <= max(lo[0], plo[0]) or min(hi[1], phi[1]) + gap <= max(lo[1], plo[1])
                       for plo, phi in placed):
                    placed.append((lo, hi))
                    specs.append(dict(name=f"{shape.category}_{k}", vertices=verts, faces=shape.faces, xy=xy,
                                      yaw_deg=yaw))
                    break
        if len(specs) < 3:
            continue
        state = make_scene(specs, camera)
        inside = True
        w, h = camera.resolution
        for ob in state.objects.values():
            uv, depth = camera.project(ob.world_vertices())
            if depth.min() <= 0.1 or uv[:, 0].min() < 2 or uv[:, 1].min() < 2 or uv[:, 0].max() > w - 2 \
                    or uv[:, 1].max() > h - 2 or state.masks[ob.mask_id].sum() < 30:
                inside = False
                break
        if inside:
            return state
    raise RuntimeError(f"bench scene {index}: no layout fits the view")  # pragma: no cover
