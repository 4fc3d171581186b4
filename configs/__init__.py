"""The configs: one module per dataset, each with `get_config()`, on the shared settings of `default`.

A config is named on the command line by name (`--config mnist`: a module of this package) or by a file's
path (`--config configs/mnist.py`, or a file of the user's anywhere). This folder is importable under two
names: `configs` in a checkout (from the repository root) and `ncsn_jax.configs` in the installed package,
so the configs import each other relatively (`from .default import get_default_config`), which holds under
either name. A file named by its path is run as a module of this package (`load`), so that the same relative
imports reach the shipped configs from a path too: the shipped files themselves, or a user's copy of one
kept elsewhere. ml_collections' own `--config` flag would run the file as a standalone module, where a
relative import fails; `define_config_flag` is that flag with this loading instead.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import pkgutil
import traceback

import ml_collections
from absl import flags
from ml_collections import config_flags

from ncsn_jax.errors import UserError

# The flag that `define_config_flag` defines belongs to its caller's module, in --helpfull too.
flags.disclaim_key_flags()

# The shared settings that every config starts from, not a config of its own.
_BASE = "default"


def names() -> list[str]:
    """The configs this package ships, by name: bedroom, celeba, ..., mnist, tiny, tower."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if module.name != _BASE)


def is_name(argument: str) -> bool:
    """Whether --config's `argument` names a shipped config (`mnist`) rather than a file (`configs/mnist.py`)."""
    return not argument.endswith(".py") and not any(sep and sep in argument for sep in (os.sep, os.altsep))


def load(argument: str) -> ml_collections.ConfigDict:
    """The config that --config's `argument` names: the `get_config()` of a shipped config or of a file.

    Args:
      argument: a shipped config's name (e.g. `mnist`), or a Python file's path (e.g. configs/mnist.py).

    Returns:
      The config, unlocked.

    Raises:
      UserError: no config of that name, no such file, a folder, or a file that fails to run or lacks
        `get_config()`; the message names the argument and the cause in one line.
    """
    if is_name(argument) and argument in names():
        module = importlib.import_module(f"{__name__}.{argument}")
        return _get_config(argument, module, module.__file__)
    if os.path.isdir(argument):  # `configs/`, or `configs`
        raise UserError(f"--config {argument}: a folder, not a config file; give a .py file such as "
                        f"configs/mnist.py, or a config's name: {', '.join(names())}")
    if is_name(argument):
        raise UserError(f"--config {argument}: no config of that name; the package's configs are "
                        f"{', '.join(names())} (or give a config file's path)")
    if not os.path.exists(argument):
        raise UserError(f"--config {argument}: No such file or directory")
    return _get_config(argument, _run_file(argument), argument)


def _run_file(path: str):
    """Runs the Python file at `path` as a module of this package (see the module's docstring), unregistered,
    so that a file of the user's never stands in for a shipped config of the same name."""
    name = f"{__name__}.{os.path.splitext(os.path.basename(path))[0]}"
    loader = importlib.machinery.SourceFileLoader(name, path)  # any file name, as ml_collections allows
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    try:
        loader.exec_module(module)
    except SyntaxError as error:  # its message names the file and the line
        raise UserError(f"--config {path}: SyntaxError: {error}") from error
    except Exception as error:  # pylint: disable=broad-exception-caught
        raise UserError(f"--config {path}: {_describe(error, path)}") from error
    return module


def _get_config(argument: str, module, path: str) -> ml_collections.ConfigDict:
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"--config {argument}: the file defines no get_config(), the function that returns the "
                        "config (configs/mnist.py is an example)")
    try:
        config = module.get_config()
    except Exception as error:  # pylint: disable=broad-exception-caught
        raise UserError(f"--config {argument}: get_config() failed: {_describe(error, path)}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"--config {argument}: get_config() returned a {type(config).__name__}, not an "
                        "ml_collections.ConfigDict")
    return config


def _describe(error: Exception, path: str) -> str:
    """`error` in one line, with the line of the config file where it was raised."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    where = f" ({path}, line {lines[-1]})" if lines else ""
    return f"{type(error).__name__}: {error}{where}"


class ConfigFlagParser(flags.ArgumentParser):
    """The parser of a config flag: loads by name or path with `load`. Its errors are UserErrors, which absl
    passes on as they are (it rewraps only a TypeError or ValueError as a flag error)."""

    def __init__(self, lock_config: bool):
        self.lock_config = lock_config

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        config = load(argument)
        if self.lock_config:
            config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


def define_config_flag(name: str, default: str | None, help_string: str,
                       lock_config: bool = True) -> flags.FlagHolder:
    """ml_collections' `DEFINE_config_file` (with its `--<name>.<field>=<value>` overrides and
    `config_flags.get_config_filename`), loading the config with `load`.

    Args:
      name: the flag's name.
      default: a config's name or path, or None.
      help_string: the flag's help.
      lock_config: whether the config is locked, so that an override of a field it lacks is an error.
    """
    holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=lock_config)
    flags.FLAGS[name].parser = ConfigFlagParser(lock_config)  # before any value is parsed, the default too
    if default is not None:
        flags.FLAGS.set_default(name, default)
    return holder
