"""TensorFlow, imported for input pipelines only, without its start-up chatter.

TensorFlow prints INFO lines from C++ when it is imported (the oneDNN notice, the CPU-feature
notice), before its logging reads TF_CPP_MIN_LOG_LEVEL, so that variable cannot hide them. The
first import runs with the process's stderr sent to a file; those INFO lines are dropped and
anything else (warnings, errors, an import failure's output) is written back to stderr.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import tempfile

# What TensorFlow 2.x prints on import at INFO level: glog-style 'I<date> ...' lines, absl's
# notice about logging before InitializeLog, and the CPU-feature notice's second line.
_CHATTER = re.compile(r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog\(\)|To enable the following "
                      r"instructions:)")


@functools.cache
def import_tf():
  """`tensorflow`, imported quietly, with no GPU visible to it (no GPU memory, no competing
  with JAX for it)."""
  if "tensorflow" in sys.modules:
    tf = sys.modules["tensorflow"]
  else:
    with _quiet_stderr():
      import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices elsewhere in this process
    pass
  return tf


class _quiet_stderr:
  """Sends file descriptor 2 to a temporary file; on exit, writes back the lines that are not
  start-up chatter."""

  def __enter__(self):
    sys.stderr.flush()
    self.saved = os.dup(2)
    self.file = tempfile.TemporaryFile(mode="w+b")
    os.dup2(self.file.fileno(), 2)
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self.saved, 2)
    os.close(self.saved)
    self.file.seek(0)
    text = self.file.read().decode(errors="replace")
    self.file.close()
    kept = [line for line in text.splitlines(keepends=True) if exc[0] is not None or not _CHATTER.match(line)]
    if kept:
      sys.stderr.write("".join(kept))
      sys.stderr.flush()
    return False
