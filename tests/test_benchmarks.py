"""The accelerator benchmark runs end to end (on CPU, tiny settings) and reports consistent numbers."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parent.parent


def test_accelerator_benchmark_on_cpu_with_tiny_settings():
    args = [sys.executable, "benchmarks/accelerator.py", "--config", "configs/tiny.py", "--batch_per_device", "2",
            "--sampling_batch_per_device", "2", "--steps", "1", "--sampler_levels", "2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    devices = result["device_count"]
    assert result["backend"] == "cpu" and devices == 4  # conftest's four fake CPU devices
    for dtype in ("float32", "bfloat16"):
        timing = result["training"][dtype]
        assert timing["images_per_s"] == pytest.approx(2 * devices / timing["step_s"], rel=1e-3)
        assert timing["mfu"] is None  # no peak for a CPU
        # model FLOPs/s = 3 forward passes per image at the counted forward cost
        expected = 3 * result["forward_gflops_per_image"] * 1e9 * timing["images_per_s_per_device"] / 1e12
        assert timing["train_tflops_per_s_per_device"] == pytest.approx(expected, rel=0.01, abs=1e-3)
    sampler = result["sampler"]
    assert sampler["score_evals_per_sample"] == 10 * 2 + 1  # configs/tiny.py: L = 10, T = 2
    hours = 50_000 * sampler["score_evals_per_sample"] / sampler["score_evals_per_s"] / 3600
    assert sampler["hours_for_50k_samples"] == pytest.approx(hours, rel=0.01)

