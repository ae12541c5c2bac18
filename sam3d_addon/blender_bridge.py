"""The Blender bridge: the only module of the core that imports bpy.

Everything that touches Blender data lives here, on the main thread only:
building a 3Dfy result (meshes via foreach_set, one collection per run, the matched camera with
the photo as background), rendering and exporting, and the synthetic data engine's renders.
The rest of the core hands plain NumPy arrays and dicts to these functions.
"""

from __future__ import annotations

import bpy  # noqa: F401  (the one bpy import of sam3d_addon)
import numpy as np  # noqa: F401

# ============================================================================================
# Section A: 3Dfy results in a scene (owner: add-on/3Dfy work)
# ============================================================================================

# Every function here runs on Blender's main thread.  A result is built into a fresh collection;
# if anything fails half-way, everything created so far is removed again and the scene settings
# touched (active camera, resolution) are restored, so a failed run leaves the scene as it was.

RESULT_PROP = "sam3d_result"  # custom property marking the collections/objects a run created
GREY_MATERIAL = "SAM3D Grey"
VERTEX_COLOR_MATERIAL = "SAM3D Vertex Color"
COLOR_ATTRIBUTE = "Color"


def _as_matrix(m):
    from mathutils import Matrix

    return Matrix(np.asarray(m, dtype=np.float64).reshape(4, 4).tolist())


def degenerate_faces(faces) -> np.ndarray:
    """[F] bool: the polygons that use a vertex twice (degenerate marching-cubes triangles), which
    `mesh_from_numpy` drops."""
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[0] == 0 or faces.shape[1] < 2:
        return np.zeros(faces.shape[0] if faces.ndim else 0, bool)
    return (np.diff(np.sort(faces, axis=1), axis=1) == 0).any(axis=1)


def mesh_from_numpy(name: str, vertices, faces, colors=None, smooth: bool = True) -> "bpy.types.Mesh":
    """A new mesh datablock from NumPy arrays, written with foreach_set only.

    vertices: (V,3) float; faces: (F,k) int (triangles or any fixed polygon size); colors:
    optional (V,3|4) float in [0,1], sRGB (photo colours), stored as a point colour attribute.
    """
    verts = np.ascontiguousarray(np.asarray(vertices, dtype=np.float32).reshape(-1, 3))
    faces = np.asarray(faces)
    if faces.size == 0:
        faces = faces.reshape(0, 3)
    if faces.ndim != 2:
        raise ValueError(f"faces must be (F,k), got shape {faces.shape}")
    n_verts, (n_faces, k) = len(verts), faces.shape
    if n_faces and (int(faces.min()) < 0 or int(faces.max()) >= n_verts):
        raise ValueError(f"face indices out of range for {n_verts} vertices")
    if n_faces and k > 1:
        # A polygon using a vertex twice (degenerate marching-cubes triangles) makes an invalid
        # Blender mesh; drop those here in NumPy instead of running mesh.validate().
        degenerate = degenerate_faces(faces)
        if degenerate.any():
            faces = faces[~degenerate]
            n_faces = len(faces)
    loops = np.ascontiguousarray(faces.astype(np.int32, copy=False).reshape(-1))

    mesh = bpy.data.meshes.new(name)
    try:
        mesh.vertices.add(n_verts)
        mesh.loops.add(n_faces * k)
        # The generic attribute arrays ('position', '.corner_vert') take a raw memcpy path and are
        # far faster than MeshVertex.co / MeshLoop.vertex_index (~100x for loops at 500k faces);
        # fall back to the latter if an attribute is ever missing.
        attrs = mesh.attributes
        if "position" in attrs:
            attrs["position"].data.foreach_set("vector", verts.reshape(-1))
        else:
            mesh.vertices.foreach_set("co", verts.reshape(-1))
        if ".corner_vert" in attrs:
            attrs[".corner_vert"].data.foreach_set("value", loops)
        else:
            mesh.loops.foreach_set("vertex_index", loops)
        mesh.polygons.add(n_faces)
        mesh.polygons.foreach_set("loop_start", np.arange(0, n_faces * k, k, dtype=np.int32))
        if smooth and n_faces:
            mesh.polygons.foreach_set("use_smooth", np.ones(n_faces, dtype=bool))
        if colors is not None:
            cols = np.asarray(colors, dtype=np.float32)
            if cols.shape[0] != n_verts or cols.ndim != 2 or cols.shape[1] not in (3, 4):
                raise ValueError(f"colors must be ({n_verts},3|4), got shape {cols.shape}")
            if cols.shape[1] == 3:
                cols = np.concatenate([cols, np.ones((n_verts, 1), np.float32)], axis=1)
            attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
            attr.data.foreach_set("color_srgb", np.ascontiguousarray(np.clip(cols, 0.0, 1.0)).reshape(-1))
            mesh.color_attributes.active_color = attr
            mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
        mesh.update(calc_edges=True)
    except Exception:
        bpy.data.meshes.remove(mesh)
        raise
    return mesh


def mesh_from_python_lists(name: str, vertices, faces) -> "bpy.types.Mesh":
    """The naive per-vertex / per-polygon Python way to build a mesh.  Never used for results:
    it exists so `sam3d bench import` can measure what foreach_set saves."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    for v, co in zip(mesh.vertices, np.asarray(vertices).tolist()):
        v.co = co
    faces = np.asarray(faces)
    k = faces.shape[1]
    mesh.loops.add(len(faces) * k)
    mesh.polygons.add(len(faces))
    for i, p in enumerate(mesh.polygons):
        p.loop_start = i * k
    for p, tri in zip(mesh.polygons, faces.tolist()):
        p.vertices = tri
    mesh.update(calc_edges=True)
    return mesh


def mesh_signature(mesh) -> tuple:
    """Counts and raw coordinates/corners of a mesh, to compare two meshes exactly."""
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    loops = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    return len(mesh.vertices), len(mesh.polygons), len(mesh.edges), co.tobytes(), loops.tobytes()


def remove_mesh(mesh) -> None:
    bpy.data.meshes.remove(mesh)


def open_blend(path: str) -> "bpy.types.Scene":
    """Open a .blend file (replacing the current data) and return its active scene."""
    bpy.ops.wm.open_mainfile(filepath=str(path))
    return bpy.context.scene


def principled_material(name: str, base_color) -> "bpy.types.Material":
    """A new material: Principled BSDF -> Material Output, the given base colour, roughness 0.8."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender < 5.0 (use_nodes is deprecated, always on, in 5.x)
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    bsdf.inputs["Roughness"].default_value = 0.8
    rgba = tuple(float(c) for c in base_color[:3]) + (1.0,)
    mat.diffuse_color = rgba  # the Solid view / Workbench colour
    bsdf.inputs["Base Color"].default_value = rgba
    return mat


def _material(vertex_colors: bool, created: list):
    """The shared flat grey or vertex-colour material (created on first use)."""
    name = VERTEX_COLOR_MATERIAL if vertex_colors else GREY_MATERIAL
    mat = bpy.data.materials.get(name)
    if mat is not None and mat.library is None:
        return mat
    mat = principled_material(name, (0.6, 0.6, 0.6))
    created.append(mat)
    if vertex_colors:
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
        attr = nodes.new("ShaderNodeVertexColor")
        attr.layer_name = COLOR_ATTRIBUTE
        attr.location = (bsdf.location.x - 300, bsdf.location.y)
        links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def image_from_array(name: str, rgb) -> "bpy.types.Image":
    """A packed Blender image from an HxWx3|4 uint8 (sRGB) array; rows top to bottom."""
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    h, w = arr.shape[:2]
    rgba = np.ones((h, w, 4), dtype=np.float32)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    rgba[..., : min(arr.shape[2], 4)] = arr[..., :4].astype(np.float32) / scale
    img = bpy.data.images.new(name, w, h, alpha=arr.shape[2] == 4)
    img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).reshape(-1))
    img.update()
    img.pack()
    return img


def image_to_array(image: "bpy.types.Image", alpha: bool = False):
    """A Blender image's pixels as HxWx3 (or x4) float32 in [0,1], rows top to bottom.

    8-bit images give their stored (sRGB) values; float images give scene-linear values.
    """
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"image {image.name!r} has no pixels")
    ch = image.channels
    buf = np.empty(w * h * ch, dtype=np.float32)
    image.pixels.foreach_get(buf)
    arr = buf.reshape(h, w, ch)[::-1]
    if ch == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif ch == 2:
        arr = np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:2]], axis=2)
    if arr.shape[2] == 3 and alpha:
        arr = np.concatenate([arr, np.ones((h, w, 1), np.float32)], axis=2)
    return np.ascontiguousarray(arr if alpha else arr[..., :3])


def _photo_image(camera_result, photo_image, created: list):
    if photo_image is not None:
        return photo_image
    path = getattr(camera_result, "image_path", None)
    if path:
        import os

        if os.path.isfile(path):
            before = set(bpy.data.images)
            img = bpy.data.images.load(path, check_existing=True)
            if img not in before:
                created.append(img)
            return img
    arr = getattr(camera_result, "image", None)
    if arr is not None:
        img = image_from_array("SAM3D photo", arr)
        created.append(img)
        return img
    return None


