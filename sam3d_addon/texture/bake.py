"""Colours for a mesh from the photo, and baking them into a UV texture (NumPy + xatlas, no bpy).

The pieces, in the order a texturing pass uses them:

* `mean_mask_color(photo, mask)` -- the baseline: one flat colour, the mean of the masked pixels.
* `delight(photo, mask)` -- optional de-lighting: divide out a low-frequency luminance estimate
  (normalised Gaussian blur of the luminance inside the mask, in linear light), which flattens
  smooth shading, light fall-off and soft shadows while keeping albedo detail finer than the blur.
  It cannot remove hard cast shadows or specular highlights.
* `project_photo_colors(...)` -- each vertex the camera sees (in front of the camera, inside the
  photo and the mask, facing the camera, and passing a z-buffer test against the mesh itself) takes
  the photo's colour there (bilinear); the others keep a fallback colour (given per vertex, or the
  mean masked colour).
* `uv_unwrap` (xatlas) + `bake_vertex_colors` -- rasterise every triangle in UV space at pixel
  centres, interpolate the vertex colours barycentrically, then fill the texels no triangle covers
  with the nearest covered texel (gutters: no dark seams under filtering or mip-mapping).
* `bake_object_texture(...)` -- the pipeline's bake step for one result object: unwrap + bake its
  vertex colours, optionally with the visible side taken from the (de-lit) photo per vertex and
  per texel, through the object's final pose.

Camera convention: OpenCV (x right, y down, z forward), intrinsics K in pixels; a point in the
PyTorch3D camera frame of the model (+x left, +y up, +z forward) maps to it with
`PYTORCH3D_TO_OPENCV`.  UV convention: glTF/Blender, v up; texture row 0 is the top (v = 1).
Colours are float in [0, 1] (sRGB as stored in the photo) unless a function says otherwise.
"""

from __future__ import annotations

import numpy as np

PYTORCH3D_TO_OPENCV = np.diag([-1.0, -1.0, 1.0, 1.0])
# Upper bound of pixel candidates tested at once by the rasteriser (memory, not correctness).
_RASTER_CHUNK = 4_000_000


# -- baseline and de-lighting ---------------------------------------------------------------------

def _as_float_image(photo) -> np.ndarray:
    photo = np.asarray(photo)
    image = photo.astype(np.float64) / 255.0 if photo.dtype == np.uint8 else photo.astype(np.float64)
    return image[..., :3]


def _as_mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], bool)
    mask = np.asarray(mask)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    return mask > (127 if mask.dtype == np.uint8 else 0.5)


def mean_mask_color(photo, mask) -> np.ndarray:
    """Mean RGB [3] in [0, 1] of the masked pixels (the issue's baseline colouring)."""
    image = _as_float_image(photo)
    inside = _as_mask(mask, image.shape)
    if not inside.any():
        raise ValueError("the mask selects no pixel")
    return image[inside].mean(axis=0)


def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c):
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1.0 / 2.4) - 0.055)


def delight(photo, mask=None, sigma_fraction: float = 0.15, strength: float = 1.0) -> np.ndarray:
    """The photo with its low-frequency shading divided out inside the mask; float HxWx3 in [0, 1].

    shading = blur(L * m) / blur(m), L the linear luminance, m the mask, the blur a Gaussian of
    sigma = sigma_fraction * the mask's bounding-box size; the output is
    linear_rgb / (shading / mean shading in the mask) ** strength, back to sRGB.  Outside the mask
    the photo is unchanged.  strength 0 returns the photo.
    """
    from scipy.ndimage import gaussian_filter

    image = _as_float_image(photo)
    inside = _as_mask(mask, image.shape)
    if not inside.any() or strength == 0:
        return image.copy()
    linear = srgb_to_linear(image)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    rows, cols = np.nonzero(inside)
    sigma = max(1.0, sigma_fraction * max(np.ptp(rows) + 1, np.ptp(cols) + 1))
    weight = gaussian_filter(inside.astype(np.float64), sigma)
    shading = gaussian_filter(luminance * inside, sigma) / np.maximum(weight, 1e-8)
    shading = np.maximum(shading, 1e-4)
    relative = shading / shading[inside].mean()
    out = linear.copy()
    out[inside] = linear[inside] / relative[inside, None] ** strength
    result = image.copy()
    result[inside] = linear_to_srgb(out[inside])
    return result


