"""Section D of the Blender bridge: baked textures and vertex colours on result meshes (headless bpy).

A textured cube renders (Cycles, 48 px) in the texture's colour under a uniform white world, and
its GLB export carries the image.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sam3d_addon import blender_bridge as bridge  # noqa: E402

# A 4-quadrant texture: top-left (v > 0.5, u < 0.5) is the colour the UVs below point at.
TOP_LEFT = (220, 120, 90)
OTHERS = ((40, 60, 200), (30, 160, 40), (90, 90, 90))


def cube_mesh():
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], np.float32)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)
    return v, f


def quadrant_texture(size=16):
    tex = np.zeros((size, size, 3), np.uint8)
    half = size // 2
    tex[:half, :half] = TOP_LEFT  # rows at the top = v near 1
    tex[:half, half:], tex[half:, :half], tex[half:, half:] = OTHERS
    return tex


def srgb_to_linear(c):
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


@pytest.fixture
def white_scene():
    """An empty scene lit only by a uniform white world (diffuse albedo = rendered colour)."""
    scene = bridge.reset_to_empty_scene()
    for ob in [o for o in bpy.data.objects if o.type == "LIGHT"]:
        bpy.data.objects.remove(ob)
    bg = next(n for n in scene.world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    yield scene
    bridge.reset_to_empty_scene()


@pytest.fixture
def cube_scene(white_scene):
    """The white-world scene with a cube at the origin and a camera looking at it."""
    scene = white_scene
    v, f = cube_mesh()
    ob = bpy.data.objects.new("cube", bridge.mesh_from_numpy("cube", v, f, smooth=False))
    scene.collection.objects.link(ob)
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    cam.location = (2.2, -3.0, 1.8)
    cam.rotation_mode = "QUATERNION"
    cam.rotation_quaternion = (-cam.location).to_track_quat("-Z", "Y")  # look at the origin
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.resolution_x = scene.render.resolution_y = 48
    scene.render.resolution_percentage = 100
    bpy.context.view_layer.update()
    return scene, ob


def _links_to_base_color(mat):
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return [link.from_node for link in mat.node_tree.links if link.to_socket == bsdf.inputs["Base Color"]]


def test_textured_cube_renders_texture_colour(cube_scene, tmp_path):
    scene, ob = cube_scene
    uv = np.tile([[0.25, 0.75]], (len(ob.data.vertices), 1))  # every vertex samples the top-left quadrant
    mat = bridge.apply_texture(ob, uv, quadrant_texture())
    sources = _links_to_base_color(mat)
    assert len(sources) == 1 and sources[0].type == "TEX_IMAGE" and sources[0].image.packed_file is not None
    assert ob.active_material == mat and ob.data.uv_layers.active.name == bridge.UV_LAYER

    rgba = bridge.render_png(str(tmp_path / "cube.png"), engine="CYCLES", samples=32, scene=scene,
                             composite_photo=False)
    covered = rgba[..., 3] > 0.99
    assert covered.sum() > 200
    rendered = srgb_to_linear(rgba[covered][:, :3]).mean(axis=0)
    albedo = srgb_to_linear(np.array(TOP_LEFT) / 255.0)
    # A convex diffuse object in a uniform white world reflects about its albedo; the BSDF's
    # specular layer moves a few percent of the energy between diffuse and specular.
    assert np.all(np.abs(rendered - albedo) <= 0.12 * albedo + 0.045), (rendered, albedo)


def test_vertex_colors_material(cube_scene, tmp_path):
    scene, ob = cube_scene
    colors = np.tile(np.array([[0.1, 0.7, 0.3]], np.float32), (len(ob.data.vertices), 1))
    mat = bridge.apply_vertex_colors(ob, colors)
    sources = _links_to_base_color(mat)
    assert len(sources) == 1 and sources[0].type == "VERTEX_COLOR"
    assert sources[0].layer_name == bridge.COLOR_ATTRIBUTE
    attr = ob.data.color_attributes.active_color
    assert attr.name == bridge.COLOR_ATTRIBUTE and attr.domain == "POINT"
    stored = np.empty(len(ob.data.vertices) * 4, np.float32)
    attr.data.foreach_get("color_srgb", stored)
    assert np.allclose(stored.reshape(-1, 4)[:, :3], colors, atol=1e-5)
    rgba = bridge.render_png(str(tmp_path / "vc.png"), engine="CYCLES", samples=16, scene=scene,
                             composite_photo=False)
    rendered = srgb_to_linear(rgba[rgba[..., 3] > 0.99][:, :3]).mean(axis=0)
    albedo = srgb_to_linear(colors[0])
    assert np.all(np.abs(rendered - albedo) <= 0.12 * albedo + 0.045), (rendered, albedo)


def _glb_json(path):
    blob = open(path, "rb").read()
    magic, _, _ = struct.unpack_from("<4sII", blob, 0)
    assert magic == b"glTF"
    length, kind = struct.unpack_from("<I4s", blob, 12)
    assert kind == b"JSON"
    return json.loads(blob[20:20 + length])


def test_glb_export_contains_texture(cube_scene, tmp_path):
    scene, ob = cube_scene
    uv = np.tile([[0.25, 0.75]], (len(ob.data.loops), 1))  # per-corner UVs
    bridge.apply_texture(ob, uv, quadrant_texture())
    path = tmp_path / "cube.glb"
    bridge.export_glb(str(path), scene.collection)
    doc = _glb_json(path)
    assert len(doc.get("images", [])) == 1 and len(doc.get("textures", [])) == 1
    material = doc["materials"][0]
    assert "baseColorTexture" in material["pbrMetallicRoughness"]
    assert "TEXCOORD_0" in doc["meshes"][0]["primitives"][0]["attributes"]


def test_apply_texture_rejects_wrong_uv_count(cube_scene):
    _, ob = cube_scene
    with pytest.raises(ValueError, match="one row per corner"):
        bridge.apply_texture(ob, np.zeros((5, 2)), quadrant_texture())


# -- build_result: baked textures and Gaussians point clouds ----------------------------------------

def _snapshot():
    sc = bpy.context.scene
    return tuple(sorted(i.name for i in coll) for coll in (
        bpy.data.objects, bpy.data.collections, bpy.data.meshes, bpy.data.cameras, bpy.data.images,
        bpy.data.materials, bpy.data.pointclouds, bpy.data.node_groups)) + (sc.camera.name if sc.camera else None,)


def _gaussians(n=300, color=(0.9, 0.2, 0.1), seed=0):
    rng = np.random.default_rng(seed)
    return {"xyz": rng.uniform(-0.4, 0.4, (n, 3)), "scales": rng.uniform(0.02, 0.04, (n, 3)),
            "rotations": rng.normal(size=(n, 4)), "opacities": rng.uniform(0.2, 1.0, n),
            "colors": np.clip(np.asarray(color) + rng.uniform(-0.05, 0.05, (n, 3)), 0, 1)}


def textured_result(output="mesh", gaussians=False, names=("chair",)):
    """A fabricated 3Dfy Result: cubes 3 units in front of the camera, coloured, baked (the pipeline's
    bake step), optionally with Gaussians."""
    from types import SimpleNamespace

    from sam3d_addon import pose
    from sam3d_addon.texture.bake import bake_object_texture

    v, f = cube_mesh()
    objects = []
    for i, name in enumerate(names):
        colors = np.tile(np.array(TOP_LEFT) / 255.0, (len(v), 1))
        baked = bake_object_texture(v, f, colors, size=32)
        R = np.eye(3)
        t = np.array([0.9 * i, 0.0, 3.0])
        objects.append(SimpleNamespace(
            name=name, mask=f"/masks/{name}.png", vertices=v, faces=f, colors=colors.astype(np.float32),
            uvs=baked.uvs, texture=baked.texture, gaussians=_gaussians(seed=i) if gaussians else None,
            matrix_world=pose.camera_pose_to_object_matrix(R, t, np.full(3, 0.8)), rotation=R, translation=t,
            scale=np.full(3, 0.8)))
    camera = SimpleNamespace(matrix_world=pose.default_camera_matrix_world(), lens_mm=40.0, sensor_width_mm=36.0,
                             resolution=(64, 48), image_path=None, image=np.full((48, 64, 3), 128, np.uint8))
    return SimpleNamespace(objects=objects, camera=camera, timings={}, device="cpu", output=output)




def test_build_result_wires_the_baked_texture_and_renders_it(white_scene, tmp_path):
    result = textured_result()
    col = bridge.build_result(result)
    ob = col.objects["chair"]
    mat = ob.active_material
    assert mat.name.startswith(bridge.TEXTURE_MATERIAL_PREFIX) and len(ob.material_slots) == 1
    (source,) = _links_to_base_color(mat)
    assert source.type == "TEX_IMAGE" and source.image.packed_file is not None  # the .blend is self-contained
    np.testing.assert_allclose(bridge.image_to_array(source.image), result.objects[0].texture, atol=1 / 255 + 1e-6)
    assert len(ob.data.color_attributes) == 0  # a textured mesh has no COLOR_0 to tint the texture in glTF
    layer = ob.data.uv_layers.active
    uv = np.empty(len(ob.data.loops) * 2, np.float32)
    layer.uv.foreach_get("vector", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), result.objects[0].uvs, atol=1e-6)

    albedo = srgb_to_linear(np.array(TOP_LEFT) / 255.0)
    rgba = bridge.render_png(str(tmp_path / "cycles.png"), engine="CYCLES", samples=16, composite_photo=False)
    covered = rgba[..., 3] > 0.99
    assert covered.sum() > 100
    rendered = srgb_to_linear(rgba[covered][:, :3]).mean(axis=0)
    assert np.all(np.abs(rendered - albedo) <= 0.12 * albedo + 0.045), (rendered, albedo)
    # Workbench shows the texture too (its colour type follows the material's image)
    rgba = bridge.render_png(str(tmp_path / "wb.png"), engine="BLENDER_WORKBENCH", composite_photo=False)
    seen = rgba[rgba[..., 3] > 0.99][:, :3].mean(axis=0)
    assert seen[0] > seen[1] > seen[2] and seen[0] - seen[2] > 0.2, seen
    assert white_scene.display.shading.color_type == "MATERIAL"  # restored


def test_build_result_colour_attribute_material_when_not_baked(white_scene):
    result = textured_result()
    result.objects[0].uvs = result.objects[0].texture = None
    ob = bridge.build_result(result).objects["chair"]
    assert ob.active_material.name == bridge.VERTEX_COLOR_MATERIAL
    assert ob.data.color_attributes.active_color.name == bridge.COLOR_ATTRIBUTE
    assert not any(n.type == "TEX_IMAGE" for n in ob.active_material.node_tree.nodes)


def test_glb_export_of_a_baked_result_keeps_the_texture(white_scene, tmp_path):
    col = bridge.build_result(textured_result(names=("chair", "table")))
    path = tmp_path / "result.glb"
    bridge.export_glb(str(path), col)
    doc = _glb_json(path)
    assert len(doc["meshes"]) == 2 and len(doc["images"]) == 2 and len(doc["textures"]) == 2
    for material in doc["materials"]:
        assert "baseColorTexture" in material["pbrMetallicRoughness"]
    for mesh in doc["meshes"]:
        attributes = mesh["primitives"][0]["attributes"]
        assert "TEXCOORD_0" in attributes and "COLOR_0" not in attributes


@pytest.mark.parametrize("pointcloud", [True, False])
def test_gaussians_point_cloud_object(white_scene, tmp_path, pointcloud):
    g = _gaussians(n=500)
    ob = bridge.gaussians_point_cloud("chair", g, np.eye(4), pointcloud=pointcloud)
    assert ob.name == "chair Gaussians (points)" and ob["sam3d_kind"] == "gaussians"
    data = ob.data
    if pointcloud:  # a real PointCloud data-block
        assert ob.type == "POINTCLOUD" and len(data.points) == 500 and len(bpy.data.meshes) == 0
    else:  # vertex-only mesh, drawn as points by a Geometry Nodes modifier
        assert ob.type == "MESH" and len(data.vertices) == 500 and len(data.polygons) == 0
        assert ob.modifiers[0].type == "NODES"
    attrs = data.attributes
    pos = np.empty(500 * 3, np.float32)
    attrs["position"].data.foreach_get("vector", pos)
    np.testing.assert_allclose(pos.reshape(-1, 3), g["xyz"], atol=1e-6)
    col = np.empty(500 * 4, np.float32)
    attrs[bridge.COLOR_ATTRIBUTE].data.foreach_get("color_srgb", col)
    col = col.reshape(-1, 4)
    np.testing.assert_allclose(col[:, :3], g["colors"], atol=1e-4)
    np.testing.assert_allclose(col[:, 3], g["opacities"], atol=1e-4)
    opacity = np.empty(500, np.float32)
    attrs["opacity"].data.foreach_get("value", opacity)
    np.testing.assert_allclose(opacity, g["opacities"], atol=1e-6)
    radius = np.empty(500, np.float32)
    attrs["radius"].data.foreach_get("value", radius)
    np.testing.assert_allclose(radius, g["scales"].mean(axis=1), rtol=1e-5)
    assert attrs["rotation"].data_type == "QUATERNION" and attrs["scale"].data_type == "FLOAT_VECTOR"
    (source,) = _links_to_base_color(ob.active_material)
    assert source.type == "ATTRIBUTE" and source.attribute_name == bridge.COLOR_ATTRIBUTE

    # The material shows the points' colour in a render (Cycles, camera 2 units in front).
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    cam.location, cam.rotation_euler = (0.0, -2.0, 0.0), (np.pi / 2, 0.0, 0.0)
    white_scene.collection.objects.link(cam)
    white_scene.camera = cam
    white_scene.render.resolution_x = white_scene.render.resolution_y = 40
    rgba = bridge.render_png(str(tmp_path / "points.png"), engine="CYCLES", samples=8, scene=white_scene,
                             composite_photo=False)
    covered = rgba[..., 3] > 0.99
    assert covered.sum() > 50
    rendered = srgb_to_linear(rgba[covered][:, :3]).mean(axis=0)
    albedo = srgb_to_linear(np.array([0.9, 0.2, 0.1]))
    assert rendered[0] > 0.5 and np.all(np.abs(rendered - albedo) <= 0.2 * albedo + 0.05), (rendered, albedo)


def test_build_result_gaussians_output_modes(white_scene):
    both = bridge.build_result(textured_result(output="both", gaussians=True))
    kinds = sorted((o.type, o.get("sam3d_kind", "")) for o in both.objects)
    assert kinds == [("CAMERA", ""), ("MESH", ""), ("POINTCLOUD", "gaussians")]
    pts = both.objects["chair Gaussians (points)"]
    np.testing.assert_allclose(np.array(pts.matrix_world), np.array(both.objects["chair"].matrix_world), atol=1e-6)
    assert pts[bridge.RESULT_PROP] and pts["sam3d_mask"] == "/masks/chair.png"
    bridge.remove_collection(both)
    assert len(bpy.data.pointclouds) == 0 and len(bpy.data.images) == 0 and len(bpy.data.meshes) == 0

    only = bridge.build_result(textured_result(output="gaussians", gaussians=True))
    assert sorted(o.type for o in only.objects) == ["CAMERA", "POINTCLOUD"]  # no mesh: the points are the result


def test_failed_build_removes_textures_and_point_clouds(white_scene):
    before = _snapshot()
    result = textured_result(output="both", gaussians=True, names=("good", "bad"))
    result.objects[1].gaussians["colors"] = result.objects[1].gaussians["colors"][:, :2]  # bad shape
    with pytest.raises(ValueError, match="colors"):
        bridge.build_result(result)
    assert _snapshot() == before
    result = textured_result(names=("good", "bad"))
    result.objects[1].uvs = result.objects[1].uvs[:5]  # wrong UV count, after "good" made its image
    with pytest.raises(ValueError, match="one row per corner"):
        bridge.build_result(result)
    assert _snapshot() == before
