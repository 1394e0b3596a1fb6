"""Checks that guard a run's numbers: a check that cannot run refuses (resume with unreadable
metadata), every config field in its range before anything compiles, labels in range at every
data door, non-finite weights and logits never turned into a printed number."""
from __future__ import annotations

import os

import numpy as np
import pytest

import train_utils
from focalnet_jax import train as trainer

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _train(config, workdir, data=None):
  return trainer.train_and_evaluate(config, str(workdir), data=data or train_utils.TinyData())


def test_a_resume_check_that_cannot_read_the_saved_config_refuses(tmp_path):
  workdir = tmp_path / "run"
  _train(train_utils.tiny_config(total_steps=2, checkpoint_every_steps=1), workdir)
  config_json = (workdir / "config.json").read_text()
  (workdir / "checkpoints" / "2" / "meta" / "metadata").write_text('{"model": ')  # damaged
  longer = train_utils.tiny_config(total_steps=4, checkpoint_every_steps=1, batch_size=8)
  with pytest.raises(ValueError, match=rf"Cannot check that {workdir} may be resumed under this config: the "
                                       rf"metadata of {workdir}/checkpoints/2 cannot be read .*move "
                                       rf"{workdir}/checkpoints/2 out of the way to resume from step 1.*"
                                       r"--config.allow_config_change=True. Nothing was written"):
    _train(longer, workdir)
  assert (workdir / "config.json").read_text() == config_json
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


def test_every_shipped_config_passes_the_range_audit():
  import glob
  import importlib

  from focalnet_jax.train import config_check

  paths = [os.path.relpath(p, train_utils.ROOT) for pattern in ("configs/*.py", "configs/ablations/*.py")
           for p in sorted(glob.glob(os.path.join(train_utils.ROOT, pattern)))]
  names = [p[:-3].replace("/", ".") for p in paths if not p.endswith(("__init__.py", "common.py"))]
  assert "configs.finetune" in names and len(names) > 10
  for name in names:
    module = importlib.import_module(name)
    if hasattr(module, "get_config"):
      config_check.check_values(module.get_config())  # e.g. finetune's mesh.fsdp=-1 is a valid value


@pytest.mark.parametrize("bad", [-1, 5])
def test_labels_outside_the_classes_are_refused_at_every_data_door(tmp_path, bad):
  from focalnet_jax.data import ArrayData

  images = np.zeros((8, 8, 8, 3), np.float32)
  labels = np.arange(8) % 5
  labels[3] = bad
  with pytest.raises(ValueError, match=rf"Labels in train_labels must lie in \[0, 5\) for 5 classes; found 1 "
                                       rf"outside it \(e.g. {bad}\)"):
    ArrayData(images, labels, images, np.arange(8) % 5, class_names=tuple("abcde"))
  with pytest.raises(ValueError, match=r"must be class indices \(ints\); got float64"):
    ArrayData(images, labels + 0.5, images, labels, class_names=tuple("abcde"))

  if bad != -1:
    return  # the doors below are checked once

  class Leaky(train_utils.TinyData):  # a data door of its own (a user's Dataset) that yields a bad label
    def train_batches(self, config, **kw):
      for b in super().train_batches(config, **kw):
        yield {**b, "label": np.where(np.arange(len(b["label"])) == 2, bad, b["label"])}

    def eval_batches(self, config, **kw):
      for b in super().eval_batches(config, **kw):
        yield {**b, "label": np.full_like(b["label"], bad)}

  with pytest.raises(ValueError, match=r"Labels in the train batch of step 1 must lie in \[0, 5\)"):
    _train(train_utils.tiny_config(), tmp_path / "a", Leaky())
  from focalnet_jax.train import eval_step

  with pytest.raises(ValueError, match=r"Labels in eval batch 1 must lie in \[0, 5\)"):
    eval_step.evaluate(None, None, Leaky().eval_batches(train_utils.tiny_config()), None, 5)
  with pytest.raises(ValueError, match=r"model.num_classes=3 is smaller than the 5 classes .*labels 3..4 would "
                                       r"have no logit.*--config.model.num_classes=5"):
    _train(train_utils.tiny_config(**{"model.num_classes": 3}), tmp_path / "b")


def test_non_finite_weights_are_refused_and_nan_logits_never_become_a_metric(tmp_path):
  import jax
  import jax.numpy as jnp

  from focalnet_jax import checkpoint, create_model, evaluation
  from focalnet_jax.train import eval_step, sharding

  model = create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), num_classes=3, focal_levels=1)
  params = jax.tree.map(np.array, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  params["head"]["kernel"][0, 0] = np.nan
  meta = {"model": "focalnet_tiny_srf", "model_overrides": {"embed_dim": 8, "depths": [1, 1], "num_classes": 3,
                                                            "focal_levels": 1}}
  checkpoint.save(tmp_path / "ck", {"params": params}, meta, step=0)
  for load in (checkpoint.load_params, evaluation.as_pretrained):
    with pytest.raises(ValueError, match=r"ck/0' holds non-finite weights \(NaN or inf\) in 1 array\(s\): "
                                         r"head/kernel \(1 of 48\)\. Every prediction .* load an earlier step"):
      load(str(tmp_path / "ck"))
  # The metric: NaN logits (whatever made them) are an error, not 'top-1 33%'.
  step = jax.jit(eval_step.make_eval_step(lambda p, x: jnp.full((x.shape[0], 3), jnp.nan), 3))
  batches = [{"image": np.zeros((8, 4), np.float32), "label": np.arange(8) % 3, "mask": np.ones(8, np.float32)}]
  mesh = sharding.make_mesh(-1, 1)
  with jax.set_mesh(mesh), pytest.raises(FloatingPointError, match=r"8 of 8 images gave non-finite logits .*no "
                                                                   r"accuracy or loss is reported"):
    eval_step.evaluate(step, {}, batches, sharding.batch_sharding(mesh), 3)
  from focalnet_jax.evaluation import predict

  with pytest.raises(FloatingPointError, match="1 of 2 images gave non-finite logits"):
    predict.top_k(np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]]), ["a", "b", "c"])