# -- rasterisation --------------------------------------------------------------------------------

def rasterize(triangles_xy: np.ndarray, width: int, height: int):
    """Pixel centres covered by 2-D triangles (pixel units, x right, y down).

    triangles_xy [F, 3, 2].  Returns (triangle [P], x [P], y [P], barycentric [P, 3]) for every
    (triangle, pixel) pair whose pixel centre (x + 0.5, y + 0.5) lies inside the triangle
    (edges included).  Vectorised over bounding boxes, chunked to bound memory.
    """
    tri = np.asarray(triangles_xy, dtype=np.float64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))
    if len(tri) == 0:
        return empty
    x0 = np.clip(np.ceil(tri[..., 0].min(1) - 0.5), 0, width - 1).astype(np.int64)
    x1 = np.clip(np.floor(tri[..., 0].max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(tri[..., 1].min(1) - 0.5), 0, height - 1).astype(np.int64)
    y1 = np.clip(np.floor(tri[..., 1].max(1) - 0.5), -1, height - 1).astype(np.int64)
    w, h = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    (a, b, c) = (tri[:, 0], tri[:, 1], tri[:, 2])
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    counts = np.where(np.abs(area) > 1e-12, w * h, 0)
    results = []
    ends = np.cumsum(counts)
    start = 0
    while start < len(tri):
        # Take triangles until the chunk holds about _RASTER_CHUNK candidates (at least one).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _RASTER_CHUNK, side="right")))
        ids = np.arange(start, stop)
        n = counts[ids]
        face = np.repeat(ids, n)
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        px = x0[face] + local % np.maximum(w[face], 1)
        py = y0[face] + local // np.maximum(w[face], 1)
        cx, cy = px + 0.5, py + 0.5

        def edge(p, q):  # twice the signed area of (p, q, centre)
            return (q[face, 0] - p[face, 0]) * (cy - p[face, 1]) - (q[face, 1] - p[face, 1]) * (cx - p[face, 0])

        bary = np.stack([edge(b, c), edge(c, a), edge(a, b)], axis=1) / area[face, None]
        inside = (bary >= -1e-9).all(axis=1)
        results.append((face[inside], px[inside], py[inside], bary[inside]))
        start = stop
    return tuple(np.concatenate([r[i] for r in results]) for i in range(4))


def _fill_gutters(values: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the value of the nearest covered texel."""
    from scipy.ndimage import distance_transform_edt

    if covered.all() or not covered.any():
        return values
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return values[rows, cols]


# -- UV unwrapping and baking ---------------------------------------------------------------------

def uv_unwrap(vertices, faces, texture_size: int = 1024, padding: int = 2):
    """xatlas charts packed for a texture_size^2 atlas.

    Returns (vmapping [V'] original vertex of each new vertex, faces_uv [F, 3] into the new
    vertices -- same face order as `faces` --, uvs [V', 2] in [0, 1], v up).  Vertices are split
    along chart seams only.
    """
    import xatlas

    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmapping, faces_uv, uvs = atlas[0]
    return vmapping.astype(np.int64), faces_uv.astype(np.int64), uvs.astype(np.float64)


def loop_uvs(faces_uv, uvs) -> np.ndarray:
    """Per-corner UVs [F * 3, 2] of the mesh faces in order (what a Blender UV layer stores)."""
    return np.asarray(uvs)[np.asarray(faces_uv)].reshape(-1, 2)


def _raster_uv_colors(uvs, faces_uv, corner_colors, size: int):
    """Colours [F, 3, 3] at the corners of the UV triangles, interpolated over the texels they
    cover -> (texture [S, S, 3] float, covered [S, S], the raster's (face, x, y, barycentric))."""
    uvs = np.asarray(uvs, dtype=np.float64)
    pixel_xy = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], axis=1)
    face, px, py, bary = rasterize(pixel_xy[np.asarray(faces_uv, dtype=np.int64)], size, size)
    texture = np.zeros((size, size, 3))
    covered = np.zeros((size, size), bool)
    texture[py, px] = np.einsum("pk,pkc->pc", bary, np.asarray(corner_colors, dtype=np.float64)[face])
    covered[py, px] = True
    return texture, covered, (face, px, py, bary)


def bake_vertex_colors(uvs, faces_uv, colors, size: int = 1024) -> np.ndarray:
    """Rasterise per-vertex colours [V', 3] (float [0, 1]) over UV triangles into uint8 size x size x 3.

    uvs/faces_uv as `uv_unwrap` returns them; colors indexed like uvs (use colors[vmapping] for
    colours of the original vertices).  Uncovered texels take the nearest covered texel's colour.
    """
    colors = np.asarray(colors, dtype=np.float64)[:, :3]
    faces_uv = np.asarray(faces_uv, dtype=np.int64)
    texture, covered, _ = _raster_uv_colors(uvs, faces_uv, colors[faces_uv], size)
    texture = _fill_gutters(texture, covered)
    return np.clip(np.round(texture * 255.0), 0, 255).astype(np.uint8)


def bake_mesh_texture(vertices, faces, colors, size: int = 512):
    """uv_unwrap + bake_vertex_colors for colours of the original vertices.

    Returns (loop uvs [F * 3, 2] for `faces` in order, texture uint8 size x size x 3).
    """
    vmapping, faces_uv, uvs = uv_unwrap(vertices, faces, texture_size=size)
    texture = bake_vertex_colors(uvs, faces_uv, np.asarray(colors)[vmapping], size)
    return loop_uvs(faces_uv, uvs), texture


# -- photo projection -----------------------------------------------------------------------------

def vertex_normals(vertices, faces) -> np.ndarray:
    """Area-weighted vertex normals [V, 3] (unit; zero for isolated vertices)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def depth_buffer(points_cam, faces, intrinsics, width: int, height: int, near: float = 1e-6) -> np.ndarray:
    """Per-pixel nearest depth (z, OpenCV camera) of the mesh, inf where empty; perspective-correct."""
    z = points_cam[:, 2]
    faces = np.asarray(faces, dtype=np.int64)
    faces = faces[(z[faces] > near).all(axis=1)]  # triangles crossing the camera plane are dropped
    zbuf = np.full((height, width), np.inf)
    if len(faces) == 0:
        return zbuf
    uv = project_points(points_cam, intrinsics)
    face, px, py, bary = rasterize(uv[faces], width, height)
    inverse_depth = np.einsum("pk,pk->p", bary, 1.0 / z[faces[face]])  # 1/z is linear on screen
    np.minimum.at(zbuf, (py, px), 1.0 / inverse_depth)
    return zbuf


def pinhole_intrinsics(focal_px: float, width: int, height: int) -> np.ndarray:
    """K [3, 3] of a centred pinhole camera (principal point at the image centre)."""
    return np.array([[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]])


def canonical_to_opencv_camera(vertices, rotation, translation, scale) -> np.ndarray:
    """Canonical object points -> OpenCV camera frame, with the model's pose (R, t, s).

    The model's pose maps p_obj to the PyTorch3D camera as p = R^T (s * p_obj) + t (rows:
    (s p_obj) @ R + t, `sam3d_addon.pose`); PyTorch3D -> OpenCV flips x and y.
    """
    points = np.asarray(vertices, np.float64) * np.asarray(scale, np.float64).reshape(1, 3)
    points = points @ np.asarray(rotation, np.float64) + np.asarray(translation, np.float64).reshape(1, 3)
    return points * np.array([-1.0, -1.0, 1.0])


def project_points(points_cam, intrinsics) -> np.ndarray:
    """OpenCV camera-frame points [N, 3] -> pixel coordinates [N, 2] (x right, y down, centres at +0.5)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    z = np.where(np.abs(points_cam[:, 2]) < 1e-12, 1e-12, points_cam[:, 2])
    return np.stack([k[0, 0] * points_cam[:, 0] / z + k[0, 2], k[1, 1] * points_cam[:, 1] / z + k[1, 2]], axis=1)


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, w - 1)
    y = np.clip(xy[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _masked_bilinear(image: np.ndarray, inside: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples from the pixels inside the mask only (the weights of the four neighbours
    renormalised over those inside), so background colours do not bleed in at the mask's edge."""
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, w - 1)
    y = np.clip(xy[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    total = np.zeros((len(xy), image.shape[2]))
    weight = np.zeros(len(xy))
    for yy, xx, wgt in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x1, fx * (1 - fy)),
                        (y1, x0, (1 - fx) * fy), (y1, x1, fx * fy)):
        wgt = wgt * inside[yy, xx]
        total += image[yy, xx] * wgt[:, None]
        weight += wgt
    nearest = image[np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, h - 1),
                    np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, w - 1)]
    ok = weight > 1e-12
    return np.where(ok[:, None], total / np.maximum(weight, 1e-12)[:, None], nearest)


def project_photo_colors(vertices, faces, intrinsics, photo, mask=None, world_to_camera=None,
                         fallback=None, depth_tolerance: float = 0.02, min_facing: float = 0.0):
    """Colour the camera-visible vertices from the photo; the rest keep `fallback`.

    vertices [V, 3] in world (or camera, when world_to_camera is None) coordinates; faces [F, 3];
    intrinsics K [3, 3] in photo pixels; world_to_camera [4, 4] to the OpenCV camera frame;
    photo HxWx3 (uint8 or float [0, 1]); mask HxW (None = whole photo); fallback [V, 3], [3] or
    None (the mean masked colour).  A vertex is visible when it is in front of the camera, inside
    the photo and the mask, faces the camera (normal . direction-to-camera > min_facing) and its
    depth is within depth_tolerance (relative) of the mesh's own depth buffer there.
    Returns (colors [V, 3] float in [0, 1], visible [V] bool).
    """
    image = _as_float_image(photo)
    height, width = image.shape[:2]
    inside_mask = _as_mask(mask, image.shape)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if world_to_camera is not None:
        m = np.asarray(world_to_camera, dtype=np.float64)
        points = vertices @ m[:3, :3].T + m[:3, 3]
    else:
        points = vertices
    if fallback is None:
        fallback = mean_mask_color(image, inside_mask)
    colors = np.broadcast_to(np.asarray(fallback, dtype=np.float64)[..., :3], (len(vertices), 3)).copy()
    visible = np.zeros(len(vertices), bool)
    if len(vertices) == 0:
        return colors, visible
    z = points[:, 2]
    xy = project_points(points, intrinsics)
    px, py = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
    candidate = (z > 1e-6) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
    if len(faces):
        normals = vertex_normals(points, faces)
        to_camera = -points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        facing = np.einsum("vc,vc->v", normals, to_camera)
        candidate &= facing > min_facing
        zbuf = depth_buffer(points, faces, intrinsics, width, height)
        idx = np.nonzero(candidate)[0]
        # A vertex on an edge may land on a pixel of a neighbouring, slightly nearer triangle: compare
        # with a relative tolerance, and accept pixels no triangle covers (silhouette vertices).
        surface = zbuf[py[idx], px[idx]]
        candidate[idx] = ~np.isfinite(surface) | (z[idx] <= surface * (1 + depth_tolerance))
    idx = np.nonzero(candidate)[0]
    candidate[idx] = inside_mask[py[idx], px[idx]]
    visible = candidate
    colors[visible] = _bilinear(image, xy[visible])
    return np.clip(colors, 0.0, 1.0), visible


def photo_vertex_colors(vertices, faces, rotation, translation, scale, focal_px: float, photo, mask,
                        delight_strength: float = 0.0, fallback=None):
    """Colours for a canonical mesh placed by the model's pose (R, t, s), from its photo and mask.

    focal_px: the photo's focal length in pixels (centred principal point).  delight_strength > 0
    de-lights the photo first (`delight`).  Returns (colors [V, 3] float in [0, 1], visible [V]);
    unseen vertices take `fallback` (default: the mean masked colour of the photo used).
    """
    image = _as_float_image(photo)
    if delight_strength:
        image = delight(image, mask, strength=delight_strength)
    height, width = image.shape[:2]
    points = canonical_to_opencv_camera(vertices, rotation, translation, scale)
    return project_photo_colors(points, faces, pinhole_intrinsics(focal_px, width, height), image, mask,
                                fallback=fallback)


# -- one result object: vertex colours (+ the photo) -> UVs and a baked texture -------------------

class BakedTexture:
    """What `bake_object_texture` returns.

    uvs [F * 3, 2] float32 per face corner (the mesh's faces in order, v up: what
    `blender_bridge.apply_texture` takes); texture [S, S, 3] float32 sRGB in [0, 1], row 0 at the
    top; colors [V, 3] the per-vertex colours that were baked (the model's, with the photo's where
    the photo projection saw the vertex); visible [V] bool, the vertices the photo projection saw
    (None without it); photo_texels [S, S] bool, the texels sampled straight from the photo.
    """

    __slots__ = ("uvs", "texture", "colors", "visible", "photo_texels")

    def __init__(self, uvs, texture, colors, visible=None, photo_texels=None):
        self.uvs, self.texture, self.colors = uvs, texture, colors
        self.visible, self.photo_texels = visible, photo_texels


def bake_object_texture(vertices, faces, colors, size: int = 512, *, photo=None, mask=None, rotation=None,
                        translation=None, scale=None, focal_px: float | None = None,
                        delight_strength: float = 0.0, depth_tolerance: float = 0.02) -> BakedTexture:
    """UV-unwrap a coloured mesh (xatlas) and bake its colours into a size x size texture.

    vertices [V, 3] (canonical object frame), faces [F, 3], colors [V, 3|4] float in [0, 1] (sRGB).
    Without `photo` the texture is the vertex colours interpolated over each triangle.

    With `photo` (HxWx3) and the object's final pose in the model camera frame (rotation, translation,
    scale as `ObjectResult` stores them, `canonical_to_opencv_camera`) and the photo's focal length
    in pixels, the visible side takes the photo's colours: vertices the camera sees inside `mask`
    take them (`photo_vertex_colors`, the model colours are the fallback), and so does every texel
    whose surface point is seen (in front, facing the camera, inside the photo and the mask, not
    hidden behind the mesh itself: the same tests per texel), so the texture keeps the photo's
    detail finer than the mesh.  `delight_strength` in [0, 1] de-lights the photo first (`delight`).
    Texels no triangle covers take the nearest covered texel (gutters).
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64)
    base = np.asarray(colors, dtype=np.float64)
    size = int(size)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces must be a non-empty (F,3) array, got shape {faces.shape}")
    if int(faces.min()) < 0 or int(faces.max()) >= len(vertices):
        raise ValueError(f"face indices out of range for {len(vertices)} vertices")
    if base.ndim != 2 or len(base) != len(vertices) or base.shape[1] not in (3, 4):
        raise ValueError(f"colors must be ({len(vertices)},3|4), got shape {base.shape}")
    if size < 8:
        raise ValueError(f"the texture size must be at least 8 pixels, got {size}")
    base = np.clip(base[:, :3], 0.0, 1.0)
    visible = image = None
    if photo is not None:
        if rotation is None or translation is None or scale is None or not focal_px:
            raise ValueError("the photo projection needs the object's rotation, translation, scale and focal_px")
        image = _as_float_image(photo)
        if delight_strength:
            image = delight(image, mask, strength=float(delight_strength))
        base, visible = photo_vertex_colors(vertices, faces, rotation, translation, scale, focal_px, image, mask,
                                            fallback=base)

    vmapping, faces_uv, uvs = uv_unwrap(vertices, faces, texture_size=size)
    # vmapping[faces_uv] == faces: the UV triangles are the mesh triangles, in order.
    texture, covered, (face, px, py, bary) = _raster_uv_colors(uvs, faces_uv, base[faces], size)

    photo_texels = None
    if image is not None:
        height, width = image.shape[:2]
        inside_mask = _as_mask(mask, image.shape)
        intrinsics = pinhole_intrinsics(focal_px, width, height)
        points = canonical_to_opencv_camera(vertices, rotation, translation, scale)
        corners = points[faces]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        surface = np.einsum("pk,pkc->pc", bary, corners[face])  # each texel's point, camera frame
        to_camera = -surface / np.maximum(np.linalg.norm(surface, axis=1, keepdims=True), 1e-12)
        facing = np.einsum("pc,pc->p", normals[face], to_camera) > 0.0
        xy = project_points(surface, intrinsics)
        ix, iy = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
        seen = (surface[:, 2] > 1e-6) & (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height) & facing
        idx = np.nonzero(seen)[0]
        zbuf = depth_buffer(points, faces, intrinsics, width, height)
        depth = zbuf[iy[idx], ix[idx]]
        seen[idx] = inside_mask[iy[idx], ix[idx]] & (
            ~np.isfinite(depth) | (surface[idx, 2] <= depth * (1 + depth_tolerance)))
        texture[py[seen], px[seen]] = _masked_bilinear(image, inside_mask, xy[seen])
        photo_texels = np.zeros((size, size), bool)
        photo_texels[py[seen], px[seen]] = True

    texture = _fill_gutters(texture, covered)
    return BakedTexture(loop_uvs(faces_uv, uvs).astype(np.float32), np.clip(texture, 0.0, 1.0).astype(np.float32),
                        base.astype(np.float32), visible, photo_texels)
