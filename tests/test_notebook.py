"""notebooks/sampling.ipynb runs top to bottom offline in a fresh python3 kernel: from our own checkpoint
(its sample grid is the one --mode sample draws) and from an official PyTorch checkpoint through the
converter, without the TFDS data its inpainting needs. Here the checkout stands for the installed package
(`installed_layout`); tests/test_notebook_install.py installs the wheel as Colab does and runs the notebook
on that."""
import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import nbclient
import nbformat
import numpy as np
from PIL import Image

from ncsn_jax import cli, train_state
from ncsn_jax.run import checkpoints
from tests.test_main import TINY_MNIST, tiny_mnist

REPO = pathlib.Path(__file__).parent.parent
NOTEBOOK = REPO / "notebooks" / "sampling.ipynb"
OFFICIAL_CHECKPOINT = REPO / "tests" / "data" / "official_checkpoint_ngf4.pth"


def installed_layout(folder: pathlib.Path) -> pathlib.Path:
    """The checkout's package laid out in `folder` as the wheel (or `pip install -e .`) installs it, by
    symbolic links: ncsn_jax/ with configs/ inside it as ncsn_jax/configs. Returns `folder`."""
    package = folder / "ncsn_jax"
    package.mkdir(parents=True)
    for entry in (REPO / "ncsn_jax").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "configs").symlink_to(REPO / "configs")
    return folder


def run_notebook(monkeypatch, params, kernel_name="python3", cwd=NOTEBOOK.parent):
    """Executes the notebook as Jupyter would (cwd notebooks/) on 4 fake CPU devices.

    The kernel is a subprocess: it reads `params` from NCSN_NOTEBOOK_PARAMS and its devices from
    XLA_FLAGS, so every batch size in `params` must divide by 4.

    Args:
      kernel_name: python3, the Python running the tests, which imports ncsn_jax (and ncsn_jax.configs)
        from the checkout through PYTHONPATH, laid out as installed (`installed_layout`); or another kernel
        spec, whose Python imports only what is installed in it.
      cwd: the kernel's working folder.

    Returns:
      The executed cells by id.
    """
    monkeypatch.setenv("NCSN_NOTEBOOK_PARAMS", json.dumps(params))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(cwd)}})
    with tempfile.TemporaryDirectory(prefix="ncsn_jax_installed_") as site:
        if kernel_name == "python3":
            monkeypatch.setenv("PYTHONPATH", str(installed_layout(pathlib.Path(site))))
        else:
            monkeypatch.delenv("PYTHONPATH", raising=False)
        client.execute()  # raises CellExecutionError, with the traceback, at the first error output
    return {cell.id: cell for cell in notebook.cells}


def shows_image(cell):
    return any("image/png" in out.get("data", {}) for out in cell.outputs)


def printed(cell):
    return "".join(out.text for out in cell.outputs if out.output_type == "stream")


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id


def save_tiny_mnist_checkpoint(workdir):
    """Saves a checkpoint of the tiny MNIST network at step 3 under `workdir`, as training writes it.

    The weights are the initial ones, since training steps would only add compile time here (test_main
    trains and samples).

    Returns:
      The notebook's parameters for sampling from it, and its config.
    """
    config = tiny_mnist()
    state = train_state.create_train_state(config, jax.random.key(0)).replace(step=jnp.asarray(3, jnp.int32))
    with checkpoints.Checkpointer(workdir / "checkpoints") as checkpointer:
        checkpointer.save(3, state)
    params = {"CONFIG": "mnist", "WORKDIR": str(workdir), "NUM_SAMPLES": config.sampling.num_samples,
              "CONFIG_OVERRIDES": TINY_MNIST}
    return params, config


def assert_sample_grid_is_mode_sample_grid(config, workdir):
    """The notebook's grid is the one --mode sample draws from the same checkpoint: the same keys."""
    notebook_grid = workdir / "notebook" / "sample_step_3.png"
    assert notebook_grid.exists()
    cli.run(config, str(workdir), "sample")
    np.testing.assert_array_equal(np.asarray(Image.open(notebook_grid)),
                                  np.asarray(Image.open(workdir / "sample" / "sample_step_3.png")))


def test_notebook_samples_our_checkpoint_as_mode_sample_does(tmp_path, monkeypatch):
    params, config = save_tiny_mnist_checkpoint(tmp_path)
    cells = run_notebook(monkeypatch, params)
    assert "step 3" in printed(cells["weights"])
    for cell_id in ("sample", "inpaint", "interpolate"):
        assert shows_image(cells[cell_id]), cell_id
    assert_sample_grid_is_mode_sample_grid(config, tmp_path)


def test_notebook_samples_an_official_checkpoint_without_test_data_with_the_fast_sampler(tmp_path, monkeypatch):
    cells = run_notebook(monkeypatch, {
        "CONFIG": "cifar10", "WORKDIR": str(tmp_path), "NUM_SAMPLES": 4, "FAST_SAMPLER": True,
        "OFFICIAL_CHECKPOINT": str(OFFICIAL_CHECKPOINT),
        "CONFIG_OVERRIDES": {
            "model.ngf": 4, "model.num_scales": 10, "sampling.batch_size": 4, "sampling.n_steps_each": 1,
            "sampling.num_references": 2, "sampling.n_interpolations": 4, "sampling.completions_per_image": 2,
            "data.tfds_data_dir": str(tmp_path / "no_tfds"),  # surely without cifar10
        },
    })
    weights = printed(cells["weights"])
    assert str(OFFICIAL_CHECKPOINT) in weights and "10 noise levels, σ 50 → 0.01" in weights
    assert shows_image(cells["sample"])
    assert "sampler dpm_solver_2m_sde: 12 score evaluations per image" in printed(cells["sample"])
    assert (tmp_path / "notebook" / "sample_official_dpm_solver_2m_sde_eta4_N12_rho7.png").exists()
    skipped = printed(cells["inpaint"])
    assert "Skipping inpainting and interpolation" in skipped and "tfds build cifar10" in skipped
    assert not shows_image(cells["inpaint"]) and not cells["interpolate"].outputs
