"""`python -m focalnet_jax.summary`: the short name of `focalnet_jax.tools.summary`."""
import sys

from focalnet_jax.tools.summary import *  # noqa: F401,F403
from focalnet_jax.tools.summary import main

if __name__ == "__main__":
  sys.exit(main())
