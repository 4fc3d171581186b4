"""The command line's error model: every user error is one `error:` line and exit code 1, no traceback;
anything else keeps its traceback."""
import logging
import re
import shlex
import shutil
import subprocess
import sys

import jax
import pytest
from ml_collections import config_flags

import configs
from configs import mnist
from ncsn_jax import cli, train_state
from ncsn_jax.errors import UserError, WorkdirError
from ncsn_jax.modes import Options, prepare, sample, stats, sweep, train, tune
from ncsn_jax.run import checkpoints
from tests.test_main import REPO, command, tiny_mnist


def run_args(args, **kwargs):
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kwargs)


def assert_one_error_line(result, *fragments):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [last]
    for fragment in fragments:
        assert fragment in last, last


def test_a_missing_config_file(tmp_path):
    result = run_args(["--config", "configs/nope.py", "--workdir", str(tmp_path), "--mode", "train"])
    assert_one_error_line(result, "--config", "No such file or directory", "configs/nope.py")


def parsed_config(monkeypatch, *args):
    """--config as main.py parses `args`: the config, and the name that the default workdir is made of."""
    argv = ["main.py", *args]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the --config.* overrides from sys.argv
    cli.FLAGS(argv)
    try:
        return cli.FLAGS.config, config_flags.get_config_filename(cli.FLAGS["config"])
    finally:
        cli.FLAGS.unparse_flags()
        for override in [name for name in cli.FLAGS if name.startswith("config.")]:
            delattr(cli.FLAGS, override)  # each parse defines its overrides' flags anew


@pytest.mark.parametrize("argument", ["mnist", "configs/mnist.py", str(REPO / "configs" / "mnist.py")])
def test_a_config_by_name_or_by_path_is_the_shipped_config(monkeypatch, argument):
    config, config_file = parsed_config(monkeypatch, "--config", argument, "--config.training.n_iters=7")
    expected = mnist.get_config()
    expected.training.n_iters = 7
    assert config.to_dict() == expected.to_dict() and config.is_locked
    assert config_file == argument and cli.resolve_workdir(None, "train", config_file) == "runs/mnist"


def test_a_copy_of_a_shipped_config_elsewhere_loads_by_its_path(monkeypatch, tmp_path):
    # Its relative imports reach the shipped configs, as they do from configs/.
    (tmp_path / "my_tower.py").write_text((REPO / "configs" / "tower.py").read_text().replace(
        'config.data.dataset = "tower"', 'config.data.dataset = "church_outdoor"'))
    config, config_file = parsed_config(monkeypatch, "--config", str(tmp_path / "my_tower.py"))
    assert config.data.dataset == "church_outdoor" and config.model.num_scales == 1086  # bedroom's ladder
    assert cli.resolve_workdir(None, "sample", config_file) == "runs/my_tower"


@pytest.mark.parametrize("content, fragments", [
    (None, ["a folder, not a config file", "mnist, tiny"]),
    ("def get_config(:\n", ["SyntaxError", "line 1"]),
    ('"""Settings, but no get_config."""\nbatch_size = 8\n', ["defines no get_config()"]),
    ("from .default import get_default_config\n\n\ndef get_config():\n    return get_default_config().nope\n",
     ["get_config() failed", "AttributeError", "nope", "line 5"]),
])
def test_a_config_that_cannot_be_loaded_is_one_error_line_naming_the_file(tmp_path, content, fragments):
    path = tmp_path / ("a_folder" if content is None else "bad.py")
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    result = run_args(["--config", str(path), "--mode", "tune"])
    assert_one_error_line(result, f"--config {path}: ", *fragments)


def test_an_unknown_config_name_lists_the_shipped_ones():
    result = run_args(["--config", "mnsit", "--mode", "tune"])
    assert_one_error_line(result, "--config mnsit: no config of that name", ", ".join(configs.names()))
    assert configs.names() == sorted(path.stem for path in (REPO / "configs").glob("*.py")
                                     if path.stem not in ("__init__", "default"))


