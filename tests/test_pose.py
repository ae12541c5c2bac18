import numpy as np
import pytest

from sam3d_addon import pose


def random_rotation(rng):
    q = rng.standard_normal(4)
    return pose.quaternion_to_matrix(q / np.linalg.norm(q))


def test_6d_round_trip_and_gram_schmidt_columns():
    rng = np.random.default_rng(0)
    for _ in range(20):
        R = random_rotation(rng)
        assert np.allclose(pose.rotation_6d_to_matrix(pose.matrix_to_rotation_6d(R)), R, atol=1e-12)
    # Non-orthonormal input: columns are b1 = a1/|a1|, b2 orthogonalised, b3 = b1 x b2.
    R = pose.rotation_6d_to_matrix([2, 0, 0, 1, 3, 0])
    assert np.allclose(R, np.eye(3))
    assert np.isclose(np.linalg.det(pose.rotation_6d_to_matrix(rng.standard_normal(6))), 1.0)


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        R = random_rotation(rng)
        q = pose.matrix_to_quaternion(R)
        assert q[0] >= 0 and np.isclose(np.linalg.norm(q), 1)
        assert np.allclose(pose.quaternion_to_matrix(q), R, atol=1e-10)


def test_known_axes_default_camera():
    # PyTorch3D camera: +z forward, +x left, +y up.  Default Blender camera looks along +Y, Z up.
    M = pose.camera_pose_to_object_matrix(np.eye(3), np.array([1.0, 0.5, 2.0]), np.ones(3))
    assert np.allclose(M[:3, 3], [-1.0, 2.0, 0.5])
    # R = I: canonical +y is the camera's up (world +Z), canonical +z points away (world +Y).
    assert np.allclose(M[:3, :3] @ [0, 1, 0], [0, 0, 1])
    assert np.allclose(M[:3, :3] @ [0, 0, 1], [0, 1, 0])
    assert np.allclose(M[:3, :3] @ [1, 0, 0], [-1, 0, 0])


def test_pose_round_trip_through_blender_world():
    rng = np.random.default_rng(2)
    for _ in range(20):
        R, t, s = random_rotation(rng), rng.normal(size=3) + [0, 0, 3], np.full(3, rng.uniform(0.2, 2))
        cam = np.eye(4)
        cam[:3, :3] = random_rotation(rng)
        cam[:3, 3] = rng.normal(size=3)
        M = pose.camera_pose_to_object_matrix(R, t, s, cam)
        R2, t2, s2 = pose.object_matrix_to_camera_pose(M, cam)
        assert np.allclose(R2, R, atol=1e-9) and np.allclose(t2, t) and np.allclose(s2, s)
        # The same point lands at the same place either way.
        p_obj = rng.uniform(-0.5, 0.5, 3)
        p_cam = R.T @ (s * p_obj) + t
        p_world = (M @ np.r_[p_obj, 1])[:3]
        p_bcam = (np.linalg.inv(cam) @ np.r_[p_world, 1])[:3]
        assert np.allclose(pose.P3D_TO_BLENDER_CAMERA @ p_cam, p_bcam)


def test_decode_encode_pose_with_stats():
    stats = {"rotation_mean": [0.1] * 6, "rotation_std": [0.5] * 6, "log_scale_mean": [0.2] * 3,
             "log_scale_std": [0.3] * 3, "translation_mean": [0, 0, 3], "translation_std": [1, 1, 2]}
    rng = np.random.default_rng(3)
    R, t, s = random_rotation(rng), np.array([0.3, -0.2, 2.5]), np.full(3, 0.8)
    raw = pose.encode_pose(R, t, s, stats)
    R2, t2, s2 = pose.decode_pose(raw, stats)
    assert np.allclose(R2, R) and np.allclose(t2, t) and np.allclose(s2, s)


def test_scene_scale_for_focal():
    f = pose.fov_to_focal_px(50.0, 256)
    assert pose.scene_scale_for_focal(f, 256, 50.0) == pytest.approx(1.0)
    assert pose.scene_scale_for_focal(2 * f, 256, 50.0) == pytest.approx(2.0)
