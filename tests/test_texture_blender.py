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
def cube_scene():
    """Empty scene, white uniform world (no sun), a cube at the origin and a camera looking at it."""
    scene = bridge.reset_to_empty_scene()
    for ob in [o for o in bpy.data.objects if o.type == "LIGHT"]:
        bpy.data.objects.remove(ob)
    bg = next(n for n in scene.world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 1.0
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
    yield scene, ob
    bridge.reset_to_empty_scene()


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
