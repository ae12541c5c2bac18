"""Synthetic data engine: shapes, occupancy, rendered samples, poses, determinism, reader.

Kept small (tiny renders: 64 px, 2 Cycles samples) so that the whole file runs in well under a
minute on two shared CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("manifold3d", reason="the data engine needs manifold3d (pip install manifold3d)")
trimesh = pytest.importorskip("trimesh")

from sam3d_addon.data import camera, dataset, occupancy, shapes  # noqa: E402
from sam3d_addon.errors import InputError  # noqa: E402

RES = 64
RENDER_SAMPLES = 2


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# -- shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("category", shapes.CATEGORIES)
def test_shapes_are_watertight_and_normalised(category):
    for k in range(2):
        shape = shapes.make_shape(category, np.random.default_rng([k, 11]))
        mesh = trimesh.Trimesh(shape.vertices, shape.faces, process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent, category
        assert mesh.volume > 0, f"{category}: faces must point outwards"
        lo, hi = shape.vertices.min(axis=0), shape.vertices.max(axis=0)
        assert np.isclose((hi - lo).max(), 1.0)
        np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-9)
        assert shape.faces.dtype == np.int32 and shape.category == category
        assert 0.1 <= shape.size_m <= 2.5


def test_shapes_are_deterministic_and_varied():
    a = shapes.make_shape("chair", np.random.default_rng(3))
    b = shapes.make_shape("chair", np.random.default_rng(3))
    c = shapes.make_shape("chair", np.random.default_rng(4))
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)


# -- occupancy ---------------------------------------------------------------------------------

def test_occupancy_of_a_sphere_is_solid_and_exact_to_a_cell():
    import manifold3d as mf

    radius = 0.4
    mesh = mf.Manifold.sphere(radius, 64).to_mesh()
    grid = occupancy.occupancy_grid(np.asarray(mesh.vert_properties[:, :3], float), np.asarray(mesh.tri_verts))
    c = occupancy.voxel_centres()
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    assert grid.shape == (32, 32, 32) and grid.dtype == bool
    assert grid[r < radius - 0.01].all()  # interior filled
    assert not grid[r > radius + np.sqrt(3) / 64].any()  # nothing beyond the surface cells


def test_occupancy_axes_follow_xyz():
    import manifold3d as mf

    box = mf.Manifold.cube((0.2, 0.4, 0.8), True).translate((0.2, 0.0, 0.0)).to_mesh()
    grid = occupancy.occupancy_grid(np.asarray(box.vert_properties[:, :3], float), np.asarray(box.tri_verts))
    cells = np.argwhere(grid)
    extent = cells.max(axis=0) - cells.min(axis=0) + 1
    assert extent[0] < extent[1] < extent[2]  # x thinnest, z longest
    assert cells[:, 0].min() >= 16  # shifted to +x


@pytest.mark.parametrize("category", ["superquadric", "blob", "vase", "chair", "table", "lamp", "sofa"])
def test_occupancy_matches_the_mesh(category):
    shape = shapes.make_shape(category, np.random.default_rng(5))
    grid = occupancy.occupancy_grid(shape.vertices, shape.faces)
    mesh = trimesh.Trimesh(shape.vertices, shape.faces, process=False)
    cell = 1 / 32
    occupied = grid.sum() * cell ** 3
    # solid: at least the mesh volume; surface cells add at most about one cell of skin
    assert mesh.volume * 0.98 <= occupied <= mesh.volume + mesh.area * cell * 0.75, category
    # every vertex lies in an occupied cell (nothing of the surface is lost)
    idx = np.clip(np.floor((shape.vertices + 0.5) * 32).astype(int), 0, 31)
    assert grid[idx[:, 0], idx[:, 1], idx[:, 2]].mean() > 0.97
    if category in ("superquadric", "blob"):  # convex-ish: the centroid is inside
        ci = np.clip(np.floor((mesh.center_mass + 0.5) * 32).astype(int), 0, 31)
        assert grid[tuple(ci)]


def test_occupancy_pack_roundtrip():
    grid = np.random.default_rng(0).random((32, 32, 32)) < 0.3
    packed, shape = occupancy.pack_occupancy(grid)
    np.testing.assert_array_equal(occupancy.unpack_occupancy(packed, shape), grid)


# -- rendered samples --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("bpy")
    from sam3d_addon.data import engine

    return engine


@pytest.fixture(scope="module")
def small_dataset(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    calls = []
    meta = engine.generate(out, 2, n_test=1, seed=3, resolution=RES, render_samples=RENDER_SAMPLES,
                           progress=lambda done, total, msg: calls.append((done, total)))
    assert calls[-1] == (3, 3)
    return out, meta


def _check_geometry(s, res=RES):
    """The stored pose reprojects the mesh; the point map lies on the target or occluder."""
    R, t, sc = s["rotation"].astype(float), s["translation"].astype(float), s["scale"].astype(float)
    points = camera.canonical_to_p3d_camera(s["vertices"], R, t, sc)
    assert (points[:, 2] > 0).all()
    projected = camera.silhouette(points, s["faces"], s["fov_deg"], res)
    assert _iou(projected, s["amodal_mask"]) > 0.8
    assert not (s["mask"] & ~s["amodal_mask"]).any()
    if not s["occluded"]:
        # independent of how amodal_mask is made: the renderer's own object-index pass
        assert _iou(projected, s["mask"]) > 0.9
    # target pixels of the point map, mapped back to the canonical frame, fall in (or next to)
    # occupied cells: pose, depth pass and pointmap conventions agree
    from scipy import ndimage

    p_obj = ((s["pointmap"][s["mask"]].astype(float) - t) @ R.T) / sc
    idx = np.clip(np.floor((p_obj + 0.5) * 32).astype(int), 0, 31)
    near = ndimage.binary_dilation(s["occupancy"], iterations=1)
    assert near[idx[:, 0], idx[:, 1], idx[:, 2]].mean() > 0.95
    # rotation is a rotation; scale is isotropic and metric
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-4)
    assert np.isclose(np.linalg.det(R), 1.0, atol=1e-4)
    assert np.allclose(sc, sc[0], rtol=1e-4) and 0.1 < sc[0] < 2.5


def test_generated_samples_have_documented_keys_and_dtypes(small_dataset, engine):
    out, meta = small_dataset
    paths = dataset.list_samples(out, "train")
    assert [p.name for p in paths] == ["000000.npz", "000001.npz"]
    assert len(dataset.list_samples(out, "test")) == 1
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["fov_deg"] == 50.0 and on_disk["resolution"] == RES and on_disk["grid"]["resolution"] == 32
    assert on_disk["n_train"] == 2 and on_disk["n_test"] == 1 and meta["generated"] == 3
    with np.load(paths[0]) as raw:
        assert set(engine.SAMPLE_KEYS) <= set(raw.files)
        assert raw["occupancy"].dtype == np.uint8
    for path in paths + dataset.list_samples(out, "test"):
        s = dataset.load_sample(path)
        assert s["rgb"].dtype == np.uint8 and s["rgb"].shape == (RES, RES, 3)
        for key in ("mask", "amodal_mask"):
            assert s[key].dtype == bool and s[key].shape == (RES, RES)
        assert s["depth"].dtype == np.float32 and s["depth"].shape == (RES, RES)
        assert s["pointmap"].dtype == np.float32 and s["pointmap"].shape == (RES, RES, 3)
        assert s["occupancy"].dtype == bool and s["occupancy"].shape == (32, 32, 32) and s["occupancy"].any()
        assert s["rotation"].shape == (3, 3) and s["translation"].shape == (3,) and s["scale"].shape == (3,)
        assert s["rotation"].dtype == s["translation"].dtype == s["scale"].dtype == np.float32
        assert s["vertices"].dtype == np.float32 and s["faces"].dtype == np.int32
        assert isinstance(s["category"], str) and s["category"] in shapes.CATEGORIES
        assert isinstance(s["seed"], int) and isinstance(s["occluded"], bool) and s["fov_deg"] == 50.0
        finite = np.isfinite(s["depth"])
        assert s["mask"].any() and finite[s["mask"]].all()
        np.testing.assert_array_equal(finite, np.isfinite(s["pointmap"]).all(axis=-1))
        np.testing.assert_allclose(s["pointmap"][..., 2][finite], s["depth"][finite], rtol=1e-6)
        _check_geometry(s)


def test_occluded_sample_pose_and_masks(engine):
    s = engine.make_sample(0, "train", 0, resolution=RES, render_samples=RENDER_SAMPLES, occluder_probability=1.0)
    s["occupancy"] = occupancy.unpack_occupancy(s["occupancy"], s["occupancy_shape"])
    s = {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in s.items()}
    _check_geometry(s)
    if s["occluded"]:
        assert s["mask"].sum() < s["amodal_mask"].sum()
        assert 0.2 < s["visible_fraction"] < 0.99


def test_generation_is_deterministic_resumable_and_splits_differ(small_dataset, engine, tmp_path):
    out, _ = small_dataset
    meta = engine.generate(out, 2, n_test=1, seed=3, resolution=RES, render_samples=RENDER_SAMPLES)
    assert meta["generated"] == 0 and meta["skipped_existing"] == 3  # resumed: nothing to do
    again = engine.generate(tmp_path, 1, n_test=0, seed=3, resolution=RES, render_samples=RENDER_SAMPLES)
    assert again["generated"] == 1
    a = dataset.load_sample(out / "train" / "000000.npz")
    b = dataset.load_sample(tmp_path / "train" / "000000.npz")
    for key in ("rgb", "mask", "amodal_mask", "depth", "occupancy", "rotation", "translation", "scale",
                "vertices", "faces"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["seed"] == b["seed"] and a["category"] == b["category"]
    test0 = dataset.load_sample(out / "test" / "000000.npz")
    train1 = dataset.load_sample(out / "train" / "000001.npz")
    assert len({a["seed"], train1["seed"], test0["seed"]}) == 3
    assert not np.array_equal(a["rgb"], test0["rgb"])


def test_seed_rule_separates_splits(engine):
    train = {int(engine.sample_seed_sequence(0, "train", i).generate_state(1)[0]) for i in range(200)}
    test = {int(engine.sample_seed_sequence(0, "test", i).generate_state(1)[0]) for i in range(200)}
    assert not train & test


def test_bad_arguments_raise_one_line_input_errors(engine, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for kwargs in ({"n_train": -1}, {"n_train": 1, "resolution": 8}, {"n_train": 1, "n_test": -2},
                   {"n_train": "many"}, {"n_train": 1, "workers": 0}):
        with pytest.raises(InputError) as info:
            engine.generate(tmp_path / "d", **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError):
        engine.generate(a_file, 1)
    with pytest.raises(InputError):
        engine.main_data(out=str(tmp_path / "d"))  # no --n
    with pytest.raises(InputError):
        dataset.list_samples(tmp_path / "missing", "train")
    with pytest.raises(InputError):
        dataset.list_samples(tmp_path, "validation")


def test_bench_geometry_cli_report_keys_categories_and_train_split(small_dataset, tmp_path, capsys):
    """`sam3d bench geometry --json` prints exactly the issue's keys; --by-category writes the
    per-category means; --split train scores training samples."""
    from sam3d_addon import cli

    out, _ = small_dataset
    modes = ("model_4step", "model_25step_cfg", "baseline")
    per_mode = {"viou", "f1_001", "f1_005", "chamfer", "box_iou", "rot_err_deg_median", "adds", "adds_01",
                "adds_01_raw", "seconds_per_object"}
    categories = tmp_path / "categories.json"
    assert cli.main(["bench", "geometry", "--json", "--data", str(out), "--by-category", str(categories)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == set(modes) | {"n_samples"} and report["n_samples"] == 1
    assert all(set(report[m]) == per_mode for m in modes)
    written = json.loads(categories.read_text())
    test_category = dataset.load_sample(dataset.list_samples(out, "test")[0])["category"]
    assert written["split"] == "test" and written["n_samples"] == 1
    for mode in modes:
        assert list(written[mode]) == [test_category]
        row = written[mode][test_category]
        assert row["n"] == 1 and row["viou"] == pytest.approx(report[mode]["viou"], abs=1e-5)

    assert cli.main(["bench", "geometry", "--json", "--data", str(out), "--split", "train", "--limit", "2",
                     "--samples", "2"]) == 0  # each prediction the mean of two samples
    assert json.loads(capsys.readouterr().out)["n_samples"] == 2
