"""The device programs lower for GPUs and TPUs, with no custom call that only the CPU has.

`jax.export` lowers a jitted function for platforms this machine does not have (here `cuda` and `tpu`,
lowered together from the fake CPU devices of conftest.py; nothing is compiled). Each program that the
users run on an accelerator is lowered, as the library builds it, for each of the three networks at
ngf 4 on 16×16 images:

- the training step (`train.train_step`) in float32 and bfloat16, as the training loop runs it: the state
  replicated and the batch split over the 4-device ('data',) mesh;
- every method of `sampling.methods.METHODS`, with the inpainting methods and the interpolation, as the
  drivers of `sampling.sharded` run one batch of them: the initial state made with the batch sharding,
  then the method's sampler on a 4-level ladder (or, for a method that takes any levels, a 3-level
  ρ-schedule of its ends);

and the feature networks of --mode stats and eval: the FID Inception-v3 and the MNIST digit classifier
(their variables' shapes only, so no weights are downloaded).

An exported module must be for exactly (`cuda`, `tpu`) and call no custom-call target outside
`PLATFORM_NEUTRAL_TARGETS`: a kernel that only the CPU has (LAPACK's `lapack_*_ffi`, which `jnp.linalg`
lowers to on the CPU; an FFI call registered for the CPU alone) would not run on the accelerators.
jax.export itself raises on a host callback when it lowers for several platforms, and on a custom call
without a compatibility guarantee; the CPU's LAPACK kernels have that guarantee, so only this check keeps
them out. The network is jitted for the samplers (see `score_fns`) and the programs stop at lowering, so
the whole file takes about 30 s of CPU time.
"""
import functools
import re

import jax
import jax.numpy as jnp
import pytest

from configs import tiny
from ncsn_jax import config_checks, train, train_state
from ncsn_jax.evaluation import digits, inception
from ncsn_jax.runtime import data_parallel
from ncsn_jax.sampling import langevin, methods, sharded

PLATFORMS = ("cuda", "tpu")
NETWORKS = ("ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest")
IMAGE_SIZE = 16  # NCSNv2Deepest halves the resolution four times
BATCH = 4  # one example per fake device

# Custom-call targets that every platform's compiler reads: the GSPMD partitioner's sharding annotations,
# which JAX emits for `with_sharding_constraint` and `shard_map` when the Shardy partitioner is off
# (jax_use_shardy_partitioner=False). With Shardy, JAX's default, they are `sdy.*` operations, and none of
# the programs here calls any custom-call target (jax 0.10.2). A GPU or TPU kernel (e.g. `jnp.linalg.eigh`
# lowers to `cusolver_syevd_ffi` and `Eigh`) is not platform-neutral either: a program that needs one must
# be lowered for each platform and the kernel added here with the reason.
PLATFORM_NEUTRAL_TARGETS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})

# A custom call as MLIR prints it: `stablehlo.custom_call @target(...)`, the name quoted when it has
# characters other than letters, digits, `_`, `$` and `.`; or, in the generic form,
# `"stablehlo.custom_call"(...) <{..., call_target_name = "target", ...}>` on one line.
_TARGET = re.compile(r'stablehlo\.custom_call @("[^"]*"|[\w$.]+)'
                     r'|"stablehlo\.custom_call"\([^\n]*?call_target_name = "([^"]*)"')


def custom_call_targets(module_text: str) -> list[str]:
    """The target of every custom call in an MLIR module's text, in order.

    Raises:
      AssertionError: a custom call whose target cannot be read, so that the check fails closed.
    """
    targets = [(pretty or generic).strip('"') for pretty, generic in _TARGET.findall(module_text)]
    calls = module_text.count("stablehlo.custom_call")
    if len(targets) != calls:
        raise AssertionError(f"the module has {calls} custom calls, of which {len(targets)} name a target "
                             "in a form this test reads")
    return targets