def test_python_dash_m_runs_the_command_line_and_its_entry_module_imports_nothing_heavy():
    # Worker processes started with "spawn" import the main script's module again: it must be cheap.
    probe = ("import sys, ncsn_jax.__main__; "
             "print([m for m in ('jax', 'flax', 'absl', 'ml_collections', 'ncsn_jax.cli') if m in sys.modules])")
    imported = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "[]", imported.stderr[-3000:]
    result = subprocess.run([sys.executable, "-m", "ncsn_jax", "--config", "configs/nope.py"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert_one_error_line(result, "--config configs/nope.py: No such file or directory")


def test_the_modes_are_the_tables_and_each_dispatches_to_its_entry_point(monkeypatch, tmp_path, capsys):
    assert cli.MODES == {"train": train.run, "sample": sample.run, "inpaint": sample.run, "interpolate": sample.run,
                         "tune": tune.run, "stats": stats.run, "eval": sweep.run, "prepare": prepare.run}
    assert cli.FLAGS["mode"].parser.enum_values == list(cli.MODES)
    calls = []

    def recorder(name):
        return lambda config, workdir, options: calls.append((name, workdir, options))

    for mode in ("train", *sample.MODES, "stats", "eval"):
        monkeypatch.setitem(cli.MODES, mode, recorder(mode))
    # tune and prepare run their own entry points, which print what the library returns.
    monkeypatch.setattr(tune, "tune", lambda config: "tuned")
    monkeypatch.setattr(tune, "report", lambda tuned, config: f"report of {tuned}")
    monkeypatch.setattr(prepare, "prepare", lambda config: "prepared")
    workdir = str(tmp_path)
    for mode in cli.MODES:
        cli.run(tiny_mnist(), workdir, mode, checkpoint_step=3, official_checkpoint="official.pth")
    assert calls == [(mode, workdir, Options(mode, 3, "official.pth"))
                     for mode in ("train", *sample.MODES, "stats", "eval")]
    assert capsys.readouterr().out == "report of tuned\nprepared\n"


def test_a_misspelt_config_field(tmp_path):
    result = run_args(["--config", "configs/mnist.py", "--workdir", str(tmp_path), "--config.training.batchsize=8"])
    assert_one_error_line(result, "batchsize", 'Did you mean "batch_size"')


def test_a_bad_flag_value(tmp_path):
    result = run_args(["--config", "configs/mnist.py", "--workdir", str(tmp_path), "--config.training.batch_size=x"])
    assert_one_error_line(result, "--config.training.batch_size=x")


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("place", ["/proc/ncsn_jax_test/run", "a_file/run"], ids=["pseudo_file_system", "under_a_file"])
def test_a_workdir_the_system_will_not_create_is_one_error_line(tmp_path, place):
    (tmp_path / "a_file").write_text("not a folder")
    workdir = place if place.startswith("/") else str(tmp_path / place)
    result = run_args(["--config", "mnist", "--workdir", workdir])
    assert_one_error_line(result, f"--workdir {workdir} cannot be written here")


@pytest.mark.skipif(not shutil.which("unshare") or not _can_mount_tmpfs(),
                    reason="needs a private tmpfs (unshare --mount --map-root-user)")
def test_a_workdir_on_a_read_only_file_system_is_one_error_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    args = [sys.executable, "main.py", "--config", "mnist", "--workdir", str(disk / "run")]
    script = f"mount -t tmpfs -o ro tmpfs {disk} && cd {REPO} && exec " + " ".join(shlex.quote(arg) for arg in args)
    result = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], capture_output=True,
                            text=True, timeout=300)
    assert_one_error_line(result, "cannot be written here", "Read-only file system")


def test_a_stray_argument_is_one_error_line(tmp_path):
    result = run_args(["--config", "mnist", "--workdir", str(tmp_path), "sample"])
    assert_one_error_line(result, "unexpected arguments: sample", "--help")