def _remove_ids(ids) -> None:
    for idb in reversed(list(ids)):
        try:
            coll = {
                bpy.types.Object: bpy.data.objects, bpy.types.Mesh: bpy.data.meshes,
                bpy.types.Camera: bpy.data.cameras, bpy.types.Material: bpy.data.materials,
                bpy.types.Image: bpy.data.images, bpy.types.Collection: bpy.data.collections,
                bpy.types.PointCloud: bpy.data.pointclouds, bpy.types.GeometryNodeTree: bpy.data.node_groups,
            }[type(idb)]
        except (KeyError, ReferenceError):
            continue
        try:
            coll.remove(idb)
        except ReferenceError:
            pass


def build_result(result, context=None, collection_name: str | None = None, *,
                 photo_image=None, set_scene_camera: bool = True) -> "bpy.types.Collection":
    """Build a 3Dfy result into one new collection of the scene; return the collection.

    One mesh object per ObjectResult (named after its mask, matrix_world from the result) with its
    own Principled BSDF material wired to the baked texture (an Image Texture node reading the
    packed image, through the UV map) when the result has `texture` and `uvs`, else the shared
    colour-attribute material when it has `colors`, else flat grey; a Gaussians point cloud
    ("<name> Gaussians (points)", `gaussians_point_cloud`) per object with `gaussians` -- for a
    result of `output == "gaussians"` instead of the mesh, else beside it; and the matched camera
    (lens, sensor, the photo as its background image), made the scene camera with the render
    resolution of the photo.  `photo_image` (a bpy Image) is used as the background instead of
    loading the photo again.  On any failure nothing is left behind and the exception propagates.
    """
    import os

    context = context or bpy.context
    scene = context.scene
    cam_res = result.camera
    stem = os.path.splitext(os.path.basename(cam_res.image_path))[0] if cam_res.image_path else None
    if stem is None and photo_image is not None:
        stem = os.path.splitext(photo_image.name)[0]
    collection_name = collection_name or f"SAM3D {stem or 'photo'}"

    render = scene.render
    saved = (scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage,
             render.pixel_aspect_x, render.pixel_aspect_y)
    created: list = []
    try:
        collection = bpy.data.collections.new(collection_name)
        created.append(collection)
        collection[RESULT_PROP] = True
        scene.collection.children.link(collection)

        points_only = getattr(result, "output", "mesh") == "gaussians"
        for obj_res in result.objects:
            gaussians = getattr(obj_res, "gaussians", None)
            if not (points_only and gaussians is not None):
                _build_mesh_object(obj_res, collection, created)
            if gaussians is not None:
                pts = gaussians_point_cloud(obj_res.name, gaussians, obj_res.matrix_world, collection,
                                            created=created)
                pts[RESULT_PROP] = True
                if getattr(obj_res, "mask", None):
                    pts["sam3d_mask"] = str(obj_res.mask)

        cam_data = bpy.data.cameras.new(f"{collection_name} camera")
        created.append(cam_data)
        cam_data.lens = float(cam_res.lens_mm)
        cam_data.sensor_width = float(cam_res.sensor_width_mm)
        cam_data.sensor_fit = "AUTO"
        cam_data.clip_start = 0.01
        cam_data.clip_end = 1000.0
        photo = _photo_image(cam_res, photo_image, created)
        if photo is not None:
            cam_data.show_background_images = True
            bg = cam_data.background_images.new()
            bg.image = photo
            bg.alpha = 1.0
            bg.display_depth = "BACK"
            bg.frame_method = "FIT"
        cam_ob = bpy.data.objects.new(f"{collection_name} camera", cam_data)
        created.append(cam_ob)
        cam_ob[RESULT_PROP] = True
        collection.objects.link(cam_ob)
        cam_ob.matrix_world = _as_matrix(cam_res.matrix_world)

        if set_scene_camera:
            scene.camera = cam_ob
            w, h = (int(v) for v in cam_res.resolution)
            render.resolution_x, render.resolution_y = w, h
            render.resolution_percentage = 100
            render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        context.view_layer.update()
    except BaseException:
        (scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage,
         render.pixel_aspect_x, render.pixel_aspect_y) = saved
        _remove_ids(created)
        raise
    return collection


def _build_mesh_object(obj_res, collection, created: list):
    """One result mesh object with its material (see build_result); IDs made go into `created`."""
    texture, uvs = getattr(obj_res, "texture", None), getattr(obj_res, "uvs", None)
    textured = texture is not None and uvs is not None
    # A textured mesh carries no colour attribute: glTF viewers multiply COLOR_0 into the texture.
    colors = None if textured else getattr(obj_res, "colors", None)
    mesh = mesh_from_numpy(obj_res.name, obj_res.vertices, obj_res.faces, colors=colors)
    created.append(mesh)
    ob = bpy.data.objects.new(obj_res.name, mesh)
    created.append(ob)
    ob[RESULT_PROP] = True
    if getattr(obj_res, "mask", None):
        ob["sam3d_mask"] = str(obj_res.mask)
    collection.objects.link(ob)
    ob.matrix_world = _as_matrix(obj_res.matrix_world)
    if textured:
        faces = np.asarray(obj_res.faces)
        uvs = np.asarray(uvs, dtype=np.float32).reshape(-1, 2)
        dropped = degenerate_faces(faces)
        if dropped.any() and len(uvs) == faces.size:  # per-corner UVs of the faces mesh_from_numpy dropped
            uvs = uvs.reshape(len(faces), -1, 2)[~dropped].reshape(-1, 2)
        before = (set(bpy.data.images), set(bpy.data.materials))
        try:
            apply_texture(ob, uvs, texture, name=obj_res.name)
        finally:
            created.extend(i for i in bpy.data.images if i not in before[0])
            created.extend(m for m in bpy.data.materials if m not in before[1])
    else:
        mesh.materials.append(_material(colors is not None, created))
    return ob


def remove_collection(collection) -> None:
    """Remove a result collection: its objects (recursively), their now-unused data, itself."""
    def walk(coll):
        for child in list(coll.children):
            yield from walk(child)
        yield coll

    colls = list(walk(collection))
    objects = {ob for c in colls for ob in c.all_objects}
    datas = [ob.data for ob in objects if ob.data is not None]
    materials = {slot.material for ob in objects for slot in ob.material_slots if slot.material}
    images = {bg.image for ob in objects if ob.type == "CAMERA"
              for bg in ob.data.background_images if bg.image is not None}
    images |= {node.image for mat in materials if mat.node_tree is not None
               for node in mat.node_tree.nodes if node.type == "TEX_IMAGE" and node.image is not None}
    groups = {mod.node_group for ob in objects for mod in ob.modifiers
              if mod.type == "NODES" and mod.node_group is not None}
    for scene in bpy.data.scenes:
        if scene.camera in objects:
            scene.camera = None
    for ob in objects:
        bpy.data.objects.remove(ob)
    for data in datas:
        if data.users == 0:
            if isinstance(data, bpy.types.Mesh):
                bpy.data.meshes.remove(data)
            elif isinstance(data, bpy.types.Camera):
                bpy.data.cameras.remove(data)
            elif isinstance(data, bpy.types.PointCloud):
                bpy.data.pointclouds.remove(data)
    for group in groups:
        if group.users == 0:
            bpy.data.node_groups.remove(group)
    for mat in materials:
        if mat.users == 0:
            bpy.data.materials.remove(mat)
    for img in images:
        if img.users == 0:
            bpy.data.images.remove(img)
    for c in colls:
        bpy.data.collections.remove(c)


def reset_to_empty_scene() -> "bpy.types.Scene":
    """An empty scene (no objects, collections, meshes, lights, images...) for the CLI.

    Done by hand rather than with read_factory_settings / read_homefile so that preferences and
    enabled add-ons (the extension itself, in tests) are left alone.
    """
    scene = bpy.context.window.scene if bpy.context.window else bpy.data.scenes[0]
    for other in list(bpy.data.scenes):
        if other != scene:
            bpy.data.scenes.remove(other)
    ids = []
    for coll in (bpy.data.objects, bpy.data.collections, bpy.data.meshes, bpy.data.cameras,
                 bpy.data.lights, bpy.data.materials, bpy.data.images, bpy.data.curves,
                 bpy.data.node_groups, bpy.data.textures, bpy.data.actions, bpy.data.pointclouds):
        ids.extend(i for i in coll if i.library is None)
    if ids:
        bpy.data.batch_remove(ids)
    bpy.data.orphans_purge(do_recursive=True)
    scene.camera = None
    _default_lighting(scene)
    return scene


