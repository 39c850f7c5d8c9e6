"""`jaxcam.models` image decoding and preprocessing: the pixel rule by bit depth and range."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcam import autoexplain, models, stream


@pytest.mark.fast
def test_pixel_rule_by_bit_depth_and_float_range():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
  np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(np.uint16) * 257), img)  # 16-bit: scaled
  np.testing.assert_array_equal(models.to_uint8_rgb(img / 255.0), img)  # [0, 1]
  np.testing.assert_array_equal(
    models.to_uint8_rgb(np.minimum(img / 255.0 * 1.03, 1.03)), np.minimum(np.round(img * 1.03), 255)
  )
  np.testing.assert_array_equal(models.to_uint8_rgb(img[..., :1]), np.repeat(img[..., :1], 3, -1))  # (H, W, 1)
  with pytest.warns(UserWarning, match=r"read as 0-255"):
    np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(np.float32)), img)
  with pytest.raises(ValueError, match=r"Ambiguous float pixel range .*\(image 3\)"):
    models.to_uint8_rgb(img / 255.0 * 1.5, index=3)
  with pytest.raises(ValueError, match=r"looks normalized already"):
    models.to_uint8_rgb(img / 255.0 - 0.5)
  with pytest.raises(ValueError, match=r"finite pixel values, got NaN or Inf \(image 1\)"):
    models.preprocess([img, np.full((4, 4, 3), np.nan)], 8)
  with pytest.raises(ValueError, match="at least one image"):
    models.preprocess([], 8)
  with pytest.raises(ValueError, match=r"shape \(H, W, 3\).*got \(4, 4, 5\)"):
    models.preprocess(np.zeros((4, 4, 5), np.uint8), 8)
  # jax arrays are accepted like numpy arrays
  np.testing.assert_array_equal(models.preprocess(jnp.asarray(img)[None], 8), models.preprocess(img[None], 8))


@pytest.mark.fast
def test_16_bit_png_decodes_by_depth(tmp_path):
  gray = np.linspace(0, 255, 40 * 30).reshape(30, 40).astype(np.uint8)
  Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # a real 16-bit file
  decoded = stream.decode_image(str(tmp_path / "g16.png"))
  assert decoded.dtype == np.uint8 and decoded.shape == (30, 40, 3)
  np.testing.assert_array_equal(decoded[..., 0], gray)  # not clipped to white


@pytest.mark.fast
def test_preprocess_inputs():
  img = (np.random.default_rng(0).uniform(0, 255, (30, 40, 3))).astype(np.uint8)
  x = models.preprocess([img, img[:20]], "efficientnet_lite0")
  assert x.shape == (2, 224, 224, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  assert models.preprocess(img, 64).shape == (1, 64, 64, 3)
  with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
    models.preprocess(np.zeros((3, 30, 40)), 64)


@pytest.mark.fast
def test_exif_orientation_is_applied_on_decode(tmp_path):
  """A phone photo stored sideways with an EXIF orientation decodes upright, as PIL's ImageOps.exif_transpose."""
  from PIL import ImageOps

  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
  decoded = stream.decode_image(str(tmp_path / "phone.png"))
  assert decoded.shape == (16, 10, 3)
  np.testing.assert_array_equal(decoded, np.rot90(pixels, k=-1))  # independent of PIL: numpy's rotation
  with Image.open(tmp_path / "phone.png") as im:
    np.testing.assert_array_equal(decoded, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


@pytest.mark.fast
def test_integer_pixels_of_any_width_follow_one_rule():
  """Integers other than uint16 are read as 0-255 (an int64 array of 0-255 is not near-black); uint16 is 16-bit;
  a range that contradicts the rule warns; negative or beyond 16-bit values raise."""
  img = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64):
    if dtype is not np.int8 or img.max() < 128:
      np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(dtype)), img, err_msg=str(dtype))
  np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(np.int8) & 127), img & 127)
  with pytest.warns(UserWarning, match=r"int64 pixels up to \d+ are above 255.*read as 16-bit"):
    np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(np.int64) * 257), img)
  with pytest.warns(UserWarning, match=r"uint16 pixels all in \[0, 255\].*near-black.*uint8"):
    models.to_uint8_rgb(img.astype(np.uint16))
  with pytest.raises(ValueError, match=r"integer pixel values in \[0, 65535\].*got \[-1, \d+\] in dtype int32"):
    models.to_uint8_rgb(img.astype(np.int32) - 1)
  with pytest.raises(ValueError, match=r"\(image 2\)"):
    models.preprocess([img, img, img.astype(np.int64) + 70000], 8)


@pytest.mark.fast
def test_an_empty_batch_is_one_clear_error_everywhere():
  empty = np.zeros((0, 8, 8, 3), np.uint8)
  for call in (
    lambda: models.to_uint8_rgb(empty),
    lambda: models.preprocess(empty, 8),
    lambda: models.preprocess([], 8),
    lambda: autoexplain.load_images(empty),  # explain_model's loader
    lambda: autoexplain.load_images([]),
  ):
    with pytest.raises(ValueError, match=r"Expected at least one image.*got an empty"):
      call()
