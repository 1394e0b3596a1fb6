"""The paper's ablations (see docs/model.md) as sweeps: a base config plus a list of points.

Each file defines `get_config(arg)` (the base the sweep varies) and `get_sweep(arg)` (the points,
each a name and dotted config overrides). `arg='quickstart'` shrinks the base to configs/quickstart.py
while keeping the swept model fields; see `common.py` and `python sweep.py --help`.
"""
