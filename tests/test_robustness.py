"""The robustness suite: on a data dir with every set (TFDS mocks) one table with per-corruption
rows and mCE, normalised by AlexNet's errors; on an empty data dir every set named as missing with
the command that prepares it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from focalnet_jax import Execution, checkpoint, create_model, evaluation
from focalnet_jax.evaluation import robustness

OVERRIDES = dict(embed_dim=8, depths=[1], patch_size=4, num_classes=1000)


@pytest.fixture
def imagenet_model(tmp_path):
  model = create_model("focalnet_tiny_srf", **OVERRIDES, execution=Execution(depthwise="xla"))
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, {"params": params}, {"model": "focalnet_tiny_srf", "model_overrides": OVERRIDES})
  config = default.get_config()
  config.image_size, config.eval_batch_size, config.data_dir = 16, 8, str(tmp_path / "tfds")
  return evaluation.as_pretrained(str(ckpt)), config


def test_alexnet_normaliser_is_the_papers():
  errors = robustness.alexnet_errors()
  assert len(errors) == 15 and list(errors)[:3] == ["gaussian_noise", "shot_noise", "impulse_noise"]
  assert errors["gaussian_noise"] == 0.886428 and errors["jpeg_compression"] == 0.6065
  assert not set(errors) & set(robustness.EXTRA_CORRUPTIONS)


def test_mock_sets_give_one_table_with_per_corruption_rows_and_mce(imagenet_model, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  loaded, config = imagenet_model
  seen = []
  evaluate = robustness._Suite.evaluate

  def spy(self, name, split, crop_ratio=None):
    seen.append((name, crop_ratio))
    return evaluate(self, name, split, crop_ratio)

  monkeypatch.setattr(robustness._Suite, "evaluate", spy)
  with tfds.testing.mock_data(num_examples=3):
    report = robustness.run(loaded, config)
  assert [r["set"] for r in report["sets"]] == [name for name, _, _ in robustness.SETS] and not report["missing"]
  assert all(r["num_examples"] == 3 for r in report["sets"]) and "real_top1" in report["sets"][2]
  rows = {r["corruption"]: r for r in report["imagenet_c"]}
  assert len(rows) == 19 and all(len(r["top1_by_severity"]) == 5 for r in rows.values())
  assert all(crop == 1.0 for name, crop in seen if name.startswith("imagenet2012_corrupted/"))
  alexnet = robustness.alexnet_errors()
  for name, r in rows.items():
    if name in alexnet:  # CE: the mean error over the severities over AlexNet's
      errs = [1 - r["top1_by_severity"][s] for s in "12345"]
      assert r["ce"] == pytest.approx(sum(errs) / 5 / alexnet[name])
    else:
      assert "ce" not in r and r["extra"]
  assert report["mce"] == pytest.approx(np.mean([rows[c]["ce"] for c in alexnet]))
  table = robustness.markdown(report)
  assert "| gaussian_noise |" in table and "| saturate |" in table and "mCE " in table and "ImageNet-Sketch" in table


def test_empty_data_dir_names_every_missing_set_and_its_command(imagenet_model, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  loaded, config = imagenet_model
  report = robustness.run(loaded, config)
  assert not report["sets"] and not report["imagenet_c"] and report["mce"] is None
  missing = {m["tfds"]: m["prepare"] for m in report["missing"]}
  assert set(missing) == {t for _, t, _ in robustness.SETS} | {"imagenet2012_corrupted"}
  assert missing["imagenet_sketch"] == f"tfds build imagenet_sketch --data_dir {config.data_dir}"
  assert "imagenet2012_corrupted/${c}_$s" in missing["imagenet2012_corrupted"]
  assert "ILSVRC2012_img_val.tar" in missing["imagenet2012"]
  table = robustness.markdown(report)
  assert "Missing (not prepared in the data dir):" in table and "- ImageNet-Sketch: tfds build imagenet_sketch" in table