def test_one_image_reader_gives_the_pipelines_pixels_for_every_kind_of_file(tmp_path):
  """eval.py --image and visualize.py (preprocess_files -> load_eval_images -> read_rgb) against
  the training pipeline's decoder, on the files a user has: 16-bit RGB and grayscale PNG, palette,
  CMYK JPEG, grayscale+alpha and an EXIF-rotated JPEG."""
  tf = pytest.importorskip("tensorflow")
  from PIL import Image

  from focalnet_jax.data import augment, eval_images
  from focalnet_jax.evaluation import predict

  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
  (tmp_path / "rgb16.png").write_bytes(tf.io.encode_png(rng.integers(0, 65536, (40, 36, 3)).astype(np.uint16)).numpy())
  (tmp_path / "gray16.png").write_bytes(tf.io.encode_png(rng.integers(0, 65536, (40, 36, 1)).astype(np.uint16)).numpy())
  Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
  Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
  Image.fromarray(rgb).convert("LA").save(tmp_path / "gray_alpha.png")
  exif = Image.new("RGB", (1, 1)).getexif()
  exif[274] = 6  # "rotate 90 CW to display": neither TF nor timm applies it
  Image.fromarray(rgb).save(tmp_path / "exif.jpg", exif=exif, quality=95)
  config = train_utils.tiny_config(image_size=32, crop_ratio=1.0, interpolation="bilinear")
  for name in ("rgb16.png", "gray16.png", "palette.png", "cmyk.jpg", "gray_alpha.png", "exif.jpg"):
    path = str(tmp_path / name)
    pipeline = augment.decode(tf.constant(open(path, "rb").read())).numpy()
    np.testing.assert_array_equal(np.asarray(eval_images.read_rgb(path)), pipeline, err_msg=name)
    expected = eval_images.normalize(eval_images.resize_and_crop(Image.fromarray(pipeline), 32, 1.0,
                                                                 Image.Resampling.BILINEAR),
                                     config.aug.mean, config.aug.std)
    np.testing.assert_array_equal(predict.preprocess_files([path], config)[0], expected, err_msg=name)
  assert 100 < np.asarray(eval_images.read_rgb(str(tmp_path / "gray16.png"))).mean() < 155  # not clipped to white


@pytest.mark.parametrize("names", ["short", "hf"])
def test_published_1000_class_weights_evaluate_a_wnid_sorted_imagenet_folder(tmp_path, names):
  """Published weights name classes 'tench' (timm) or 'tench, Tinca tinca' (HF id2label); an
  ImageNet folder is sorted by wnid: the same order, so its images are labelled by wnid."""
  pytest.importorskip("tensorflow")
  import jax
  import jax.numpy as jnp
  from PIL import Image

  from focalnet_jax import checkpoint, create_model, evaluation
  from focalnet_jax.data import labels

  model = create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), num_classes=1000, focal_levels=1)
  params = jax.tree.map(np.array, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  params["head"]["kernel"][:] = 0
  params["head"]["bias"][:] = 0
  params["head"]["bias"][1] = 1  # always predicts class 1: goldfish, n01443537
  wnids = labels.imagenet1k_wnids()
  for wnid in (wnids[1], wnids[1], wnids[7]):
    os.makedirs(tmp_path / "in1k" / "val" / wnid, exist_ok=True)
    Image.new("RGB", (40, 40), (90, 120, 150)).save(tmp_path / "in1k" / "val" / wnid / f"{len(os.listdir(tmp_path / 'in1k' / 'val' / wnid))}.png")
  class_names = (labels.imagenet_class_names(1000) if names == "short"
                 else [n for _, n in labels._read_tsv("imagenet1k.tsv")])
  overrides = {"embed_dim": 8, "depths": [1, 1], "num_classes": 1000, "focal_levels": 1}
  meta = {"model": "focalnet_tiny_srf", "model_overrides": overrides, "class_names": list(class_names)}
  checkpoint.save(tmp_path / "weights", {"params": params}, meta, step=0)
  loaded = evaluation.as_pretrained(str(tmp_path / "weights"))
  config = train_utils.tiny_config(dataset=f"folder:{tmp_path / 'in1k'}", eval_split="val", image_size=32,
                                   crop_ratio=1.0, eval_batch_size=8)
  report = evaluation.evaluate_checkpoint(loaded, config, write=False)
  assert report["num_examples"] == 3 and report["top1"] == pytest.approx(2 / 3)  # the two goldfish are right
