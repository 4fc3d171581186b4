"""Model FLOPs from the jaxpr against the reference's per-image forward costs and closed forms."""
import jax
import jax.numpy as jnp
import pytest

from ncsn_jax.models import MODELS
from ncsn_jax.models import flops


def test_closed_forms_of_a_convolution_and_a_matrix_product():
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 3, 5), jnp.float32)
    conv = lambda x_, k_: jax.lax.conv_general_dilated(x_, k_, (1, 1), "SAME",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops.count_flops(conv, x, kernel) == (2 * (2 * 8 * 8 * 5) * (3 * 3 * 3), 0)
    a, b = jax.ShapeDtypeStruct((4, 6, 7), jnp.float32), jax.ShapeDtypeStruct((4, 7, 9), jnp.float32)
    assert flops.count_flops(jnp.matmul, a, b) == (0, 2 * 4 * 6 * 7 * 9)
    # a scan multiplies its body's count by its length
    scanned = lambda a_, b_: jax.lax.scan(lambda c, _: (c, jnp.matmul(a_, b_)), 0.0, None, length=3)[1]
    assert flops.count_flops(scanned, a, b).total == 3 * 2 * 4 * 6 * 7 * 9


# The convolutions' cost per image at ngf 128 (2 per multiply-accumulate), as the reference measured it
# for the official networks; the official code resizes with F.interpolate, which it did not count.
@pytest.mark.parametrize("name,size,gflops", [
    ("ncsnv2", 32, 19.8), ("ncsnv2", 64, 79.1), ("ncsnv2_deeper", 96, 169.9), ("ncsnv2_deeper", 128, 302.0),
    ("ncsnv2_deepest", 256, 839.0),
])
def test_forward_flops_of_the_paper_networks(name, size, gflops):
    model = MODELS[name](ngf=128, channels=3)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    sigma = jax.ShapeDtypeStruct((1,), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
    count = flops.count_flops(model.apply, params, x, sigma)
    assert count.convolutions / 1e9 == pytest.approx(gflops, abs=0.05)
    assert 0 < count.matrix_products < 0.005 * count.total  # the resizes of the fusion blocks
