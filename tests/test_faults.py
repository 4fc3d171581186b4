"""Faults a long run meets: SIGTERM and Ctrl-C, a changed config on resume, replayed log lines, a grid a kill
skipped, and saves reported only once they are on disk."""
import json
import logging
import pathlib
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from PIL import Image

from ncsn_jax import train_state
from ncsn_jax.errors import CheckpointMismatchError, WorkdirError
from ncsn_jax.modes import Options, train
from ncsn_jax.run import checkpoints, config_record
from ncsn_jax.runtime import data_parallel
from tests.test_main import REPO, command, tiny_mnist


def logged_steps(workdir: pathlib.Path, name: str = "train/loss") -> list[int]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if name in line]


def saved_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_ctrl_c_then_sigterm_save_the_step_reached_and_the_reruns_resume_from_it(tmp_path):
    # No snapshot comes before step 1000: whatever is saved, a signal saved. The same command three times:
    # stopped by Ctrl-C, resumed and stopped by SIGTERM, resumed to the end.
    workdir = tmp_path / "w"
    overrides = {"training.n_iters": 1000, "training.snapshot_freq": 1000, "training.log_freq": 1,
                 "training.snapshot_samples": 0}
    saved = []
    for signal_number, exit_code in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        args, env = command(workdir, **overrides)
        with open(tmp_path / "stderr", "w", encoding="utf-8") as log:  # a pipe could fill while we wait
            process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None:
                if (workdir / "metrics.jsonl").exists() and len(logged_steps(workdir)) >= len(saved) * 10 + 3:
                    break
                time.sleep(0.2)
            process.send_signal(signal_number)
            process.wait(timeout=120)
        finally:
            process.kill()
            process.wait()
        stderr = (tmp_path / "stderr").read_text()
        assert process.returncode == exit_code, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        [step] = [s for s in saved_steps(workdir) if s not in saved]
        assert logged_steps(workdir)[-1] == step
        if saved:
            assert f"resuming from step {saved[-1]}" in stderr
        assert stderr.strip().splitlines()[-1] == (
            f"stopped by {signal.Signals(signal_number).name} after step {step}: saved checkpoint {step} in "
            f"{workdir / 'checkpoints'}; run the same command to resume")
        saved.append(step)
    assert saved[1] > saved[0] >= 3
    assert logged_steps(workdir) == list(range(1, saved[1] + 1))  # every step logged once


def test_resuming_with_another_input_size_or_ladder_is_refused_naming_each_field(tmp_path):
    # The workdir as a run of `config` leaves it: its config.json and a checkpoint.
    config = tiny_mnist()
    config_record.save(config, str(tmp_path))
    with checkpoints.Checkpointer(tmp_path / "checkpoints") as checkpointer:
        checkpointer.save(3, train_state.init_train_state(config, jax.random.key(0), data_parallel.data_mesh()))

    changed = tiny_mnist(**{"data.image_size": 8, "model.sigma_begin": 20.0})
    with pytest.raises(CheckpointMismatchError) as error:
        train.run(changed, str(tmp_path), Options("train"))
    message = str(error.value)
    assert "data.image_size 28 there, 8 here" in message and "model.sigma_begin 16.0 there, 20.0 here" in message
    assert "\n" not in message and "ngf" not in message and saved_steps(tmp_path) == [3]
    # Fields that leave the arrays' meaning alone may change.
    config_record.check_same_arrays(tiny_mnist(**{"training.batch_size": 4, "optim.lr": 1e-3}), str(tmp_path))


@pytest.mark.parametrize("content", ["", "{\"data\": {\"image_si", "[1, 2]", "\udcff"], ids=["empty", "torn", "a list", "not text"])
def test_a_config_json_that_is_no_config_is_one_error_naming_it_and_the_checkpoints_stay(tmp_path, content):
    config = tiny_mnist()
    with checkpoints.Checkpointer(tmp_path / "checkpoints") as checkpointer:
        checkpointer.save(3, train_state.init_train_state(config, jax.random.key(0), data_parallel.data_mesh()))
    (tmp_path / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(WorkdirError, match=r"config.json is not the JSON config that training saves .*delete it"):
        train.run(config, str(tmp_path), Options("train"))
    assert saved_steps(tmp_path) == [3]


def test_a_resumed_run_replaces_replayed_log_lines_and_draws_the_grid_a_kill_skipped(tmp_path):
    config = tiny_mnist(**{"training.n_iters": 3, "training.log_freq": 1})
    train.run(config, str(tmp_path), Options("train"))
    grid = tmp_path / "samples" / "samples_0000003.png"
    drawn = np.asarray(Image.open(grid))
    # As a kill leaves it: steps 4 and 5 logged after checkpoint 3, the last line cut short, no grid 3.
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write('{"step": 4, "train/loss": 1.0}\n{"step": 5, "train/loss": 2.0}\n{"step": 6, "tra')
    grid.unlink()

    train.run(tiny_mnist(**{"training.n_iters": 6, "training.log_freq": 1}), str(tmp_path), Options("train"))
    assert json.loads((tmp_path / "config.json").read_text())["training"]["n_iters"] == 6  # this run's config
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
