"""`python -m focalnet_jax.aot`: the short name of `focalnet_jax.tools.aot`."""
import sys

from focalnet_jax.tools.aot import main

if __name__ == "__main__":
  sys.exit(main())
