"""With `model.dtype=bfloat16` only the network's convolutions compute in bfloat16: read off the traced programs.

The training step (`train.train_step`) and the samplers (`methods.run`: ald and cas, one step
per level) are traced with `jax.make_jaxpr` on a tiny NCSNv2 (nothing is compiled), and their equations
are read, nested jaxprs (jit, scan, custom derivatives) included, each with its full name scope (Flax
names every module's equations after its path, e.g. `jvp(NCSNv2)/res1_0/normalize1`; differentiation
adds `transpose(...)`):

- the σ ladder and everything computed from it outside the network's layers, found by following the
  ladder's (and ε's) data flow: the level drawn for each example, x + σz, the target −z/σ, the weighting
  σ² of the per-level loss, the score's division by σ; the Langevin step sizes α_i = ε·σ_i²/σ_L², the
  noise scales √(2α_i) or CAS's, and the update x + α·s + scale·z, are float32, forward and backward;
- InstanceNorm++'s statistics (the reductions, divisions and square roots in a `normalize*` scope: the
  spatial and channel means, both variances, the standardisation) are float32, forward and backward;
- every convolution takes and gives bfloat16 (float32 in a float32 network).

The checks are functions of a jaxpr, and a test feeds them deliberately wrong programs (a bfloat16
ladder, an InstanceNorm++ that computes its statistics in bfloat16, a Langevin step that rounds α to
bfloat16) to show that each would be caught.
"""
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn
from jax.extend import core as jax_core

from configs import tiny
from ncsn_jax import train, train_state
from ncsn_jax.models import get_model, layers, ncsnv2
from ncsn_jax.models.score import get_score_fn
from ncsn_jax.sampling import langevin, methods

BATCH = 2
IMAGE_SHAPE = (16, 16, 3)
NETWORK = "NCSNv2"  # the name scope of the tiny config's network
NORM_SCOPE = re.compile(r"/normaliz(e\d+|er)(/|$)")
# What InstanceNorm++'s statistics are made of: means and variances (sums, squares, divisions) and the
# standardisation (square root, division).
STATISTICS_PRIMITIVES = {"reduce_sum", "square", "integer_pow", "div", "sqrt", "rsqrt"}


def tiny_config(dtype: str):
    config = tiny.get_config()
    config.model.dtype = dtype
    config.model.ngf = 4
    config.model.num_scales = 4
    config.sampling.n_steps_each = 1
    return config


def abstract(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


KEY = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def abstract_state(dtype: str) -> train_state.TrainState:
    return jax.eval_shape(lambda key: train_state.create_train_state(tiny_config(dtype), key), jax.random.key(0))


# Reading a traced program.

def _sub_jaxprs(eqn) -> list[jax_core.Jaxpr]:
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, jax_core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax_core.Jaxpr):
                found.append(item)
    return found


def _join(scope: str, name_stack) -> str:
    return "/".join(part for part in (scope, str(name_stack)) if part)


def scoped_equations(jaxpr: jax_core.Jaxpr, scope: str = "") -> Iterator[tuple[str, object]]:
    """Every equation of `jaxpr` and of the jaxprs nested in it, with its full name scope."""
    for eqn in jaxpr.eqns:
        full = _join(scope, eqn.source_info.name_stack)
        yield full, eqn
        for sub in _sub_jaxprs(eqn):
            yield from scoped_equations(sub, full)


def in_network_layer(scope: str) -> bool:
    """Whether an equation belongs to one of the network's layers (not to the network's own top scope,
    where the input is mapped to [−1, 1] and the output divided by σ)."""
    return re.search(NETWORK + r"\)*/", scope) is not None


def enters_layers(scope: str, eqn) -> bool:
    """Whether an equation hands a value to the layers in the compute dtype at the network's top scope.

    Forward, each layer casts its own input (in the layer's scope); backward, the gradient of the loss
    with respect to the network's bfloat16 output (`h.astype(float32)` at the top scope) is cast back to
    bfloat16 there: the boundary, not a float32 quantity computed in bfloat16.
    """
    return (eqn.primitive.name == "convert_element_type" and scope.startswith("transpose(")
            and re.search(NETWORK + r"\)*$", scope) is not None)


