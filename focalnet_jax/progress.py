"""Progress lines with an ETA for long loops whose length is known (a folder scan, an evaluation).

Silent for short work: the first line comes only after `quiet_s` seconds, then at most one line
every `every_s` seconds, so small folders and test runs print nothing.
"""
from __future__ import annotations

import logging
import time


def format_duration(seconds: float) -> str:
  """'4m05s', or '1h02m05s' from an hour on (ETAs here and in the training log)."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """`update(done)` after each piece of `total`; logs 'what: done/total (pct), ETA ...'."""

  def __init__(self, what: str, total: int, *, quiet_s: float = 10.0, every_s: float = 10.0):
    self.what, self.total, self.quiet_s, self.every_s = what, max(int(total), 1), quiet_s, every_s
    self.start = self.last = time.monotonic()

  def update(self, done: int) -> str | None:
    """Logs (and returns) a progress line when one is due, else returns None."""
    now = time.monotonic()
    if now - self.start < self.quiet_s or now - self.last < self.every_s or done <= 0:
      return None
    self.last = now
    rate = done / (now - self.start)
    line = (f"{self.what}: {done}/{self.total} ({done / self.total:.0%}), "
            f"ETA {format_duration((self.total - done) / max(rate, 1e-9))}")
    logging.getLogger("focalnet_jax").info(line)
    return line
