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
            log_scale: float = 0.15, lift_m: float = 0.1) -> SceneState:
    """A copy with every object's pose disturbed (translation, yaw about its origin, scale, lift)."""
    out = state.copy()
    for ob in out.objects.values():
        M = ob.matrix_world
        R = euler_xyz_to_matrix([0.0, 0.0, rng.uniform(-yaw_deg, yaw_deg)])
        M[:3, :3] = R @ M[:3, :3] * math.exp(rng.uniform(-log_scale, log_scale))
        M[:3, 3] += np.array([rng.uniform(-trans_m, trans_m), rng.uniform(-trans_m, trans_m),
                              rng.uniform(0.0, lift_m)])
    return out