def _inputs_of_sub(eqn, sub: jax_core.Jaxpr, tainted: set) -> set:
    invars = list(eqn.invars)
    if eqn.primitive.name == "cond":  # the first operand picks the branch
        invars = invars[1:]
    if len(invars) != len(sub.invars):
        raise NotImplementedError(f"cannot map the operands of {eqn.primitive.name} onto its jaxpr")
    return {inner for outer, inner in zip(invars, sub.invars) if _is_var(outer) and outer in tainted}


def _is_var(atom) -> bool:
    return isinstance(atom, jax_core.Var)


def dependents(jaxpr: jax_core.Jaxpr, sources: set, scope: str = "") -> tuple[list[tuple[str, object]], set]:
    """The equations outside the network's layers that read a value computed from `sources` (invars of
    `jaxpr`), and the outvars of `jaxpr` computed from them. A call or loop (jit, scan) is not itself one
    of the equations; the equations of its body are. The flow is not followed into the layers
    (the network's own computation is the other checks' business), only around them."""
    tainted = set(sources)
    found = []
    for eqn in jaxpr.eqns:
        full = _join(scope, eqn.source_info.name_stack)
        reads_sources = any(_is_var(v) and v in tainted for v in eqn.invars)
        if not reads_sources or in_network_layer(full) or enters_layers(full, eqn):
            continue
        subs = _sub_jaxprs(eqn)
        if not subs:
            found.append((full, eqn))
            tainted.update(eqn.outvars)
            continue
        outputs = set()
        for sub in subs:
            inner = _inputs_of_sub(eqn, sub, tainted)
            if eqn.primitive.name == "scan":  # a carry computed from the sources feeds the next iteration
                consts, carry = scan_consts_and_carry(eqn.params)
                while True:
                    inner_found, inner_out = dependents(sub, inner, full)
                    fed_back = {sub.invars[consts + i] for i, v in enumerate(sub.outvars[:carry]) if v in inner_out}
                    if fed_back <= inner:
                        break
                    inner |= fed_back
            else:
                inner_found, inner_out = dependents(sub, inner, full)
            found += inner_found
            outputs |= {i for i, v in enumerate(sub.outvars) if _is_var(v) and v in inner_out}
        if len(subs) == 1 or eqn.primitive.name == "cond":
            tainted.update(eqn.outvars[i] for i in outputs)
        else:
            tainted.update(eqn.outvars)
    out = {v for v in jaxpr.outvars if _is_var(v) and v in tainted}
    return found, out


def scan_consts_and_carry(params) -> tuple[int, int]:
    """How many of a scan equation's inputs are constants, and how many after them are the carry."""
    if "num_consts" in params:  # jax 0.10
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].elts  # jax >= 0.11: the flat trees of (constants, carry, xs)
    return len(consts), len(carry)


def float_dtypes(eqn) -> set[str]:
    return {str(atom.aval.dtype) for atom in (*eqn.invars, *eqn.outvars)
            if hasattr(atom.aval, "dtype") and jnp.issubdtype(atom.aval.dtype, jnp.floating)}


def not_float32(equations) -> list[str]:
    """The equations among `equations` that read or write a floating-point value that is not float32."""
    return [f"{scope}: {eqn.primitive.name} {sorted(float_dtypes(eqn))}" for scope, eqn in equations
            if float_dtypes(eqn) - {"float32"}]


def ladder_flow(closed: jax_core.ClosedJaxpr, source_positions: list[int]) -> list[tuple[str, object]]:
    sources = {closed.jaxpr.invars[i] for i in source_positions}
    return dependents(closed.jaxpr, sources)[0]


def norm_statistics(closed: jax_core.ClosedJaxpr) -> list[tuple[str, object]]:
    return [(scope, eqn) for scope, eqn in scoped_equations(closed.jaxpr)
            if NORM_SCOPE.search(scope) and eqn.primitive.name in STATISTICS_PRIMITIVES]