def _default_lighting(scene) -> None:
    """A grey world and one sun from above the camera, so Cycles renders of an empty scene
    with a fresh result are lit (Workbench uses its own studio light)."""
    import math

    world = scene.world or bpy.data.worlds.new("SAM3D World")
    scene.world = world
    world.color = (0.5, 0.5, 0.5)
    if world.node_tree is None:  # Blender < 5.0
        world.use_nodes = True
    bg = next((n for n in world.node_tree.nodes if n.type == "BACKGROUND"), None)
    if bg is not None:
        bg.inputs["Color"].default_value = (0.5, 0.5, 0.5, 1.0)
        bg.inputs["Strength"].default_value = 1.0
    sun = bpy.data.lights.new("SAM3D Sun", "SUN")
    sun.energy = 3.0
    ob = bpy.data.objects.new("SAM3D Sun", sun)
    ob.rotation_euler = (math.radians(35.0), 0.0, math.radians(20.0))
    scene.collection.objects.link(ob)


def save_blend(path: str, pack_images: bool = False) -> None:
    """Save the current file as `path` (the photo is referenced by path unless pack_images)."""
    import os

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if pack_images:
        for img in bpy.data.images:
            if img.source == "FILE" and not img.packed_file and img.filepath:
                img.pack()
    bpy.ops.wm.save_as_mainfile(filepath=path, check_existing=False)


def _objects_of(collection):
    return list(collection.all_objects) if collection is not None else None


class _Selection:
    """Select exactly `objects` for an exporter, then restore the selection."""

    def __init__(self, objects):
        self.objects = objects

    def __enter__(self):
        vl = bpy.context.view_layer
        self.saved = [(ob, ob.select_get()) for ob in vl.objects]
        self.active = vl.objects.active
        wanted = set(self.objects)
        for ob in vl.objects:
            ob.select_set(ob in wanted)
        return self

    def __exit__(self, *exc):
        vl = bpy.context.view_layer
        for ob, sel in self.saved:
            try:
                ob.select_set(sel)
            except (ReferenceError, RuntimeError):
                pass
        vl.objects.active = self.active
        return False


def export_glb(path: str, collection=None) -> None:
    """Export the meshes of `collection` (all meshes when None) as binary glTF (+Z up -> +Y up)."""
    import os

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pool = _objects_of(collection) if collection is not None else list(bpy.context.view_layer.objects)
    objects = [ob for ob in pool if ob.type == "MESH"]
    if not objects:
        raise ValueError("nothing to export: no mesh objects")
    props = {p.identifier for p in bpy.ops.export_scene.gltf.get_rna_type().properties}
    kwargs = dict(filepath=path, export_format="GLB", use_selection=True, export_apply=True)
    optional = {"export_cameras": False, "export_lights": False, "export_vertex_color": "ACTIVE",
                "export_yup": True}
    kwargs.update({k: v for k, v in optional.items() if k in props})
    with _Selection(objects):
        bpy.ops.export_scene.gltf(**kwargs)


def export_usd(path: str, collection=None) -> None:
    """Export the scene (or only `collection`'s objects) with Blender's USD exporter."""
    import os

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if collection is None:
        bpy.ops.wm.usd_export(filepath=path, selected_objects_only=False, export_materials=True)
        return
    with _Selection(_objects_of(collection)):
        bpy.ops.wm.usd_export(filepath=path, selected_objects_only=True, export_materials=True)


def _srgb_to_linear(c):
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c):
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1.0 / 2.4) - 0.055)


def _resize_nearest(arr, w: int, h: int):
    ys = np.minimum((np.arange(h) + 0.5) * arr.shape[0] / h, arr.shape[0] - 1).astype(int)
    xs = np.minimum((np.arange(w) + 0.5) * arr.shape[1] / w, arr.shape[1] - 1).astype(int)
    return arr[ys][:, xs]


def _camera_photo(camera_ob):
    if camera_ob is None or camera_ob.type != "CAMERA":
        return None
    for bg in camera_ob.data.background_images:
        if bg.source == "IMAGE" and bg.image is not None and bg.show_background_image:
            return bg.image
    return None


def render_png(path: str, engine: str = "CYCLES", samples: int = 16, scene=None,
               percentage: int | None = None, composite_photo: bool = True):
    """Render through the scene camera to a PNG, the photo behind the objects.

    The photo is the camera's background image, which is a viewport-only overlay: renders never
    show it.  Rather than building a compositor node tree (whose API moved in Blender 5.0 from
    `scene.node_tree` to `scene.compositing_node_group`) we render with a transparent film and
    alpha-over the photo in NumPy (in linear light, then back to sRGB), which is identical for
    Cycles and Workbench and across Blender versions.  View transform 'Standard' keeps the
    photo's colours unchanged.  Scene settings are restored afterwards.
    Returns the composited image as an HxWx4 float32 array (sRGB, rows top to bottom).
    """
    import os
    import tempfile

    scene = scene or bpy.context.scene
    if scene.camera is None:
        raise ValueError("the scene has no camera to render through")
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = scene.render
    saved = dict(engine=r.engine, film_transparent=r.film_transparent, filepath=r.filepath,
                 percentage=r.resolution_percentage,
                 file_format=r.image_settings.file_format, color_mode=r.image_settings.color_mode,
                 color_depth=r.image_settings.color_depth,
                 view_transform=scene.view_settings.view_transform, look=scene.view_settings.look)
    shading = scene.display.shading
    saved_shading = (shading.light, shading.color_type)
    saved_cycles = None
    tmpdir = tempfile.mkdtemp(prefix="sam3d_render_")
    raw_path = os.path.join(tmpdir, "render.png")
    loaded = None
    try:
        r.engine = engine
        r.film_transparent = True
        if percentage is not None:
            r.resolution_percentage = int(percentage)
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGBA"
        r.image_settings.color_depth = "8"
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        if engine == "CYCLES":
            c = scene.cycles
            saved_cycles = (c.samples, c.device, c.use_denoising, c.use_adaptive_sampling)
            c.samples = int(samples)
            c.device = "CPU"
            c.use_denoising = False
            c.use_adaptive_sampling = False
        elif engine == "BLENDER_WORKBENCH":
            shown = [ob for ob in scene.objects if ob.type == "MESH" and ob.visible_get()]
            has_texture = any(slot.material is not None and slot.material.node_tree is not None
                              and any(n.type == "TEX_IMAGE" for n in slot.material.node_tree.nodes)
                              for ob in shown for slot in ob.material_slots)
            has_colors = any(len(ob.data.color_attributes) for ob in shown)
            shading.light = "STUDIO"
            shading.color_type = "TEXTURE" if has_texture else "VERTEX" if has_colors else "MATERIAL"
        r.filepath = raw_path
        bpy.ops.render.render(write_still=True, scene=scene.name)

        loaded = bpy.data.images.load(raw_path, check_existing=False)
        fg = image_to_array(loaded, alpha=True)
        h, w = fg.shape[:2]
        out = fg.copy()
        photo = _camera_photo(scene.camera) if composite_photo else None
        if photo is not None and photo.size[0] > 0:
            bg = image_to_array(photo, alpha=False)
            if not photo.is_float:
                bg = _srgb_to_linear(bg)
            if bg.shape[:2] != (h, w):
                bg = _resize_nearest(bg, w, h)
            a = fg[..., 3:4]
            lin = _srgb_to_linear(fg[..., :3]) * a + bg * (1.0 - a)
            out = np.concatenate([_linear_to_srgb(lin), np.ones((h, w, 1), np.float32)], axis=2)
        out = out.astype(np.float32)
        _write_png(path, out)
        return out
    finally:
        if loaded is not None:
            bpy.data.images.remove(loaded)
        r.engine = saved["engine"]
        r.film_transparent = saved["film_transparent"]
        r.filepath = saved["filepath"]
        r.resolution_percentage = saved["percentage"]
        r.image_settings.file_format = saved["file_format"]
        r.image_settings.color_mode = saved["color_mode"]
        r.image_settings.color_depth = saved["color_depth"]
        scene.view_settings.view_transform = saved["view_transform"]
        scene.view_settings.look = saved["look"]
        shading.light, shading.color_type = saved_shading
        if saved_cycles is not None:
            c = scene.cycles
            c.samples, c.device, c.use_denoising, c.use_adaptive_sampling = saved_cycles
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)


def _write_png(path: str, rgba) -> None:
    """Write an HxWx4 float (sRGB, top row first) array as an 8-bit RGBA PNG via Blender."""
    h, w = rgba.shape[:2]
    img = bpy.data.images.new("sam3d_png_out", w, h, alpha=True)
    try:
        img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], dtype=np.float32).reshape(-1))
        img.filepath_raw = path
        img.file_format = "PNG"
        img.save()
    finally:
        bpy.data.images.remove(img)

# (end of section A)

# ============================================================================================
# Section B: synthetic data engine renders (owner: data engine work)
# ============================================================================================

# Every function here runs on Blender's main thread.  The data engine renders in its own scene
# (DATA_SCENE), so the user's scene and Section A's results are never touched; the scene and its
# persistent parts (camera, sun, shadow catcher, compositor) are looked up by name on every call
# and rebuilt if something removed them.  Per-sample objects live only for one render.

