"""Pose decoding and the one conversion between the model's camera frame and Blender's world.

Frames
------
* canonical object frame: the occupancy grid's axes (x, y, z), object inside [-0.5, 0.5]^3; our
  synthetic objects are built Z-up, so the canonical frame is also Blender's object-local frame.
* model camera frame (PyTorch3D camera, official convention): +x left, +y up, +z forward.
  A canonical point maps to  p_cam = R^T (s * p_obj) + t   (column vectors; the official code
  writes the same as row vectors: p_cam = (s * p_obj) @ R + t).
* Blender camera frame: +x right, +y up, looking down -z.  So p_bcam = diag(-1, 1, -1) p_cam.
* Blender world (Z-up): p_world = C @ p_bcam, with C the camera's matrix_world.  By default the
  camera sits at the origin looking along +Y with +Z up (rotation_euler = (90 deg, 0, 0)).

All functions are NumPy-only and work on single poses (vectors / 3x3 / 4x4 matrices).
"""

from __future__ import annotations

import math

import numpy as np

# Model (PyTorch3D) camera frame -> Blender camera frame.  det = +1: a proper rotation, so object
# rotations stay rotations after the change of frame.
P3D_TO_BLENDER_CAMERA = np.diag([-1.0, 1.0, -1.0])


# -- rotations -----------------------------------------------------------------------------------

def rotation_6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """6D rotation -> 3x3 matrix by Gram-Schmidt; b1, b2, b3 are the *columns* (official)."""
    r6 = np.asarray(r6, dtype=np.float64).reshape(-1, 6)
    a1, a2 = r6[:, 0:3], r6[:, 3:6]
    b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), 1e-12)
    a2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2 / np.maximum(np.linalg.norm(a2, axis=-1, keepdims=True), 1e-12)
    b3 = np.cross(b1, b2)
    out = np.stack([b1, b2, b3], axis=-1)
    return out[0] if out.shape[0] == 1 else out