def convolutions(closed: jax_core.ClosedJaxpr) -> list[tuple[str, object]]:
    return [(scope, eqn) for scope, eqn in scoped_equations(closed.jaxpr)
            if eqn.primitive.name == "conv_general_dilated"]


def primitives(equations) -> set[str]:
    return {eqn.primitive.name for _, eqn in equations}


# The programs.

def trace_train_step(state) -> tuple[jax_core.ClosedJaxpr, int]:
    """The training step's jaxpr and the position of the ladder among its inputs."""
    args = (state, abstract((BATCH, *IMAGE_SHAPE), jnp.float32), KEY)
    closed = jax.make_jaxpr(train.train_step)(*args)
    leaves = jax.tree_util.tree_flatten_with_path(args)[0]
    positions = [i for i, (path, _) in enumerate(leaves) if "sigmas" in jax.tree_util.keystr(path)]
    assert len(positions) == 1
    return closed, positions[0]


def trace_sampler(dtype: str, method: str) -> jax_core.ClosedJaxpr:
    """One batch of `method` (T = 1 on a 4-level ladder, denoised) with float32 parameters in a `dtype`
    network, as a float32 checkpoint is sampled in bfloat16; inputs: params, key, x_init, ladder, ε."""
    config = tiny_config(dtype)
    settings = config.sampling.copy_and_resolve_references()
    settings.method = method
    params = abstract_state("float32").ema_params
    model = get_model(config)

    def draw(params, key, x_init, levels, epsilon):
        return methods.run(get_score_fn(model, params), key, x_init, levels, epsilon, settings)

    return jax.make_jaxpr(draw)(params, KEY, abstract((BATCH, *IMAGE_SHAPE), jnp.float32),
                                abstract((config.model.num_scales,), jnp.float32), abstract((), jnp.float32))


def sampler_sources(closed: jax_core.ClosedJaxpr) -> list[int]:
    """The positions of the ladder and ε, the sampler's last two inputs."""
    n = len(closed.jaxpr.invars)
    return [n - 2, n - 1]


@pytest.fixture(scope="module")
def train_steps():
    return {dtype: trace_train_step(abstract_state(dtype)) for dtype in ("float32", "bfloat16")}


# The checks.

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_step_keeps_the_ladder_and_the_loss_weighting_float32(train_steps, dtype):
    closed, ladder = train_steps[dtype]
    flow = ladder_flow(closed, [ladder])
    assert not not_float32(flow)
    # The flow holds the level drawn per example (a gather from the ladder), its square (the weighting
    # λ(σ) = σ² of the per-level loss) and the score's division by σ at the network's top scope, forward
    # and, in the gradient, backward.
    assert "gather" in primitives(flow)
    assert primitives(flow) & {"integer_pow", "square"}
    assert any(eqn.primitive.name == "div" and re.search(NETWORK + r"\)*$", scope) for scope, eqn in flow)
    assert any(scope.startswith("transpose(") for scope, _ in flow)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_step_computes_instance_norm_statistics_in_float32(train_steps, dtype):
    closed, _ = train_steps[dtype]
    statistics = norm_statistics(closed)
    assert not not_float32(statistics)
    forward = {}
    for scope, eqn in statistics:
        if not scope.startswith("transpose("):
            norm = scope[:NORM_SCOPE.search(scope).end()].rstrip("/")
            forward.setdefault(norm, []).append(eqn.primitive.name)
    # The 17 InstanceNorm++ of the tiny NCSNv2 (two per residual block, one before end_conv), each with
    # four statistics (spatial mean and variance, channel mean and variance) and two standardisations.
    assert len(forward) == 17
    assert all(names.count("reduce_sum") >= 4 and names.count("sqrt") == 2 for names in forward.values())
    assert any(scope.startswith("transpose(") for scope, _ in statistics)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_step_convolves_in_the_compute_dtype(train_steps, dtype):
    closed, _ = train_steps[dtype]
    convs = convolutions(closed)
    # Forward, and the two convolutions of each one's gradient (input and kernel).
    assert len(convs) >= 3 * 60
    assert {dtype} == set().union(*(float_dtypes(eqn) for _, eqn in convs))


