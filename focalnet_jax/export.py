"""`python -m focalnet_jax.export`: the short name of `focalnet_jax.tools.export`."""
import sys

from focalnet_jax.tools.export import *  # noqa: F401,F403
from focalnet_jax.tools.export import export, main  # noqa: F401

if __name__ == "__main__":
  sys.exit(main())
