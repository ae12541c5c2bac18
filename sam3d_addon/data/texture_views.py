"""Texture ground truth for the data engine (NumPy + SciPy only; the bridge renders).

With `sam3d data --texture` every sample also records the target object's albedo (base colour,
no lighting) seen from N_VIEWS cameras around it, and the albedo on each surface voxel of its
canonical occupancy grid.  This module places those cameras and back-projects the rendered
albedo views onto the grid.

View layout (VIEWS, degrees): azimuth is measured about the object's world-space vertical axis
(its local +Z in world space), counter-clockwise seen from above, relative to the photo camera's
azimuth around the object's bounding-box centre; elevation is above the horizontal plane
through that centre.  Views 0-3 are the benchmark's novel views (elevation 25, azimuths 45,
135, 225, 315); views 4-7 add coverage of the bottom (-35 at 0 and 180) and top (+75 at 90 and
270).  Every camera looks at the bounding-box centre, from a distance at which the object's
bounding sphere spans FRAME_FILL of the frame (same field of view as the photo, square image).

Camera conventions are Blender's (camera_matrix_world, looking down its -Z, +Y up).  The views
are rendered with a one-pixel box filter: alpha is the covered fraction of each pixel, the
albedo the mean over the covered part; depth is the camera-space depth (distance along -Z) of
the ray through the pixel centre, inf where that ray misses (so some partly covered edge
pixels have alpha > 0 and no depth).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from ..texture.voxels import surface_voxel_coords

VIEWS = ((45.0, 25.0), (135.0, 25.0), (225.0, 25.0), (315.0, 25.0),  # (azimuth, elevation)
         (0.0, -35.0), (180.0, -35.0), (90.0, 75.0), (270.0, 75.0))
N_VIEWS = len(VIEWS)
N_NOVEL_VIEWS = 4  # views [0, 4) are the benchmark's novel views
VIEW_RESOLUTION = 64
# The voxel albedo is back-projected from the same views rendered at twice the resolution: at
# 64 px one pixel covers about one voxel, and aliasing leaves 15-25 % of the surface voxels
# of most shapes without a sample; at 128 px nearly all visible surface voxels get one.
VOXEL_VIEW_RESOLUTION = 128
VIEW_SAMPLES = 4  # Cycles samples of the albedo renders
FRAME_FILL = 0.85  # bounding sphere's image diameter / frame size
ALPHA_THRESHOLD = 128  # pixels with more coverage (of 255) are back-projected
SNAP_VOXELS = 1.5  # points in empty (or interior) voxels snap to a surface voxel this close

TEXTURE_KEYS = ("tex_views_albedo", "tex_views_alpha", "tex_views_camera", "tex_views_depth",
                "tex_voxel_coords", "tex_voxel_albedo", "tex_voxel_observed")


def settings() -> dict:
    """The view settings, as recorded in meta.json."""
    return {"n_views": N_VIEWS, "novel_views": list(range(N_NOVEL_VIEWS)), "resolution": VIEW_RESOLUTION,
            "voxel_albedo_from_resolution": VOXEL_VIEW_RESOLUTION, "samples": VIEW_SAMPLES,
            "views_azimuth_elevation_deg": [list(v) for v in VIEWS],
            "azimuth": "about the object's world vertical axis (local +Z), counter-clockwise seen from above, "
                       "relative to the photo camera's azimuth around the bounding-box centre",
            "frame_fill": FRAME_FILL, "albedo": "sRGB-encoded base colour, straight (not premultiplied) "
                                                "alpha, 0 where alpha is 0",
            "alpha": "covered fraction of the pixel (box filter), 0..255",
            "depth": "camera-space depth (along the camera's -Z) of the pixel centre's ray, inf where it misses",
            "alpha_threshold": ALPHA_THRESHOLD, "snap_voxels": SNAP_VOXELS,
            "surface_voxels": "occupied cells with at least one empty 6-neighbour (outside the grid is empty)"}


def _look_at(eye, target, up) -> np.ndarray:
    """Blender camera matrix_world at `eye` looking at `target`, image up towards `up`."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, cam_up, -forward, eye
    return M


