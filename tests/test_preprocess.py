import numpy as np
import pytest
from PIL import Image

from sam3d_addon.errors import InputError
from sam3d_addon.preprocess import crop_box, prepare_inputs, read_mask, read_photo


def _photo(h=40, w=60):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_read_photo_modes(tmp_path, mode):
    rgb = _photo()
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    else:
        img = img.convert(mode)
    path = tmp_path / f"p_{mode.replace(';', '')}.png"
    img.save(path)
    photo = read_photo(path)
    assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == (40, 60, 3)
    if mode == "I;16":
        assert np.array_equal(photo.rgb[..., 0], rgb[..., 0])


def test_exif_orientation_applied(tmp_path):
    rgb = _photo(20, 50)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    photo = read_photo(path)
    assert photo.rgb.shape[:2] == (50, 20)


def test_exif_focal_length(tmp_path):
    img = Image.fromarray(_photo(30, 60))
    exif = img.getexif()
    exif.get_ifd(0x8769)[0xA405] = 36  # 36 mm equivalent -> focal = longer side
    path = tmp_path / "f.jpg"
    img.save(path, exif=exif)
    assert read_photo(path).focal_px == pytest.approx(60.0)


def test_mask_errors(tmp_path):
    size = (60, 40)
    with pytest.raises(InputError, match="empty"):
        read_mask(np.zeros((40, 60), bool), size)
    with pytest.raises(InputError, match="whole image"):
        read_mask(np.ones((40, 60), bool), size)
    with pytest.raises(InputError, match="must match"):
        read_mask(np.ones((10, 10), bool), size)
    with pytest.raises(InputError, match="not found"):
        read_mask(tmp_path / "nope.png", size)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="Cannot read"):
        read_photo(bad)


def test_mask_from_alpha_and_gray(tmp_path):
    m = np.zeros((40, 60), bool)
    m[10:20, 5:30] = True
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 3] = m * 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray((m * 255).astype(np.uint8)).save(tmp_path / "g.png")
    assert np.array_equal(read_mask(tmp_path / "a.png", (60, 40)), m)
    assert np.array_equal(read_mask(tmp_path / "g.png", (60, 40)), m)


def test_crop_box_official_rule_and_inputs():
    m = np.zeros((100, 120), bool)
    m[20:41, 30:71] = True  # x 30..70, y 20..40 inclusive -> w=40, h=20
    box = crop_box(m)
    assert box == (50 - 24, 30 - 24, 50 + 24, 30 + 24)  # size int(40*1.2)=48 around (50, 30)
    rgb = _photo(100, 120)
    inp = prepare_inputs(rgb, m, 28)
    assert set(inp) == {"image", "mask", "rgb_image", "rgb_image_mask", "pointmap", "rgb_pointmap"}
    assert inp["image"].shape == (1, 3, 28, 28) and inp["mask"].shape == (1, 1, 28, 28)
    assert 0.0 <= inp["image"].min() and inp["image"].max() <= 1.0
    assert np.isnan(inp["pointmap"]).all()
    # The crop keeps the object centred: its mask covers the middle of the crop.
    assert inp["mask"][0, 0, 14, 14] == 1.0
    # The full image is padded (top/bottom) to a square: the first rows are padding.
    assert inp["rgb_image"][0, :, 0, :].max() == 0.0


def test_pointmap_crop_zero_fill():
    m = np.zeros((32, 32), bool)
    m[0:20, 0:20] = True  # touches the border: the crop reaches outside the image
    pm = np.ones((32, 32, 3), np.float32)
    inp = prepare_inputs(_photo(32, 32), m, 16, pointmap=pm)
    assert inp["pointmap"][0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert np.isfinite(inp["pointmap"]).all()
