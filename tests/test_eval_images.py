"""The eval transform gives timm's pixels: `load_eval_images` (PIL, no TensorFlow) and the tf.data
eval transform, against timm's `create_transform(**resolve_data_config(...))`, on real photos.

The photos are scikit-learn's two sample images, saved as JPEG and PNG, whole, turned to portrait
and cut to odd sizes (so both orientations and every rounding of the resize and the crop occur).
Differences are in intensity levels (0-255): |ours - timm| * std * 255 per channel value.
"""
import numpy as np
import pytest

from focalnet_jax.data import eval_images
from torch_refs import import_timm

MEAN_BAR, P99_BAR = 0.25, 1.5
SETTINGS = [  # (image_size, crop_ratio, interpolation): the official, timm's 1K and 22K evals, bilinear
    (224, 0.875, "bicubic"), (224, 0.9, "bicubic"), (384, 1.0, "bicubic"), (224, 0.875, "bilinear")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  from PIL import Image
  from sklearn.datasets import load_sample_images

  root = tmp_path_factory.mktemp("photos")
  paths = []
  for name, pixels in zip(("china", "flower"), load_sample_images().images):
    shapes = {"": pixels, "_portrait": pixels.transpose(1, 0, 2), "_odd": pixels[3:400, 5:591]}
    for suffix, img in shapes.items():
      for ext in ("jpg", "png"):
        paths.append(str(root / f"{name}{suffix}.{ext}"))
        Image.fromarray(np.ascontiguousarray(img)).save(paths[-1], quality=90)
  return paths


def timm_levels(path: str, image_size: int, crop_ratio: float, interpolation: str) -> np.ndarray:
  """timm's eval transform of one file, back in intensity levels, HWC."""
  import_timm()
  from PIL import Image
  from timm.data import create_transform, resolve_data_config

  cfg = resolve_data_config({"input_size": (3, image_size, image_size), "crop_pct": crop_ratio,
                             "interpolation": interpolation})
  with Image.open(path) as img:
    x = create_transform(**cfg)(img.convert("RGB")).numpy().transpose(1, 2, 0)
  return levels(x)


def levels(x: np.ndarray) -> np.ndarray:
  return (x * np.asarray(eval_images.IMAGENET_STD) + np.asarray(eval_images.IMAGENET_MEAN)) * 255.0


def tf_eval_images(paths, image_size, crop_ratio, interpolation) -> np.ndarray:
  pytest.importorskip("tensorflow")  # the tf.data pipeline compared here
  from focalnet_jax.data import augment
  from focalnet_jax.data.pipeline import import_tf

  tf = import_tf()
  return np.stack([np.asarray(augment.normalize(
      augment.eval_transform(tf.io.read_file(p), image_size, crop_ratio, interpolation),
      eval_images.IMAGENET_MEAN, eval_images.IMAGENET_STD)) for p in paths])


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_eval_images_give_timms_pixels(photos, setting):
  ours = {"load_eval_images": eval_images.load_eval_images(photos, *setting),
          "tf.data": tf_eval_images(photos, *setting)}
  for i, path in enumerate(photos):
    want = timm_levels(path, *setting)
    for name, images in ours.items():
      diff = np.abs(levels(images[i]) - want)
      mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
      print(f"{setting} {name:16s} {path.rsplit('/', 1)[-1]:22s} mean {mean:.3f}  p99 {p99:.3f}  max {diff.max():.2f}")
      assert mean <= MEAN_BAR and p99 <= P99_BAR, (name, path, mean, p99)


def test_resize_and_crop_rounding_are_torchvisions():
  """Every size rule against torchvision's own, over many shapes (both orientations, squares)."""
  import_timm()
  from torchvision.transforms import functional as tvf

  rng = np.random.default_rng(0)
  for h, w in [(500, 500), (333, 500), (500, 333), *rng.integers(40, 2000, (300, 2)).tolist()]:
    for image_size, crop_ratio in ((224, 0.875), (224, 0.9), (384, 1.0), (288, 0.95)):
      short = int(image_size / crop_ratio)
      want = tvf._compute_resized_output_size((h, w), [short])
      assert list(eval_images.resized_shape(h, w, image_size, crop_ratio)) == want, (h, w, image_size, crop_ratio)
      rh, rw = want
      top = int(round((rh - image_size) / 2.0))
      left = int(round((rw - image_size) / 2.0))
      assert eval_images.crop_offsets(rh, rw, image_size) == (top, left)


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No image file"):
    eval_images.load_eval_images([str(tmp_path / "missing.jpg")])
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="Cannot read image .*broken.jpg"):
    eval_images.load_eval_images([str(tmp_path / "broken.jpg")])
  with pytest.raises(ValueError, match="interpolation must be"):
    eval_images.eval_pixels(str(tmp_path / "broken.jpg"), interpolation="lanczos")
  with pytest.raises(ValueError, match="crop_ratio must be in"):
    eval_images.resized_shape(100, 100, 224, 1.2)