def check_lowered_for_accelerators(exported: jax.export.Exported) -> None:
    """Fails unless `exported` is for exactly `PLATFORMS` and calls only platform-neutral custom calls."""
    problems = []
    if exported.platforms != PLATFORMS:
        problems.append(f"exported for {exported.platforms}, not {PLATFORMS}")
    foreign = sorted(set(custom_call_targets(exported.mlir_module())) - PLATFORM_NEUTRAL_TARGETS)
    if foreign:
        problems.append(f"custom calls to {', '.join(foreign)}, which not every platform has")
    assert not problems, f"{exported.fun_name}: " + "; ".join(problems)


def export(jitted, *args) -> jax.export.Exported:
    """The jitted function lowered for `PLATFORMS` on the arguments' shapes, dtypes and shardings."""
    return jax.export.export(jitted, platforms=PLATFORMS)(*args)


# The checker can fail: a CPU kernel, a module for another platform, a custom call it cannot read.

def test_rejects_a_cpu_only_custom_call():
    matrix = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    exported = jax.export.export(jax.jit(jnp.linalg.eigh), platforms=("cpu",))(matrix)
    with pytest.raises(AssertionError, match=r"lapack_ssyevd_ffi, which not every platform has"):
        check_lowered_for_accelerators(exported)


def test_rejects_other_platforms():
    exported = jax.export.export(jax.jit(jnp.sin), platforms=("cpu",))(jax.ShapeDtypeStruct((3,), jnp.float32))
    with pytest.raises(AssertionError, match=r"exported for \('cpu',\)"):
        check_lowered_for_accelerators(exported)


def test_reads_every_form_of_custom_call():
    module = "\n".join([
        '%0 = stablehlo.custom_call @Sharding(%arg0) {mhlo.sharding = "{replicated}"} : (tensor<4xf32>) -> '
        'tensor<4xf32>',
        '%1 = "stablehlo.custom_call"(%0) <{api_version = 4 : i32, call_target_name = "ducc_fft"}> : '
        '(tensor<4xf32>) -> tensor<4xcomplex<f32>>',
        '%2 = stablehlo.custom_call @"__gpu$xla.gpu.triton"(%1) : (tensor<4xf32>) -> tensor<4xf32>',
    ])
    assert custom_call_targets(module) == ["Sharding", "ducc_fft", "__gpu$xla.gpu.triton"]
    with pytest.raises(AssertionError, match="4 custom calls, of which 3"):
        custom_call_targets(module + '\n%3 = "stablehlo.custom_call"(%2) : (tensor<4xf32>) -> tensor<4xf32>')


# The programs.

@functools.cache
def tiny_config(network: str, dtype: str = "float32"):
    """configs/tiny.py with `network` at ngf 4 and `dtype`, on 16×16 images and a 4-level ladder."""
    config = tiny.get_config()
    config.data.image_size = IMAGE_SIZE
    config.model.name = network
    config.model.ngf = 4
    config.model.dtype = dtype
    config.model.num_scales = 4
    config.training.batch_size = BATCH
    config.sampling.batch_size = BATCH
    config.sampling.n_steps_each = 1  # every step is one iteration of a scan: T does not change the program
    return config


@pytest.fixture(scope="module")
def mesh():
    return data_parallel.data_mesh()


@pytest.fixture(scope="module")
def key():
    return jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


@pytest.fixture(scope="module")
def abstract_states(mesh):
    """Per (network, dtype): the train state's shapes, dtypes and replicated shardings (nothing computed)."""
    return {(network, dtype): train_state.abstract_train_state(tiny_config(network, dtype), mesh)
            for network in NETWORKS for dtype in ("float32", "bfloat16")}