def object_frame(vertices, object_matrix_world) -> tuple[np.ndarray, float, np.ndarray]:
    """(world bounding-box centre, world bounding-sphere radius about it, world vertical axis)
    of canonical `vertices` placed by `object_matrix_world`."""
    M = np.asarray(object_matrix_world, float)
    v = np.asarray(vertices, float)
    box_centre = (v.min(axis=0) + v.max(axis=0)) / 2
    centre = M[:3, :3] @ box_centre + M[:3, 3]
    world = v @ M[:3, :3].T + M[:3, 3]
    radius = float(np.linalg.norm(world - centre, axis=1).max())
    up = M[:3, 2] / np.linalg.norm(M[:3, 2])
    return centre, radius, up


def view_distance(radius: float, fov_deg: float, fill: float = FRAME_FILL) -> float:
    """Distance at which a sphere of `radius` spans `fill` of the frame (image-plane diameter)."""
    half = math.atan(fill * math.tan(math.radians(fov_deg) / 2))
    return radius / math.sin(half)


def view_cameras(vertices, object_matrix_world, photo_camera_matrix, fov_deg: float,
                 views=VIEWS, fill: float = FRAME_FILL) -> np.ndarray:
    """Blender camera matrices [V, 4, 4] of the texture views (see the module docstring)."""
    centre, radius, up = object_frame(vertices, object_matrix_world)
    to_photo = np.asarray(photo_camera_matrix, float)[:3, 3] - centre
    e1 = to_photo - (to_photo @ up) * up
    if np.linalg.norm(e1) < 1e-9 * max(np.linalg.norm(to_photo), 1e-12):  # photo straight above/below
        M = np.asarray(object_matrix_world, float)
        e1 = M[:3, 0] - (M[:3, 0] @ up) * up
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)  # +90 deg counter-clockwise about up
    distance = view_distance(radius, fov_deg, fill)
    out = []
    for azimuth, elevation in views:
        a, e = math.radians(azimuth), math.radians(elevation)
        direction = math.cos(e) * (math.cos(a) * e1 + math.sin(a) * e2) + math.sin(e) * up
        # at steep elevations, keep the image's up towards the photo-relative azimuth direction
        image_up = up if abs(elevation) < 89.0 else -(math.cos(a) * e1 + math.sin(a) * e2) * np.sign(elevation)
        out.append(_look_at(centre + distance * direction, centre, image_up))
    return np.stack(out)


def azimuth_elevation(camera_matrix, centre, up, reference_camera_matrix) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of a camera's position about `centre` (azimuth relative
    to the reference camera's, counter-clockwise about `up`); for tests and benchmarks."""
    up = np.asarray(up, float) / np.linalg.norm(up)
    d = np.asarray(camera_matrix, float)[:3, 3] - centre
    r = np.asarray(reference_camera_matrix, float)[:3, 3] - centre
    dh, rh = d - (d @ up) * up, r - (r @ up) * up
    elevation = math.degrees(math.atan2(d @ up, np.linalg.norm(dh)))
    azimuth = math.degrees(math.atan2(np.cross(rh, dh) @ up, rh @ dh)) % 360.0
    return azimuth, elevation


def surface_voxels(grid: np.ndarray) -> np.ndarray:
    """Coordinates [S, 3] (C order) of occupied cells with at least one empty 6-neighbour (the
    texture stage's active voxels; defined once, in `texture.voxels`)."""
    return surface_voxel_coords(grid)


