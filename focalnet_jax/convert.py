"""`python -m focalnet_jax.convert`: the short name of `focalnet_jax.tools.convert`."""
import sys

from focalnet_jax.tools.convert import *  # noqa: F401,F403
from focalnet_jax.tools.convert import main

if __name__ == "__main__":
  sys.exit(main())
