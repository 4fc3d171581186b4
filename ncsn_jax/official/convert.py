"""Official PyTorch NCSNv2 weights (ermongroup/ncsnv2) as Flax parameters.

The Flax modules carry the official module names, so the conversion is a renaming plus a transpose:
  `res1.0.conv1.weight`                  → `res1_0/conv1/kernel`   (OIHW → HWIO)
  `refine2.adapt_convs.1.2_1_conv.weight` → `refine2/adapt_convs_1/2_1_conv/kernel`
  `res2.0.shortcut.conv.bias`            → `res2_0/shortcut/conv/bias`
  `res1.0.normalize1.alpha`              → `res1_0/normalize1/alpha`
i.e. a list index joins the name before it with `_`. Neither the conversion nor reading the `.pth` file
needs torch (see `ncsn_jax.official.torch_files`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ncsn_jax import trees
from ncsn_jax.errors import CheckpointMismatchError
from ncsn_jax.official.torch_files import load_torch_file

Params = dict[str, Any]

_DATA_PARALLEL_PREFIX = "module."
# Buffers of the official model that are not parameters: the σ table (see `official_sigmas`).
_BUFFERS = ("sigmas",)


def _flax_path(key: str) -> list[str]:
    path: list[str] = []
    for token in key.split("."):
        if token.isdigit() and path:
            path[-1] = f"{path[-1]}_{token}"
        else:
            path.append(token)
    return path


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {
        (k[len(_DATA_PARALLEL_PREFIX):] if k.startswith(_DATA_PARALLEL_PREFIX) else k): np.asarray(v)
        for k, v in state_dict.items()
    }


def official_sigmas(state_dict: Mapping[str, Any]) -> np.ndarray | None:
    """The σ table buffer of an official model state_dict (float32, descending), or None if absent.

    (The EMA state of an official checkpoint holds parameters only, so it has no σ table.)
    """
    sigmas = _strip_prefix(state_dict).get("sigmas")
    return None if sigmas is None else sigmas.astype(np.float32)


def from_official(state_dict: Mapping[str, Any], template: Params | None = None) -> Params:
    """Converts an official NCSNv2 / NCSNv2Deeper / NCSNv2Deepest state_dict to Flax params.

    Args:
      state_dict: mapping from official key names to arrays (NumPy, or anything `np.asarray` takes,
        e.g. CPU torch tensors), with or without the `module.` prefix of nn.DataParallel.
      template: optional params (or shapes, e.g. from `jax.eval_shape(model.init, ...)`) of the Flax
        network the weights are for; when given, every name and shape must match it.

    Returns:
      The nested params dict for `model.apply({'params': params}, x, sigma)`; float32.

    Raises:
      ValueError: the state_dict does not fit `template` (names the missing, unexpected or misshapen keys).
    """
    params: Params = {}
    for key, value in _strip_prefix(state_dict).items():
        if key in _BUFFERS:
            continue
        path = _flax_path(key)
        value = value.astype(np.float32)
        if path[-1] == "weight":
            if value.ndim != 4:
                raise ValueError(f"{key}: expected a 4-D conv weight (OIHW), got shape {value.shape}")
            path[-1] = "kernel"
            value = value.transpose(2, 3, 1, 0)
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    if template is not None:
        _check_matches(params, template)
    return params


def _check_matches(params: Params, template: Params) -> None:
    differences = trees.differences(trees.shapes(params), trees.shapes(template))
    if differences:
        raise CheckpointMismatchError(
            f"the official weights do not fit this network: {trees.summary(differences)}. Check "
            "config.model.name, config.model.ngf and config.data.channels against the checkpoint's config.yml."
        )


def load_official_checkpoint(
    path: str | os.PathLike, use_ema: bool = True, template: Params | None = None
) -> tuple[Params, np.ndarray | None]:
    """Reads an official `checkpoint_<step>.pth` (or a bare state_dict saved with torch.save).

    An official checkpoint is the list [model_state_dict, optimizer_state_dict, epoch, step, ema_state];
    with `use_ema` the EMA weights (technique 5, what the paper samples with) are returned, if present.

    Args:
      path: the .pth file.
      use_ema: take the EMA weights rather than the raw training weights.
      template: see `from_official`.

    Returns:
      (params, sigmas): Flax params, and the σ table stored in the model state (None if absent).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is damaged, not an NCSNv2 checkpoint, or does not fit `template`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no official checkpoint at {path}")
    contents = load_torch_file(path)

    if isinstance(contents, Mapping):
        model_state, ema_state = contents, None
    elif isinstance(contents, (list, tuple)) and contents and isinstance(contents[0], Mapping):
        model_state = contents[0]
        ema_state = contents[4] if len(contents) >= 5 and isinstance(contents[4], Mapping) else None
    else:
        raise ValueError(f"{path} is neither an NCSNv2 checkpoint list nor a state_dict")

    def to_numpy(state):
        return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}

    chosen = ema_state if (use_ema and ema_state) else model_state
    params = from_official(to_numpy(chosen), template)
    return params, official_sigmas(to_numpy(model_state))