def test_help_lists_the_modes_and_the_programs_flags():
    result = run_args(["--help"])  # absl's help exits with 1, after printing it to stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "<" + "|".join(cli.MODES) + ">" in result.stdout
    for name in ("--config", "--config.<field>=<value>", "--mode", "--workdir", "--checkpoint_step",
                 "--official_checkpoint", "--[no]multihost"):
        assert name in result.stdout, name


def test_a_workdir_that_is_a_file(tmp_path):
    workdir = tmp_path / "a_file"
    workdir.write_text("not a folder")
    args, env = command(workdir)
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_one_error_line(result, str(workdir), "is a file, not a folder")
    assert workdir.read_text() == "not a folder"


def test_a_workdir_on_object_storage_that_orbax_cannot_write_is_refused_before_anything_runs():
    # Orbax builds checkpoint specs for gs:// and local paths only: an s3:// run would fail at its first save.
    with pytest.raises(WorkdirError, match=r"--workdir s3://bucket/run: a workdir is a local path or a gs://"):
        cli.check_workdir("s3://bucket/run")


def test_only_unreadable_checkpoints(tmp_path):
    config = tiny_mnist()
    with checkpoints.Checkpointer(tmp_path / "checkpoints", async_save=False) as checkpointer:
        checkpointer.save(3, train_state.create_train_state(config, jax.random.key(0)).replace(
            step=jax.numpy.asarray(3, jax.numpy.int32)))
    for data_file in (tmp_path / "checkpoints" / "3").rglob("*"):
        if data_file.is_file() and data_file.parent.name == "d":
            data_file.write_bytes(b"")
    args, env = command(tmp_path, mode="sample")
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_one_error_line(result, "none of the checkpoints", "steps [3]")


def test_missing_fid_weights(tmp_path):
    # CIFAR-10 features are the FID Inception's; with no weights at the path given (and no network) the
    # statistics cannot be computed.
    result = run_args(["--config", "configs/tiny.py", "--workdir", str(tmp_path), "--mode", "stats",
                       f"--config.eval.inception_path={tmp_path / 'absent.pth'}"])
    assert_one_error_line(result, "no FID Inception weights at", "absent.pth")


def test_a_non_finite_loss(tmp_path):
    args, env = command(tmp_path, **{"optim.lr": 1e30, "training.n_iters": 4, "training.log_freq": 2})
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_one_error_line(result, "the training loss is", "Lower --config.optim.lr")


def test_only_user_errors_are_shortened(monkeypatch, capsys):
    cli.FLAGS(["main.py", "--config", str(REPO / "configs" / "tiny.py")])
    try:
        def user_error(*args):
            raise UserError("what to do")

        monkeypatch.setattr(cli, "run", user_error)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["main.py"])
        assert exit_info.value.code == 1 and capsys.readouterr().err == "error: what to do\n"

        def bug(*args):
            raise ValueError("a bug")

        # A ValueError from inside the library is a bug: it propagates, and absl prints its traceback.
        monkeypatch.setattr(cli, "run", bug)
        with pytest.raises(ValueError, match="a bug"):
            cli.main(["main.py"])
    finally:
        cli.FLAGS.unparse_flags()


def test_every_mode_needs_a_workdir_but_tune():
    with pytest.raises(UserError, match="--workdir is required for --mode sample"):
        cli.run(tiny_mnist(), None, "sample")


