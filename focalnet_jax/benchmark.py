"""`python -m focalnet_jax.benchmark`: the short name of `focalnet_jax.tools.benchmark`."""
import sys

from focalnet_jax.tools.benchmark import *  # noqa: F401,F403
from focalnet_jax.tools.benchmark import main

if __name__ == "__main__":
  sys.exit(main())
