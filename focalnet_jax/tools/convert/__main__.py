"""`python -m focalnet_jax.tools.convert`, the same command as `python -m focalnet_jax.convert`."""
import sys

from focalnet_jax.tools.convert.command import main

sys.exit(main())
