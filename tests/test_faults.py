"""Faults a long run meets: SIGTERM and Ctrl-C, a changed config on resume, replayed log lines, a grid a kill
skipped, and saves reported only once they are on disk."""
import json
import logging
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from ncsn_jax import checkpoints, train
from ncsn_jax.errors import CheckpointMismatchError
from tests.test_main import REPO, command, run_main, tiny_mnist


def logged_steps(workdir: pathlib.Path, name: str = "train/loss") -> list[int]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if name in line]


def saved_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_reached_and_the_rerun_resumes_from_it(tmp_path, signal_number, exit_code):
    # No snapshot would come before step 1000: whatever is saved, the signal saved.
    workdir = tmp_path / "w"
    args, env = command(workdir, **{"training.n_iters": 1000, "training.snapshot_freq": 1000,
                                    "training.log_freq": 1, "training.snapshot_samples": 0})
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if (workdir / "metrics.jsonl").exists() and len(logged_steps(workdir)) >= 3:
                break
            time.sleep(0.2)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [step] = saved_steps(workdir)
    assert step >= 3 and logged_steps(workdir)[-1] == step
    name = signal.Signals(signal_number).name
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by {name} after step {step}: saved checkpoint {step} in {workdir / 'checkpoints'}; "
        "run the same command to resume")

    if signal_number == signal.SIGTERM:  # the rerun (the same for both signals)
        result = run_main(workdir, **{"training.n_iters": step + 2, "training.snapshot_freq": 1000,
                                      "training.log_freq": 1, "training.snapshot_samples": 0})
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"resuming from step {step}" in result.stderr
        assert logged_steps(workdir) == list(range(1, step + 3))


def test_resuming_with_another_input_size_or_ladder_is_refused_naming_each_field(tmp_path):
    config = tiny_mnist(**{"training.n_iters": 3, "training.snapshot_samples": 0})
    train.train_and_evaluate(config, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["data"]["image_size"] == 28

    changed = tiny_mnist(**{"training.n_iters": 6, "data.image_size": 8, "model.sigma_begin": 20.0})
    with pytest.raises(CheckpointMismatchError) as error:
        train.train_and_evaluate(changed, str(tmp_path))
    message = str(error.value)
    assert "data.image_size 28 there, 8 here" in message and "model.sigma_begin 16.0 there, 20.0 here" in message
    assert "\n" not in message and "ngf" not in message and saved_steps(tmp_path) == [3]

    # Fields that leave the arrays' meaning alone may change: the run goes on.
    state = train.train_and_evaluate(tiny_mnist(**{"training.n_iters": 6, "training.batch_size": 4,
                                                   "optim.lr": 1e-3, "training.snapshot_samples": 0}), str(tmp_path))
    assert int(state.step) == 6


def test_a_resumed_run_replaces_replayed_log_lines_and_draws_the_grid_a_kill_skipped(tmp_path):
    config = tiny_mnist(**{"training.n_iters": 3, "training.log_freq": 1})
    train.train_and_evaluate(config, str(tmp_path))
    grid = tmp_path / "samples" / "samples_0000003.png"
    drawn = np.asarray(Image.open(grid))
    # As a kill leaves it: steps 4 and 5 logged after checkpoint 3, the last line cut short, no grid 3.
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write('{"step": 4, "train/loss": 1.0}\n{"step": 5, "train/loss": 2.0}\n{"step": 6, "tra')
    grid.unlink()

    train.train_and_evaluate(tiny_mnist(**{"training.n_iters": 6, "training.log_freq": 1}), str(tmp_path))
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert logged_steps(tmp_path, "test/loss_ema") == [2, 4, 6]
    np.testing.assert_array_equal(np.asarray(Image.open(grid)), drawn)  # the same key: the same grid
    events = list((tmp_path / "tensorboard").iterdir())
    assert len(events) == 2  # the resumed writer's file starts with TensorBoard's purge marker


def test_a_save_is_reported_as_saved_only_once_it_is_on_disk(tmp_path, caplog):
    # The absl logger's own level: absl sets it from its flags once a program (another test) has parsed them.
    with caplog.at_level(logging.INFO, logger="absl"), checkpoints.Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(1, {"w": np.arange(3.0)})
        assert not [r for r in caplog.records if "saved checkpoint" in r.getMessage()]
        deadline = time.time() + 60
        while checkpointer.report_finished() is None and time.time() < deadline:
            time.sleep(0.01)
        assert checkpointer.all_steps() == [1]
        [record] = [r for r in caplog.records if "saved checkpoint" in r.getMessage()]
        assert record.getMessage() == f"saved checkpoint 1 in {tmp_path}"
        assert checkpointer.report_finished() is None  # reported once
