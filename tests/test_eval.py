"""Evaluation: exact counts under padding and sharding, label spaces, single-image prediction,
and converted PyTorch weights predicting as the PyTorch model does."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import default
import focalnet_jax
from focalnet_jax import Execution, checkpoint, create_model, evaluation
from focalnet_jax.data import labels
from focalnet_jax.train import sharding
from focalnet_jax import data as data_lib

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # sorted: labels 0, 1, 2


def eval_config(**kw) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.image_size, c.crop_ratio, c.interpolation, c.eval_batch_size = 32, 1.0, "bilinear", 8
  c.aug.mean, c.aug.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # images stay in [0, 1]: easy to reason about
  c.update(kw)
  return c


def run(logits_fn, num_classes, config, subset=None):
  mesh = sharding.make_mesh(-1, 1)
  step = jax.jit(evaluation.make_eval_step(logits_fn, num_classes, subset))
  with jax.set_mesh(mesh):
    return evaluation.evaluate(step, {}, data_lib.eval_iterator(config), sharding.batch_sharding(mesh), num_classes)


def mean_rgb_logits(params, images):
  """A fixed 'model': class c's logit is the mean of channel (2, 1, 0)[c] (blue, green, red)."""
  del params
  return 10.0 * jnp.mean(images, axis=(1, 2))[:, ::-1]


@pytest.fixture
def colour_folder(tmp_path):
  """7 solid-colour images; 'blue' holds one red image, so 6 of 7 are classified right."""
  files = {"blue": ["blue", "blue", "red"], "green": ["green", "green"], "red": ["red", "red"]}
  for cls, colours in files.items():
    os.makedirs(tmp_path / "val" / cls)
    for i, colour in enumerate(colours):
      Image.new("RGB", (40, 48), COLOURS[colour]).save(tmp_path / "val" / cls / f"{i}.png")
  return tmp_path


def test_folder_accuracy_and_loss_match_a_hand_computation(colour_folder):
  pytest.importorskip("tensorflow")  # folders are read by the tf.data pipeline
  config = eval_config(dataset=f"folder:{colour_folder}", train_split="val", eval_split="val")
  result = run(mean_rgb_logits, 3, config)
  assert result["num_examples"] == 7  # 7 real examples in one padded batch of 8
  assert result["top1"] == pytest.approx(6 / 7)
  assert result["top5"] == 1.0  # top-5 of 3 classes always holds the label
  # Logits are 10 * one-hot of the image colour: -log softmax gives two losses.
  right = -np.log(np.exp(10) / (np.exp(10) + 2))
  wrong = -np.log(1 / (np.exp(10) + 2))
  assert result["loss"] == pytest.approx((6 * right + wrong) / 7, rel=1e-5)


