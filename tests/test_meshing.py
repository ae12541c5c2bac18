import numpy as np
import trimesh

from sam3d_addon.meshing import occupancy_to_mesh


def sphere_logits(res=32, r=0.35):
    c = (np.arange(res) + 0.5) / res - 0.5
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    return (r - np.sqrt(x**2 + y**2 + z**2)) * 40.0


def test_sphere_mesh_is_closed_and_in_canonical_frame():
    v, f = occupancy_to_mesh(sphere_logits())
    mesh = trimesh.Trimesh(v, f)
    assert mesh.is_watertight
    assert np.abs(v).max() < 0.5
    radii = np.linalg.norm(v, axis=1)
    assert abs(radii.mean() - 0.35) < 0.02
    assert abs(mesh.volume - 4 / 3 * np.pi * 0.35**3) < 0.02
    assert mesh.volume > 0  # outward normals


def test_axis_order_preserved():
    occ = np.zeros((16, 16, 16), np.float32)
    occ[12:15, 6:10, 6:10] = 1.0  # a block on the +x side
    v, _ = occupancy_to_mesh(occ, level=0.5)
    assert v[:, 0].mean() > 0.2 and abs(v[:, 1].mean()) < 0.05


def test_empty_and_specks():
    v, f = occupancy_to_mesh(np.full((8, 8, 8), -1.0))
    assert v.shape == (0, 3) and f.shape == (0, 3)
    field = sphere_logits()
    field[1, 1, 1] = 5.0  # an isolated speck
    v, f = occupancy_to_mesh(field)
    assert np.linalg.norm(v, axis=1).max() < 0.4
