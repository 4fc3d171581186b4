"""The XLA:CPU flag that keeps convolutions on XLA's own kernels: added safely, and in effect here."""
import jax
import jax.numpy as jnp
import pytest

from ncsn_jax import cpu_runtime


def test_flag_is_added_once_and_a_users_choice_stands():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert cpu_runtime.use_eigen_convolutions(environ)
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {cpu_runtime.EIGEN_CONVOLUTIONS}"
    assert not cpu_runtime.use_eigen_convolutions(environ)  # already there: not added twice
    users = {"XLA_FLAGS": f"{cpu_runtime.YNN_FUSION_FLAG}=individual_convolution"}
    assert not cpu_runtime.use_eigen_convolutions(users)
    assert users["XLA_FLAGS"] == f"{cpu_runtime.YNN_FUSION_FLAG}=individual_convolution"


@pytest.mark.parametrize("version", ["0.9.2", "0.12.0", None])
def test_flag_is_not_added_for_a_jaxlib_that_may_not_know_it(monkeypatch, version):
    monkeypatch.setattr(cpu_runtime, "_jaxlib_version", lambda: version)
    environ = {}
    assert not cpu_runtime.use_eigen_convolutions(environ)
    assert "XLA_FLAGS" not in environ


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compilation setting")
def test_convolutions_of_this_process_compile_without_ynnpack():
    # Importing ncsn_jax (conftest imports it before JAX starts) set the flag: the compiled convolution
    # and both its gradients are XLA's own. Without the flag, jaxlib 0.10 hands each of the three to
    # YNNPACK ('__ynn_fusion') from 32 channels on.
    def loss(x, kernel):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y**2)

    x = jax.ShapeDtypeStruct((2, 16, 16, 64), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel)
    text = hlo.compile().as_text()
    assert text.count("convolution(") == 3
    assert "__ynn_fusion" not in text