def test_mock_imagenet_counts_every_example_once():
  """13 examples, global batch 8 on 8 devices: 2 batches, 3 padded rows that must not count."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = eval_config(dataset="imagenet2012", eval_split="validation", train_split="validation")
  w = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)

  def logits_fn(params, images):
    return jnp.mean(images, axis=(1, 2)) @ w

  with tfds.testing.mock_data(num_examples=13):
    result = run(logits_fn, 1000, config)
    # The same metrics by hand over the unpadded examples.
    xs, ys = [], []
    for b in data_lib.eval_iterator(config):
      keep = b["mask"] > 0
      xs.append(b["image"][keep])
      ys.append(b["label"][keep])
  x, y = np.concatenate(xs), np.concatenate(ys)
  assert len(y) == 13 and result["num_examples"] == 13
  logits = x.mean(axis=(1, 2)) @ w
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert result["top1"] == pytest.approx(np.mean(logits.argmax(1) == y))
  assert result["top5"] == pytest.approx(np.mean([yy in t for yy, t in zip(y, top5)]))
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  assert result["loss"] == pytest.approx(-np.mean(log_p[np.arange(13), y]), rel=1e-4)


def test_real_labels_and_class_subsets_on_known_examples():
  logits = jnp.array([
      [0.0, 5.0, 1.0, 2.0],  # predicts 1
      [3.0, 0.0, 1.0, 2.0],  # predicts 0 overall; 3 among the subset {1, 2, 3}
      [0.0, 1.0, 4.0, 2.0],  # predicts 2
      [9.0, 9.0, 9.0, 9.5],  # padding row
  ])
  batch = {
      "image": jnp.arange(4, dtype=jnp.float32),
      "label": jnp.array([1, 3, 1, 0]),
      "mask": jnp.array([1.0, 1.0, 1.0, 0.0]),
      # ReaL sets: {1, 2}, {} (no ReaL label: left out), {0, 3}, padding
      "real": jnp.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1], [1, 1, 1, 1]], jnp.float32),
  }
  lookup = lambda params, images: logits[images.astype(jnp.int32)]
  out = jax.device_get(evaluation.make_eval_step(lookup, 4)({}, batch))
  assert out["top1"] == (1.0, 3.0)
  assert out["real_top1"] == (1.0, 2.0)  # image 0 right (1 in {1, 2}), image 2 wrong (2 not in {0, 3})
  sub = jax.device_get(evaluation.make_eval_step(lookup, 4, class_subset=[1, 2, 3])({}, batch))
  assert sub["top1"] == (2.0, 3.0)  # image 1 becomes right once class 0 is excluded
  assert float(sub["loss"][0]) < float(out["loss"][0])


def test_imagenet_label_spaces():
  tfds = pytest.importorskip("tensorflow_datasets")
  # Our 1K order is TFDS imagenet2012's (sorted wnids), which imagenet_a/_r/_v2/_real share.
  tfds_wnids = tfds.builder("imagenet2012").info.features["label"].names
  assert tuple(tfds_wnids) == labels.imagenet1k_wnids()
  for name in ("imagenet_a", "imagenet_r:0.2.0"):
    idx = labels.subset_indices(name)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and list(idx) == sorted(idx)
    assert 0 <= idx.min() and idx.max() < 1000
  assert labels.subset_indices("imagenet_a")[:3].tolist() == [6, 11, 13]  # goldfish, junco, ...
  assert labels.subset_indices("imagenet2012") is None and labels.subset_indices("imagenet_v2") is None
  assert labels.imagenet_class_names(1000)[:2] == ("tench", "goldfish")
  assert len(labels.imagenet_class_names(21842)) == 21842
  assert labels.imagenet_class_names(21842)[:1000] == labels.imagenet_class_names(1000)


def colour_recogniser(tmp_path):
  """A tiny FocalNet whose head is a nearest-prototype classifier of blue/green/red features."""
  overrides = dict(embed_dim=8, depths=[1, 1], patch_size=4, num_classes=3)
  model = create_model("focalnet_tiny_srf", **overrides, execution=Execution(depthwise="xla"))
  config = eval_config()
  protos = np.stack([np.broadcast_to(np.array(c, np.float32) / 255, (32, 32, 3)) for c in COLOURS.values()])
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  feats = np.asarray(model.clone(num_classes=0).apply({"params": {k: v for k, v in params.items() if k != "head"}},
                                                       jnp.asarray(protos)))
  params["head"] = {"kernel": jnp.asarray(feats.T), "bias": jnp.asarray(-0.5 * (feats**2).sum(1))}
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, {"params": params}, {"model": "focalnet_tiny_srf", "model_overrides": overrides,
                                             "class_names": list(COLOURS)})
  return ckpt, config


def test_a_checkpoints_preprocessing_and_class_names_come_from_one_rulebook(tmp_path):
  """eval.py, predict_files, visualize and from_pretrained all read a checkpoint's eval transform
  and class names from `from_pretrained(...).info`: the training run's settings, else the
  official recipe at the variant's resolution and ImageNet's names."""
  trained = {"dataset": "digits", "eval_split": "test", "eval_batch_size": 8, "image_size": 32, "crop_ratio": 1.0,
             "interpolation": "bilinear", "aug": {"mean": [0.5] * 3, "std": [0.25] * 3}}
  params = {"head": {"kernel": np.zeros((4, 3), np.float32)}}
  checkpoint.save(tmp_path / "run", {"params": params}, {"model": "focalnet_tiny_srf", "config": trained,
                  "model_overrides": {"num_classes": 3}, "class_names": ["a", "b", "c"]}, step=5)
  info = focalnet_jax.from_pretrained(str(tmp_path / "run")).info
  assert info.step == 5 and info.class_names == ("a", "b", "c")
  assert info.transform == dict(image_size=32, crop_ratio=1.0, interpolation="bilinear", mean=(0.5,) * 3,
                                std=(0.25,) * 3)
  config = evaluation.eval_config(default.get_config(), info)
  assert (config.dataset, config.eval_split, config.eval_batch_size, config.image_size, config.crop_ratio,
          config.interpolation, config.aug.mean, config.aug.std) == ("digits", "test", 8, 32, 1.0, "bilinear",
                                                                     (0.5,) * 3, (0.25,) * 3)
  with pytest.raises(KeyError, match="has no 'ema_params'.*written without EMA"):
    focalnet_jax.from_pretrained(str(tmp_path / "run"), ema=True)

  # Converted weights (no training run, no names): the official eval transform, at 384 px for a 384 px variant.
  checkpoint.save(tmp_path / "converted", {"params": params}, {"model": "focalnet_large_fl3", "model_overrides": {}})
  info = focalnet_jax.from_pretrained(str(tmp_path / "converted")).info
  assert info.transform == dict(image_size=384, crop_ratio=0.875, interpolation="bicubic",
                                mean=default.IMAGENET_MEAN, std=default.IMAGENET_STD)
  assert info.class_names[:2] == ("tench", "goldfish")
  config = evaluation.eval_config(default.get_config(), info)
  assert (config.dataset, config.image_size, config.crop_ratio) == (default.get_config().dataset, 384, 0.875)


def test_single_image_prediction_names_the_right_class(tmp_path):
  ckpt, config = colour_recogniser(tmp_path)
  rng = np.random.default_rng(0)
  paths = []
  for name, rgb in COLOURS.items():
    noisy = np.clip(np.array(rgb) + rng.normal(0, 20, (50, 60, 3)), 0, 255).astype(np.uint8)
    paths.append(str(tmp_path / f"{name}.jpg"))
    Image.fromarray(noisy).save(paths[-1])
  preds = evaluation.predict_files(str(ckpt), paths, config, k=3)
  assert [p[0][0] for p in preds] == list(COLOURS)
  for p in preds:
    assert sum(prob for _, prob in p) == pytest.approx(1.0, abs=1e-5)
    assert [prob for _, prob in p] == sorted((prob for _, prob in p), reverse=True)
  with pytest.raises(FileNotFoundError, match="missing.png"):
    evaluation.predict_files(str(ckpt), [str(tmp_path / "missing.png")], config)
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="broken.png"):
    evaluation.predict_files(str(ckpt), [str(tmp_path / "broken.png")], config)


def test_evaluate_checkpoint_writes_a_report_and_checks_the_label_space(tmp_path, colour_folder):
  tfds = pytest.importorskip("tensorflow_datasets")
  ckpt, config = colour_recogniser(tmp_path)
  config.update(dataset=f"folder:{colour_folder}", train_split="val", eval_split="val")
  report = evaluation.evaluate_checkpoint(str(ckpt), config)
  assert report["num_examples"] == 7 and report["top1"] == pytest.approx(6 / 7)
  with open(report["output"]) as f:
    assert json.load(f)["top1"] == report["top1"]
  with tfds.testing.mock_data(num_examples=4):
    config.update(dataset="imagenet2012", eval_split="validation", train_split="validation")
    with pytest.raises(ValueError, match="head has 3 classes but 'imagenet2012' has 1000"):
      evaluation.evaluate_checkpoint(str(ckpt), config)


def test_converted_pytorch_model_predicts_like_pytorch(tmp_path):
  """timm model -> safetensors -> convert CLI -> eval: same logits on the same preprocessed images."""
  from torch_refs import import_timm, import_torch

  torch = import_torch()
  timm = import_timm()
  from safetensors.numpy import save_file

  from focalnet_jax.tools import convert

  torch.manual_seed(0)
  ref = timm.create_model("focalnet_tiny_srf", pretrained=False, num_classes=7).eval()
  with torch.no_grad():
    for p in ref.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  src = tmp_path / "model.safetensors"
  save_file({k: v.numpy() for k, v in ref.state_dict().items()}, str(src))
  out = tmp_path / "converted"
  convert.main(["--model", "focalnet_tiny_srf", "--checkpoint", str(src), "--output", str(out),
                "--override", "num_classes=7"])
  rng = np.random.default_rng(1)
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f"{i}.jpg"))
    Image.fromarray(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(paths[-1])
  config = eval_config(image_size=64, crop_ratio=0.875, interpolation="bicubic")
  config.aug.mean, config.aug.std = default.IMAGENET_MEAN, default.IMAGENET_STD
  x = evaluation.preprocess_files(paths, config)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model, variables = focalnet_jax.from_pretrained(str(out))
  got = np.asarray(model.apply(variables, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
  preds = evaluation.predict_files(str(out), paths, config, k=1)
  assert [p[0][0] for p in preds] == [f"class_{i}" for i in want.argmax(1)]


def test_a_folder_is_evaluated_in_the_models_label_space_without_a_train_split(tmp_path):
  """Only val/ exists and it lacks one class: labels come from the checkpoint's class names, so
  'green' is still label 1 and 'red' label 2, and no train split is listed or needed."""
  pytest.importorskip("tensorflow")  # folders are read by the tf.data pipeline
  ckpt, config = colour_recogniser(tmp_path)
  for name in ("green", "red"):
    os.makedirs(tmp_path / "data" / "val" / name)
    Image.new("RGB", (40, 48), COLOURS[name]).save(tmp_path / "data" / "val" / name / "0.png")
  config.update(dataset=f"folder:{tmp_path / 'data'}", eval_split="val")  # train_split stays 'train'
  report = evaluation.evaluate_checkpoint(str(ckpt), config, write=False)
  assert report["num_examples"] == 2 and report["top1"] == 1.0
  assert not (tmp_path / "data" / "train").exists()
