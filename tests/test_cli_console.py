"""The console of the `tfmarl` command: tfmarl's own lines only, the rest in run_dir/logs/."""

import io
import os
import re
import subprocess
import sys

import pytest
import yaml

from tfmarl.cli.console import QuietConsole, describe_failure, quiet_startup
from tfmarl.progress import PlainProgress, progress

# What the terminal must never show by default: third-party banners and TensorFlow's C++ logs.
NOISE = re.compile(r"cuda|onednn|gym|DeprecationWarning|SyntaxWarning|WARNING:tensorflow|WARNING: All log messages"
                   r"|^[EWI]0000", re.IGNORECASE | re.MULTILINE)
# A pipeline that runs every stage in seconds (as in tests/test_cli.py).
TINY = {
    "data": {"synthetic": {"n_users": 100, "n_items": 50, "interactions_per_user": 12},
             "features": {"title_length": 4, "text_vocabulary_size": 100}},
    "pretrain": {"dim": 8, "max_length": 8, "num_layers": 1, "epochs": 1, "batch_size": 64},
    "simulator": {"dim": 4, "session": {"slate_size": 3, "history_length": 5, "max_steps": 5}},
    "rl": {"candidates": 10, "steps": 8, "batch_size": 8, "multiagent": {"facets": 3, "domains": 2}},
    "evaluate": {"episodes": 16, "baselines": ["random", "greedy"]},
    "export": {"warmup": False},
}