@pytest.mark.parametrize("method", methods.INPAINTING_METHODS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sampler_keeps_the_ladder_step_sizes_and_noise_scale_float32(dtype, method):
    closed = trace_sampler(dtype, method)
    flow = ladder_flow(closed, sampler_sources(closed))
    assert not not_float32(flow)
    # α_i = ε·(σ_i/σ_L)² (a square), the noise scale (a square root: √(2α_i), or CAS's), the update.
    assert primitives(flow) >= {"sqrt", "mul", "add"} and primitives(flow) & {"integer_pow", "square"}
    assert not not_float32(norm_statistics(closed)) and norm_statistics(closed)
    assert {dtype} == set().union(*(float_dtypes(eqn) for _, eqn in convolutions(closed)))


# The checks catch what they are meant to catch.

class _Bfloat16StatisticsNorm(layers.InstanceNormPlus):
    """InstanceNorm++ with its statistics in the compute dtype: the bug the float32 statistics avoid."""

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        alpha = self.param("alpha", nn.initializers.ones, (channels,))
        gamma = self.param("gamma", nn.initializers.ones, (channels,))
        beta = self.param("beta", nn.initializers.zeros, (channels,))
        x = x.astype(self.dtype)
        means = jnp.mean(x, axis=(1, 2))
        channel_var = jnp.var(means, -1, keepdims=True, ddof=1)
        standardised = (means - means.mean(-1, keepdims=True)) / jnp.sqrt(channel_var + self.eps)
        h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + self.eps)
        h = h + standardised[:, None, None, :] * alpha.astype(self.dtype)
        return gamma.astype(self.dtype) * h + beta.astype(self.dtype)


def test_the_checks_catch_bfloat16_where_float32_belongs(monkeypatch):
    # jax.jit keeps the trace of each signature (the network is part of it): a patched function is traced
    # anew only with the caches cleared, before each patch and after the last.
    jax.clear_caches()
    # A bfloat16 ladder in the state.
    state = abstract_state("bfloat16")
    closed, ladder = trace_train_step(state.replace(sigmas=abstract(state.sigmas.shape, jnp.bfloat16)))
    assert not_float32(ladder_flow(closed, [ladder]))

    # The loss weighting rounded to bfloat16.
    with monkeypatch.context() as patch:
        given_noise = train.losses.dsm_loss_given_noise
        jax.clear_caches()
        patch.setattr(train.losses, "dsm_loss_given_noise",
                      lambda score_fn, x, sigma, noise: given_noise(
                          score_fn, x, sigma.astype(jnp.bfloat16).astype(jnp.float32), noise))
        closed, ladder = trace_train_step(abstract_state("bfloat16"))
        assert not_float32(ladder_flow(closed, [ladder]))

    # InstanceNorm++ statistics in bfloat16 (the modules' names, hence the scopes, unchanged).
    with monkeypatch.context() as patch:
        jax.clear_caches()
        patch.setattr(layers, "InstanceNormPlus", _Bfloat16StatisticsNorm)
        patch.setattr(ncsnv2, "InstanceNormPlus", _Bfloat16StatisticsNorm)
        closed, _ = trace_train_step(abstract_state("bfloat16"))
        assert not_float32(norm_statistics(closed))

    # Langevin step sizes rounded to bfloat16.
    with monkeypatch.context() as patch:
        jax.clear_caches()
        step = langevin.langevin_step
        patch.setattr(langevin, "langevin_step",
                      lambda x, score, noise, step_size: step(x, score, noise, step_size.astype(jnp.bfloat16)))
        closed = trace_sampler("bfloat16", "ald")
        assert not_float32(ladder_flow(closed, sampler_sources(closed)))

    # And the untouched programs pass (the same traces as above, without the patches).
    jax.clear_caches()
    closed, ladder = trace_train_step(abstract_state("bfloat16"))
    assert not not_float32(ladder_flow(closed, [ladder])) and not not_float32(norm_statistics(closed))
