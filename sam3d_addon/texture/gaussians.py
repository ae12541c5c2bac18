"""3D Gaussian splats as the standard 3DGS PLY (the layout of the original 3DGS code and viewers).

Binary little-endian PLY, one `vertex` element per Gaussian with float32 properties
x, y, z, nx, ny, nz, f_dc_0..2, opacity, scale_0..2, rot_0..3.  Stored values are the
*pre-activation* parameters every 3DGS viewer expects: f_dc = (rgb - 0.5) / SH_C0 (degree-0
SH), opacity = logit(alpha), scale = log(std-dev), rot = unit quaternion (w, x, y, z).
`write_ply` takes activated values (as the Gaussian decoder outputs them) and converts;
`read_ply` converts back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SH_C0 = 0.28209479177387814
PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_EPS = 1e-7


def _rows(array, width: int, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != width:
        raise ValueError(f"{name} must end in {width} values, got shape {array.shape}")
    return array.reshape(-1, width)


def write_ply(path, xyz, scales, rotations, opacities, colors) -> Path:
    """Write Gaussians to a 3DGS PLY.

    xyz [..,3] positions; scales [..,3] std-devs (> 0); rotations [..,4] quaternions (w,x,y,z),
    normalised here; opacities [..] or [..,1] in (0, 1); colors [..,3] RGB (nominally [0, 1]).
    Leading dimensions are flattened (e.g. [N, G, 3] from the decoder).
    """
    xyz = _rows(xyz, 3, "xyz")
    n = len(xyz)
    scales = _rows(scales, 3, "scales")
    rotations = _rows(rotations, 4, "rotations")
    opacities = np.asarray(opacities, dtype=np.float64).reshape(-1)
    colors = _rows(colors, 3, "colors")
    if not (len(scales) == len(rotations) == len(opacities) == len(colors) == n):
        raise ValueError("xyz, scales, rotations, opacities and colors must describe the same Gaussians")
    rotations = rotations / np.maximum(np.linalg.norm(rotations, axis=1, keepdims=True), _EPS)
    alpha = np.clip(opacities, _EPS, 1 - _EPS)
    data = np.concatenate([
        xyz, np.zeros((n, 3)), (colors - 0.5) / SH_C0, np.log(alpha / (1 - alpha))[:, None],
        np.log(np.maximum(scales, _EPS)), rotations,
    ], axis=1).astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in PROPERTIES] + ["end_header"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        handle.write(np.ascontiguousarray(data).tobytes())
    return path


def read_ply(path) -> dict[str, np.ndarray]:
    """Read a binary little-endian 3DGS PLY back into activated values (the write_ply inputs).

    Returns xyz, normals, scales, rotations, opacities [N], colors and `raw` (the stored record array).
    """
    blob = Path(path).read_bytes()
    end = blob.index(b"end_header\n") + len(b"end_header\n")
    lines = blob[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or lines[1] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: not a binary little-endian PLY")
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[2] for line in lines if line.startswith("property float")]
    raw = np.frombuffer(blob, dtype=np.dtype([(name, "<f4") for name in names]), count=count, offset=end)

    def stack(*keys):
        return np.stack([raw[key].astype(np.float64) for key in keys], axis=1)

    return {
        "xyz": stack("x", "y", "z"),
        "normals": stack("nx", "ny", "nz"),
        "colors": stack("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5,
        "opacities": 1.0 / (1.0 + np.exp(-raw["opacity"].astype(np.float64))),
        "scales": np.exp(stack("scale_0", "scale_1", "scale_2")),
        "rotations": stack("rot_0", "rot_1", "rot_2", "rot_3"),
        "raw": raw,
    }
