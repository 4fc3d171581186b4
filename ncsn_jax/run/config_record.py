"""The config a workdir's checkpoints were trained with: saved beside them, checked when a run resumes.

The networks are fully convolutional, so a checkpoint trained on 32×32 images restores without
complaint into a run configured for 8×8 ones, and a changed ladder keeps the arrays' shapes too; such a
resume would silently train something other than what the checkpoint holds. So every training run
writes its config to `<workdir>/config.json`, and a run that resumes compares the fields that decide
what the arrays mean with the saved ones first.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections

from ncsn_jax.errors import CheckpointMismatchError, WorkdirError
from ncsn_jax.run import files

# The fields that change the parameters or their meaning: the input the network sees, the network, and
# the noise levels its conditioning was trained on. Everything else (batch size, lr, step counts,
# logging, sampling) may change between a run and its resumption.
ARRAY_FIELDS = ("data.image_size", "data.channels", "model.name", "model.ngf", "model.sigma_begin",
                "model.sigma_end", "model.num_scales")


def save(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `config` to `<workdir>/config.json` (process 0; whole, so a kill leaves a whole file)."""
    if jax.process_index() != 0:
        return
    files.write_text(files.config_file(workdir), config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def check_same_arrays(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises CheckpointMismatchError naming every field of ARRAY_FIELDS that differs from the saved config.

    A workdir without `config.json` (from before it was written) passes; one whose `config.json` is not a
    JSON object is a WorkdirError.
    """
    path = files.config_file(workdir)
    if not path.exists():
        return
    try:
        saved = json.loads(files.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        saved = error
    if not isinstance(saved, dict):
        # The checkpoints beside it are untouched: only the check that needs this file cannot run.
        raise WorkdirError(
            f"{path} is not the JSON config that training saves ({_describe(saved)}). Restore it, or delete it "
            "to resume without checking that the checkpoints match the config (they are kept)")
    current = config.to_dict()
    differences = [f"{field} {_get(saved, field)!r} there, {_get(current, field)!r} here"
                   for field in ARRAY_FIELDS if _get(saved, field) != _get(current, field)]
    if differences:
        raise CheckpointMismatchError(
            f"the checkpoints in {workdir} were trained with another config ({'; '.join(differences)}). "
            "Resume with the saved values (see its config.json), or use a new --workdir for this config."
        )


def _describe(saved: Any) -> str:
    if isinstance(saved, Exception):
        return f"{type(saved).__name__}: {saved}"
    return f"it holds a {type(saved).__name__}"


def _get(tree: dict[str, Any], field: str) -> Any:
    section, name = field.split(".")
    return tree.get(section, {}).get(name)
