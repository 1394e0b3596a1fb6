"""The entry points as a user runs them: what they print, and the exit status a scheduler sees."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import train_utils
from test_eval import colour_recogniser, eval_config  # noqa: F401 - the checkpoint and its settings

ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def test_eval_prints_its_metrics_before_a_report_it_cannot_write(tmp_path):
  pytest.importorskip("tensorflow")  # folders are read by the tf.data pipeline
  from test_eval import COLOURS
  from PIL import Image

  ckpt, _ = colour_recogniser(tmp_path)
  for name, rgb in COLOURS.items():
    os.makedirs(tmp_path / "data" / "val" / name)
    Image.new("RGB", (40, 48), rgb).save(tmp_path / "data" / "val" / name / "0.png")
  blocked = tmp_path / "not_a_directory"
  blocked.write_text("")  # a file where the report's directory would go: the write must fail
  cmd = [sys.executable, "eval.py", f"--checkpoint={ckpt}", f"--dataset=folder:{tmp_path / 'data'}",
         "--split=val", "--image_size=32", "--crop_ratio=1.0", f"--output={blocked / 'report.json'}"]
  proc = subprocess.run(cmd, cwd=train_utils.ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "top-1 100.00%" in proc.stdout and "top-3" in proc.stdout  # 3 classes: top-k, k = 3
  assert "cannot write the report" in proc.stderr and "--output" in proc.stderr
  # No library INFO chatter around the result: orbax's, absl's, and TensorFlow's start-up lines
  # (printed from C++ before TF reads TF_CPP_MIN_LOG_LEVEL).
  chatter = [line for line in proc.stderr.splitlines() if re.match(r"I\d{4} |INFO|WARNING: All log messages", line)]
  assert "orbax" not in proc.stderr and not chatter, chatter
  # A bad eval setting is named with its flag before any image is read (never blamed on the files).
  for extra in ([], [f"--image={tmp_path / 'data' / 'val' / next(iter(COLOURS)) / '0.png'}"]):
    cmd = [sys.executable, "eval.py", f"--checkpoint={ckpt}", f"--dataset=folder:{tmp_path / 'data'}",
           "--split=val", "--image_size=32", "--crop_ratio=2.0", *extra]
    proc = subprocess.run(cmd, cwd=train_utils.ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "eval.py: error: Invalid settings: crop_ratio=2.0 must be a number in (0, 1] (--crop_ratio=...)" \
        in proc.stderr and "repair" not in proc.stderr


def test_train_help_lists_the_config_fields_and_a_missing_dataset_is_one_clear_error(tmp_path):
  proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=train_utils.ROOT, env=ENV, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and "--workdir" in proc.stdout
  assert "--config.batch_size=1024" in proc.stdout and "--config.data_dir=None" in proc.stdout
  pytest.importorskip("tensorflow_datasets")
  workdir = tmp_path / "run"
  cmd = [sys.executable, "train.py", "--config", "configs/focalnet_t.py", f"--workdir={workdir}",
         f"--config.data_dir={tmp_path / 'tfds'}"]
  proc = subprocess.run(cmd, cwd=train_utils.ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "train.py: error: TFDS dataset 'imagenet2012' is not prepared" in proc.stderr
  assert "--config.data_dir=/path/to/tensorflow_datasets" in proc.stderr and "download_and_prepare" not in proc.stderr
  assert not workdir.exists()  # no empty workdir left behind


def test_a_preempted_run_exits_75_and_a_finished_one_0(tmp_path):
  """A scheduler requeues on 75 (EX_TEMPFAIL); `train.py && eval.py` must not evaluate a stopped run."""
  workdir = tmp_path / "run"
  flags = [f"--config={os.path.join(train_utils.ROOT, 'configs', 'default.py')}", f"--workdir={workdir}",
           "--config.dataset=synthetic", "--config.model.embed_dim=8", "--config.model.depths=(1,)",
           "--config.model.patch_size=4", "--config.model.dtype=float32", "--config.image_size=8",
           "--config.batch_size=8", "--config.eval_batch_size=8", "--config.mesh.data=1",
           "--config.checkpoint_every_steps=1", "--config.log_every_steps=1", "--config.eval_every_steps=0"]
  proc = subprocess.Popen([sys.executable, "train.py", *flags, "--config.total_steps=100000"],
                          cwd=train_utils.ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 240
  while not (workdir / "checkpoints" / "2").exists():
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "slow"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 75
