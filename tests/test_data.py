"""The input pipeline: transforms, determinism and resumption, sharded eval, sources and their errors."""
import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import default
from focalnet_jax import data
from focalnet_jax.data import digits, folder

tf = pytest.importorskip("tensorflow")
from focalnet_jax.data import augment, device_augment, randaugment_jax  # noqa: E402  (imports TF)

MEAN, STD = default.IMAGENET_MEAN, default.IMAGENET_STD


def make_config(dataset, data_dir=None, **overrides):
  """configs/default.py (the data contract's defaults) at test sizes."""
  c = default.get_config()
  c.update(dict(dataset=dataset, data_dir=data_dir, train_split="train", eval_split="val", image_size=24,
                batch_size=4, eval_batch_size=6, shuffle_buffer=16, data_threads=2))
  c.update(overrides)
  return c


def _image(seed, h=30, w=40, gray=False):
  rng = np.random.default_rng(seed)
  img = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
  return Image.fromarray(img)


def _write_folder(root, split, counts, formats=("png",)):
  n = 0
  for cls, count in counts.items():
    os.makedirs(os.path.join(root, split, cls), exist_ok=True)
    for i in range(count):
      fmt = formats[n % len(formats)]
      gray = fmt == "gray"
      ext = "png" if gray else fmt
      _image(hash((split, cls, i)) % 2**32, gray=gray).save(os.path.join(root, split, cls, f"{i}.{ext}"))
      n += 1
  return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("folder"))
  fmts = ("png", "jpg", "gif", "bmp", "webp", "gray")
  _write_folder(root, "train", {"cat": 8, "ant": 7, "bee": 8}, fmts)  # 23 images
  _write_folder(root, "val", {"cat": 4, "ant": 3, "bee": 4}, fmts)  # 11 images
  return root


def _digest(images):
  return [hashlib.sha1(np.round(x, 3).tobytes()).hexdigest() for x in images]


# ------------------------------------------------------------------------------------------
# Importing, synthetic data