def test_every_mode_that_needs_a_workdir_defaults_to_runs_and_the_config_name(monkeypatch, caplog):
    workdirs = {}
    monkeypatch.setattr(cli, "run", lambda config, workdir, mode, *args: workdirs.setdefault(mode, workdir))
    for mode in cli.MODES:
        for workdir in ([], ["--workdir", "elsewhere"]):
            cli.FLAGS(["main.py", "--config", str(REPO / "configs" / "tiny.py"), "--mode", mode, *workdir])
            caplog.set_level(logging.INFO, logger="absl")  # after parsing, which sets absl's level from its flags
            try:
                cli.main(["main.py"])
            finally:
                cli.FLAGS.unparse_flags()
            assert workdirs.pop(mode) == ("elsewhere" if workdir else None if mode in ("tune", "prepare")
                                          else "runs/tiny")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("workdir: ")]
    assert said == [f"workdir: runs/tiny (the default for --config {REPO}/configs/tiny.py; set --workdir to choose "
                    "another)"] * (len(cli.MODES) - 2)


def test_the_users_command_trains_without_a_workdir(tmp_path):
    # As the README writes it, from a folder of the user's: the run lands in runs/mnist there, and the log
    # says so first.
    args, env = command("unused", **{"training.n_iters": 2, "training.log_freq": 2, "training.eval_freq": 100,
                                     "training.snapshot_freq": 2, "training.snapshot_samples": 0})
    del args[args.index("--workdir"):args.index("--workdir") + 2]
    args[1:4] = [str(REPO / "main.py"), "--config", str(REPO / "configs" / "mnist.py")]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [line for line in result.stderr.splitlines() if re.match(r"[IWEF]\d{4} ", line)]
    assert log[0].endswith(f"] workdir: runs/mnist (the default for --config {REPO}/configs/mnist.py; set "
                           "--workdir to choose another)"), log[:3]
    assert (tmp_path / "runs" / "mnist" / "checkpoints" / "2").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.skipif(not shutil.which("unshare") or not _can_mount_tmpfs(),
                    reason="needs a private tmpfs (unshare --mount --map-root-user)")
def test_a_full_disk_keeps_the_last_good_checkpoint_and_the_rerun_resumes(tmp_path):
    # On a private tmpfs, once checkpoint 2 is complete a file fills the disk, so the next write (a log
    # line or checkpoint 4) fails; then the file is deleted, as a user makes room, and the same command
    # resumes from checkpoint 2.
    disk = tmp_path / "disk"
    disk.mkdir()
    args, env = command(disk / "w", **{"training.n_iters": 12, "training.snapshot_freq": 2,
                                       "training.snapshot_samples": 0})
    train = " ".join(shlex.quote(arg) for arg in args)
    script = f"""
        mount -t tmpfs -o size=64m tmpfs {disk} && cd {REPO} || exit 1
        {train} 2> {tmp_path / 'first.log'} & pid=$!
        while [ ! -d {disk / 'w' / 'checkpoints' / '2'} ] && kill -0 $pid 2>/dev/null; do sleep 0.1; done
        dd if=/dev/zero of={disk / 'filler'} bs=1M 2>/dev/null
        wait $pid; echo $? > {tmp_path / 'first.rc'}
        rm {disk / 'filler'}
        {train} 2> {tmp_path / 'second.log'}; echo $? > {tmp_path / 'second.rc'}
        ls {disk / 'w' / 'checkpoints'} > {tmp_path / 'steps'}
    """
    subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], env=env, timeout=900, check=True)
    first = subprocess.CompletedProcess(args, int((tmp_path / "first.rc").read_text()),
                                        stderr=(tmp_path / "first.log").read_text())
    assert_one_error_line(first, "run the same command again to resume")
    assert "no space left on" in first.stderr.strip().splitlines()[-1].lower()
    second = (tmp_path / "second.log").read_text()
    assert int((tmp_path / "second.rc").read_text()) == 0, second[-3000:]
    resumed_from = int(second.split("resuming from step ")[1].split()[0])
    assert resumed_from >= 2 and resumed_from % 2 == 0
    # A checkpoint is logged as saved only once it is on disk: never the one whose write failed.
    reported = [int(line.split("saved checkpoint ")[1].split()[0]) for line in first.stderr.splitlines()
                if "saved checkpoint " in line]
    assert 2 in reported and max(reported) <= resumed_from
    assert "12" in (tmp_path / "steps").read_text().split()
