"""Command-line tools over the library, each `python -m focalnet_jax.tools.<name>`: convert, summary,
benchmark, aot (deviceless GPU compiles), hlo_traffic, export, sweep, visualize."""
