"""The library's layers import only downwards, and every module has a layer.

`LAYERS` is the order, lowest first; a module may import its own layer and the layers below it. An entry
is a top-level module of ncsn_jax/ or a package, which holds every module under it, so a folder is a
layer (docs/architecture.md describes each). Every module is parsed with `ast`, no import runs, and every
import counts, inside a function too.
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ncsn_jax"

LAYERS = (
    ("leaves", ("errors", "trees")),
    ("runtime", ("runtime",)),
    ("official weights", ("official",)),
    ("models", ("models",)),
    ("the mathematics and the state", ("schedule", "losses", "train_state", "train")),
    ("sampling", ("sampling",)),
    ("data", ("data",)),
    ("evaluation", ("evaluation",)),
    ("a run's files", ("run",)),
    ("config checks", ("config_checks",)),
    ("modes", ("modes",)),
    ("entry points", ("cli", "__main__", "__init__")),
)


def module_names(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    """Every module of the package by its dotted name under ncsn_jax: `sampling.langevin`, a subpackage's
    `__init__.py` as `sampling`, ncsn_jax's own as `__init__`."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def layer_entries(module: str) -> list[tuple[int, str]]:
    """The (layer index, entry) pairs of `LAYERS` that hold `module`."""
    return [(index, entry) for index, (_, entries) in enumerate(LAYERS) for entry in entries
            if module == entry or module.startswith(entry + ".")]


def unplaced(modules) -> list[str]:
    """A message for each module that is in no layer or in several."""
    messages = []
    for module in modules:
        entries = layer_entries(module)
        if not entries:
            messages.append(f"ncsn_jax module {module!r} is in no layer: add it (or its package) to the layer "
                            "it belongs to in LAYERS, tests/test_layers.py, and to docs/architecture.md")
        elif len(entries) > 1:
            messages.append(f"ncsn_jax module {module!r} is in several layers: {[entry for _, entry in entries]}")
    return messages


def imported_modules(module: str, source: str, modules) -> list[tuple[int, str]]:
    """(line, module) for every ncsn_jax module that `source`, the text of `module`, imports anywhere."""
    if module == "__init__":
        package = []
    else:
        package = module.split(".")
        if module not in modules or modules[module].name != "__init__.py":
            package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative, from the module's own package up
                base = ".".join(["ncsn_jax", *package[:len(package) + 1 - node.level], *filter(None, [node.module])])
            # `from a import b` imports the module a.b where there is one, else a name of a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}".removeprefix("ncsn_jax.") in modules
                       else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "ncsn_jax":
                found.append((node.lineno, "__init__"))
            elif target.startswith("ncsn_jax."):
                found.append((node.lineno, target.removeprefix("ncsn_jax.")))
    return found


def upward_imports(module: str, source: str, modules) -> list[str]:
    """A message for each import in `source` (the text of `module`) of a module of a higher layer; none
    for a module that is not in exactly one layer (`unplaced` reports it)."""
    entries = layer_entries(module)
    if len(entries) != 1:
        return []
    own = entries[0][0]
    messages = []
    for line, target in imported_modules(module, source, modules):
        target_entries = layer_entries(target)
        if not target_entries:
            messages.append(f"{module}:{line} imports ncsn_jax.{target}, which is in no layer")
        elif target_entries[0][0] > own:
            messages.append(f"{module}:{line} ({LAYERS[own][0]}) imports ncsn_jax.{target}, which is in a higher "
                            f"layer ({LAYERS[target_entries[0][0]][0]})")
    return messages


def test_every_module_is_in_exactly_one_layer():
    assert not unplaced(module_names()), "\n".join(unplaced(module_names()))


def test_no_module_imports_a_higher_layer():
    modules = module_names()
    assert {"sampling.langevin", "modes.train", "data.sources", "cli"} <= set(modules)  # the walk found them
    messages = [message for module, path in modules.items()
                for message in upward_imports(module, path.read_text(encoding="utf-8"), modules)]
    assert not messages, "\n".join(messages)


def test_an_upward_import_anywhere_in_a_module_is_reported():
    modules = module_names()
    planted = ("from ncsn_jax.errors import DataError\n"
               "from ncsn_jax.data import pipeline\n"
               "import ncsn_jax.sampling.sharded\n"
               "\n"
               "def read():\n"
               "    from ncsn_jax.modes import train\n"
               "    from ncsn_jax import cli\n"
               "    from . import pipeline\n")
    messages = upward_imports("data.sources", planted, modules)
    assert [message.split(" imports ")[1].split(",")[0] for message in messages] == [
        "ncsn_jax.modes.train", "ncsn_jax.cli"], messages
    assert messages[0] == ("data.sources:6 (data) imports ncsn_jax.modes.train, which is in a higher layer "
                           "(modes)")
    # The same imports are fine from the top.
    assert not upward_imports("cli", planted, modules)


def test_a_module_outside_the_table_is_reported():
    assert unplaced(["errors", "sampling.a_new_sampler", "a_new_module"]) == [
        "ncsn_jax module 'a_new_module' is in no layer: add it (or its package) to the layer it belongs to in "
        "LAYERS, tests/test_layers.py, and to docs/architecture.md"]