def _tfmarl(*args, cwd):
    """Runs the command as a user would, output captured (not a terminal), with no CUDA device."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OPENBLAS_NUM_THREADS="1")
    for name in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS"):  # the user's shell, not the test runner's
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "tfmarl.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    config = dict(TINY, run_dir=str(root / "run"), export={"dir": str(root / "models"), "warmup": False})
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


@pytest.fixture(scope="module")
def quiet_run(tiny_config):
    root, path = tiny_config
    return _tfmarl("train", str(path), cwd=root)


@pytest.mark.slow
def test_a_captured_run_prints_only_tfmarls_lines(quiet_run, tiny_config):
    root, _ = tiny_config
    assert quiet_run.returncode == 0, quiet_run.stdout + quiet_run.stderr
    console = quiet_run.stdout + quiet_run.stderr
    assert not NOISE.findall(console), NOISE.findall(console)
    assert "\r" not in console  # no progress-bar fragments in a log
    for stage in ("data", "pretrain", "simulator", "rl", "evaluate", "export", "report"):
        assert f"== {stage}\n" in quiet_run.stdout
    assert "multi-agent: 8/8 steps (100%) in" in quiet_run.stdout  # the plain progress line
    assert "Simulated sessions, held-out users" in quiet_run.stdout
    # Said once, where the rest went; and the log holds what was kept off the terminal.
    logs = list((root / "run" / "logs").glob("train-*.log"))
    assert len(logs) == 1 and console.count(str(logs[0])) == 1
    assert NOISE.search(logs[0].read_text())
    assert len(console.splitlines()) < 60


@pytest.mark.slow
def test_verbose_shows_third_party_output(tiny_config):
    root, path = tiny_config
    result = _tfmarl("evaluate", str(path), "--verbose", cwd=root)  # reuses the finished stages
    assert result.returncode == 0, result.stderr
    assert NOISE.search(result.stderr)
    assert "--verbose shows them" not in result.stdout
    assert "== evaluate (finished earlier: loading)" in result.stdout


def test_a_bad_config_still_prints_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"encoderr": "gru"}, "run_dir": str(tmp_path / "run")}))
    result = _tfmarl("train", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"tfmarl: error: {path}: unknown config key 'pretrain.encoderr' (did you mean 'encoder'?)" in result.stderr
    assert result.stdout == "" and not (tmp_path / "run").exists()
    assert not NOISE.search(result.stdout + result.stderr)


def test_an_unexpected_error_shows_its_cause_and_the_log(tmp_path):
    console, before = QuietConsole("train"), _fd2()
    try:
        with console:
            assert _fd2() != before
            os.write(2, b"E0000 before the run directory is known\n")
            temporary = console.path
            assert console.keep_in(tmp_path / "logs").parent == tmp_path / "logs"
            assert not temporary.exists()
            print("a Python warning", file=sys.__stderr__, flush=True)  # pytest swapped sys.stderr: use fd 2's
            try:
                {}["missing"]
            except KeyError as e:
                raise RuntimeError("stage rl failed") from e
    except RuntimeError as error:
        console.record("the full traceback")
        text = describe_failure(error, console.path)
    assert text.startswith("tfmarl: error: RuntimeError: stage rl failed\n  caused by KeyError: 'missing'")
    assert "test_cli_console.py" in text and f"full traceback and third-party logs: {console.path}" in text
    assert _fd2() == before
    assert console.path.read_text() == ("E0000 before the run directory is known\na Python warning\n"
                                        "the full traceback\n")
    assert "--verbose shows them" in console.notice()
    verbose = QuietConsole("x", verbose=True)
    with verbose:
        assert verbose.keep_in(tmp_path / "other") is None
    assert verbose.notice() == "" and not (tmp_path / "other").exists()


def test_a_temporary_log_goes_away_unless_something_failed():
    console = QuietConsole("config")
    with console:
        temporary = console.path
        os.write(2, b"noise\n")
    assert not temporary.exists() and console.path is None
    failed = QuietConsole("config")
    with pytest.raises(ValueError):
        with failed:
            raise ValueError("unexpected")
    assert failed.path.read_text() == ""
    failed.discard()
    assert failed.path is None


def test_plain_progress_prints_every_tenth_and_when_done():
    out = io.StringIO()
    assert list(PlainProgress(range(100), description="rl", stream=out, clock=lambda: 0.0)) == list(range(100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10%, ..., 90%, then the final line
    assert lines[0] == "   rl: 10/100 steps (10%), 0.0 steps/s"
    assert lines[-1] == "   rl: 100/100 steps (100%) in 0s, 0.0 steps/s"


def test_plain_progress_resumes_and_prints_on_time():
    out, now = io.StringIO(), [0.0]

    def clock():
        now[0] += 10.0  # every item takes 10 s: a line once 30 s have passed
        return now[0]

    list(PlainProgress(range(40, 45), total=45, initial=40, stream=out, clock=clock, every_fraction=1.0))
    lines = out.getvalue().splitlines()
    assert lines == ["   43/45 steps (96%), 0.1 steps/s, 20s left", "   45/45 steps (100%) in 1m00s, 0.1 steps/s"]
    out, now = io.StringIO(), [0.0]
    list(PlainProgress(range(100), stream=out, clock=clock, every_seconds=35.0))  # 3.5 items per line
    positions = [int(line.split("/")[0]) for line in out.getvalue().splitlines()]
    assert positions[:4] == [4, 8, 12, 16] and positions[-1] == 100  # no 10 right after 8
    with pytest.raises(ValueError, match="every_fraction must be in"):
        PlainProgress(range(3), every_fraction=0)


def test_progress_picks_a_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress(range(3), enabled=False) == range(3)
    assert isinstance(progress(range(3), stream=io.StringIO()), PlainProgress)
    terminal = Terminal()
    assert list(progress(range(3), description="dqn", stream=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "dqn" in terminal.getvalue()


def test_epoch_lines_callback(capsys):
    import tensorflow as tf

    from tfmarl.progress import epoch_lines

    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = tf.zeros((4, 2))
    model.fit(x, tf.zeros((4, 1)), epochs=2, verbose=0, callbacks=[epoch_lines(2, metrics=("loss", "absent"))])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["   epoch 1/2", "   epoch 2/2"]
    assert re.fullmatch(r"   epoch 2/2: loss \d+\.\d{4} \(\d+s\)", lines[1])


def _fd2():
    stat = os.fstat(2)
    return stat.st_dev, stat.st_ino


def test_quiet_startup_writes_its_log_where_asked(tmp_path):
    before = _fd2()
    path = quiet_startup(tmp_path / "logs")
    assert path.parent == tmp_path / "logs" and path.name.startswith("startup-") and path.exists()
    assert _fd2() == before  # descriptor 2 restored
