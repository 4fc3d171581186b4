"""The accelerator benchmark runs end to end (on CPU, tiny settings) and reports consistent numbers."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import default
from ncsn_jax.sampling import methods

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



def test_sampler_quality_benchmark_on_the_mixture(tmp_path):
    out = tmp_path / "mixture"
    args = [sys.executable, "benchmarks/sampler_quality.py", "--mixture", "--grid", "quick", "--num_samples", "64",
            "--seeds", "2", "--out", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {row["setting"]: row for row in report["rows"]}
    assert list(rows) == ["ald T=2", "cas T=1", "cas T=1 ε×4", "pc corrector=1 stride=2", "ode stride=2",
                          "ancestral N=12 ρ=7", "dpm_solver_2m_sde N=12 ρ=7", "edm N=6 ρ=7"]
    # The mixture's ladder by techniques 1 and 2 has 32 levels; stride 2 keeps ⌈31/2⌉ + 1 = 17.
    assert [row["evaluations"] for row in rows.values()] == [32 * 2 + 1, 32 + 1, 32 + 1, 17 * 2, 2 * 16 + 1,
                                                               12, 12, 2 * 5 + 1]
    # The cheapest setting whose mean is at most ald's worst seed, with the flags that select it.
    fastest, worst_ald = report["fastest_matching_ald"], max(rows["ald T=2"]["per_seed"])
    assert rows[fastest["setting"]]["mean"] <= worst_ald
    assert all(row["mean"] > worst_ald for row in rows.values() if row["evaluations"] < fastest["evaluations"])
    selected = default.get_default_config().sampling
    selected.update_from_flattened_dict({key.removeprefix("sampling."): value
                                         for key, value in fastest["overrides"].items()})
    assert methods.score_evaluations(32, selected) == fastest["evaluations"]
    for key in fastest["overrides"]:
        assert selected[key.removeprefix("sampling.")] == rows[fastest["setting"]]["settings"][key.removeprefix("sampling.")]
    assert rows["cas T=1 ε×4"]["settings"]["step_lr"] == pytest.approx(4 * rows["cas T=1"]["settings"]["step_lr"])
    for row in rows.values():
        assert len(row["per_seed"]) == 2 and row["mean"] == pytest.approx(sum(row["per_seed"]) / 2)
        assert len(set(row["per_seed"])) == 2  # two seeds, two sample sets
    # The exact score makes the ODE nearly exact (its W1 is the sampling error of 4,096 pixels and the
    # solver's); two Langevin steps per level on this coarse ladder are far off.
    assert rows["ode stride=2"]["mean"] < 0.2 < rows["ald T=2"]["mean"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert report["seed_indices"] == [0, 1]

    # A later run that adds seeds (--first_seed) draws them as a run with more seeds would have: its
    # seed 1 of the second setting (--only 1) is the first run's second seed of it, bit for bit.
    later = tmp_path / "later"
    args = [sys.executable, "benchmarks/sampler_quality.py", "--mixture", "--grid", "quick", "--num_samples", "64",
            "--only", "1", "--first_seed", "1", "--seeds", "1", "--out", str(later)]
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    later_report = json.loads(later.with_suffix(".json").read_text())
    assert later_report["seed_indices"] == [1]
    [row] = later_report["rows"]
    assert row["setting"] == "cas T=1" and row["per_seed"] == [rows["cas T=1"]["per_seed"][1]]

    # Joining the first run's seed 0 with the later run's seed 1 (--merge) gives the two-seed run's row.
    first_seed_only = tmp_path / "first_seed_only.json"
    first_seed_only.write_text(json.dumps({**report, "seed_indices": [0], "rows": [
        {**row, "per_seed": row["per_seed"][:1], "all_scores": row["all_scores"][:1], "seed_indices": [0]}
        for row in report["rows"]]}))
    joined = tmp_path / "joined"
    args = [sys.executable, "benchmarks/sampler_quality.py", "--merge",
            f"{later.with_suffix('.json')},{first_seed_only}", "--out", str(joined)]
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    joined_report = json.loads(joined.with_suffix(".json").read_text())
    joined_rows = {row["setting"]: row for row in joined_report["rows"]}
    assert list(joined_rows) == ["cas T=1", "ald T=2", "cas T=1 ε×4", "pc corrector=1 stride=2", "ode stride=2",
                                 "ancestral N=12 ρ=7", "dpm_solver_2m_sde N=12 ρ=7", "edm N=6 ρ=7"]
    assert joined_rows["cas T=1"]["seed_indices"] == [0, 1]
    assert joined_rows["cas T=1"]["per_seed"] == rows["cas T=1"]["per_seed"]
    assert joined_rows["cas T=1"]["mean"] == pytest.approx(rows["cas T=1"]["mean"])
    assert joined_rows["ode stride=2"]["per_seed"] == rows["ode stride=2"]["per_seed"][:1]
    assert joined_rows["cas T=1"]["seconds"] == min(row["seconds"], rows["cas T=1"]["seconds"])
    assert joined_report["seed_indices"] == [0, 1] and joined.with_suffix(".png").exists()
    # A seed in two of the reports is refused, not counted twice.
    args[3] = f"{out.with_suffix('.json')},{later.with_suffix('.json')}"
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "seeds [1] are in more than one report" in run.stderr
