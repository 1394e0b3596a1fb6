"""`python -m focalnet_jax.tools.convert`: the converter's command line (`command.main`)."""
import sys

from focalnet_jax.tools.convert.command import main

sys.exit(main())
