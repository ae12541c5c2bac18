"""The pipeline's matched camera: a photo whose EXIF focal length differs from the model's field
of view gets that focal length, and its objects stay over their masks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3d_addon import contract, pose
from sam3d_addon.pipeline import Sam3DPipeline
from sam3d_addon.preprocess import read_photo
from sam3d_addon.texture.bake import canonical_to_opencv_camera, pinhole_intrinsics, project_points

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _centre_pixel(result):
    """Pixel of each object's origin through the result's camera (focal from lens_mm)."""
    cam = result.camera
    K = pinhole_intrinsics(cam.lens_mm * max(cam.resolution) / cam.sensor_width_mm, *cam.resolution)
    return np.concatenate([project_points(canonical_to_opencv_camera(np.zeros((1, 3)), o.rotation, o.translation, o.scale), K)
                           for o in result.objects])


def test_exif_focal_length_keeps_objects_on_their_pixels(tmp_path):
    if contract.DEFAULT_MODEL not in contract.available_models():
        pytest.skip("no shipped model in models/")
    img = Image.open(EXAMPLES / "chair.png").convert("RGB")
    plain, tagged = tmp_path / "plain.jpg", tmp_path / "tagged.jpg"  # the same pixels, one with EXIF
    img.save(plain, quality=95)
    exif = img.getexif()
    exif.get_ifd(0x8769)[0xA405] = 85  # a portrait lens: far longer than the model's field of view
    img.save(tagged, exif=exif, quality=95)
    assert read_photo(plain).focal_px is None and read_photo(tagged).focal_px

    masks = [EXAMPLES / "chair_mask.png", EXAMPLES / "vase_mask.png"]
    pipe = Sam3DPipeline(device="cpu", texture_model=None)
    base = pipe.run(plain, masks, seed=0)
    long_lens = pipe.run(tagged, masks, seed=0)

    assert long_lens.camera.focal_source == "exif" and base.camera.focal_source == "model"
    k = long_lens.camera.lens_mm / base.camera.lens_mm
    assert k > 1.5
    # the same pixels: each object's centre projects where it did with the model's own focal length
    assert np.allclose(_centre_pixel(long_lens), _centre_pixel(base), atol=0.5)
    for a, b in zip(base.objects, long_lens.objects):
        assert b.translation[2] == pytest.approx(k * a.translation[2])
        assert np.allclose(b.scale, a.scale)
        assert np.allclose(b.matrix_world, pose.camera_pose_to_object_matrix(b.rotation, b.translation, b.scale,
                                                                             long_lens.camera.matrix_world))
