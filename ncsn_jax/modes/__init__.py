"""What `--mode` runs, one module per mode, each with the same entry point
`run(config, workdir, options) -> what it made`:

  train     the training loop (the steps it runs are `ncsn_jax.train`'s)
  sample    sample, inpaint and interpolate: images from a checkpoint or an official .pth
  tune      techniques 1, 2 and 4 on a config's training data (no workdir)
  stats     the reference statistics of a dataset's features
  sweep     eval: the sample-quality sweep over the checkpoints
  prepare   builds a config's TFDS dataset, or says what its data needs (no workdir)

The command line (`ncsn_jax.cli`) checks the config and the workdir and dispatches from one table of these.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line gives a mode besides the config and the workdir.

    Attributes:
      mode: --mode; the modules that run several modes read it (`sample`: sample, inpaint, interpolate).
      checkpoint_step: --checkpoint_step: the checkpoint that sample, inpaint and interpolate read (None:
        the latest), and the only one that eval evaluates (None: all of them).
      official_checkpoint: --official_checkpoint: an official PyTorch checkpoint_<step>.pth for sample,
        inpaint and interpolate to read instead.
    """

    mode: str
    checkpoint_step: int | None = None
    official_checkpoint: str | None = None


# A mode's entry point: the checked config, the workdir (None for tune and prepare when none is given) and
# the options; it returns what it made (the train state, a file's path, a report).
Mode = Callable[[ml_collections.ConfigDict, "str | None", Options], object]