DATA_SCENE = "sam3d_data_engine"
_DATA_PREFIX = "sam3d_data_"
_data_tmp_dir = None  # the EXR passes of one render go here and are deleted once read


def _data_name(part: str) -> str:
    return _DATA_PREFIX + part


def _data_build_scene() -> "bpy.types.Scene":
    """Create the data engine's scene: camera, sun, shadow-catcher ground, world, compositor."""
    scene = bpy.data.scenes.new(DATA_SCENE)
    cam_data = bpy.data.cameras.new(_data_name("camera"))
    cam_data.sensor_fit = "AUTO"  # the field of view spans the longer side
    cam_data.clip_start, cam_data.clip_end = 0.01, 1000.0
    cam = bpy.data.objects.new(_data_name("camera"), cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam

    sun_data = bpy.data.lights.new(_data_name("sun"), "SUN")
    sun = bpy.data.objects.new(_data_name("sun"), sun_data)
    scene.collection.objects.link(sun)

    # invisible ground that only receives shadows (Cycles shadow catcher): objects rest on z = 0
    ground_mesh = bpy.data.meshes.new(_data_name("ground"))
    size = 200.0
    ground_mesh.from_pydata([(-size, -size, 0), (size, -size, 0), (size, size, 0), (-size, size, 0)], [], [(0, 1, 2, 3)])
    ground = bpy.data.objects.new(_data_name("ground"), ground_mesh)
    ground.is_shadow_catcher = True
    ground.pass_index = 0
    scene.collection.objects.link(ground)

    world = bpy.data.worlds.new(_data_name("world"))  # Blender 5: node tree (Background) by default
    scene.world = world

    render = scene.render
    render.engine = "CYCLES"
    render.film_transparent = True
    render.resolution_percentage = 100
    render.use_compositing = True
    render.use_sequencer = False
    scene.view_settings.view_transform = "Standard"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.use_denoising = False
    cycles.use_adaptive_sampling = False
    cycles.max_bounces, cycles.diffuse_bounces, cycles.glossy_bounces = 4, 2, 2
    cycles.transmission_bounces, cycles.transparent_max_bounces = 2, 2
    cycles.caustics_reflective = cycles.caustics_refractive = False
    layer = scene.view_layers[0]
    layer.use_pass_z = True
    layer.use_pass_object_index = True

    # compositor: write the linear RGBA, depth and object index as float EXR files
    tree = bpy.data.node_groups.new(_data_name("compositor"), "CompositorNodeTree")
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene = scene
    _data_exr_outputs(tree, layers, _data_name("passes"), "pass_",
                      (("rgba", "Image", "RGBA"), ("depth", "Depth", "FLOAT"), ("index", "Object Index", "FLOAT")))
    scene.compositing_node_group = tree
    return scene


def _data_exr_outputs(tree, layers, node_name: str, prefix: str, items) -> None:
    """A File Output node writing render-layer sockets as uncompressed float EXR passes;
    items: (file item name, render-layer socket, kind)."""
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.name = node_name
    out.format.media_type = "IMAGE"
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    out.format.exr_codec = "NONE"
    out.file_name = prefix
    for item_name, socket, kind in items:
        out.file_output_items.new(kind, item_name)
        tree.links.new(layers.outputs[socket], out.inputs[item_name])


def _data_scene() -> "bpy.types.Scene":
    """The data engine's scene, rebuilt if it or one of its parts has been removed."""
    scene = bpy.data.scenes.get(DATA_SCENE)
    ok = (scene is not None and scene.camera is not None
          and scene.camera.name == _data_name("camera")
          and scene.objects.get(_data_name("sun")) is not None
          and scene.objects.get(_data_name("ground")) is not None
          and scene.world is not None
          and scene.compositing_node_group is not None
          and scene.compositing_node_group.nodes.get(_data_name("passes")) is not None)
    if not ok:
        _data_remove_scene()
        scene = _data_build_scene()
    return scene


def _data_remove_scene() -> None:
    """Remove the data engine's scene and every datablock it created."""
    ids = [i for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.cameras,
                          bpy.data.lights, bpy.data.worlds, bpy.data.node_groups)
           for i in coll if i.name.startswith(_DATA_PREFIX)]
    scene = bpy.data.scenes.get(DATA_SCENE)
    if scene is not None:
        ids.append(scene)
    if ids:
        bpy.data.batch_remove(ids)


