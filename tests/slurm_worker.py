"""train.py's main on the tests' in-memory dataset (`train_utils.TinyData`): what the SLURM tests
run in place of train.py (`TRAIN_SCRIPT` of scripts/slurm/train.sbatch). The command line is
train.py's; the number of CPU devices per process comes from JAX_NUM_CPU_DEVICES."""
import functools

from absl import app

import train
import train_utils

if __name__ == "__main__":
  app.run(functools.partial(train.main, data=train_utils.TinyData()))
