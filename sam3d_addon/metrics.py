"""Shape and layout metrics of the SAM 3D paper, on NumPy arrays.

Frames follow `pose.py`: a shape lives in the canonical object frame (the occupancy grid's axes,
object inside [-0.5, 0.5]^3, voxel c has centre (c + 0.5) / R - 0.5) and a pose maps it into the
model camera frame as  p_cam = R^T (s * p_obj) + t.

Definitions: the SAM 3D paper's evaluation metrics (Tables 2 and 3 of the paper, shared/seeds/000;
formulas as given in shared/seeds/001, sections 5.2.1 "Shape Metrics" and 5.2.3 "Layout Metrics"):

* shape (5.2.1): each mesh is normalised to [-1, 1] (see `unit_cube_transform`), points are sampled
  uniformly on both surfaces, and
  - F1@d: precision = fraction of predicted points within d of the GT, recall = fraction of GT
    points within d of the prediction, F1 = 2PR / (P + R);
  - Chamfer: mean of *squared* nearest distances pred->GT plus mean of squared nearest distances
    GT->pred (sum of the two directions, not their average);
  - vIoU: |V1 n V2| / |V1 u V2| on binary voxel grids.
* layout (5.2.3), on posed (camera-frame) point clouds M (prediction) and M_gt:
  - ADD(A, B) = mean over x in A of min_{y in B} |x - y|;
  - ADD-S = (ADD(M, M_gt) + ADD(M_gt, M)) / 2, reported divided by the diameter
    d = max_{x, y in M_gt} |x - y|; ADD-S@0.1 = 1 if ADD-S < 0.1 d;
  - 3D IoU: Volume(B_p n B_gt) / Volume(B_p u B_gt); the paper uses axis-aligned boxes
    (`axis_aligned_box`), `box_iou_3d` is exact for oriented boxes too (`posed_box`);
  - rotation error: the paper's ICP-Rot is replaced by a symmetry-aware geodesic angle, see
    `rotation_error_deg`.

Nearest neighbours use scipy's cKDTree, surfaces come from scikit-image's marching cubes and
trimesh's area-weighted sampling, box intersections from qhull (scipy HalfspaceIntersection).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import trimesh
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError, cKDTree
from scipy.spatial.distance import pdist
from skimage.measure import marching_cubes

from .pose import canonical_to_camera

# -- voxel IoU -----------------------------------------------------------------------------------


def voxel_iou(pred_occ: np.ndarray, gt_occ: np.ndarray) -> float:
    """|V1 n V2| / |V1 u V2| on boolean grids of the same shape (paper: vIoU). Two empty grids: 1."""
    pred = np.asarray(pred_occ, dtype=bool)
    gt = np.asarray(gt_occ, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"voxel_iou needs grids of the same shape, got {pred.shape} and {gt.shape}")
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


def resample_occupancy(occ: np.ndarray, resolution: int) -> np.ndarray:
    """Nearest-voxel resampling of a cubic grid to `resolution`^3 (same canonical cube).

    Each target voxel takes the value of the source voxel that contains its centre, so grids of
    different resolutions can be compared with `voxel_iou`.
    """
    occ = np.asarray(occ, dtype=bool)
    src = occ.shape[0]
    if occ.shape == (resolution,) * 3:
        return occ
    idx = np.floor((np.arange(resolution) + 0.5) * src / resolution).astype(int).clip(0, src - 1)
    return occ[np.ix_(idx, idx, idx)]


# -- surfaces ------------------------------------------------------------------------------------


def occupancy_to_mesh(occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at 0.5 on the zero-padded grid -> (vertices [V,3] canonical, faces [F,3]).

    Padding closes the surface where the object touches the grid border. An empty grid gives
    empty arrays.
    """
    occ = np.asarray(occ, dtype=bool)
    if not occ.any():
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    res = occ.shape[0]
    padded = np.pad(occ, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    # padded index p is original voxel p - 1, whose centre is (p - 1 + 0.5) / R - 0.5
    verts = (verts.astype(np.float64) - 0.5) / res - 0.5
    return verts, faces.astype(np.int64)


def surface_points_from_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n points sampled uniformly (area-weighted) on a triangle mesh; deterministic given seed."""
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False)
    if len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError("mesh has no faces with area to sample")
    points, _ = trimesh.sample.sample_surface(mesh, int(n), seed=seed)
    return np.asarray(points, dtype=np.float64)


def surface_points_from_occupancy(occ: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n points on the marching-cubes surface of an occupancy grid, in the canonical frame."""
    vertices, faces = occupancy_to_mesh(occ)
    if len(faces) == 0:
        raise ValueError("occupancy grid is empty: no surface to sample")
    return surface_points_from_mesh(vertices, faces, n, seed)


# -- [-1, 1] normalisation -----------------------------------------------------------------------


def unit_cube_transform(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, factor) such that (p - centre) * factor fits [-1, 1]^3.

    Paper protocol: "meshes are first normalized to [-1, 1]". Convention implemented: each shape by
    its *own* axis-aligned bounding box, centred on the box midpoint and scaled uniformly so its
    largest side spans exactly 2 (aspect ratio kept). Pass mesh vertices to normalise a mesh.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float((hi - lo).max())
    return (lo + hi) / 2.0, (2.0 / extent if extent > 0 else 1.0)


def normalize_to_unit_cube(points_a: np.ndarray, points_b: np.ndarray | None = None):
    """Normalise point sets to [-1, 1] (see `unit_cube_transform`), each by its own bounding box.

    Returns the normalised `points_a`, or the pair (a, b) when `points_b` is given.
    """
    def norm(points):
        centre, factor = unit_cube_transform(points)
        return (np.asarray(points, dtype=np.float64) - centre) * factor

    return norm(points_a) if points_b is None else (norm(points_a), norm(points_b))


# -- distances -----------------------------------------------------------------------------------


def nearest_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each query point, the Euclidean distance to the closest reference point (cKDTree)."""
    distances, _ = cKDTree(np.asarray(reference, dtype=np.float64)).query(np.asarray(query, dtype=np.float64))
    return distances


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def refine_mesh(vertices: np.ndarray, faces: np.ndarray, max_edge: float | None = None):
    """Drop zero-area faces and split triangles (trimesh.remesh.subdivide_to_size) until no edge
    exceeds `max_edge` (default: 1/20 of the bounding-box diagonal). The surface is unchanged;
    small triangles keep `MeshDistance`'s candidate search local. Returns (vertices, faces)."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    faces = faces[_face_areas(vertices, faces) > 1e-18]
    if len(faces) == 0:
        return vertices, faces
    if max_edge is None:
        max_edge = float(np.linalg.norm(np.ptp(vertices[faces.ravel()], axis=0))) / 20.0
    tri = vertices[faces]
    if np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max() <= max_edge:
        return vertices, faces
    return trimesh.remesh.subdivide_to_size(vertices, faces, max_edge=max_edge, max_iter=20)


class MeshDistance:
    """Unsigned point-to-surface distances for one triangle mesh (prepared once, queried often).

    This is the limit of the paper's nearest-of-1M-samples estimator without its sampling noise.
    Candidates: the k triangles with the nearest centroids (cKDTree); trimesh gives exact
    point-triangle distances and `best`, their minimum, is an upper bound. A triangle outside them
    has its centroid at least D_k away, so it lies at least `lower` = D_k - r_max away (r_max: the
    largest centroid-to-corner radius). A point is settled when lower >= best (exact), or, when
    `thresholds` are given, when for every threshold either best < tau or lower >= tau (the test
    d < tau is then decided exactly). Unsettled points try the 8k nearest centroids, then every
    triangle with its centroid within best + r_max.

    So with `thresholds=None` every distance is exact; with thresholds, F1-style counts are exact
    and the distances themselves are upper bounds; with k = 8 they were exact for 98-100% of the
    points in our measurements (mean excess <= 2e-6, max 6e-4 in the [-1, 1] frame), far below
    what would move a Chamfer or ADD-S mean.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, refine: bool = True, k: int = 8):
        if refine:
            vertices, faces = refine_mesh(vertices, faces)
        else:
            vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
            faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
            faces = faces[_face_areas(vertices, faces) > 1e-18]
        if len(faces) == 0:
            raise ValueError("mesh has no faces with area")
        self.triangles = np.asarray(vertices, dtype=np.float64)[faces]
        self.centroids = self.triangles.mean(axis=1)
        self.radii = np.linalg.norm(self.triangles - self.centroids[:, None, :], axis=2).max(axis=1)
        self.max_radius = float(self.radii.max())
        self.tree = cKDTree(self.centroids)
        self.k = int(min(k, len(faces)))

    def _lower_best(self, best, points, owner, candidates):
        """best[q] = min(best[q], exact distance from q to each candidate); `owner` is sorted."""
        if len(owner) == 0:
            return
        closest = trimesh.triangles.closest_point(self.triangles[candidates], points[owner])
        dist = np.linalg.norm(closest - points[owner], axis=1)
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        best[owner[starts]] = np.minimum(best[owner[starts]], np.minimum.reduceat(dist, starts))

    @staticmethod
    def _unsettled(lower, best, thresholds):
        if thresholds is None:
            return lower < best
        out = np.zeros(len(lower), dtype=bool)
        for tau in thresholds:
            out |= (lower < tau) & (tau <= best)
        return out

    def __call__(self, points: np.ndarray, thresholds=None) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        n_triangles = len(self.triangles)
        best = np.full(len(points), np.inf)
        todo = np.arange(len(points))
        for k in (self.k, 8 * self.k):
            k = min(k, n_triangles)
            centroid_dist, nearest = self.tree.query(points[todo], k=k)
            centroid_dist = centroid_dist.reshape(len(todo), k)
            owner, candidates = np.repeat(todo, k), nearest.reshape(-1)
            # a triangle can only beat `best` if |q - c_T| - r_T < best
            keep = centroid_dist.reshape(-1) - self.radii[candidates] < best[owner]
            self._lower_best(best, points, owner[keep], candidates[keep])
            if k == n_triangles:
                return best
            todo = todo[self._unsettled(centroid_dist[:, -1] - self.max_radius, best[todo], thresholds)]
            if len(todo) == 0:
                return best
        balls = self.tree.query_ball_point(points[todo], best[todo] + self.max_radius + 1e-12)
        counts = np.fromiter((len(b) for b in balls), dtype=np.int64, count=len(balls))
        candidates = np.fromiter(itertools.chain.from_iterable(balls), dtype=np.int64, count=int(counts.sum()))
        owner = np.repeat(todo, counts)
        keep = np.linalg.norm(points[owner] - self.centroids[candidates], axis=1) - self.radii[candidates] < best[owner]
        self._lower_best(best, points, owner[keep], candidates[keep])
        return best


def surface_distances(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, thresholds=None,
                      refine: bool = True) -> np.ndarray:
    """Distance from each point to the mesh surface: exact, or with `thresholds` exact enough to
    decide d < tau for each tau (see `MeshDistance`)."""
    return MeshDistance(vertices, faces, refine=refine)(points, thresholds)


# -- shape metrics -------------------------------------------------------------------------------


def f1_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray, threshold: float) -> float:
    """F1 from the two nearest-distance arrays: P = mean(pred_to_gt < d), R = mean(gt_to_pred < d)."""
    precision = float(np.mean(np.asarray(pred_to_gt) < threshold))
    recall = float(np.mean(np.asarray(gt_to_pred) < threshold))
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def f1_score(pred_pts: np.ndarray, gt_pts: np.ndarray, threshold: float) -> float:
    """F-score at `threshold` between two point clouds (paper: F1@0.01 in the [-1, 1] frame)."""
    return f1_from_distances(nearest_distances(pred_pts, gt_pts), nearest_distances(gt_pts, pred_pts), threshold)


def chamfer_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> float:
    """mean(pred_to_gt^2) + mean(gt_to_pred^2): the paper's Chamfer distance (squared, summed)."""
    return float(np.mean(np.square(pred_to_gt)) + np.mean(np.square(gt_to_pred)))


def chamfer(pred_pts: np.ndarray, gt_pts: np.ndarray) -> float:
    """Paper's Chamfer distance: mean squared NN distance pred->GT + mean squared NN distance GT->pred."""
    return chamfer_from_distances(nearest_distances(pred_pts, gt_pts), nearest_distances(gt_pts, pred_pts))


# -- posed point clouds, ADD-S -------------------------------------------------------------------


def posed_points(points_canonical: np.ndarray, R: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Canonical points into the model camera frame: p_cam = R^T (s * p_obj) + t (pose.py)."""
    return canonical_to_camera(points_canonical, R, t, s)


def adds_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> float:
    """(ADD(M, M_gt) + ADD(M_gt, M)) / 2 from the two nearest-distance arrays (not normalised)."""
    return float((np.mean(pred_to_gt) + np.mean(gt_to_pred)) / 2.0)


def adds(pred_posed: np.ndarray, gt_posed: np.ndarray) -> float:
    """Paper's ADD-S, *before* dividing by the diameter: the average of the two directed mean
    closest-point distances, (ADD(M, M_gt) + ADD(M_gt, M)) / 2, in camera-frame units.

    Closest-point matching makes it symmetry-aware (no fixed correspondences). Divide by
    `object_diameter(gt_posed)` for the paper's normalised value, or use `adds_at`.
    """
    return adds_from_distances(nearest_distances(pred_posed, gt_posed), nearest_distances(gt_posed, pred_posed))


def object_diameter(gt_posed: np.ndarray) -> float:
    """d = max_{x, y} |x - y| over the GT points (the farthest pair lies on the convex hull)."""
    points = np.asarray(gt_posed, dtype=np.float64).reshape(-1, 3)
    if len(points) < 2:
        return 0.0
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:  # flat or degenerate cloud: fall back to all points
        pass
    return float(pdist(points).max())


def adds_at(adds_value: float, diameter: float, fraction: float = 0.1) -> bool:
    """ADD-S@fraction: whether ADD-S < fraction * diameter (paper: ADD-S@0.1)."""
    return bool(adds_value < fraction * diameter)


# -- rotation error ------------------------------------------------------------------------------


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to a 3x3 matrix (SVD projection onto SO(3))."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def axis_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation by angle_rad about `axis` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def _octahedral_group() -> np.ndarray:
    """The 24 rotations mapping the canonical cube onto itself (signed permutations, det +1)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return np.stack(out)


CUBE_ROTATIONS = _octahedral_group()
# A shape counts as continuously symmetric about an axis when all these turns leave it unchanged:
# an exactly n-fold prism passes a turn of a degrees only if n * a / 360 is an integer, which for
# 30, 45 and 100 deg together needs 72 | n, so only near-circular cross-sections pass all three.
_CONTINUOUS_TEST_DEG = (30.0, 45.0, 100.0)


def symmetry_rotations(points_canonical: np.ndarray, tolerance: float = 0.02,
                       max_points: int = 512) -> tuple[np.ndarray, list[np.ndarray]]:
    """Estimate the shape's rotational symmetries about the canonical origin.

    A rotation G is a symmetry when the rotated cloud is ADD-S-equivalent to the original:
    ADD-S(G X, X) <= noise + tolerance * diameter, where noise is the mean distance from a point of
    X to its nearest *other* point (what ADD-S gives for two samplings of the same surface).
    Candidates: the 24 rotations of the cube group (k * 90 deg turns about the canonical axes and
    their compositions) and, per canonical axis, turns by 30, 45 and 100 deg (all pass -> continuous
    symmetry about that axis, e.g. a cylinder or a bowl about its up axis).

    Pass the GT cloud in the canonical frame multiplied by the GT scale (an anisotropic scale breaks
    symmetries). Returns (discrete [K,3,3] including the identity, list of continuous axes).
    """
    points = np.asarray(points_canonical, dtype=np.float64).reshape(-1, 3)
    if len(points) > max_points:  # deterministic thinning keeps this cheap
        points = points[np.linspace(0, len(points) - 1, max_points).astype(int)]
    tree = cKDTree(points)
    self_nn, _ = tree.query(points, k=2)
    limit = float(np.mean(self_nn[:, 1])) + tolerance * object_diameter(points)

    def equivalent(G):
        # ADD-S(G X, X): both directions against X's tree, as |x - G y| = |G^T x - y|
        forward, _ = tree.query(points @ G.T)
        backward, _ = tree.query(points @ G)
        return adds_from_distances(forward, backward) <= limit

    discrete = [G for G in CUBE_ROTATIONS if np.allclose(G, np.eye(3)) or equivalent(G)]
    continuous = [np.eye(3)[i] for i in range(3)
                  if all(equivalent(axis_rotation(np.eye(3)[i], np.radians(a))) for a in _CONTINUOUS_TEST_DEG)]
    return np.stack(discrete), continuous


def rotation_error_deg(R_pred: np.ndarray, R_gt: np.ndarray, gt_points_canonical: np.ndarray | None = None,
                       tolerance: float = 0.02, symmetries=None) -> float:
    """Symmetry-aware geodesic rotation error in degrees (replaces the paper's ICP-Rot).

    Rule: if G is a symmetry of the GT shape (G X ~ X in the canonical frame, see
    `symmetry_rotations`; `gt_points_canonical` are GT surface points in the canonical frame times
    the GT scale), the pose R' = G R_gt places the object exactly where R_gt does, since
    R'^T (s p) = R_gt^T G^T (s p) and G^T X ~ X. The error is the smallest geodesic angle between
    R_pred and any such R'. With a continuous symmetry about axis a the minimum over the turn angle
    is taken in closed form; with two or more continuous axes (a sphere) the error is 0. Without
    `gt_points_canonical` (or `symmetries`) this is the plain geodesic angle.
    """
    R_pred, R_gt = nearest_rotation(R_pred), nearest_rotation(R_gt)  # float32 data drifts off SO(3)
    if symmetries is None:
        symmetries = (symmetry_rotations(gt_points_canonical, tolerance) if gt_points_canonical is not None
                      else (np.eye(3)[None], []))
    discrete, continuous = symmetries
    if len(continuous) >= 2:
        return 0.0
    best_trace = -1.0
    for G in discrete:
        # candidate R' = A G R_gt (A: a turn about the continuous axis, or I):
        # trace(R_pred^T R') = trace(A N) with N = G R_gt R_pred^T
        N = G @ R_gt @ R_pred.T
        if continuous:
            a = continuous[0]
            k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
            # trace(Ra(th) N) = aNa + cos(th) (tr N - aNa) + sin(th) tr(K N); maximise over th
            ana = float(a @ N @ a)
            trace = ana + float(np.hypot(np.trace(N) - ana, np.trace(k @ N)))
        else:
            trace = float(np.trace(N))
        best_trace = max(best_trace, trace)
    return float(np.degrees(np.arccos(np.clip((best_trace - 1.0) / 2.0, -1.0, 1.0))))


# -- 3D boxes ------------------------------------------------------------------------------------


class OrientedBox(NamedTuple):
    """A 3D box: centre [3], rotation [3,3] (columns = box axes in the frame), full extents [3]."""

    centre: np.ndarray
    rotation: np.ndarray
    extents: np.ndarray

    @property
    def volume(self) -> float:
        return float(np.prod(self.extents))

    def corners(self) -> np.ndarray:
        signs = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
        return self.centre + (signs * self.extents) @ self.rotation.T


def _as_box(box) -> OrientedBox:
    centre, rotation, extents = box
    return OrientedBox(np.asarray(centre, dtype=np.float64).reshape(3),
                       np.asarray(rotation, dtype=np.float64).reshape(3, 3),
                       np.abs(np.asarray(extents, dtype=np.float64).reshape(3)))


def _halfspaces(box: OrientedBox) -> np.ndarray:
    """Rows [n, -b] of n.x - b <= 0 (qhull's A x + b <= 0 form), two per box axis."""
    rows = []
    for k in range(3):
        n = box.rotation[:, k]
        centre_offset = float(n @ box.centre)
        rows.append(np.r_[n, -(centre_offset + box.extents[k] / 2.0)])
        rows.append(np.r_[-n, centre_offset - box.extents[k] / 2.0])
    return np.array(rows)


def box_intersection_volume(box_a, box_b) -> float:
    """Exact volume of the intersection of two oriented boxes (convex polytopes).

    An interior point comes from the Chebyshev centre of the 12 half-spaces (linear program); no
    interior (radius ~ 0) means the boxes do not overlap in volume. qhull then intersects the
    half-spaces and the convex hull of the resulting vertices gives the volume.
    """
    a, b = _as_box(box_a), _as_box(box_b)
    if a.volume <= 0.0 or b.volume <= 0.0:
        return 0.0
    halfspaces = np.vstack([_halfspaces(a), _halfspaces(b)])
    normals, offsets = halfspaces[:, :3], halfspaces[:, 3]
    # maximise r s.t. n_i.x + r |n_i| <= -offset_i
    lp = linprog(c=[0.0, 0.0, 0.0, -1.0], A_ub=np.c_[normals, np.linalg.norm(normals, axis=1)], b_ub=-offsets,
                 bounds=[(None, None)] * 3 + [(0.0, None)], method="highs")
    size = float(min(a.extents.min(), b.extents.min()))
    if lp.status != 0 or lp.x[3] <= 1e-9 * size:
        return 0.0
    try:
        vertices = HalfspaceIntersection(halfspaces, lp.x[:3]).intersections
        return float(ConvexHull(vertices).volume)
    except QhullError:  # numerically flat intersection
        return 0.0


def box_iou_3d(box_a, box_b) -> float:
    """Volume(A n B) / Volume(A u B) for oriented boxes given as (centre, rotation, extents)."""
    a, b = _as_box(box_a), _as_box(box_b)
    inter = box_intersection_volume(a, b)
    union = a.volume + b.volume - inter
    return float(inter / union) if union > 0 else 0.0


def canonical_bounds(shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the canonical axis-aligned box of an occupancy grid (occupied voxels' outer faces)
    or of a point cloud [N,3]."""
    shape = np.asarray(shape)
    if shape.ndim == 3:
        occ = shape.astype(bool)
        if not occ.any():
            return np.zeros(3), np.zeros(3)
        res = np.array(occ.shape, dtype=np.float64)
        idx = np.argwhere(occ)
        return idx.min(axis=0) / res - 0.5, (idx.max(axis=0) + 1) / res - 0.5
    points = np.asarray(shape, dtype=np.float64).reshape(-1, 3)
    return points.min(axis=0), points.max(axis=0)


def posed_box(shape: np.ndarray, R: np.ndarray, t: np.ndarray, s: np.ndarray) -> OrientedBox:
    """The posed object's oriented box in the camera frame: the canonical axis-aligned box of the
    occupied voxels (or of the points) under p_cam = R^T (s * p) + t."""
    lo, hi = canonical_bounds(shape)
    scale = np.broadcast_to(np.asarray(s, dtype=np.float64).reshape(-1), (3,))
    centre = posed_points(((lo + hi) / 2.0)[None], R, t, scale)[0]
    # canonical axis k lands on column k of R^T, scaled by s_k (s > 0 keeps the orientation)
    return OrientedBox(centre, np.asarray(R, dtype=np.float64).T.copy(), np.abs((hi - lo) * scale))


def axis_aligned_box(points: np.ndarray) -> OrientedBox:
    """Camera-frame axis-aligned bounding box of posed points (the paper's 3D IoU boxes)."""
    lo, hi = canonical_bounds(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    return OrientedBox((lo + hi) / 2.0, np.eye(3), hi - lo)


# -- scale alignment -----------------------------------------------------------------------------


def scale_align(pred_t: np.ndarray, pred_s: np.ndarray, gt_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global scale about the camera centre, k = |t_gt| / |t_pred|, applied to (t, s).

    Scaling the whole predicted object about the camera centre leaves its image unchanged, so this
    removes the monocular depth/scale ambiguity for the "scale-aligned" layout metrics.
    """
    pred_t = np.asarray(pred_t, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(pred_t))
    k = float(np.linalg.norm(np.asarray(gt_t, dtype=np.float64))) / norm if norm > 0 else 1.0
    return pred_t * k, np.asarray(pred_s, dtype=np.float64) * k
