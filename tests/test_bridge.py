"""The Blender bridge (section A): building 3Dfy results, rendering, exporting -- headless bpy.

Results are fabricated (small NumPy meshes placed with `sam3d_addon.pose`): a legitimate test of
the bridge on its own, independent of any model.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sam3d_addon import blender_bridge as bridge  # noqa: E402
from sam3d_addon import pose  # noqa: E402
from sam3d_addon.bench_import import bench_import  # noqa: E402

W, H = 128, 96
LENS, SENSOR = 40.0, 36.0


def cube_mesh(size: float = 1.0):
    c = size / 2.0
    v = np.array([[x, y, z] for x in (-c, c) for y in (-c, c) for z in (-c, c)], np.float32)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)
    return v, f


def rot_x(deg):
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def rot_y(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def photo_array():
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = np.linspace(20, 200, W, dtype=np.uint8)[None, :]
    img[..., 2] = 180
    return img


def make_result(objects=(("chair", (0.25, 0.1, 4.0), 25.0),), colors=False, image_path=None):
    """Fabricated Result: cubes posed in the model camera frame (t in PyTorch3D camera coords)."""
    v, f = cube_mesh()
    objs = []
    for name, t, angle in objects:
        R = rot_y(angle) @ rot_x(15.0)
        M = pose.camera_pose_to_object_matrix(R, np.array(t), np.full(3, 0.9))
        cols = np.tile(np.array([[0.9, 0.2, 0.1]], np.float32), (len(v), 1)) if colors else None
        objs.append(SimpleNamespace(name=name, mask=f"/masks/{name}.png", vertices=v, faces=f,
                                    matrix_world=M, colors=cols))
    cam = SimpleNamespace(matrix_world=pose.default_camera_matrix_world(), lens_mm=LENS,
                          sensor_width_mm=SENSOR, resolution=(W, H), image_path=image_path,
                          image=photo_array())
    return SimpleNamespace(objects=objs, camera=cam, timings={}, device="cpu")


def snapshot():
    scene = bpy.context.scene
    return (
        sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections),
        sorted(m.name for m in bpy.data.meshes), sorted(c.name for c in bpy.data.cameras),
        sorted(i.name for i in bpy.data.images), sorted(m.name for m in bpy.data.materials),
        scene.camera.name if scene.camera else None,
        (scene.render.resolution_x, scene.render.resolution_y),
    )


def project(points_world, cam_matrix, lens, sensor, w, h):
    """Pixel coordinates (x right, y down) of world points through a Blender camera (AUTO fit)."""
    pts = np.c_[np.asarray(points_world, float), np.ones(len(points_world))]
    cam = (np.linalg.inv(cam_matrix) @ pts.T).T[:, :3]  # Blender camera frame, looking down -z
    f_px = lens / sensor * max(w, h)
    x = w / 2.0 + f_px * cam[:, 0] / -cam[:, 2]
    y = h / 2.0 - f_px * cam[:, 1] / -cam[:, 2]
    return np.c_[x, y]


@pytest.fixture
def empty_scene():
    bridge.reset_to_empty_scene()
    yield bpy.context.scene


def test_reset_to_empty_scene_keeps_only_lighting(empty_scene):
    assert [o.type for o in bpy.data.objects] == ["LIGHT"]
    assert len(bpy.data.meshes) == 0 and len(bpy.data.collections) == 0
    assert empty_scene.camera is None and empty_scene.world is not None


def test_build_result_objects_camera_collection(empty_scene):
    result = make_result(objects=(("chair", (0.3, 0.1, 4.0), 20.0), ("table", (-0.6, -0.2, 5.0), -30.0)))
    n_collections = len(bpy.data.collections)
    col = bridge.build_result(result)

    assert len(bpy.data.collections) == n_collections + 1
    assert col.name == "SAM3D photo" and col.name in empty_scene.collection.children
    meshes = sorted((o for o in col.objects if o.type == "MESH"), key=lambda o: o.name)
    assert [o.name for o in meshes] == ["chair", "table"]
    for ob, res in zip(meshes, sorted(result.objects, key=lambda o: o.name)):
        assert len(ob.data.vertices) == len(res.vertices)
        assert len(ob.data.polygons) == len(res.faces)
        co = np.empty(len(ob.data.vertices) * 3, np.float32)
        ob.data.vertices.foreach_get("co", co)
        np.testing.assert_allclose(co.reshape(-1, 3), res.vertices, atol=1e-6)
        np.testing.assert_allclose(np.array(ob.matrix_world), res.matrix_world, atol=1e-5)
        assert ob.active_material is not None and ob.active_material.name == bridge.GREY_MATERIAL
        assert ob["sam3d_mask"] == res.mask

    cams = [o for o in col.objects if o.type == "CAMERA"]
    assert len(cams) == 1
    cam = cams[0]
    assert empty_scene.camera == cam
    assert cam.data.lens == pytest.approx(LENS) and cam.data.sensor_width == pytest.approx(SENSOR)
    assert cam.data.sensor_fit == "AUTO"
    np.testing.assert_allclose(np.array(cam.matrix_world), pose.default_camera_matrix_world(), atol=1e-6)
    assert (empty_scene.render.resolution_x, empty_scene.render.resolution_y) == (W, H)
    assert empty_scene.render.resolution_percentage == 100
    assert cam.data.show_background_images and len(cam.data.background_images) == 1
    photo = cam.data.background_images[0].image
    assert tuple(photo.size) == (W, H) and photo.packed_file is not None
    # the photo's pixels made it into Blender unchanged (8-bit, rows flipped back)
    got = np.round(bridge.image_to_array(photo) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, photo_array())


def test_build_result_names_collection_after_photo_file(empty_scene, tmp_path):
    path = tmp_path / "kitchen.png"
    img = bridge.image_from_array("tmp", photo_array())
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)
    col = bridge.build_result(make_result(image_path=str(path)))
    assert col.name == "SAM3D kitchen"
    cam = next(o for o in col.objects if o.type == "CAMERA")
    assert bpy.path.abspath(cam.data.background_images[0].image.filepath) == str(path)


def test_build_result_vertex_colors(empty_scene):
    col = bridge.build_result(make_result(colors=True))
    ob = col.objects["chair"]
    attr = ob.data.color_attributes[bridge.COLOR_ATTRIBUTE]
    assert attr.domain == "POINT" and len(attr.data) == len(ob.data.vertices)
    np.testing.assert_allclose(attr.data[0].color_srgb[:3], (0.9, 0.2, 0.1), atol=1e-4)
    assert ob.active_material.name == bridge.VERTEX_COLOR_MATERIAL


def test_build_result_failure_leaves_nothing(empty_scene):
    result = make_result(objects=(("good", (0.0, 0.0, 4.0), 0.0), ("bad", (0.5, 0.0, 4.0), 0.0)))
    result.objects[1].faces = np.array([[0, 1, 99]], np.int32)  # index out of range
    before = snapshot()
    with pytest.raises(ValueError, match="out of range"):
        bridge.build_result(result)
    assert snapshot() == before


def test_remove_collection(empty_scene):
    before = snapshot()
    col = bridge.build_result(make_result())
    bridge.remove_collection(col)
    assert snapshot()[:5] == before[:5]  # objects, collections, meshes, cameras, images
    assert empty_scene.camera is None


def test_mesh_from_numpy_drops_degenerate_faces_and_takes_quads():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    me = bridge.mesh_from_numpy("tri", v, np.array([[0, 1, 2], [0, 2, 2], [0, 2, 3]]))
    assert len(me.polygons) == 2 and len(me.edges) == 5
    assert not me.validate(verbose=False)  # nothing to fix
    quad = bridge.mesh_from_numpy("quad", v, np.array([[0, 1, 2, 3]]))
    assert len(quad.polygons) == 1 and quad.polygons[0].loop_total == 4
    bpy.data.meshes.remove(me)
    bpy.data.meshes.remove(quad)


def _silhouette(rendered, photo):
    diff = np.abs(rendered[..., :3] - photo.astype(np.float32) / 255.0).max(axis=2)
    return diff > 0.08


def test_render_cycles_silhouette_where_pose_says(empty_scene, tmp_path):
    result = make_result(objects=(("chair", (0.35, 0.15, 4.0), 30.0),))
    bridge.build_result(result)
    out = tmp_path / "render.png"
    t0 = time.perf_counter()
    rgba = bridge.render_png(str(out), engine="CYCLES", samples=4)
    elapsed = time.perf_counter() - t0
    assert out.is_file() and elapsed < 30
    img = bpy.data.images.load(str(out))
    assert tuple(img.size) == (W, H)
    bpy.data.images.remove(img)
    assert rgba.shape == (H, W, 4)

    mask = _silhouette(rgba, photo_array())
    ys, xs = np.nonzero(mask)
    assert len(xs) > 100
    # the photo is behind the object: away from the object the render is the photo
    np.testing.assert_allclose(rgba[0, 0, :3] * 255, photo_array()[0, 0], atol=2)

    obj = result.objects[0]
    corners = (obj.matrix_world @ np.c_[obj.vertices, np.ones(8)].T).T[:, :3]
    px = project(corners, result.camera.matrix_world, LENS, SENSOR, W, H)
    # the silhouette's bounding box is the projected cube's, to the pixel filter's width
    # (Cycles' 1.5 px Blackman-Harris filter spreads a partial pixel past each edge)
    assert xs.min() == pytest.approx(px[:, 0].min(), abs=2.0)
    assert xs.max() + 1 == pytest.approx(px[:, 0].max(), abs=2.0)
    assert ys.min() == pytest.approx(px[:, 1].min(), abs=2.0)
    assert ys.max() + 1 == pytest.approx(px[:, 1].max(), abs=2.0)
    # and the cube's centre (p_cam = t in the model camera frame) lands inside it, where
    # sam3d_addon.pose puts it: +x is *left* in the model frame, so t.x > 0 is left of centre
    centre = project(obj.matrix_world[:3, 3][None], result.camera.matrix_world, LENS, SENSOR, W, H)[0]
    f_px = LENS / SENSOR * max(W, H)
    t = np.array([0.35, 0.15, 4.0])
    np.testing.assert_allclose(centre, [W / 2 - f_px * t[0] / t[2], H / 2 - f_px * t[1] / t[2]], atol=1e-6)
    assert mask[int(centre[1]), int(centre[0])]


def test_render_workbench_png_size_and_scene_restored(empty_scene, tmp_path):
    bridge.build_result(make_result())
    scene = empty_scene
    scene.render.engine = "CYCLES"
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "AgX"
    out = tmp_path / "wb.png"
    rgba = bridge.render_png(str(out), engine="BLENDER_WORKBENCH", percentage=50)
    img = bpy.data.images.load(str(out))
    assert tuple(img.size) == (W // 2, H // 2) and rgba.shape == (H // 2, W // 2, 4)
    bpy.data.images.remove(img)
    assert scene.render.engine == "CYCLES" and not scene.render.film_transparent
    assert scene.view_settings.view_transform == "AgX" and scene.render.resolution_percentage == 100
    assert _silhouette(rgba, photo_array()[::2, ::2]).sum() > 20


def test_export_glb_and_usd(empty_scene, tmp_path):
    col = bridge.build_result(make_result(objects=(("chair", (0.0, 0.0, 4.0), 0.0), ("lamp", (1.0, 0.0, 5.0), 0.0))))
    glb = tmp_path / "out.glb"
    bridge.export_glb(str(glb), col)
    data = glb.read_bytes()
    assert data[:4] == b"glTF" and b"chair" in data and b"lamp" in data
    usd = tmp_path / "out.usdc"
    bridge.export_usd(str(usd))
    assert usd.read_bytes()[:8] == b"PXR-USDC"
    usda = tmp_path / "out.usda"
    bridge.export_usd(str(usda), col)
    text = usda.read_text()
    assert "chair" in text and "lamp" in text


def test_save_blend(empty_scene, tmp_path):
    bridge.build_result(make_result())
    path = tmp_path / "sub" / "scene.blend"
    bridge.save_blend(str(path))
    # plain or zstd-compressed (Blender 5 compresses by default)
    head = path.read_bytes()[:7]
    assert head == b"BLENDER" or head[:4] == b"\x28\xb5\x2f\xfd"


def test_bench_import_small():
    report = bench_import(faces=2000)
    assert set(report) >= {"faces", "project_seconds", "naive_seconds"}
    assert 1900 <= report["faces"] <= 2000
    assert report["project_seconds"] > 0 and report["naive_seconds"] > 0
    assert not any(m.name.startswith("bench_") for m in bpy.data.meshes)
