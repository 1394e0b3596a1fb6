"""Test setup: 8 CPU devices for sharding tests, set before JAX initialises its backends, and
the fixtures several test files share."""
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """JAX's persistent compilation cache for one test module: runs that compile the same step
  (uninterrupted, killed, resumed, other seeds) compile it once."""
  import train_utils

  with train_utils.compilation_cache(str(tmp_path_factory.mktemp("jax_cache"))):
    yield


@pytest.fixture
def ctrl_c():
  """SIGINT raising KeyboardInterrupt, as in an interactive shell, for the test's duration. A shell
  starts background jobs with SIGINT ignored and Python keeps that: without this, tests of
  Ctrl-C fail when the suite itself runs in the background. Yields the handler to restore."""
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    yield signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, before)