def test_import_is_tf_free_and_synthetic_runs_without_tf():
  code = """
import sys, ml_collections, numpy as np
import focalnet_jax.data as d
assert 'tensorflow' not in sys.modules, 'import focalnet_jax.data imported TF'
c = ml_collections.ConfigDict(dict(seed=1, image_size=8, batch_size=6, eval_batch_size=4))
it = d.synthetic_iterator(c, 10, process_count=2)
b = next(it)
assert b['image'].shape == (3, 8, 8, 3) and b['image'].dtype == np.float32 and b['label'].dtype == np.int32
assert b['label'].max() < 10
b3 = next(d.synthetic_iterator(c, 10, start_step=3, process_count=2))
next(it); next(it); b3_ref = next(it)
assert np.array_equal(b3['label'], b3_ref['label']) and np.array_equal(b3['image'], b3_ref['image'])
masks = [sum(x['mask'].sum() for x in d.synthetic_iterator(c, 10, process_index=p, process_count=2, eval=True))
         for p in range(2)]
assert sum(masks) == d.synthetic.NUM_EVAL, masks
assert 'tensorflow' not in sys.modules, 'synthetic data imported TF'
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


# ------------------------------------------------------------------------------------------
# Transforms


def test_every_randaugment_op_keeps_shape_and_dtype():
  import jax
  img = np.asarray(_image(0, 20, 28))
  ops = randaugment_jax.randaugment_ops((124, 116, 104))
  assert len(ops) == 15  # timm's increasing set
  with jax.enable_x64(True):
    for name, op in ops.items():
      for level, sign in ((0.0, 1.0), (9.0, -1.0), (10.0, 1.0)):
        out = op(img, np.float64(level), np.float32(sign))
        assert out.shape == img.shape and out.dtype == np.uint8, name
    # Spot checks of the semantics: invert and a full-strength posterize.
    assert np.array_equal(ops["Invert"](img, 5.0, 1.0), 255 - img)
    assert int(ops["PosterizeIncreasing"](img, np.float64(10.0), 1.0).max()) == 0  # 0 bits kept
    img = np.full((20, 20, 3), 200, np.uint8)
    out = np.asarray(randaugment_jax.rotate(img, np.float64(45.0), (10, 20, 30)))
  assert tuple(out[0, 0]) == (10, 20, 30)  # corner rotated out of the image: the mean colour
  assert tuple(out[10, 10]) == (200, 200, 200)


def test_rrc_window_stays_inside_and_follows_the_scale():
  for i in range(50):
    top, left, h, w = augment.rrc_window(tf.constant([i, 1]), 60, 90, (0.08, 1.0), (3 / 4, 4 / 3)).numpy()
    assert 0 <= top and 0 <= left and top + h <= 60 and left + w <= 90
    assert h * w >= 0.08 * 60 * 90 * 0.9
  # Impossible scales fall back to the centre crop with aspect clamped to the ratio range.
  top, left, h, w = augment.rrc_window(tf.constant([0, 0]), 40, 100, (2.0, 3.0), (3 / 4, 4 / 3)).numpy()
  assert (h, w) == (40, 53) and left == (100 - 53) // 2 and top == 0


def test_train_crop_is_uint8_and_seeded():
  raw = tf.io.encode_jpeg(np.asarray(_image(1, 50, 70)))
  kw = dict(image_size=32, interpolation="bicubic", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
  a, b, c = (augment.train_crop(raw, tf.constant(s), **kw).numpy() for s in ([3, 4], [3, 4], [3, 5]))
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  assert np.array_equal(a, b) and not np.array_equal(a, c)


def _recipe(**aug):
  from configs import default
  config = default.get_config()
  config.aug.update(aug)
  return config


def test_device_augment_normalises_and_is_keyed_per_example():
  import jax
  images = np.stack([np.asarray(_image(i, 32, 32)) for i in range(4)])
  key = jax.random.key(0)
  plain = np.asarray(device_augment.augment_batch(key, images, _recipe(hflip=False, randaug_num_ops=0,
                                                                       random_erase_prob=0.0)))
  want = (images / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
  np.testing.assert_allclose(plain, want, rtol=1e-6, atol=1e-6)
  full = jax.jit(lambda k, x: device_augment.augment_batch(k, x, _recipe()))
  a, b, c = np.asarray(full(key, images)), np.asarray(full(key, images)), np.asarray(full(jax.random.key(1), images))
  assert a.shape == (4, 32, 32, 3) and a.dtype == np.float32 and np.isfinite(a).all()
  assert np.array_equal(a, b) and not np.array_equal(a, c)
  # Example i's draws depend on its position, not on the others in the batch.
  np.testing.assert_array_equal(np.asarray(full(key, images[:2])), a[:2])


def test_random_erase_fills_one_box_with_noise():
  import jax
  x = np.zeros([40, 40, 3], np.float32)
  erased = np.asarray(device_augment.random_erase(x, jax.random.key(3), 1.0)) != 0
  rows, cols = np.where(erased.any(-1))
  assert erased.sum() > 0.02 * 40 * 40 * 3 * 0.9
  box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  assert box.mean() > 0.99  # one filled rectangle
  assert not np.asarray(device_augment.random_erase(x, jax.random.key(3), 0.0)).any()


@pytest.mark.parametrize("shape", [(100, 100), (100, 150)])
def test_eval_transform_crops_the_centre(shape):
  # A red border of 8 px around green: resized to shorter side 80 (64 / 0.8), the border is
  # 6.4 px wide and the 8 px the centre crop removes take it all.
  img = np.zeros(shape + (3,), np.uint8)
  img[..., 0] = 255
  img[8:-8, 8:-8] = (0, 255, 0)
  out = augment.eval_transform(tf.io.encode_png(img), 64, 0.8, "bicubic").numpy()
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  assert out[..., 0].max() <= 8 and out[..., 1].min() >= 247


# ------------------------------------------------------------------------------------------
# Image folders


def test_folder_info_and_batches(image_folder):
  config = make_config(f"folder:{image_folder}")
  info = data.get_info(config)
  assert info == data.DatasetInfo(3, 23, 11, ("ant", "bee", "cat"))
  batch = next(data.train_iterator(config))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and set(batch["label"]) <= {0, 1, 2}
  assert np.isfinite(batch["image"]).all()


def test_train_batches_are_reproducible_and_resumable(image_folder):
  config = make_config(f"folder:{image_folder}")  # 23 images, batch 4: 5 steps per epoch
  it = data.train_iterator(config)
  run = [next(it) for _ in range(8)]
  for start in (5, 7):  # an epoch boundary and mid-epoch
    resumed = next(data.train_iterator(config, start_step=start))
    assert np.array_equal(resumed["image"], run[start]["image"])
    assert np.array_equal(resumed["label"], run[start]["label"])
  other = next(data.train_iterator(make_config(f"folder:{image_folder}", seed=1)))
  assert not np.array_equal(other["image"], run[0]["image"])
  # Epochs are reshuffled: the first batches of epochs 0 and 1 differ.
  assert not np.array_equal(run[0]["image"], run[5]["image"])


def test_train_shards_are_disjoint(image_folder):
  config = make_config(f"folder:{image_folder}", aug=dict(
      rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=False, randaug_num_ops=0, random_erase_prob=0.0,
      mean=MEAN, std=STD, randaug_magnitude=9, randaug_magnitude_std=0.5))
  # Without randomness the image identifies the file: the two processes' epochs do not overlap.
  seen = []
  for p in range(2):
    it = data.train_iterator(config, process_index=p, process_count=2)
    seen.append(set(_digest(np.concatenate([next(it)["image"] for _ in range(5)]))))
    assert len(seen[-1]) == 10
  assert not seen[0] & seen[1]


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_every_example_once(image_folder, process_count):
  config = make_config(f"folder:{image_folder}")  # 11 examples, global eval batch 6
  per_process = []
  for p in range(process_count):
    batches = list(data.eval_iterator(config, process_index=p, process_count=process_count))
    local = 6 // process_count
    assert all(b["image"].shape == (local, 24, 24, 3) and b["mask"].shape == (local,) for b in batches)
    real = [(img, lab) for b in batches for img, lab, m in zip(b["image"], b["label"], b["mask"]) if m]
    per_process.append((len(batches), real))
  assert len({n for n, _ in per_process}) == 1  # same number of batches everywhere
  real = [x for _, r in per_process for x in r]
  assert len(real) == 11 and len(set(_digest([img for img, _ in real]))) == 11
  assert sorted(lab for _, lab in real) == [0] * 3 + [1] * 4 + [2] * 4


def test_folder_errors_name_the_path(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    data.get_info(make_config(f"folder:{tmp_path}/nowhere"))
  root = _write_folder(str(tmp_path / "a"), "train", {"x": 2})
  with pytest.raises(ValueError, match=f"{root}/val"):  # missing split dir
    data.get_info(make_config(f"folder:{root}"))
  os.makedirs(os.path.join(root, "val", "x"))
  with pytest.raises(ValueError, match=f"{root}/val/x.*no images"):  # empty class
    data.get_info(make_config(f"folder:{root}"))
  os.makedirs(tmp_path / "b" / "train")
  with pytest.raises(ValueError, match="No class directories"):
    data.get_info(make_config(f"folder:{tmp_path / 'b'}"))


def test_corrupt_images_are_skipped_or_reported(tmp_path, caplog):
  root = _write_folder(str(tmp_path), "train", {"x": 5}, ("jpg",))
  _write_folder(root, "train", {"y": 5}, ("png",))
  _write_folder(root, "val", {"x": 1, "y": 1})
  good = open(os.path.join(root, "train", "x", "0.jpg"), "rb").read()
  with open(os.path.join(root, "train", "x", "truncated.jpg"), "wb") as f:
    f.write(good[:len(good) // 2])
  with open(os.path.join(root, "train", "y", "garbage.png"), "wb") as f:
    f.write(b"not an image at all")
  png = open(os.path.join(root, "train", "y", "0.png"), "rb").read()
  with open(os.path.join(root, "train", "y", "cut.png"), "wb") as f:
    f.write(png[:len(png) // 2])
  with caplog.at_level(logging.WARNING):
    info = data.get_info(make_config(f"folder:{root}"))
  assert info.num_train == 10
  assert "Skipping 3 corrupt" in caplog.text and "truncated.jpg" in caplog.text
  batch = next(data.train_iterator(make_config(f"folder:{root}")))
  assert batch["image"].shape[0] == 4
  with pytest.raises(ValueError, match=r"Corrupt or undecodable image .*(truncated\.jpg|garbage\.png|cut\.png)"):
    data.get_info(make_config(f"folder:{root}", corrupt_images="error"))


def test_hidden_entries_are_never_splits_classes_or_images(tmp_path):
  root = _write_folder(str(tmp_path), "train", {"a": 2, "b": 2})
  _write_folder(root, "val", {"a": 1, "b": 1})
  for hidden in ("train/.ipynb_checkpoints", "val/.Trash-1000", "train/a/.thumbnails", ".git/x"):
    os.makedirs(os.path.join(root, hidden))
    _image(7).save(os.path.join(root, hidden, "0.png"))
  _image(8).save(os.path.join(root, "train", "b", ".hidden.png"))
  info = data.get_info(make_config(f"folder:{root}"))
  assert info.class_names == ("a", "b") and info.num_train == 4 and info.num_eval == 2
  with pytest.raises(ValueError, match=r"splits found in .*\['train', 'val'\]"):
    data.get_info(make_config(f"folder:{root}", eval_split="test"))


def test_symlinks_never_relabel_another_class_or_loop(tmp_path, caplog):
  root = _write_folder(str(tmp_path), "train", {"a": 2, "b": 3})
  a = os.path.join(root, "train", "a")
  os.symlink(".", os.path.join(a, "loop"))  # a link loop: walked 40 levels deep before
  os.symlink(os.path.join(root, "train", "b"), os.path.join(a, "b_images"))  # into another class
  _write_folder(a, "sub", {"c": 1})  # a real sub-directory, and a second link to it
  os.symlink("sub", os.path.join(a, "alias"))
  with caplog.at_level(logging.WARNING):
    split = folder.scan_split(root, "train", "skip")
  assert sorted(split.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # a: 2 + sub/c/0.png once; b: 3
  assert "Not following" in caplog.text and "b_images" in caplog.text


def _save(path, img, fmt, **kwargs):
  img.save(path, fmt, **kwargs)


def test_images_tensorflow_decodes_differently_or_not_at_all_are_caught_by_the_scan(tmp_path, caplog):
  root = _write_folder(str(tmp_path), "train", {"x": 3, "y": 3}, ("png", "bmp", "webp"))
  _write_folder(root, "val", {"x": 1, "y": 1})
  img = _image(3)
  _save(os.path.join(root, "train", "x", "palette.bmp"), img.convert("P"), "BMP")  # wrong pixels in TF
  _save(os.path.join(root, "train", "x", "mono.bmp"), img.convert("1"), "BMP")  # TF cannot decode
  _save(os.path.join(root, "train", "y", "anim.webp"), img, "WEBP", save_all=True,
        append_images=[img.rotate(90)])  # TF cannot decode animated WebP
  _save(os.path.join(root, "train", "y", "tiff.png"), img, "TIFF")  # misnamed: TF cannot decode it
  with caplog.at_level(logging.WARNING):
    info = data.get_info(make_config(f"folder:{root}"))
  assert info.num_train == 6
  assert "Skipping 4 corrupt or undecodable" in caplog.text
  assert "palette.bmp (TensorFlow, which training decodes with, decodes this BMP file to other pixels" in caplog.text
  for name in ("mono.bmp", "anim.webp", "tiff.png"):
    assert f"{name} (TensorFlow, which training decodes with, cannot decode this" in caplog.text
  folder.scan_split.cache_clear()
  with pytest.raises(ValueError, match=r"Corrupt or undecodable image .*mono\.bmp' \(TensorFlow.*convert it to PNG"):
    data.get_info(make_config(f"folder:{root}", corrupt_images="error"))


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
  root = _write_folder(str(tmp_path), "train", {"x": 2})
  bad = os.path.join(os.fsencode(root), b"train", b"x", b"caf\xe9.png")
  _image(1).save(open(bad, "wb"), "PNG")
  with pytest.raises(ValueError, match=r"caf\\xe9\.png'.* is not valid UTF-8.*Rename it"):
    data.get_info(make_config(f"folder:{root}"))


# ------------------------------------------------------------------------------------------
# Digits


def test_digits_folder(tmp_path):
  root = digits.prepare_digits(str(tmp_path), split_seed=0)
  assert root == str(tmp_path / "digits")
  train = folder.scan_split(root, "train", "error")
  test = folder.scan_split(root, "test", "error")
  assert len(train.paths) + len(test.paths) == 1797 and len(test.paths) == 360
  assert train.class_names == tuple(str(d) for d in range(10))
  per_class = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
  assert np.all(np.abs(per_class - 0.2) < 0.02)  # stratified
  img = Image.open(train.paths[0])
  assert img.size == (32, 32) and np.asarray(img).max() > 128
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(root).st_mode & 0o777 == 0o777 & ~umask  # readable by others, as the umask allows
  # Written once: a second call reuses it; another split seed is refused.
  marker = os.path.join(root, "digits.json")
  mtime = os.path.getmtime(marker)
  assert digits.prepare_digits(str(tmp_path), split_seed=0) == root and os.path.getmtime(marker) == mtime
  assert json.load(open(marker))["split_seed"] == 0
  with pytest.raises(ValueError, match="split_seed"):
    digits.prepare_digits(str(tmp_path), split_seed=1)
  # The 'digits' dataset is that folder through the folder pipeline.
  info = data.get_info(make_config("digits", str(tmp_path), eval_split="test"))
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 1437, 360)


def test_digits_incomplete_folder_is_not_reused(tmp_path):
  os.makedirs(tmp_path / "digits" / "train")  # e.g. a copy interrupted by hand
  with pytest.raises(ValueError, match="not a complete digits folder"):
    digits.prepare_digits(str(tmp_path), split_seed=0)


# ------------------------------------------------------------------------------------------
# TFDS


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ValueError, match=r"(?s)ILSVRC2012_img_train\.tar.*tfds build imagenet2012"):
    data.get_info(make_config("imagenet2012", str(tmp_path)))
  with pytest.raises(ValueError, match="Unknown TFDS dataset"):
    data.get_info(make_config("no_such_dataset_xyz", str(tmp_path)))


def test_imagenet_under_tfds_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = make_config("imagenet2012", str(tmp_path), eval_split="validation", batch_size=4, eval_batch_size=8)
  with tfds.testing.mock_data(num_examples=10):
    info = data.get_info(config)
    assert info.num_classes == 1000 and len(info.class_names) == 1000
    assert info.num_train == 10 and info.num_eval == 10
    it = data.train_iterator(config, process_index=1, process_count=2)
    for _ in range(3):  # 10 // 4 = 2 steps per epoch: crosses an epoch boundary
      batch = next(it)
      assert batch["image"].shape == (2, 24, 24, 3) and np.isfinite(batch["image"]).all()
    batches = list(data.eval_iterator(config))
    assert len(batches) == 2 and sum(b["mask"].sum() for b in batches) == 10
