"""Photo and mask -> model inputs, exactly as the model contract defines them.

Follows the official stage-1 preprocessing (fact sheet section 10): the object crop is a square
box of 1.2x the mask's bounding box, zero-filled outside the photo; the full photo is padded to a
centred square with zeros; both are resized to the model's input size (image bilinear with
antialiasing, masks and point maps nearest).  Images and masks stay in [0, 1]; the ImageNet
normalisation happens inside the ONNX graph.  Training uses these same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Masks need at least this many pixels: fewer gives no usable crop (the official code raises on
# boxes narrower than 2 px).
MIN_MASK_PIXELS = 4


@dataclass
class Photo:
    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied
    path: str | None
    focal_px: float | None  # focal length in pixels of the longer side, from EXIF, when known

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.rgb.shape[1], self.rgb.shape[0]


def _open(path: str | Path, what: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"Cannot read {what.lower()} {p.name}: {exc}") from None
    return ImageOps.exif_transpose(img)


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode (8/16-bit, gray, RGB, RGBA, palette, float) -> HxWx3 uint8."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            hi = max(1.0, float(arr.max()))
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # Composite over black: transparent areas carry no photo content.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _exif_focal_px(img: Image.Image, width: int, height: int) -> float | None:
    """Focal length in pixels of the longer side from EXIF (35 mm equivalent), if present."""
    try:
        exif = img.getexif()
        sub = exif.get_ifd(0x8769)  # Exif IFD
    except Exception:  # noqa: BLE001 - malformed EXIF must not stop a run
        return None
    f35 = sub.get(0xA405) or exif.get(0xA405)  # FocalLengthIn35mmFilm
    if f35:
        try:
            f35 = float(f35)
        except (TypeError, ValueError):
            return None
        if f35 > 0:
            # 35 mm film is 36 mm across its longer side.
            return f35 / 36.0 * max(width, height)
    return None


def read_photo(image: str | Path | np.ndarray) -> Photo:
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError(f"Image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}.")
        if arr.dtype != np.uint8:
            scale = 65535.0 if arr.dtype == np.uint16 else (255.0 if arr.max() > 1.0 else 1.0)
            arr = np.clip(arr.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Photo(rgb=np.ascontiguousarray(arr[..., :3]), path=None, focal_px=None)
    img = _open(image, "Image")
    rgb = _to_uint8_rgb(img)
    if min(rgb.shape[:2]) < 8:
        raise InputError(f"Image {Path(image).name} is too small ({rgb.shape[1]}x{rgb.shape[0]}).")
    return Photo(rgb=rgb, path=str(image), focal_px=_exif_focal_px(img, rgb.shape[1], rgb.shape[0]))


def read_mask(mask: str | Path | np.ndarray, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    """A binary mask as HxW bool; `size` is the photo's (width, height)."""
    label = name or (Path(mask).name if not isinstance(mask, np.ndarray) else "mask")
    if isinstance(mask, np.ndarray):
        arr = np.asarray(mask)
        m = arr.astype(bool) if arr.dtype == bool else arr > (127 if arr.max() > 1 else 0.5)
        if m.ndim == 3:
            m = m.any(axis=2)
    else:
        img = _open(mask, "Mask")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = np.asarray(img.convert("RGBA"))
            alpha = rgba[..., 3]
            # A mask painted as alpha (transparent elsewhere) or as white-on-black.
            m = alpha > 127 if alpha.min() < 128 else rgba[..., :3].max(axis=2) > 127
        else:
            gray = np.asarray(img.convert("I") if img.mode.startswith("I;16") else img.convert("L"))
            thresh = 32767 if gray.dtype != np.uint8 and gray.max() > 255 else 127
            m = gray > thresh
    if (m.shape[1], m.shape[0]) != tuple(size):
        raise InputError(
            f"Mask {label} is {m.shape[1]}x{m.shape[0]} but the image is {size[0]}x{size[1]}; masks must match the image size."
        )
    count = int(m.sum())
    if count < MIN_MASK_PIXELS:
        raise InputError(f"Mask {label} is empty; paint the object you want to 3Dfy.")
    if count >= m.size * 0.98:
        raise InputError(f"Mask {label} covers the whole image; paint only the object.")
    return m


# -- geometry of the crop ----------------------------------------------------------------------

def crop_box(mask: np.ndarray, box_size_factor: float = 1.2) -> tuple[int, int, int, int]:
    """Square box (x0, y0, x1, y1), half-open, around the mask (official rule, section 10)."""
    ys, xs = np.nonzero(mask)
    x_min, x_max, y_min, y_max = xs.min(), xs.max(), ys.min(), ys.max()
    w, h = x_max - x_min, y_max - y_min
    size = int(max(w, h, 2) * box_size_factor)
    cx, cy = (x_min + x_max) / 2.0, (y_min + y_max) / 2.0
    return int(cx - size // 2), int(cy - size // 2), int(cx + size // 2), int(cy + size // 2)


def crop_zero_fill(arr: np.ndarray, box: tuple[int, int, int, int], fill=0) -> np.ndarray:
    """Crop with areas outside the array filled with `fill` (zeros, as the official crop)."""
    x0, y0, x1, y1 = box
    out = np.full((y1 - y0, x1 - x0) + arr.shape[2:], fill, dtype=arr.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x1, arr.shape[1]), min(y1, arr.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def pad_to_square(arr: np.ndarray, fill=0) -> np.ndarray:
    h, w = arr.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.full((side, side) + arr.shape[2:], fill, dtype=arr.dtype)
    out[top:top + h, left:left + w] = arr
    return out


def _resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    # PIL's bilinear filter widens its support when shrinking: antialiased like torchvision's.
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def _resize_nearest(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    # Pixel-centre sampling, the same rule as torch's 'nearest' interpolation.
    rows = np.minimum((np.arange(size) * (h / size)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size) * (w / size)).astype(np.int64), w - 1)
    return arr[rows][:, cols]


def _chw(a: np.ndarray) -> np.ndarray:
    a = a if a.ndim == 3 else a[..., None]
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None].astype(np.float32))


def prepare_inputs(rgb: np.ndarray, mask: np.ndarray, input_size: int, box_size_factor: float = 1.2,
                   pointmap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The six condition-encoder inputs, each [1, C, S, S] float32.

    `pointmap` (HxWx3, PyTorch3D camera frame, NaN where unknown) is optional; without it the
    point-map inputs are all NaN, which the encoder reads as "no point map".
    """
    box = crop_box(mask, box_size_factor)
    crop_rgb = crop_zero_fill(rgb, box)
    crop_mask = crop_zero_fill(mask.astype(np.float32), box)
    full_rgb = pad_to_square(rgb)
    full_mask = pad_to_square(mask.astype(np.float32))
    out = {
        "image": _chw(_resize_image(crop_rgb, input_size)),
        "mask": _chw(_resize_nearest(crop_mask, input_size)),
        "rgb_image": _chw(_resize_image(full_rgb, input_size)),
        "rgb_image_mask": _chw(_resize_nearest(full_mask, input_size)),
    }
    if pointmap is None:
        nan = np.full((1, 3, input_size, input_size), np.nan, dtype=np.float32)
        out["pointmap"], out["rgb_pointmap"] = nan, nan.copy()
    else:
        pm = np.asarray(pointmap, dtype=np.float32)
        # Zero fill outside the photo, as the official crop and pad do for point maps.
        out["pointmap"] = _chw(_resize_nearest(crop_zero_fill(pm, box), input_size))
        out["rgb_pointmap"] = _chw(_resize_nearest(pad_to_square(pm), input_size))
    return out