def _data_mesh(name: str, vertices, faces, smooth_angle_deg: float) -> "bpy.types.Mesh":
    verts = np.ascontiguousarray(np.asarray(vertices, dtype=np.float32).reshape(-1))
    tris = np.ascontiguousarray(np.asarray(faces, dtype=np.int32).reshape(-1))
    n_faces = tris.size // 3
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(verts.size // 3)
    mesh.vertices.foreach_set("co", verts)
    mesh.loops.add(tris.size)
    mesh.loops.foreach_set("vertex_index", tris)
    mesh.polygons.add(n_faces)
    mesh.polygons.foreach_set("loop_start", np.arange(0, tris.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    # smooth curved surfaces, keep creases of boxes and rims sharp
    mesh.shade_smooth()
    mesh.set_sharp_from_angle(angle=float(np.radians(smooth_angle_deg)))
    return mesh


def _data_material(name: str, spec: dict, aov_name: str | None = None) -> "bpy.types.Material":
    """Principled BSDF; spec: base_color (linear RGB), roughness, metallic, optional
    pattern = {color (linear RGB), scale, detail} mixed in with a noise texture.
    aov_name: also send exactly the Base Color input's colour to a shader AOV of that name."""
    mat = bpy.data.materials.new(name)  # Blender 5: node tree (Principled BSDF) by default
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    base_color = (*[float(c) for c in spec["base_color"]], 1.0)
    bsdf.inputs["Base Color"].default_value = base_color
    bsdf.inputs["Roughness"].default_value = float(spec["roughness"])
    bsdf.inputs["Metallic"].default_value = float(spec["metallic"])
    aov = None
    if aov_name:
        aov = nodes.new("ShaderNodeOutputAOV")
        aov.aov_name = aov_name
        aov.inputs["Color"].default_value = base_color
    pattern = spec.get("pattern")
    if pattern:
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = float(pattern["scale"])
        noise.inputs["Detail"].default_value = float(pattern["detail"])
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].color = base_color
        ramp.color_ramp.elements[1].color = (*[float(c) for c in pattern["color"]], 1.0)
        links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
        links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
        if aov is not None:
            links.new(ramp.outputs["Color"], aov.inputs["Color"])
    return mat


def _data_quiet_render(scene_name: str) -> None:
    """Render a still; Blender's per-file 'Saved: ...' lines (C-level stdout) go to /dev/null
    so that `sam3d data` prints only its own progress."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        bpy.ops.render.render(write_still=False, scene=scene_name)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _data_read_exr(path: str) -> np.ndarray:
    """Float RGBA pixels [H,W,4] of an EXR file, top row first, no colour conversion."""
    img = bpy.data.images.load(path, check_existing=False)
    try:
        img.colorspace_settings.is_data = True
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1].copy()


def _data_render_settings(scene, resolution: int, samples: int, seed: int, threads: int, fov_deg: float) -> None:
    """Square image size, Cycles samples/seed/threads and the camera's field of view."""
    render = scene.render
    render.resolution_x = render.resolution_y = int(resolution)
    render.threads_mode = "FIXED" if threads else "AUTO"
    if threads:
        render.threads = int(threads)
    scene.cycles.samples = int(samples)
    scene.cycles.seed = int(seed) % (2 ** 31)
    scene.camera.data.angle = float(np.radians(fov_deg))


def _data_object(name: str, spec: dict, aov_name: str | None = None) -> list:
    """Mesh, material and object of one object spec, linked to no scene; returns [mesh, material,
    object] (the object last)."""
    mesh = _data_mesh(f"{name}mesh", spec["vertices"], spec["faces"], spec.get("smooth_angle_deg", 35.0))
    mat = _data_material(f"{name}material", spec["material"], aov_name=aov_name)
    mesh.materials.append(mat)
    ob = bpy.data.objects.new(f"{name}object", mesh)
    ob.location = [float(c) for c in spec["location"]]
    ob.rotation_euler = (0.0, 0.0, float(spec["yaw"]))
    ob.scale = (float(spec["scale"]),) * 3
    return [mesh, mat, ob]


def _data_render_passes(scene, node_name: str, prefix: str, names) -> dict:
    """Render `scene` and read back the EXR passes its File Output node `node_name` writes as
    PREFIX<name>*.exr (float arrays [H,W,C]); the files are deleted once read."""
    import atexit
    import glob
    import os
    import shutil
    import tempfile

    global _data_tmp_dir
    if _data_tmp_dir is None or not os.path.isdir(_data_tmp_dir):
        _data_tmp_dir = tempfile.mkdtemp(prefix="sam3d_data_render_")
        atexit.register(shutil.rmtree, _data_tmp_dir, True)
    scene.compositing_node_group.nodes[node_name].directory = _data_tmp_dir + os.sep
    for old in glob.glob(os.path.join(_data_tmp_dir, f"{prefix}*")):
        os.remove(old)
    _data_quiet_render(scene.name)
    passes = {}
    for name in names:
        found = sorted(glob.glob(os.path.join(_data_tmp_dir, f"{prefix}{name}*.exr")))
        if not found:
            raise RuntimeError(f"Cycles wrote no {name} pass to {_data_tmp_dir}")
        passes[name] = _data_read_exr(found[0])
        os.remove(found[0])
    return passes


def data_render(objects, camera_matrix_world, fov_deg: float, resolution: int, lighting: dict,
                samples: int = 10, seed: int = 0, shadow_catcher: bool = True,
                threads: int = 0) -> dict:
    """Render one synthetic sample with Cycles (CPU) and return its passes as arrays.

    objects: list of dicts with `vertices` [V,3] / `faces` [F,3] (canonical mesh), `location`
      (3,), `yaw` (radians about world Z), `scale` (metres), `pass_index` (int >= 1),
      `material` (see _data_material) and optional `smooth_angle_deg`.
    camera_matrix_world: 4x4 Blender camera matrix (looks down its -Z, +Y up).
    lighting: sun_direction (3, pointing from the sun towards the scene), sun_strength,
      sun_color (3), sun_angle_deg, world_color (3), world_strength.
    Returns rgba (float32 [H,W,4], linear, premultiplied, film transparent; shadows of the
    catcher in alpha), depth (float32 [H,W], camera z distance, inf where no object), index
    (int32 [H,W], pass_index, 0 = nothing), object_matrices (list of 4x4 float64 as Blender
    evaluated them) and camera_matrix (4x4 float64).
    """
    from mathutils import Matrix, Vector

    scene = _data_scene()
    _data_render_settings(scene, resolution, samples, seed, threads, fov_deg)
    cam = scene.camera
    cam.matrix_world = Matrix(np.asarray(camera_matrix_world, dtype=np.float64).tolist())

    sun = scene.objects[_data_name("sun")]
    direction = Vector([float(c) for c in lighting["sun_direction"]]).normalized()
    sun.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()  # a sun shines down its -Z
    sun.data.energy = float(lighting["sun_strength"])
    sun.data.color = [float(c) for c in lighting["sun_color"]]
    sun.data.angle = float(np.radians(lighting["sun_angle_deg"]))
    background = next(n for n in scene.world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (*[float(c) for c in lighting["world_color"]], 1.0)
    background.inputs["Strength"].default_value = float(lighting["world_strength"])
    scene.objects[_data_name("ground")].hide_render = not shadow_catcher

    created, obs = [], []  # created this call, removed again at the end
    try:
        for k, spec in enumerate(objects):
            parts = _data_object(_data_name(f"{k}_"), spec)
            created += parts
            ob = parts[-1]
            obs.append(ob)
            ob.pass_index = int(spec["pass_index"])
            scene.collection.objects.link(ob)
        scene.view_layers[0].update()
        object_matrices = [np.array(ob.matrix_world, dtype=np.float64) for ob in obs]
        camera_matrix = np.array(cam.matrix_world, dtype=np.float64)
        passes = _data_render_passes(scene, _data_name("passes"), "pass_", ("rgba", "depth", "index"))
    finally:
        if created:
            bpy.data.batch_remove(created)

    index = np.rint(passes["index"][..., 0]).astype(np.int32)
    depth = passes["depth"][..., 0].astype(np.float32)
    depth = np.where(index > 0, depth, np.inf).astype(np.float32)  # the ground is not a surface
    return {"rgba": passes["rgba"].astype(np.float32), "depth": depth, "index": index,
            "object_matrices": object_matrices, "camera_matrix": camera_matrix}


# -- albedo views of the target (texture ground truth, `sam3d data --texture`) -------------------
# A scene of its own (DATA_TEXTURE_SCENE, datablocks prefixed _DATA_TEX_PREFIX, which the photo
# scene's clean-up does not match): the target alone, no lights, black world, film transparent,
# no bounces; the material's Base Color also goes to a shader AOV that the compositor writes
# out with the alpha and depth passes.

DATA_TEXTURE_SCENE = "sam3d_datatex_scene"
_DATA_TEX_PREFIX = "sam3d_datatex_"
_DATA_AOV = "albedo"


def _data_tex_name(part: str) -> str:
    return _DATA_TEX_PREFIX + part


def _data_texture_build_scene() -> "bpy.types.Scene":
    scene = bpy.data.scenes.new(DATA_TEXTURE_SCENE)
    cam_data = bpy.data.cameras.new(_data_tex_name("camera"))
    cam_data.sensor_fit = "AUTO"
    cam_data.clip_start, cam_data.clip_end = 0.01, 1000.0
    cam = bpy.data.objects.new(_data_tex_name("camera"), cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    world = bpy.data.worlds.new(_data_tex_name("world"))
    background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
    background.inputs["Strength"].default_value = 0.0
    scene.world = world

    render = scene.render
    render.engine = "CYCLES"
    render.film_transparent = True
    render.resolution_percentage = 100
    render.use_compositing = True
    render.use_sequencer = False
    render.use_persistent_data = True  # re-renders from other cameras reuse the synced scene
    scene.view_settings.view_transform = "Standard"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.use_denoising = False
    cycles.use_adaptive_sampling = False
    cycles.max_bounces = cycles.diffuse_bounces = cycles.glossy_bounces = 0
    cycles.transmission_bounces = cycles.volume_bounces = cycles.transparent_max_bounces = 0
    cycles.caustics_reflective = cycles.caustics_refractive = False
    # box filter one pixel wide: alpha is the covered fraction of the pixel's square, the AOV the
    # mean colour over it, and the (not anti-aliased) depth pass is that of a point inside it
    cycles.pixel_filter_type, cycles.filter_width = "BOX", 1.0
    layer = scene.view_layers[0]
    layer.use_pass_z = True
    aov = layer.aovs.add()
    aov.name, aov.type = _DATA_AOV, "COLOR"

    tree = bpy.data.node_groups.new(_data_tex_name("compositor"), "CompositorNodeTree")
    layers = tree.nodes.new("CompositorNodeRLayers")  # after the AOV: it has the AOV's socket
    layers.scene = scene
    _data_exr_outputs(tree, layers, _data_tex_name("passes"), "tex_",
                      (("albedo", _DATA_AOV, "RGBA"), ("alpha", "Alpha", "FLOAT"), ("depth", "Depth", "FLOAT")))
    scene.compositing_node_group = tree
    return scene


def _data_texture_scene() -> "bpy.types.Scene":
    """The albedo-view scene, rebuilt if it or one of its parts has been removed."""
    scene = bpy.data.scenes.get(DATA_TEXTURE_SCENE)
    ok = (scene is not None and scene.camera is not None
          and scene.camera.name == _data_tex_name("camera")
          and scene.world is not None
          and any(a.name == _DATA_AOV for a in scene.view_layers[0].aovs)
          and scene.compositing_node_group is not None
          and scene.compositing_node_group.nodes.get(_data_tex_name("passes")) is not None)
    if not ok:
        _data_texture_remove_scene()
        scene = _data_texture_build_scene()
    return scene


def _data_texture_remove_scene() -> None:
    ids = [i for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.cameras,
                          bpy.data.worlds, bpy.data.node_groups)
           for i in coll if i.name.startswith(_DATA_TEX_PREFIX)]
    scene = bpy.data.scenes.get(DATA_TEXTURE_SCENE)
    if scene is not None:
        ids.append(scene)
    if ids:
        bpy.data.batch_remove(ids)


def data_render_albedo_views(target: dict, camera_matrices, fov_deg: float, resolution: int = 64,
                             samples: int = 4, seed: int = 0, threads: int = 0) -> dict:
    """Render the albedo (Base Color through a shader AOV, no lighting) of one object alone
    from several cameras with Cycles (CPU).

    target: an object spec as in data_render (pass_index is ignored).
    camera_matrices: [V,4,4] Blender camera matrices; square images of `resolution`, field of
      view fov_deg.
    Returns albedo (float32 [V,H,W,3], linear, straight colour: the AOV divided by the alpha,
    0 where alpha is 0), alpha (float32 [V,H,W], covered fraction of the pixel 0..1, box
    filter), depth (float32 [V,H,W], camera-space depth of the pixel centre's ray (Cycles' depth
    pass is not anti-aliased), inf where it misses), object_matrix (4x4 float64 as Blender
    evaluated it) and camera_matrices ([V,4,4] float64).
    """
    from mathutils import Matrix

    scene = _data_texture_scene()
    _data_render_settings(scene, resolution, samples, seed, threads, fov_deg)
    cam = scene.camera

    created = []
    albedo, alpha, depth, cameras = [], [], [], []
    try:
        created = _data_object(_data_tex_name(""), target, aov_name=_DATA_AOV)
        ob = created[-1]
        scene.collection.objects.link(ob)
        for matrix in np.asarray(camera_matrices, dtype=np.float64):
            cam.matrix_world = Matrix(matrix.tolist())
            scene.view_layers[0].update()
            cameras.append(np.array(cam.matrix_world, dtype=np.float64))
            passes = _data_render_passes(scene, _data_tex_name("passes"), "tex_", ("albedo", "alpha", "depth"))
            a = np.clip(passes["alpha"][..., 0], 0.0, 1.0)
            covered = a > 0
            straight = np.where(covered[..., None], passes["albedo"][..., :3] / np.maximum(a, 1e-6)[..., None], 0.0)
            z = passes["depth"][..., 0]
            albedo.append(np.clip(straight, 0.0, None))
            alpha.append(a)
            depth.append(np.where(covered & (z < 1e9), z, np.inf))
        object_matrix = np.array(ob.matrix_world, dtype=np.float64)
    finally:
        if created:
            bpy.data.batch_remove(created)
    return {"albedo": np.asarray(albedo, np.float32), "alpha": np.asarray(alpha, np.float32),
            "depth": np.asarray(depth, np.float32), "object_matrix": object_matrix,
            "camera_matrices": np.asarray(cameras, np.float64)}

# (end of section B)

# ============================================================================================
# Section C: scene refinement (owner: refine work) -- SceneState <-> bpy, observations
# ============================================================================================

# Main thread only.  The refinement core (sam3d_addon/refine) works on plain SceneState
# snapshots; these functions read one from the scene, write a kept one back, and render the
# labelled views a VLM policy observes.

REFINE_DESCRIPTION_PROP = "sam3d_description"
REFINE_MATERIAL_OWNER_PROP = "sam3d_refine_owner"


def _refine_bsdf(mat):
    if mat is None or mat.node_tree is None:
        return None
    return next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)


def _refine_read_material(ob):
    from .refine.scene import MaterialState

    mat = ob.active_material
    if mat is None:
        return None
    bsdf = _refine_bsdf(mat)
    if bsdf is not None:
        color = tuple(float(c) for c in bsdf.inputs["Base Color"].default_value[:3])
        rough = float(bsdf.inputs["Roughness"].default_value)
        metal = float(bsdf.inputs["Metallic"].default_value)
    else:
        color, rough, metal = tuple(float(c) for c in mat.diffuse_color[:3]), float(mat.roughness), float(mat.metallic)
    return MaterialState(color, rough, metal, str(mat.get(REFINE_DESCRIPTION_PROP, "")))


def _refine_mesh_arrays(ob):
    mesh = ob.data
    n = len(mesh.vertices)
    verts = np.empty(n * 3, np.float64)
    mesh.vertices.foreach_get("co", verts)
    mesh.calc_loop_triangles()
    tris = np.empty(len(mesh.loop_triangles) * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", tris)
    return verts.reshape(-1, 3), tris.reshape(-1, 3)


def refine_read_scene(scene=None, collection=None, masks: dict | None = None,
                      ground_z: float | None = None, footprint=None):
    """A SceneState of the scene's (or collection's) visible mesh objects, lights and camera.

    masks: mask id -> HxW bool; an object's mask id is its name when that name is a key, else
    the stem of its `sam3d_mask` property (set by build_result).  ground_z: the ground height;
    by default the lowest bottom of the objects (3Dfy results carry no ground plane).
    """
    import os

    from .refine.scene import CameraState, LightState, ObjectState, SceneState

    scene = scene or bpy.context.scene
    pool = list(collection.all_objects) if collection is not None else list(scene.objects)
    masks = dict(masks or {})
    state = SceneState(masks=masks)
    for ob in pool:
        if ob.type == "MESH" and ob.visible_get() and len(ob.data.vertices):
            verts, tris = _refine_mesh_arrays(ob)
            mask_id = None
            if ob.name in masks:
                mask_id = ob.name
            elif ob.get("sam3d_mask"):
                stem = os.path.splitext(os.path.basename(str(ob["sam3d_mask"])))[0]
                mask_id = stem if stem in masks else None
            state.objects[ob.name] = ObjectState(ob.name, np.array(ob.matrix_world, np.float64), verts, tris,
                                                 _refine_read_material(ob), mask_id)
        elif ob.type == "LIGHT":
            light = ob.data
            state.lights[ob.name] = LightState(ob.name, light.type, np.array(ob.matrix_world.translation, float),
                                               float(light.energy), tuple(float(c) for c in light.color))
    cam = scene.camera
    if cam is not None and cam.type == "CAMERA":
        r = scene.render
        state.camera = CameraState(np.array(cam.matrix_world, np.float64), float(cam.data.lens),
                                   float(cam.data.sensor_width), (int(r.resolution_x), int(r.resolution_y)))
    if ground_z is None:
        bottoms = [o.world_bounds()[0][2] for o in state.objects.values()]
        ground_z = float(min(bottoms)) if bottoms else 0.0
    state.ground_z = float(ground_z)
    state.footprint = footprint
    return state


def _refine_set_material(ob, mat_state) -> None:
    """Give the object its own material (never edit a shared one) with the state's parameters."""
    mat = ob.active_material
    if mat is None or mat.get(REFINE_MATERIAL_OWNER_PROP) != ob.name:
        mat = bpy.data.materials.new(f"SAM3D {ob.name}")
        mat[REFINE_MATERIAL_OWNER_PROP] = ob.name
        if not ob.material_slots:
            ob.data.materials.append(None)
        slot = ob.material_slots[max(ob.active_material_index, 0)]
        slot.link = "OBJECT"  # per object: duplicates share the mesh, not the material
        slot.material = mat
    if mat.node_tree is None:  # Blender < 5.0
        mat.use_nodes = True
    bsdf = _refine_bsdf(mat)
    color = (*[float(c) for c in mat_state.base_color], 1.0)
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = color
        bsdf.inputs["Roughness"].default_value = float(mat_state.roughness)
        bsdf.inputs["Metallic"].default_value = float(mat_state.metallic)
    mat.diffuse_color = color
    mat.roughness, mat.metallic = float(mat_state.roughness), float(mat_state.metallic)
    mat[REFINE_DESCRIPTION_PROP] = str(mat_state.description)


def refine_apply(state, base, scene=None, collection=None) -> None:
    """Write a kept SceneState into the scene: transforms, materials, duplicates, deletions, lights.

    `base` is the state the scene is in now (what refine_read_scene returned, or the last kept
    state); objects of `base` missing from `state` are deleted.  New objects and lights go into
    `collection` (default: the source object's collections / the scene collection).
    """
    scene = scene or bpy.context.scene
    target_coll = collection or scene.collection
    for name, ob_state in state.objects.items():
        ob = bpy.data.objects.get(name)
        if ob is None:
            src = bpy.data.objects.get(ob_state.source or "")
            if src is None:
                raise ValueError(f"cannot create {name!r}: its source object is gone")
            ob = bpy.data.objects.new(name, src.data)
            for slot_src, slot_dst in zip(src.material_slots, ob.material_slots):
                slot_dst.link, slot_dst.material = slot_src.link, slot_src.material
            for coll in (src.users_collection or (target_coll,)):
                coll.objects.link(ob)
            if ob.name != name:
                raise ValueError(f"the name {name!r} is taken in this file")
        old = base.objects.get(name)
        # untouched objects are not written: matrix_world -> loc/rot/scale is not bit-exact
        if old is None or not np.array_equal(old.matrix_world, ob_state.matrix_world):
            ob.matrix_world = _as_matrix(ob_state.matrix_world)
        if ob_state.material is not None and (old is None or old.material != ob_state.material):
            _refine_set_material(ob, ob_state.material)
    for name in base.objects:
        if name not in state.objects and bpy.data.objects.get(name) is not None:
            bpy.data.objects.remove(bpy.data.objects[name])
    for name, light_state in state.lights.items():
        ob = bpy.data.objects.get(name)
        if ob is None or ob.type != "LIGHT":
            data = bpy.data.lights.new(name, light_state.type)
            ob = bpy.data.objects.new(name, data)
            target_coll.objects.link(ob)
            ob.location = [float(c) for c in light_state.position]
            if light_state.type in ("SUN", "SPOT", "AREA"):  # aim at the scene below
                ob.rotation_euler = (0.3, 0.0, 0.0)
        ob.data.energy = float(light_state.power)
        ob.data.color = [float(c) for c in light_state.color]
    bpy.context.view_layer.update()


def _refine_view_cameras(state):
    """Top and side views framing all objects (matrix_world, lens 35 mm)."""
    from .data.camera import look_at

    if not state.objects:
        lo, hi = np.zeros(3), np.ones(3)
    else:
        bounds = [o.world_bounds() for o in state.objects.values()]
        lo = np.min([b[0] for b in bounds], axis=0)
        hi = np.max([b[1] for b in bounds], axis=0)
    centre, radius = (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 0.1)
    dist = radius / np.tan(np.radians(27.0)) * 1.2  # a 35 mm lens sees about 54 degrees
    top = look_at(centre + [0.0, -1e-3, dist], centre)
    side = look_at(centre + [dist, 0.0, 0.2 * dist], centre)
    return {"top": top, "side": side}


def refine_render_views(state, scene=None, size: int = 256, views=("photo_camera", "top", "side")) -> list:
    """Workbench renders of the scene (which must show `state`) as PNG bytes, labels at the
    projected object centres: [(view name, png bytes)].  Scene settings are restored."""
    import io
    import os
    import tempfile

    from PIL import Image, ImageDraw

    from .refine.scene import CameraState

    scene = scene or bpy.context.scene
    r = scene.render
    saved = (scene.camera, r.resolution_x, r.resolution_y, r.resolution_percentage)
    extra = _refine_view_cameras(state)
    tmp_cams = []
    out = []
    tmpdir = tempfile.mkdtemp(prefix="sam3d_refine_views_")
    try:
        for view in views:
            if view == "photo_camera":
                if saved[0] is None or state.camera is None:
                    continue
                w0, h0 = state.camera.resolution
                k = size / max(w0, h0)
                w, h = max(1, round(w0 * k)), max(1, round(h0 * k))
                cam_state = CameraState(state.camera.matrix_world, state.camera.lens_mm,
                                        state.camera.sensor_width_mm, (w, h))
                scene.camera = saved[0]
            else:
                data = bpy.data.cameras.new(f"sam3d_refine_{view}")
                data.lens, data.sensor_width, data.sensor_fit = 35.0, 36.0, "AUTO"
                data.clip_start, data.clip_end = 0.01, 1000.0
                cam_ob = bpy.data.objects.new(f"sam3d_refine_{view}", data)
                tmp_cams.append((cam_ob, data))
                scene.collection.objects.link(cam_ob)
                cam_ob.matrix_world = _as_matrix(extra[view])
                scene.camera = cam_ob
                w = h = size
                cam_state = CameraState(extra[view], 35.0, 36.0, (w, h))
            r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
            path = os.path.join(tmpdir, f"{view}.png")
            rgba = render_png(path, engine="BLENDER_WORKBENCH", scene=scene,
                              composite_photo=(view == "photo_camera"))
            img = Image.fromarray(np.clip(rgba[..., :3] * 255 + 0.5, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(img)
            for name, ob in state.objects.items():
                lo, hi = ob.world_bounds()
                uv, depth = cam_state.project(((lo + hi) / 2)[None])
                if depth[0] > 0:
                    x, y = float(uv[0, 0]), float(uv[0, 1])
                    box = draw.textbbox((x, y), name, anchor="mm")
                    draw.rectangle(box, fill=(0, 0, 0))
                    draw.text((x, y), name, fill=(255, 255, 0), anchor="mm")
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append((view, buf.getvalue()))
    finally:
        scene.camera, r.resolution_x, r.resolution_y, r.resolution_percentage = saved
        for cam_ob, data in tmp_cams:
            bpy.data.objects.remove(cam_ob)
            bpy.data.cameras.remove(data)
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)
    return out

REFINE_PREVIEW_IMAGE = "SAM3D Refine Preview"


def refine_update_preview(state, scene=None, size: int = 256) -> "bpy.types.Image":
    """Render the photo-camera view of the scene (showing `state`) into the preview image that
    the Refine panel shows; reuses the image so a run does not pile up data blocks."""
    import io

    from PIL import Image

    (_, png), = refine_render_views(state, scene, size=size, views=("photo_camera",))
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h, w = rgb.shape[:2]
    img = bpy.data.images.get(REFINE_PREVIEW_IMAGE)
    if img is not None and tuple(img.size) != (w, h):
        bpy.data.images.remove(img)
        img = None
    if img is None:
        return image_from_array(REFINE_PREVIEW_IMAGE, rgb)
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :3] = rgb / 255.0
    img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).reshape(-1))
    img.update()
    img.pack()
    if img.preview is not None:
        img.preview.reload()
    return img


def refine_build_scene(state) -> "bpy.types.Scene":
    """A fresh scene showing a SceneState: its meshes at their transforms, a ground plane and the
    photo camera (for pictures and benchmarks built from synthetic states)."""
    reset_to_empty_scene()
    sc = bpy.context.scene
    for name, ob_state in state.objects.items():
        ob = bpy.data.objects.new(name, mesh_from_numpy(name, ob_state.vertices, ob_state.faces))
        sc.collection.objects.link(ob)
        ob.matrix_world = _as_matrix(ob_state.matrix_world)
    bpy.ops.mesh.primitive_plane_add(size=20.0, location=(0.0, 0.0, float(state.ground_z or 0.0)))
    bpy.context.active_object.name = "ground"
    cam = bpy.data.objects.new("photo camera", bpy.data.cameras.new("photo camera"))
    cam.data.lens, cam.data.sensor_width = state.camera.lens_mm, state.camera.sensor_width_mm
    cam.data.sensor_fit = "AUTO"
    sc.collection.objects.link(cam)
    cam.matrix_world = _as_matrix(state.camera.matrix_world)
    sc.camera = cam
    sc.render.resolution_x, sc.render.resolution_y = state.camera.resolution
    sc.render.resolution_percentage = 100
    bpy.context.view_layer.update()
    return sc

# (end of section C)

# ============================================================================================
# Section D: textures and colours on result meshes (owner: texture & refinement work)
# ============================================================================================

# Main thread only.  The texture stage (sam3d_addon/texture, NumPy) hands over UVs + a baked
# texture or per-vertex colours; these functions store them on an object's mesh and give it its
# own Principled BSDF material wired to them, so Material Preview, Cycles/EEVEE renders and the
# glTF/USD exporters all show the colours with no manual step.

TEXTURE_MATERIAL_PREFIX = "SAM3D Texture"
COLORS_MATERIAL_PREFIX = "SAM3D Colors"
UV_LAYER = "UVMap"


def _texture_corner_vertices(mesh) -> np.ndarray:
    corner = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", corner)
    return corner


def _texture_assign(obj, mat) -> None:
    obj.data.materials.clear()
    obj.data.materials.append(mat)


def apply_texture(obj, uv, texture_rgb, name: str | None = None) -> "bpy.types.Material":
    """Give a mesh object UVs and a baked texture through a new Principled BSDF material.

    uv: per-corner [len(mesh.loops), 2] (as `texture.bake.loop_uvs` gives for the mesh's faces in
    order) or per-vertex [len(mesh.vertices), 2]; v up.  texture_rgb: HxWx3|4 uint8 sRGB, row 0 at
    the top (v = 1).  The image is packed into the .blend.  Returns the material.
    """
    mesh = obj.data
    uv = np.asarray(uv, dtype=np.float32).reshape(-1, 2)
    if len(uv) == len(mesh.vertices) and len(uv) != len(mesh.loops):
        uv = uv[_texture_corner_vertices(mesh)]
    if len(uv) != len(mesh.loops):
        raise ValueError(f"uv must have one row per corner ({len(mesh.loops)}) or vertex ({len(mesh.vertices)}), got {len(uv)}")
    layer = mesh.uv_layers.get(UV_LAYER) or mesh.uv_layers.new(name=UV_LAYER)
    flat = np.ascontiguousarray(uv).reshape(-1)
    if hasattr(layer, "uv"):  # Blender >= 3.5: the UV attribute proxy
        layer.uv.foreach_set("vector", flat)
    else:
        layer.data.foreach_set("uv", flat)
    mesh.uv_layers.active = layer
    layer.active_render = True

    texture = np.asarray(texture_rgb)
    label = name or obj.name
    image = image_from_array(f"{TEXTURE_MATERIAL_PREFIX} {label}", texture)
    mean = texture[..., :3].reshape(-1, 3).mean(axis=0) / (255.0 if texture.dtype == np.uint8 else 1.0)
    mat = principled_material(f"{TEXTURE_MATERIAL_PREFIX} {label}", mean)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    tex.location = (bsdf.location.x - 320, bsdf.location.y)
    uv_node = nodes.new("ShaderNodeUVMap")
    uv_node.uv_map = UV_LAYER
    uv_node.location = (tex.location.x - 220, tex.location.y)
    links.new(uv_node.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    _texture_assign(obj, mat)
    mesh.update()
    return mat


def apply_vertex_colors(obj, colors, name: str | None = None) -> "bpy.types.Material":
    """Store colours on a mesh object and wire them to a new Principled BSDF material.

    colors: [V, 3|4] per vertex or [len(mesh.loops), 3|4] per corner, float in [0, 1] (sRGB, like
    photo colours) or uint8.  Written as the colour attribute `Color` (active for render and
    export); the material reads it through a Color Attribute node.  Returns the material.
    """
    mesh = obj.data
    cols = np.asarray(colors)
    cols = cols.astype(np.float32) / 255.0 if cols.dtype == np.uint8 else cols.astype(np.float32)
    if cols.ndim != 2 or cols.shape[1] not in (3, 4):
        raise ValueError(f"colors must be (n,3|4), got shape {cols.shape}")
    if len(cols) == len(mesh.vertices):
        domain = "POINT"
    elif len(cols) == len(mesh.loops):
        domain = "CORNER"
    else:
        raise ValueError(f"colors must have one row per vertex ({len(mesh.vertices)}) or corner ({len(mesh.loops)})")
    if cols.shape[1] == 3:
        cols = np.concatenate([cols, np.ones((len(cols), 1), np.float32)], axis=1)
    existing = mesh.color_attributes.get(COLOR_ATTRIBUTE)
    if existing is not None:
        mesh.color_attributes.remove(existing)
    attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", domain)
    attr.data.foreach_set("color_srgb", np.ascontiguousarray(np.clip(cols, 0.0, 1.0)).reshape(-1))
    mesh.color_attributes.active_color = attr
    mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index

    mat = principled_material(f"{COLORS_MATERIAL_PREFIX} {name or obj.name}", cols[:, :3].mean(axis=0))
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    node = nodes.new("ShaderNodeVertexColor")  # the "Color Attribute" node
    node.layer_name = COLOR_ATTRIBUTE
    node.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    _texture_assign(obj, mat)
    mesh.update()
    return mat

# -- Gaussians as a point cloud -----------------------------------------------------------------

GAUSSIANS_LABEL = "Gaussians (points)"
GAUSSIANS_KIND_PROP = "sam3d_kind"  # "gaussians" on the point-cloud objects
GAUSSIANS_MATERIAL_PREFIX = "SAM3D Gaussians"
GAUSSIANS_NODE_GROUP = "SAM3D Gaussians to Points"


def _gaussian_arrays(gaussians) -> dict:
    """The Gaussians as float32 arrays of one length N; ValueError (nothing created) otherwise."""
    want = {"xyz": 3, "scales": 3, "rotations": 4, "opacities": 1, "colors": 3}
    missing = [k for k in want if k not in gaussians]
    if missing:
        raise ValueError(f"gaussians lack {', '.join(missing)}")
    xyz = np.asarray(gaussians["xyz"], dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"gaussians xyz must be (N,3), got shape {xyz.shape}")
    n = len(xyz)
    out = {"xyz": xyz}
    for key, k in want.items():
        if key == "xyz":
            continue
        arr = np.asarray(gaussians[key], dtype=np.float32)
        if key == "opacities" and arr.ndim == 1:
            arr = arr[:, None]
        if key == "colors" and arr.ndim == 2 and arr.shape[1] == 4:
            arr = arr[:, :3]
        if arr.shape != (n, k):
            raise ValueError(f"gaussians {key} must be ({n},{k}) like xyz, got shape {arr.shape}")
        out[key] = arr
    return out


def _points_material(label: str, mean_color) -> "bpy.types.Material":
    """Principled BSDF whose Base Color reads the points' `Color` attribute (Attribute node)."""
    mat = principled_material(f"{GAUSSIANS_MATERIAL_PREFIX} {label}", mean_color)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "GEOMETRY"
    attr.attribute_name = COLOR_ATTRIBUTE
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def _convert_to_pointcloud(ob) -> bool:
    """Turn a vertex-only mesh object into a PointCloud object in place (attributes kept) with
    Blender's Convert operator; the mesh is removed.  False when the operator cannot run here
    (e.g. an old Blender, or a context it refuses): the mesh is left as it was."""
    mesh = ob.data
    vl = bpy.context.view_layer
    if ob.name not in vl.objects:
        return False
    try:
        with _Selection([ob]):
            vl.objects.active = ob
            with bpy.context.temp_override(active_object=ob, object=ob, selected_objects=[ob],
                                           selected_editable_objects=[ob]):
                done = bpy.ops.object.convert(target="POINTCLOUD") == {"FINISHED"}
    except (RuntimeError, TypeError, AttributeError):
        done = False
    if not done or ob.type != "POINTCLOUD":
        return False
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    internal = ob.data.attributes.get(".select_vert")
    if internal is not None:
        ob.data.attributes.remove(internal)
    return True


def _mesh_to_points_group(material) -> "bpy.types.GeometryNodeTree":
    """Geometry Nodes: Mesh to Points with each point's radius from the `radius` attribute, and
    `material` on the points (Mesh to Points does not carry the mesh's material over)."""
    group = bpy.data.node_groups.new(GAUSSIANS_NODE_GROUP, "GeometryNodeTree")
    group.interface.new_socket(name="Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    gin, gout = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    radius = nodes.new("GeometryNodeInputNamedAttribute")
    radius.data_type = "FLOAT"
    radius.inputs["Name"].default_value = "radius"
    set_material = nodes.new("GeometryNodeSetMaterial")
    set_material.inputs["Material"].default_value = material
    gin.location, radius.location, to_points.location = (-400, 0), (-400, -150), (-150, 0)
    set_material.location, gout.location = (50, 0), (250, 0)
    links.new(gin.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(radius.outputs["Attribute"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_material.inputs["Geometry"])
    links.new(set_material.outputs["Geometry"], gout.inputs["Geometry"])
    return group


def gaussians_point_cloud(name: str, gaussians, matrix_world=None, collection=None, *,
                          created: list | None = None, pointcloud: bool = True) -> "bpy.types.Object":
    """Import one object's 3D Gaussians as a labelled point-cloud object, "<name> Gaussians (points)".

    gaussians: texture.stage.GAUSSIAN_KEYS -> arrays, xyz [N,3] in the object's canonical frame
    (matrix_world places it, like the mesh), scales [N,3], rotations [N,4] (w, x, y, z), opacities
    [N] or [N,1], colors [N,3] in [0,1] (sRGB).  Each Gaussian is one point with the attributes
    `Color` (float colour, alpha = opacity), `opacity`, `radius` (the mean of its three scales: the
    drawn sphere), `scale` and `rotation`; a material wires `Color` to the Principled BSDF's Base
    Color, so Cycles and EEVEE renders show the colours.  These are points, not splats: Blender
    has no Gaussian-splat renderer; the .ply file is the faithful copy.

    The object holds a real PointCloud data-block (made by converting a vertex-only mesh with
    Blender's Convert operator, since a new PointCloud cannot be resized from Python); where that
    operator cannot run, or with pointcloud=False, it keeps the vertex-only mesh and a Geometry
    Nodes "Mesh to Points" modifier draws the points instead.  Custom property `sam3d_kind` =
    "gaussians".  `collection` defaults to the scene collection.  IDs made are appended to
    `created` (when given); on failure, without `created`, they are removed again.
    """
    g = _gaussian_arrays(gaussians)
    n = len(g["xyz"])
    made = created if created is not None else []
    label = f"{name} {GAUSSIANS_LABEL}"
    try:
        mesh = bpy.data.meshes.new(label)
        made.append(mesh)
        mesh.vertices.add(n)
        mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(g["xyz"]).reshape(-1))
        rgba = np.concatenate([np.clip(g["colors"], 0.0, 1.0), np.clip(g["opacities"], 0.0, 1.0)], axis=1)
        attrs = mesh.attributes
        attrs.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT").data.foreach_set(
            "color_srgb", np.ascontiguousarray(rgba).reshape(-1))
        attrs.new("opacity", "FLOAT", "POINT").data.foreach_set("value", np.ascontiguousarray(g["opacities"][:, 0]))
        attrs.new("radius", "FLOAT", "POINT").data.foreach_set(
            "value", np.ascontiguousarray(np.abs(g["scales"]).mean(axis=1)))
        attrs.new("scale", "FLOAT_VECTOR", "POINT").data.foreach_set(
            "vector", np.ascontiguousarray(g["scales"]).reshape(-1))
        attrs.new("rotation", "QUATERNION", "POINT").data.foreach_set(
            "value", np.ascontiguousarray(g["rotations"]).reshape(-1))
        mesh.update()
        ob = bpy.data.objects.new(label, mesh)
        made.append(ob)
        ob[GAUSSIANS_KIND_PROP] = "gaussians"
        (collection or bpy.context.scene.collection).objects.link(ob)
        if matrix_world is not None:
            ob.matrix_world = _as_matrix(matrix_world)
        bpy.context.view_layer.update()
        mat = _points_material(name, rgba[:, :3].mean(axis=0) if n else (0.6, 0.6, 0.6))
        made.append(mat)
        if pointcloud and _convert_to_pointcloud(ob):  # the mesh is gone; the PointCloud replaces it
            made[:] = [idb for idb in made if idb is not mesh]
            made.append(ob.data)
        else:
            mod = ob.modifiers.new("Gaussians to Points", "NODES")
            mod.node_group = _mesh_to_points_group(mat)
            made.append(mod.node_group)
        ob.data.materials.clear()
        ob.data.materials.append(mat)
    except BaseException:
        if created is None:
            _remove_ids(made)
        raise
    return ob

# (end of section D)
