"""Command-line tools over the library: convert, summary, benchmark, sweep, visualize."""
