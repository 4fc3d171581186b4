"""The host-ceiling benchmark runs the real training loop on the data it makes, and reports what it says.

CIFAR-10 at batch 8 (TFDS's own builder on made-up photographs, nothing downloaded), a few steps on 1 and
2 cores (1 only where the process may use one core).
"""
import importlib.util
import json
import os
import pathlib

import pytest

from configs import cifar10
from ncsn_jax.models import flops
from ncsn_jax.models import get_model

REPO = pathlib.Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location("host_ceiling", REPO / "benchmarks" / "host_ceiling.py")
host_ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_ceiling)

WARMUP, STEPS, BATCH = 2, 60, 8  # 60 steps: the workers take several of /proc's 10-ms CPU ticks in the window


def test_projection_is_amdahls_law_through_the_two_measurements():
    assert host_ceiling.project_ceiling(100.0, 200.0) == pytest.approx(800.0)  # perfect scaling: 8 × T1
    assert host_ceiling.project_ceiling(100.0, 100.0) == pytest.approx(100.0)  # none: T1
    assert host_ceiling.project_ceiling(100.0, 80.0) == pytest.approx(100.0)  # slower on 2: clipped to none
    # T2 = 1.5 T1: s = 1/3, and Amdahl's law through s gives 1.5 at 2 cores and 1 / (1/3 + 2/3 / 8) at 8.
    assert host_ceiling.project_ceiling(100.0, 150.0) == pytest.approx(100.0 / (1 / 3 + 2 / 3 / 8))


def test_projection_from_cpu_time_is_the_lower_of_the_serial_and_the_shared_bound():
    # 128 images a step; the training process 2 ms a step, 20 ms in all: 8 cores do 8 / 20 ms = 400
    # steps/s, under the serial 500; with 4 ms serial out of 20, the serial bound (250) binds.
    assert host_ceiling.project_from_cpu_time(128, 0.002, 0.020) == pytest.approx(128 * 400)
    assert host_ceiling.project_from_cpu_time(128, 0.004, 0.020) == pytest.approx(128 * 250)


def test_host_ceiling_runs_the_loop_on_its_data_and_writes_the_fields(tmp_path):
    cores = "1,2" if len(os.sched_getaffinity(0)) >= 2 else "1"
    out = tmp_path / "host_ceiling.json"
    host_ceiling.main(["--configs", "cifar10", "--cores", cores, "--steps", str(STEPS), "--warmup_steps",
                       str(WARMUP), "--repeats", "2", "--pipeline_batches", "2", "--num_images", "48", "--batch_size", str(BATCH),
                       "--out", str(out), "--log", str(tmp_path / "children.log")])
    (row,) = json.loads(out.read_text())
    assert row["config"] == "configs/cifar10.py" and row["batch_size"] == BATCH

    # The demand is the formula on the network's FLOPs, counted here again and against the
    # issue's table (19.8 GFLOP per image, about 8,300 images/s).
    config = cifar10.get_config()
    model = get_model(config)
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    sigma = jax.ShapeDtypeStruct((1,), jnp.float32)
    forward = flops.count_flops(model.apply, jax.eval_shape(model.init, jax.random.key(0), x, sigma), x, sigma).total
    assert forward / 1e9 == pytest.approx(19.8, rel=0.01)
    assert row["h100_demand_images_per_s"] == pytest.approx(0.5 * 989e12 / (3 * forward), rel=1e-9)
    assert row["h100_demand_images_per_s"] == pytest.approx(8_300, rel=0.01)

    for n in map(int, cores.split(",")):
        measured = row[f"cores_{n}"]
        assert measured["cores"] == measured["decoding_processes"] == n  # a decoding process per pinned core
        loop = measured["loop"]
        # the warmup lasted to the first test loss, so both splits' workers were there, and they did the decoding
        assert loop["warmup_steps"] == max(WARMUP, cifar10.get_config().training.eval_freq)
        assert loop["child_processes"] == 2 * n and loop["decoding_processes_cpu_s_per_step"] > 0
        # the loop called the step once per step it ran, and fed it a new batch each time
        assert loop["step_calls"] == loop["warmup_steps"] + STEPS + 1
        # two runs of the loop, and the one kept is the lower middle one, i.e. the slower of two
        assert len(measured["loop_images_per_s_repeats"]) == 2
        assert loop["images_per_s"] == min(measured["loop_images_per_s_repeats"])
        assert loop["distinct_batches"] >= STEPS
        assert loop["images_per_s"] == pytest.approx(loop["steps_per_s"] * BATCH)
        assert row[f"images_per_s_{n}_cores"] == loop["images_per_s"] > 0
        assert row[f"cpu_s_per_step_{n}_cores"] == loop["cpu_s_per_step"] > 0
        assert measured["pipeline"]["images_per_s"] > 0
    fed_once = row["cores_1"]["loop_without_decoding"]
    assert fed_once["step_calls"] == fed_once["warmup_steps"] + STEPS + 1 and fed_once["distinct_batches"] == 1
    assert row["loop_host_ms_per_step"] == fed_once["ms_per_step"] > 0
    assert set(row["cores_1"]["stages"]) == {"read_ms", "decode_ms", "resize_crop_ms", "flip_to_float_ms"}
    if cores == "1,2":
        ceiling = host_ceiling.project_ceiling(row["images_per_s_1_cores"], row["images_per_s_2_cores"])
        assert row["ceiling_images_per_s_8_cores"] == pytest.approx(ceiling)
        assert row["ceiling_over_demand"] == pytest.approx(ceiling / row["h100_demand_images_per_s"])
        assert row["at_least_twice_demand"] == (ceiling >= 2 * row["h100_demand_images_per_s"])
        loop = row["cores_2"]["loop"]
        assert row["ceiling_images_per_s_8_cores_from_cpu_time"] == pytest.approx(host_ceiling.project_from_cpu_time(
            BATCH, loop["training_process_cpu_s_per_step"], loop["cpu_s_per_step"]))