def unproject(depth, camera_matrix, fov_deg: float, mask=None) -> np.ndarray:
    """World points [N, 3] of the pixels of a camera-space depth map [H, W] (rows top first;
    `mask` picks pixels, default every finite one), through a Blender camera."""
    depth = np.asarray(depth, float)
    h, w = depth.shape
    keep = np.isfinite(depth) if mask is None else (np.asarray(mask, bool) & np.isfinite(depth))
    i, j = np.nonzero(keep)
    z = depth[i, j]
    f = (max(h, w) / 2) / math.tan(math.radians(fov_deg) / 2)
    x = (j + 0.5 - w / 2) / f * z  # Blender camera frame: +x right, +y up, looking down -z
    y = -(i + 0.5 - h / 2) / f * z
    p_cam = np.stack([x, y, -z], axis=1)
    C = np.asarray(camera_matrix, float)
    return p_cam @ C[:3, :3].T + C[:3, 3]


def world_to_canonical(points_world, object_matrix_world) -> np.ndarray:
    M_inv = np.linalg.inv(np.asarray(object_matrix_world, float))
    return np.asarray(points_world, float) @ M_inv[:3, :3].T + M_inv[:3, 3]


def voxel_albedo(grid, albedo_linear, alpha, depth, cameras, object_matrix_world, fov_deg: float,
                 alpha_threshold: int = ALPHA_THRESHOLD, snap_voxels: float = SNAP_VOXELS):
    """Albedo of the surface voxels of a canonical occupancy grid from rendered views.

    grid: bool [R, R, R] (occupancy.py convention); albedo_linear: float [V, H, W, 3] straight
    (not premultiplied) linear colours; alpha: coverage [V, H, W] in 0..255; depth: camera-space
    depth [V, H, W] (inf = empty); cameras: Blender camera matrices [V, 4, 4];
    object_matrix_world: the object's 4x4 (canonical -> world).

    Every pixel with alpha > alpha_threshold is unprojected with its depth, mapped to the
    canonical frame and assigned to the voxel it falls in; points that fall in a voxel that is
    not a surface voxel snap to the nearest surface voxel centre within `snap_voxels` cells
    (else are dropped).  Linear colours are averaged per voxel; voxels no point reached take the
    colour of the nearest observed voxel.
    Returns (coords int16 [S, 3], albedo float [S, 3] linear, observed bool [S]).
    """
    grid = np.asarray(grid, bool)
    res = grid.shape[0]
    coords = surface_voxels(grid)
    n = len(coords)
    sums, counts = np.zeros((n, 3)), np.zeros(n, np.int64)
    if n == 0:
        return coords.astype(np.int16), sums, np.zeros(0, bool)
    lookup = np.full(grid.shape, -1, np.int64)
    lookup[coords[:, 0], coords[:, 1], coords[:, 2]] = np.arange(n)
    tree = cKDTree(coords.astype(float))
    albedo_linear, alpha, depth = np.asarray(albedo_linear, float), np.asarray(alpha), np.asarray(depth, float)
    for v in range(len(cameras)):
        keep = (alpha[v] > alpha_threshold) & np.isfinite(depth[v])
        if not keep.any():
            continue
        points = world_to_canonical(unproject(depth[v], cameras[v], fov_deg, keep), object_matrix_world)
        colors = albedo_linear[v][keep]  # row-major, as unproject's points
        q = (points + 0.5) * res - 0.5  # voxel units, cell centres at integers
        cell = np.floor(q + 0.5).astype(np.int64)
        inside = ((cell >= 0) & (cell < res)).all(axis=1)
        index = np.full(len(q), -1, np.int64)
        c = cell[inside]
        index[inside] = lookup[c[:, 0], c[:, 1], c[:, 2]]
        miss = index < 0
        if miss.any():
            dist, nearest = tree.query(q[miss], distance_upper_bound=snap_voxels)
            index[np.flatnonzero(miss)] = np.where(np.isfinite(dist), nearest, -1)
        hit = index >= 0
        np.add.at(sums, index[hit], colors[hit])
        counts += np.bincount(index[hit], minlength=n)
    observed = counts > 0
    albedo = np.zeros((n, 3))
    albedo[observed] = sums[observed] / counts[observed, None]
    if observed.any() and not observed.all():
        _, nearest = cKDTree(coords[observed].astype(float)).query(coords[~observed].astype(float))
        albedo[~observed] = albedo[observed][nearest]
    return coords.astype(np.int16), albedo, observed
