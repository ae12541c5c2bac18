"""`sam3d pack`: a data set's preprocessed model inputs in a few compact files.

Training on a lent GPU machine means moving the data set there, and that machine has no Blender
and takes at most ~60 MB per transfer; a `sam3d data` directory is ~90 KB per sample (full-size
renders, depth, meshes).  A pack keeps only what `sam3d train` reads, already preprocessed
(`prepare_inputs`, the runtime's own crops): ~5-7 KB per sample.

Layout: DIR/pack.json (input and point sizes, field of view, the data set's meta.json, JPEG
quality, the chunk list) and DIR/{split}-{k:03d}.npz chunks.  Per sample: the crop and the full
image as JPEG (the only lossy part; at quality 90, the default, a mean abs error of ~3/255 on the
engine's renders, ~35 dB PSNR: the renders' own Cycles noise is most of it), both masks
and the occupancy as packed bits (exact), the point maps at the point embedder's pixels (exact,
see train/data.py) and the pose (exact).  Chunks may be moved separately: a pack directory is
readable with any subset of its train chunks present (the missing ones are reported).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .data import IMAGE_KEYS, POINT_KEYS, GeometryArrays, load_samples

PACK_FORMAT = "sam3d-blender/train-pack"
JPEG_KEYS = ("image", "rgb_image")
MASK_KEYS = ("mask", "rgb_image_mask")


def is_pack(path: Path) -> bool:
    return (Path(path) / "pack.json").is_file()


def read_pack_info(path: Path) -> dict:
    try:
        info = json.loads((Path(path) / "pack.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {path}/pack.json: {exc}.") from None
    if info.get("format") != PACK_FORMAT:
        raise InputError(f"{path}/pack.json is not a sam3d training pack.")
    return info


def _encode_jpeg(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    blobs, offsets = [], [0]
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(buf, "JPEG", quality=quality)
        blobs.append(buf.getvalue())
        offsets.append(offsets[-1] + len(blobs[-1]))
    return np.frombuffer(b"".join(blobs), np.uint8), np.asarray(offsets, np.int64)


def _decode_jpeg(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = [np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB")).transpose(2, 0, 1)
           for a, b in zip(offsets[:-1], offsets[1:])]
    return np.stack(out).astype(np.uint8)


def _chunk_arrays(arrays: GeometryArrays, quality: int) -> dict[str, np.ndarray]:
    out = {}
    for k in JPEG_KEYS:
        out[f"{k}_jpeg"], out[f"{k}_offsets"] = _encode_jpeg(arrays.images[k], quality)
    for k in MASK_KEYS:
        out[f"{k}_bits"] = np.packbits(arrays.images[k][:, 0] > 127, axis=-1)
    for k in POINT_KEYS:
        out[k] = arrays.points[k]
    out["occupancy_bits"] = np.packbits(arrays.occupancy.reshape(len(arrays), -1), axis=-1)
    out["rotation"], out["translation"], out["scale"] = arrays.rotation, arrays.translation, arrays.scale
    out["names"] = np.asarray([Path(p).name for p in arrays.paths])
    return out


def make_pack(data_dir, out_dir, input_size: int, point_size: int, quality: int = 90,
              chunk_size: int = 4000, progress=None) -> dict:
    """Pack the train and test splits of `data_dir` into `out_dir`; returns pack.json's dict."""
    from ..data.dataset import list_samples, load_meta, load_sample

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not 1 <= quality <= 100:
        raise InputError(f"--quality must be 1..100, got {quality}.")
    if chunk_size < 1:
        raise InputError(f"--chunk must be at least 1, got {chunk_size}.")
    train = list_samples(data_dir, "train")
    if not train:
        raise InputError(f"{data_dir} has no training samples; generate data with `sam3d data --out {data_dir} --n N`.")
    try:
        data_meta = load_meta(data_dir)
    except InputError:
        data_meta = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = []
    for split in ("train", "test"):
        paths = train if split == "train" else list_samples(data_dir, split)
        for k, start in enumerate(range(0, len(paths), chunk_size)):
            arrays = load_samples(paths[start:start + chunk_size], input_size, progress, point_size)
            name = f"{split}-{k:03d}.npz"
            partial = out_dir / (name + ".partial.npz")
            np.savez_compressed(partial, **_chunk_arrays(arrays, quality))
            partial.replace(out_dir / name)
            chunks.append({"file": name, "split": split, "n": len(arrays), "first": start,
                           "bytes": (out_dir / name).stat().st_size})
    info = {"format": PACK_FORMAT, "version": 1, "source": str(data_dir), "data_meta": data_meta,
            "input_size": input_size, "point_size": point_size, "jpeg_quality": quality,
            "fov_deg": float(load_sample(train[0])["fov_deg"]), "chunks": chunks}
    (out_dir / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def load_pack_split(pack_dir, split: str, input_size: int, point_size: int, limit: int | None = None) -> GeometryArrays:
    """A split of a pack as GeometryArrays (the chunks present, in order; a missing train chunk is
    reported on stderr and skipped, so a pack can be moved in parts)."""
    pack_dir = Path(pack_dir)
    info = read_pack_info(pack_dir)
    if (info["input_size"], info["point_size"]) != (input_size, point_size):
        raise InputError(f"{pack_dir} was packed for input {info['input_size']} px / points {info['point_size']} px, "
                         f"the model reads {input_size} / {point_size}; pack again with `sam3d pack`.")
    parts: list[dict] = []
    count = 0
    for chunk in info["chunks"]:
        if chunk["split"] != split or (limit and count >= limit):
            continue
        path = pack_dir / chunk["file"]
        if not path.is_file():
            print(f"pack: {path.name} is not here; training without its {chunk['n']} samples", file=sys.stderr)
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                parts.append({k: data[k] for k in data.files})
        except (OSError, ValueError) as exc:
            raise InputError(f"Cannot read {path}: {exc}.") from None
        count += chunk["n"]
    if not parts:
        return GeometryArrays.empty(input_size, point_size)
    images = {}
    for k in JPEG_KEYS:
        images[k] = np.concatenate([_decode_jpeg(p[f"{k}_jpeg"], p[f"{k}_offsets"]) for p in parts])
    for k in MASK_KEYS:
        bits = np.concatenate([p[f"{k}_bits"] for p in parts])
        images[k] = (np.unpackbits(bits, axis=-1, count=input_size)[:, None] * 255).astype(np.uint8)
    resolution = round(np.cbrt(parts[0]["occupancy_bits"].shape[1] * 8))
    occupancy = np.unpackbits(np.concatenate([p["occupancy_bits"] for p in parts]), axis=-1,
                              count=resolution ** 3).reshape(-1, resolution, resolution, resolution).astype(bool)
    n = limit or len(occupancy)
    return GeometryArrays(
        images={k: images[k][:n] for k in IMAGE_KEYS},
        points={k: np.concatenate([p[k] for p in parts])[:n] for k in POINT_KEYS},
        occupancy=occupancy[:n],
        rotation=np.concatenate([p["rotation"] for p in parts])[:n].astype(np.float64),
        translation=np.concatenate([p["translation"] for p in parts])[:n].astype(np.float64),
        scale=np.concatenate([p["scale"] for p in parts])[:n].astype(np.float64),
        paths=[str(pack_dir / split / str(name)) for p in parts for name in p["names"]][:n],
    )


def add_pack_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a `sam3d data` directory")
    parser.add_argument("--out", required=True, help="the pack directory to write")
    parser.add_argument("--config", default="tiny", help="the model config whose input sizes to pack for")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the two photos (default 90)")
    parser.add_argument("--chunk", type=int, default=4000, help="samples per file (default 4000, ~26 MB)")


def pack_main(args, progress=None) -> int:
    from ..nn.config import get_config

    try:
        config = get_config(args.config)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    info = make_pack(args.data, args.out, config.condition.vit.input_size, config.condition.point.input_size,
                     quality=args.quality, chunk_size=args.chunk, progress=progress)
    total = sum(c["bytes"] for c in info["chunks"])
    n = sum(c["n"] for c in info["chunks"])
    print(f"pack: {n} samples in {len(info['chunks'])} files, {total / 1e6:.1f} MB ({total / max(n, 1) / 1e3:.1f} KB "
          f"per sample) in {args.out}", file=sys.stderr)
    return 0