@pytest.fixture(scope="module")
def score_fns(abstract_states):
    """Per network: s(x, σ) with the EMA parameters, as `TrainState.score_fn` gives it, its network jitted.

    The sampler programs of one network then share one trace of the network (each traced its own, three
    times as long); the lowered operations are the same.
    """
    score_fns = {}
    for network in NETWORKS:
        score_fn = abstract_states[network, "float32"].score_fn()
        score_fns[network] = jax.tree_util.Partial(jax.jit(score_fn.func), *score_fn.args)
    return score_fns


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("network", NETWORKS)
def test_train_step(network, dtype, abstract_states, mesh, key):
    image_shape = (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
    batch = jax.ShapeDtypeStruct(image_shape, jnp.float32, sharding=data_parallel.batch_sharding(mesh))
    exported = export(train.train_step, abstract_states[network, dtype], batch, key)
    check_lowered_for_accelerators(exported)
    assert exported.nr_devices == mesh.devices.size


def _sampling_settings(network: str, method: str):
    """The method on the tiny ladder, or on a 3-level ρ-schedule of its ends where the method takes one."""
    settings = tiny_config(network).sampling.copy_and_resolve_references()
    settings.method = method
    if methods.get_method(method).any_levels:
        settings.schedule, settings.num_levels = "rho", 3
    config_checks.check_sampling(settings, train_state.noise_levels(tiny_config(network)))
    return settings


@pytest.mark.parametrize("method", methods.METHODS)
@pytest.mark.parametrize("network", NETWORKS)
def test_sample(network, method, score_fns, mesh, key):
    settings = _sampling_settings(network, method)
    sigmas = train_state.noise_levels(tiny_config(network))
    levels, epsilon = methods.ladder_and_step_lr(sigmas, settings)
    shape = (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)

    def draw_batch(score_fn, batch_key, sigmas, levels):  # one batch of sharded.sample_batches
        x_init = sharded._sharded_initial_state(
            method, jax.random.fold_in(batch_key, 0), shape, data_parallel.batch_sharding(mesh), sigmas[0])
        return methods.run(score_fn, jax.random.fold_in(batch_key, 1), x_init, levels, epsilon, settings)

    exported = export(jax.jit(draw_batch), score_fns[network], key, sigmas, levels)
    check_lowered_for_accelerators(exported)
    assert exported.nr_devices == mesh.devices.size


@pytest.mark.parametrize("method", methods.INPAINTING_METHODS)
@pytest.mark.parametrize("network", NETWORKS)
def test_inpaint(network, method, score_fns, mesh, key):
    settings = _sampling_settings(network, method)
    sigmas = train_state.noise_levels(tiny_config(network))
    shape = (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
    references = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=data_parallel.batch_sharding(mesh))
    mask = sharded.half_mask(IMAGE_SIZE, 3)

    def inpaint(score_fn, rng, references, mask, sigmas):  # the device work of sharded.inpaint
        x_init = sharded._sharded_initial_state(
            method, jax.random.fold_in(rng, 0), shape, data_parallel.batch_sharding(mesh), sigmas[0])
        return methods.inpaint(score_fn, jax.random.fold_in(rng, 1), x_init, references, mask, sigmas,
                               settings)

    exported = export(jax.jit(inpaint), score_fns[network], key, references, mask, sigmas)
    check_lowered_for_accelerators(exported)
    assert exported.nr_devices == mesh.devices.size


@pytest.mark.parametrize("network", NETWORKS)
def test_interpolate(network, score_fns, mesh, key):
    settings = _sampling_settings(network, "ald")
    n_interpolations = 2
    x_init = jax.ShapeDtypeStruct((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32,
                                  sharding=data_parallel.batch_sharding(mesh))

    def interpolate(score_fn, rng, x_init, sigmas):  # the sampler of sharded.interpolate
        return langevin.annealed_langevin_interpolation(
            score_fn, rng, x_init, sigmas, n_steps_each=settings.n_steps_each, step_lr=settings.step_lr,
            n_interpolations=n_interpolations).samples

    sigmas = train_state.noise_levels(tiny_config(network))
    exported = export(jax.jit(interpolate), score_fns[network], key, x_init, sigmas)
    check_lowered_for_accelerators(exported)
    assert exported.nr_devices == mesh.devices.size


def test_fid_inception():
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(inception.FIDInception().init, jax.random.key(0), images)
    check_lowered_for_accelerators(export(inception._features, variables, images))


def test_digit_classifier():
    images = jax.ShapeDtypeStruct((2, *digits.IMAGE_SHAPE), jnp.float32)
    model = digits.DigitClassifier()
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]

    def features(params, images):  # the function of digits.make_digit_feature_fn
        return model.apply({"params": params}, images)

    check_lowered_for_accelerators(export(jax.jit(features), params, images))
