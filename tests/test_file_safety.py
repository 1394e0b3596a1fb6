"""No tool loses a file: every file a tool writes (export, eval reports, sweep tables and plots,
figures, config.json, converted weights) is replaced atomically, so a write that fails (a full
disk, here a real file-size limit) leaves the old file whole and nothing beside it."""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax import atomic, create_model

SMALL = dict(embed_dim=8, depths=(1, 1), num_classes=3, focal_levels=1)


@contextlib.contextmanager
def disk_full_after(nbytes: int):
  """Any write past `nbytes` of a file fails (EFBIG), as on a disk that fills up mid-write."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  before = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, before)


def _model():
  model = create_model("focalnet_tiny_srf", **SMALL)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _figure():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(3, 3), dpi=100)
  ax.plot(np.random.default_rng(0).standard_normal(500))
  return fig


def _writers():
  """(name, write(path)) for every tool's writer; each writes more than 4 KiB."""
  from focalnet_jax.evaluation import report
  from focalnet_jax.tools import export, sweep, sweep_report, visualize
  from focalnet_jax.train import workdir

  big = {"x": list(range(2000))}
  row = {"name": "p0", "overrides": "a=1", "status": "finished", "step": 1, "top1": 0.5, "params": 1, "gflops": 1}
  return {
      "export": lambda p: export.export(*_model(), output=str(p), image_size=32),
      "eval report": lambda p: report.write_report(big, str(p)),
      "config.json": lambda p: workdir.write_config(str(p.parent), '{"a": "' + "x" * 5000 + '"}', 0),
      "sweep result": lambda p: sweep._write_json(str(p), big),
      "sweep commands": lambda p: sweep.write_commands(str(p), ["python train.py " + "x" * 5000]),
      "sweep csv": lambda p: sweep_report.write_csv([row] * 200, str(p)),
      "figure": lambda p: visualize.save_figure(_figure(), str(p)),
  }


@pytest.mark.parametrize("name", ["export", "eval report", "config.json", "sweep result", "sweep commands",
                                  "sweep csv", "figure"])
def test_a_write_that_fails_keeps_the_old_file_whole_and_leaves_nothing_beside(tmp_path, name):
  write = _writers()[name]
  path = tmp_path / ("config.json" if name == "config.json" else f"out_{name.replace(' ', '_')}")
  write(path)
  old = path.read_bytes()
  listing = sorted(os.listdir(tmp_path))
  with disk_full_after(1024), pytest.raises(OSError) as e:
    write(path)
  assert isinstance(e.value, atomic.WriteFailed), repr(e.value)
  assert f"Writing {path} failed" in str(e.value) and f"the existing {path} is intact" in str(e.value)
  assert path.read_bytes() == old
  assert sorted(os.listdir(tmp_path)) == listing  # no temporary left beside it


def test_a_full_disk_names_the_file_says_what_to_do_and_a_new_file_is_never_half_written(tmp_path):
  def full(tmp):
    with open(tmp, "wb") as f:
      f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")

  path = tmp_path / "new.bin"
  with pytest.raises(atomic.WriteFailed, match=rf"Writing {path} failed \(OSError: \[Errno 28\] No space left on "
                                               r"device; free disk space and rerun\); nothing was written"):
    with atomic.replacing(path) as tmp:
      full(tmp)
  assert os.listdir(tmp_path) == []
  # A directory (a SavedModel, a converted checkpoint) replaces the old one only once complete.
  out = tmp_path / "saved"
  with atomic.replacing(out) as tmp:
    os.makedirs(tmp)
    (open(os.path.join(tmp, "a"), "w")).write("old")
  with pytest.raises(atomic.WriteFailed, match="the existing .*saved is intact"):
    with atomic.replacing(out) as tmp:
      os.makedirs(tmp)
      full(os.path.join(tmp, "a"))
  assert (out / "a").read_text() == "old" and os.listdir(tmp_path) == ["saved"]


def _flip_a_byte_in_the_largest_data_file(step_dir) -> None:
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if "/state/" in os.path.join(r, f)]
  big = max(files, key=os.path.getsize)
  data = bytearray(open(big, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(big, "wb").write(data)


def _rot_a_stored_value(checkpoints, step) -> None:
  """Flips one byte of a step's data where it changes a stored value (bit rot that the decoder cannot
  see): where tensorstore keeps a chunk compressed, a flipped byte breaks the decoding instead, which
  every reader already reports as an unreadable step, so such a position is put back and the next tried."""
  from focalnet_jax import checkpoint

  files = [os.path.join(r, f) for r, _, fs in os.walk(checkpoints / str(step)) for f in fs
           if "/state/" in os.path.join(r, f)]
  big = max(files, key=os.path.getsize)
  data = bytearray(open(big, "rb").read())
  for at in range(len(data) // 2, len(data), 97):
    data[at] ^= 0x10
    open(big, "wb").write(data)
    try:
      checkpoint.restore_state(checkpoints, step=step)
    except checkpoint.ChecksumMismatch:
      return
    except Exception:  # noqa: BLE001 - a compressed chunk: undo and try further on
      pass
    data[at] ^= 0x10
    open(big, "wb").write(data)
  raise AssertionError(f"no byte of {big} changes a stored value")


def test_a_flipped_byte_is_named_by_every_reader_and_resume_falls_back_to_the_intact_step(tmp_path):
  import train_utils
  from focalnet_jax import checkpoint, evaluation
  from focalnet_jax import train as trainer

  w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)  # incompressible: stored raw
  for step in (2, 4):
    checkpoint.save(tmp_path / "ck", {"params": {"w": w}}, {"model": "m"}, step=step)
  _flip_a_byte_in_the_largest_data_file(tmp_path / "ck" / "4")
  with pytest.raises(ValueError, match=r"ck/4' \(earlier steps: \[2\]\) is corrupt: the checksum of 1 array\(s\) "
                                       r"\(params/w\) differs from the one saved with it \(bit rot"):
    checkpoint.load_params(tmp_path / "ck")
  np.testing.assert_array_equal(checkpoint.load_params(tmp_path / "ck", step=2)[0]["w"], w)

  # A training run: eval refuses the rotten step; the resumed run moves it aside and goes on from the last intact one.
  config = train_utils.tiny_config(total_steps=3, checkpoint_every_steps=1, **{"model.embed_dim": 64})
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, str(workdir), data=train_utils.TinyData())
  _rot_a_stored_value(workdir / "checkpoints", 3)
  with pytest.raises(ValueError, match=r"checkpoints/3' \(earlier steps: \[1, 2\]\) is corrupt"):
    evaluation.as_pretrained(str(workdir))
  result = trainer.train_and_evaluate(config, str(workdir), data=train_utils.TinyData())  # the same command
  assert result["step"] == 3 and os.path.isdir(workdir / "checkpoints" / "3.corrupt")
  assert evaluation.as_pretrained(str(workdir)).info.step == 3  # saved again, intact
