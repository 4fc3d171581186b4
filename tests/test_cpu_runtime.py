"""The CPU runtime settings: the XLA flag that keeps convolutions on XLA's own kernels (added safely, and
in effect here), the restart with mimalloc preloaded, and both only where JAX will compute on the CPU."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ncsn_jax.runtime import cpu_runtime

REPO = pathlib.Path(__file__).parent.parent


def no_plugins():
    return ["jax", "jaxlib", "numpy"]


@pytest.fixture(name="no_accelerator_plugin")
def fixture_no_accelerator_plugin(monkeypatch):
    """The installed distributions, as on a machine without an accelerator plugin of JAX."""
    monkeypatch.setattr(cpu_runtime, "_installed_distributions", no_plugins)


@pytest.mark.parametrize("jax_platforms,installed,on_cpu", [
    ("cpu", ["jax", "jax-cuda12-plugin"], True),  # the user's choice overrides the installed plugin
    ("cpu,cuda", ["jax-cuda12-plugin"], True),
    ("CPU", [], True),
    ("cuda", [], False),  # named, even without its plugin: JAX will fail or use it, not the CPU
    ("gpu", [], False),
    ("tpu", [], False),
    ("cuda,cpu", ["jax-cuda12-plugin"], False),
    (None, ["jax", "jaxlib", "numpy"], True),
    ("", ["jax", "jaxlib"], True),  # empty is unset to JAX too
    (None, ["jax", "jax-cuda12-plugin", "jax-cuda12-pjrt"], False),
    (None, ["jax", "jax_cuda13_plugin"], False),  # names as written in the metadata, normalised
    (None, ["jax", "jax-rocm7-plugin"], False),
    (None, ["jax", "libtpu"], False),
    (None, ["jax", "jax-cuda12-pjrt"], True),  # the PJRT library alone: JAX finds no plugin to load it
])
def test_runs_on_cpu_decides_from_jax_platforms_then_the_installed_plugins(jax_platforms, installed, on_cpu):
    environ = {} if jax_platforms is None else {"JAX_PLATFORMS": jax_platforms}
    calls = []

    def installed_distributions():
        calls.append(None)
        return installed

    assert cpu_runtime.runs_on_cpu(environ, installed_distributions) is on_cpu
    assert len(calls) == (0 if jax_platforms else 1)  # nothing is listed when JAX_PLATFORMS decides


def test_this_machines_distributions_are_listed():
    names = set(cpu_runtime._installed_distributions())  # pylint: disable=protected-access
    assert {"jax", "jaxlib"} <= names


def test_flag_is_added_once_and_a_users_choice_stands(no_accelerator_plugin):
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert cpu_runtime.use_eigen_convolutions(environ)
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {cpu_runtime.EIGEN_CONVOLUTIONS}"
    assert not cpu_runtime.use_eigen_convolutions(environ)  # already there: not added twice
    users = {"XLA_FLAGS": f"{cpu_runtime.YNN_FUSION_FLAG}=individual_convolution"}
    assert not cpu_runtime.use_eigen_convolutions(users)
    assert users["XLA_FLAGS"] == f"{cpu_runtime.YNN_FUSION_FLAG}=individual_convolution"


@pytest.mark.parametrize("version", ["0.9.2", "0.13.0", None])
def test_flag_is_not_added_for_a_jaxlib_that_may_not_know_it(monkeypatch, no_accelerator_plugin, version):
    monkeypatch.setattr(cpu_runtime, "_jaxlib_version", lambda: version)
    environ = {}
    assert not cpu_runtime.use_eigen_convolutions(environ)
    assert "XLA_FLAGS" not in environ


def test_flag_is_not_added_where_jax_will_not_run_on_the_cpu(monkeypatch, no_accelerator_plugin):
    environ = {"JAX_PLATFORMS": "tpu"}
    assert not cpu_runtime.use_eigen_convolutions(environ)
    assert "XLA_FLAGS" not in environ
    monkeypatch.setattr(cpu_runtime, "_installed_distributions", lambda: ["jax", "jax-cuda12-plugin"])
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert not cpu_runtime.use_eigen_convolutions(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    assert cpu_runtime.use_eigen_convolutions({"JAX_PLATFORMS": "cpu"})  # the plugin, but the CPU chosen


def test_an_installed_cuda_plugin_keeps_the_flag_off_unless_jax_platforms_says_cpu(tmp_path):
    # A distribution that importlib.metadata finds on the path, as pip would have installed it.
    info = tmp_path / "jax_cuda12_plugin-0.10.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jax-cuda12-plugin\nVersion: 0.10.2\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{tmp_path}"
    run = lambda **extra: subprocess.run(
        [sys.executable, "-c", "import os, ncsn_jax; print(os.environ.get('XLA_FLAGS', 'unset'))"],
        env={**env, **extra}, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert run() == "unset"
    assert run(JAX_PLATFORMS="cpu") == cpu_runtime.EIGEN_CONVOLUTIONS


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compilation setting")
def test_convolutions_of_this_process_compile_without_ynnpack():
    # Importing ncsn_jax (conftest imports it before JAX starts) set the flag: the compiled convolution
    # and both its gradients are XLA's own. Without the flag, jaxlib 0.10 to 0.12 hand each of the three
    # to YNNPACK ('__ynn_fusion') from 32 channels on.
    def loss(x, kernel):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y**2)

    x = jax.ShapeDtypeStruct((2, 16, 16, 64), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel)
    text = hlo.compile().as_text()
    assert text.count("convolution(") == 3
    assert "__ynn_fusion" not in text


def test_exec_with_mimalloc_restarts_once_with_it_preloaded(monkeypatch, no_accelerator_plugin):
    calls = []
    monkeypatch.setattr(cpu_runtime.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(cpu_runtime, "mimalloc_library", lambda: "/lib/libmimalloc.so.3")
    monkeypatch.setattr(cpu_runtime.sys, "platform", "linux")
    cpu_runtime.exec_with_mimalloc({"PATH": "/bin"})
    (path, argv, env), = calls
    assert path == sys.executable and argv == sys.orig_argv
    assert env["LD_PRELOAD"] == "/lib/libmimalloc.so.3" and env[cpu_runtime.ALLOCATOR_VARIABLE] == "mimalloc"
    assert env["MIMALLOC_PURGE_DELAY"] == "-1" and env["PATH"] == "/bin"
    # The restarted process, a user's own preload, an opt-out, JAX on an accelerator: no restart.
    for environ in (env, {"LD_PRELOAD": "/lib/libtcmalloc.so"}, {cpu_runtime.ALLOCATOR_VARIABLE: "system"},
                    {"JAX_PLATFORMS": "cuda"}):
        cpu_runtime.exec_with_mimalloc(environ)
    monkeypatch.setattr(cpu_runtime, "_installed_distributions", lambda: ["jax", "libtpu"])
    cpu_runtime.exec_with_mimalloc({"PATH": "/bin"})
    assert len(calls) == 1


@pytest.mark.skipif(cpu_runtime.mimalloc_library() is None, reason="cmeel-mimalloc is not installed")
def test_a_restarted_program_runs_on_mimalloc(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(
        "from ncsn_jax.runtime import cpu_runtime\n"
        "cpu_runtime.exec_with_mimalloc()\n"
        "import numpy\n"
        "numpy.ones(10**7).sum()\n"
        "print('mimalloc' if 'libmimalloc' in open('/proc/self/maps').read() else 'glibc')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cpu_runtime.ALLOCATOR_VARIABLE)}
    env["PYTHONPATH"] = str(REPO)
    run = lambda **extra: subprocess.run([sys.executable, str(script)], env={**env, **extra},
                                         capture_output=True, text=True, timeout=120)
    assert run(JAX_PLATFORMS="cpu").stdout.strip() == "mimalloc"
    assert run(JAX_PLATFORMS="cpu", **{cpu_runtime.ALLOCATOR_VARIABLE: "system"}).stdout.strip() == "glibc"
    assert run(JAX_PLATFORMS="cuda").stdout.strip() == "glibc"
