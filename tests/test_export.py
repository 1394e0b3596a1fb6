"""Export for serving: both formats, loaded in a fresh process that never imports focalnet_jax,
give `model.apply`'s logits (relative error below 1e-5) at batch 1 and 3 from one artifact."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax import checkpoint, create_model
from focalnet_jax.tools import export as export_lib

TOL = 1e-5
SIDE = 64
OVERRIDES = dict(embed_dim=16, depths=(1, 1, 2, 1), num_classes=7, focal_levels=3)

# Runs in a fresh interpreter: loads both artifacts, returns each one's logits at batch 1 and 3.
_SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    stablehlo, savedmodel, images, out = sys.argv[1:]
    x = np.load(images)
    import jax
    exported = jax.export.deserialize(open(stablehlo, "rb").read())
    import tensorflow as tf
    serve = tf.saved_model.load(savedmodel).signatures["serving_default"]
    logits = {}
    for n in (1, 3):
      logits[f"stablehlo_{n}"] = np.asarray(exported.call(x[:n]))
      logits[f"savedmodel_{n}"] = serve(images=tf.constant(x[:n]))["logits"].numpy()
    np.savez(out, **logits)
    print(json.dumps({"imported_focalnet_jax": any(m.startswith("focalnet_jax") for m in sys.modules)}))
""")


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def trained():
  model = create_model("focalnet_tiny_srf", **OVERRIDES)
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIDE, SIDE, 3)))
  # Non-trivial LayerNorms and head, so that the logits depend on every parameter.
  variables = jax.tree.map(lambda a: a + 0.05 * np.cos(np.arange(a.size).reshape(a.shape)), variables)
  images = np.random.default_rng(0).standard_normal((3, SIDE, SIDE, 3)).astype(np.float32)
  return model, variables, images


def test_portable_erf_is_stablehlos_erf():
  x = np.linspace(-6.0, 6.0, 20001, dtype=np.float32)
  np.testing.assert_allclose(jax.jit(export_lib.portable_erf)(x), jax.jit(jax.lax.erf)(x), atol=1e-6)
  erf_free = jax.make_jaxpr(export_lib.without_erf(lambda a: jax.lax.erf(jnp.sin(a))))(x)
  assert "erf" not in str(erf_free)


def test_both_formats_give_the_models_logits_in_a_fresh_process(trained, tmp_path):
  pytest.importorskip("tensorflow")  # the SavedModel is written and served by TensorFlow
  model, variables, images = trained
  reference = np.asarray(model.apply(variables, images))  # the model as trained, 'auto' depthwise
  stablehlo = str(tmp_path / "model.stablehlo")
  data = export_lib.export(model, variables, format="stablehlo", output=stablehlo, image_size=SIDE)
  assert data == open(stablehlo, "rb").read()
  savedmodel = export_lib.export(model, variables, format="savedmodel", output=str(tmp_path / "tf"), image_size=SIDE)
  np.save(tmp_path / "images.npy", images)
  out = tmp_path / "logits.npz"
  # The child must find neither this package (a checkout on sys.path) nor its tests.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", _SERVE, stablehlo, savedmodel, str(tmp_path / "images.npy"), str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == {"imported_focalnet_jax": False}
  logits = np.load(out)
  for name in logits.files:
    n = int(name.rsplit("_", 1)[1])
    assert logits[name].shape == (n, OVERRIDES["num_classes"])
    assert rel_err(logits[name], reference[:n]) < TOL, name


def test_artifact_holds_no_native_custom_calls_or_chunking(trained):
  model, variables, _ = trained
  exported = jax.export.deserialize(export_lib.export(model.with_execution(depthwise="shift"), variables, image_size=SIDE))
  text = exported.mlir_module()
  calls = {line.split("@")[1].split("(")[0] for line in text.splitlines() if "stablehlo.custom_call @" in line}
  assert calls <= {"shape_assertion"}, calls  # the symbolic batch's checks only
  assert "stablehlo.while" not in text  # kernels.chunking's lax.map would be a loop
  assert exported.in_avals[0].shape[1:] == (SIDE, SIDE, 3) and not isinstance(exported.in_avals[0].shape[0], int)


def test_cli_exports_a_checkpoint(trained, tmp_path):
  model, variables, images = trained
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save(ckpt, {"params": variables["params"]}, {"model": "focalnet_tiny_srf", "model_overrides": OVERRIDES})
  out = str(tmp_path / "cli.stablehlo")
  assert export_lib.main(["--checkpoint", ckpt, "--output", out, "--image-size", str(SIDE), "--batch-size", "2",
                          "--platforms", "cpu"]) == 0
  exported = jax.export.deserialize(open(out, "rb").read())
  assert exported.in_avals[0].shape == (2, SIDE, SIDE, 3) and exported.platforms == ("cpu",)
  assert rel_err(exported.call(images[:2]), model.apply(variables, images[:2])) < TOL


def test_errors_name_the_fix(trained):
  model, variables, _ = trained
  with pytest.raises(ValueError, match="multiples of 32"):
    export_lib.export(model, variables, image_size=60)
  with pytest.raises(ValueError, match="output=PATH"):
    export_lib.export(model, variables, format="savedmodel", image_size=SIDE)
  with pytest.raises(ValueError, match="stablehlo"):
    export_lib.export(model, variables, format="onnx", image_size=SIDE)