def matrix_to_rotation_6d(R: np.ndarray) -> np.ndarray:
    """Inverse of rotation_6d_to_matrix for a rotation matrix: its first two columns."""
    R = np.asarray(R, dtype=np.float64)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    m00, m01, m02 = R[0]
    m10, m11, m12 = R[1]
    m20, m21, m22 = R[2]
    trace = m00 + m11 + m22
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s]
    elif m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        q = [(m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s]
    elif m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        q = [(m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
        q = [(m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Geodesic angle between two rotations, in degrees."""
    c = (np.trace(np.asarray(Ra).T @ np.asarray(Rb)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


# -- network output -> pose in the model camera frame --------------------------------------------

def decode_pose(raw: dict[str, np.ndarray], stats: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the flow's pose outputs (normalised) into (R, t, s) in the model camera frame.

    `raw` maps 'rotation6d', 'translation', 'scale' to arrays of 6/3/3 values; `stats` is the
    card's "pose" section.  rotation: r = r_hat * std + mean, Gram-Schmidt; scale: exp of the
    de-normalised log-scale, averaged over axes (official: anisotropic predictions are averaged);
    translation: t_hat * std + mean.
    """
    def denorm(key, value, default_len):
        mean = np.asarray(stats.get(f"{key}_mean", [0.0] * default_len), dtype=np.float64)
        std = np.asarray(stats.get(f"{key}_std", [1.0] * default_len), dtype=np.float64)
        return np.asarray(value, dtype=np.float64).reshape(-1) * std + mean

    R = rotation_6d_to_matrix(denorm("rotation", raw["rotation6d"], 6))
    log_s = denorm("log_scale", raw["scale"], 3)
    s = np.full(3, float(np.mean(np.exp(log_s))))
    t = denorm("translation", raw["translation"], 3)
    return R, t, s


def encode_pose(R: np.ndarray, t: np.ndarray, s: np.ndarray, stats: dict) -> dict[str, np.ndarray]:
    """Inverse of decode_pose (training targets): pose -> normalised network values."""
    def norm(key, value, default_len):
        mean = np.asarray(stats.get(f"{key}_mean", [0.0] * default_len), dtype=np.float64)
        std = np.asarray(stats.get(f"{key}_std", [1.0] * default_len), dtype=np.float64)
        return (np.asarray(value, dtype=np.float64).reshape(-1) - mean) / std

    return {
        "rotation6d": norm("rotation", matrix_to_rotation_6d(R), 6),
        "translation": norm("translation", t, 3),
        "scale": norm("log_scale", np.log(np.asarray(s, dtype=np.float64)), 3),
    }


# -- model camera frame <-> Blender world ---------------------------------------------------------

def rotation_z(yaw: float) -> np.ndarray:
    """Rotation by `yaw` radians about +z (the canonical and Blender up axis)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def canonical_to_camera(points: np.ndarray, R: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Canonical points [N,3] into the model camera frame: p_cam = R^T (s * p) + t."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    scale = np.broadcast_to(np.asarray(s, dtype=np.float64).reshape(-1), (3,))
    # row-vector form of R^T (s * p): (s * p) @ R
    return (p * scale) @ np.asarray(R, dtype=np.float64) + np.asarray(t, dtype=np.float64).reshape(3)


def default_camera_matrix_world() -> np.ndarray:
    """Camera at the world origin looking along +Y, +Z up (Blender rotation_euler = (90deg, 0, 0))."""
    M = np.eye(4)
    M[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return M


def camera_pose_to_object_matrix(R: np.ndarray, t: np.ndarray, s: np.ndarray,
                                 camera_matrix_world: np.ndarray | None = None) -> np.ndarray:
    """Object's 4x4 matrix_world in Blender from a pose in the model camera frame."""
    C = default_camera_matrix_world() if camera_matrix_world is None else np.asarray(camera_matrix_world, float)
    local = np.eye(4)
    local[:3, :3] = P3D_TO_BLENDER_CAMERA @ np.asarray(R, float).T @ np.diag(np.asarray(s, float).reshape(3))
    local[:3, 3] = P3D_TO_BLENDER_CAMERA @ np.asarray(t, float).reshape(3)
    return C @ local


def object_matrix_to_camera_pose(object_matrix_world: np.ndarray,
                                 camera_matrix_world: np.ndarray | None = None):
    """Inverse of camera_pose_to_object_matrix: (R, t, s) in the model camera frame.

    Assumes the object matrix has no shear (scale applied before rotation, as Blender's TRS does).
    """
    C = default_camera_matrix_world() if camera_matrix_world is None else np.asarray(camera_matrix_world, float)
    local = np.linalg.inv(C) @ np.asarray(object_matrix_world, float)
    A = P3D_TO_BLENDER_CAMERA  # its own inverse
    RtS = A @ local[:3, :3]
    s = np.linalg.norm(RtS, axis=0)
    Rt = RtS / s
    t = A @ local[:3, 3]
    return Rt.T, t, s


def decompose(matrix_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4x4 TRS -> (location, quaternion (w, x, y, z), scale)."""
    M = np.asarray(matrix_world, float)
    scale = np.linalg.norm(M[:3, :3], axis=0)
    rot = M[:3, :3] / scale
    return M[:3, 3].copy(), matrix_to_quaternion(rot), scale


def focal_ratio(photo_focal_px: float, longer_side_px: int, train_fov_deg: float) -> float:
    """k = f_photo / f_train, both in pixels of the longer side (1 when the photo has the training
    field of view)."""
    return float(photo_focal_px / fov_to_focal_px(train_fov_deg, longer_side_px))


def retarget_to_focal(t: np.ndarray, s: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A pose the model read as if the photo had the training focal length, moved so that it
    projects onto the same pixels through the photo's focal length k * f_train.

    The model places the object where its pixels say under f_train: u = f_train * x / z.  Through
    k * f_train the same pixels and the same pixel size mean the object is k times farther at
    the same lateral offset and the same size: (x, y, z) -> (x, y, k z), s unchanged (+z is the
    model camera's forward axis).  A uniform scale of the scene about the camera would keep the
    directions of f_train's rays instead, and put off-centre objects k times too far from the
    image centre and k times too large.
    """
    t = np.array(t, dtype=np.float64, copy=True)
    t[..., 2] *= float(k)
    return t, np.array(s, dtype=np.float64, copy=True)


def fov_to_focal_px(fov_deg: float, side_px: int) -> float:
    return (side_px / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
