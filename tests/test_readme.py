"""Every ```python block of README.md runs against the code (issue #12), so none can drift from it.

The blocks run in README order in one shared namespace, as a reader would paste them: "Loading
data" defines ``ml``, "Pretrain, evaluate, export" ``model``, ``split`` and ``vocab``, the RL
sections ``user_model``, ``held_out``, ``marl``... Each block runs as written except for:

- ``PRELUDES``: the few names a block uses that the README never defines (its imports of
  ``np``, ``ContentAgent``...), executed in the namespace just before the block;
- ``SUBSTITUTIONS``: sizes scaled down and paths redirected to generated files and ``tmp_path``,
  as textual (old, new[, count]) pairs, each of which must match exactly (`substitute`), so a
  README edit that removes one fails here and the table gets updated;
- ``SETUP``: the files and the server a block reads (an ml-100k layout, a click log, an
  impression log, a text preset, a running `tfmarl.serving` gRPC server), made before it runs;
- ``CHECKS``: what a block must have produced, beyond running;
- ``SKIPPED``: the blocks that cannot run in a test, by name, with the reason.

A block's traceback points at its README line (the code is compiled as "README.md" at its own
line numbers). When a block fails, the blocks after it are skipped, naming the failed one.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import pathlib
import re
import sys
import types

import numpy as np
import pytest

from readme_snippets import (extract_blocks, leading_statements, substitute, write_click_log, write_impressions,
                             write_ml100k)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = extract_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]

# The README's python blocks, in order: (section, first line up to any "("). A new, moved or removed
# block fails test_the_readme_has_exactly_the_known_python_blocks until this list and the tables are updated.
EXPECTED_PYTHON_BLOCKS = [
    ("Loading data", "import tfmarl"),
    ("Pretrain, evaluate, export", "import tfmarl"),
    ("Text backbones", "from tfmarl.agents import ContentAgent"),
    ("New items and new users", "import numpy as np"),
    ("One interface for every algorithm", "from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes"),
    ("One interface for every algorithm", "from tfmarl.rl import linear_schedule"),
    ("One interface for every algorithm", "from tfmarl.evaluation import BanditLogWriter"),
    ("One interface for every algorithm", "import numpy as np"),
    ("Multi-agent training", "import numpy as np"),
    ("Evaluate a policy from your logs", "from tfmarl.data import load_bandit_feedback"),
    ("Distributed training", "import os"),
    ("gRPC", "import grpc"),
]
# Languages of the other fenced blocks (shell, config, JSON, diagrams): not executed here.
OTHER_LANGUAGES = {"", "bash", "yaml", "json"}

INTERFACE = "One interface for every algorithm"
DISTRIBUTED = ("Distributed training", 0)

SKIPPED = {
    DISTRIBUTED: "multi-machine: MultiWorkerMirrored needs a worker process on each host of TF_CONFIG "
                 "(host1, host2); tests/test_distributed.py runs it with two workers on 127.0.0.1. Only "
                 "its imports and its TF_CONFIG lines (cluster_spec, tf_config_for) run here.",
}

# Names the README uses but never defines, defined just before the block (kept small on purpose).
PRELUDES = {}  # every block defines or imports what it uses, or gets it from an earlier block

# Scaled-down sizes and redirected paths; "{name}" is filled from the block's setup values
# (`Runner.values`: tmp, ml_dir, clicks, catalog, preset, impressions, grpc_port).
CANDIDATES = "candidates=12"  # >= the default slate of 10 (SessionConfig.slate_size)
SUBSTITUTIONS = {
    ("Loading data", 0): [
        ('"path/to/ml-100k"', "{ml_dir!r}"),
        ('"clicks.parquet"', "{clicks!r}"),
        ('"catalog.csv"', "{catalog!r}"),
        ("n_users=20_000, n_items=5_000", "n_users=30, n_items=20"),
    ],
    ("Pretrain, evaluate, export", 0): [
        ('"path/to/ml-100k"', "{ml_dir!r}"),
        ('encoder="transformer")', 'encoder="transformer", dim=16, num_layers=1)'),
        ("epochs=40", "epochs=1"),
        ('"runs/', '"{tmp}/runs/'),
        ('"savedmodels/', '"{tmp}/savedmodels/'),
    ],
    ("Text backbones", 0): [
        ('"path/to/preset"', "{preset!r}"),
    ],
    ("New items and new users", 0): [
        ("id_dropout=0.8,", "dim=16, id_dropout=0.8,"),
        ("content_agent=content)", "content_agent=content, dim=16, num_layers=1)"),
        ("epochs=40", "epochs=1"),
        ('"savedmodels/', '"{tmp}/savedmodels/', 2),
    ],
    (INTERFACE, 0): [
        ("candidates=50, batch_size=64,", CANDIDATES + ", batch_size=4,"),
        ('"runs/', '"{tmp}/runs/', 2),
        (".train(1500)", ".train(22)"),           # 20 warm-up steps (the default), then 2 train steps
        ("batch_size=100,", "batch_size=4,"),
        ("policy, 500)", "policy, 4)"),
        ('"savedmodels/', '"{tmp}/savedmodels/'),
    ],
    (INTERFACE, 1): [
        ("candidates=50", CANDIDATES),
    ],
    (INTERFACE, 2): [
        ("candidates=50, batch_size=32,", CANDIDATES + ", batch_size=4,"),
        ('"runs/', '"{tmp}/runs/'),
        (".train(300)", ".train(3)"),
    ],
    (INTERFACE, 3): [
        ("candidates=100", CANDIDATES),
    ],
    ("Multi-agent training", 0): [
        ("candidates=100", CANDIDATES),
        ('get_strategy("mirrored")', 'get_strategy("cpu")'),  # one MirroredStrategy per process (conftest)
        ('"runs/', '"{tmp}/runs/', 2),
        (".train(1500)", ".train(22)"),
        ("marl.slate_policy(), 500)", "marl.slate_policy(), 4)"),
    ],
    ("Evaluate a policy from your logs", 0): [
        ('"impressions.csv"', "{impressions!r}"),
    ],
    ("gRPC", 0): [
        ('"localhost:8500"', '"127.0.0.1:{grpc_port}"'),
        ('"quickstart"', '"ml100k"'),             # the model the "Pretrain, evaluate, export" block exported
    ],
}


# --- setup: files and servers a block reads -------------------------------------------------------

def setup_movielens(runner):
    from tfmarl.data import generate_synthetic

    # 200 items, so the ids of the README's example histories ("50", "172", "133", "1") exist.
    synthetic = generate_synthetic(n_users=60, n_items=200, interactions_per_user=12, seed=0)
    ml_dir = runner.tmp / "ml-100k"
    runner.facts["ml"] = write_ml100k(ml_dir, synthetic)
    runner.facts["clicks"] = write_click_log(runner.tmp / "clicks.parquet", runner.tmp / "catalog.csv", synthetic)
    runner.synthetic = synthetic
    return {"ml_dir": str(ml_dir), "clicks": str(runner.tmp / "clicks.parquet"),
            "catalog": str(runner.tmp / "catalog.csv")}


def setup_preset(runner):
    from tfmarl.data import build_tiny_text_preset

    titles = [str(t) for t in runner.ns["ml"].items.title]
    return {"preset": build_tiny_text_preset(runner.tmp / "preset", titles, hidden_dim=16)}


def setup_impressions(runner):
    path = runner.tmp / "impressions.csv"
    runner.facts["impressions"] = write_impressions(path, runner.synthetic, slate_size=10, rounds=60)
    return {"impressions": str(path)}


def setup_grpc_server(runner):
    from tfmarl.serving import ModelServer

    server = ModelServer(runner.tmp / "savedmodels" / "ml100k", poll_seconds=0, grpc_port=0)
    server.start(port=0)
    runner.cleanups.append(server.stop)
    return {"grpc_port": server.grpc_port}


SETUP = {
    ("Loading data", 0): setup_movielens,
    ("Text backbones", 0): setup_preset,
    ("Evaluate a policy from your logs", 0): setup_impressions,
    ("gRPC", 0): setup_grpc_server,
}


# --- checks: what a block must have produced ---------------------------------------------------------

def check_loading(ns, runner):
    written = runner.facts["ml"]
    ml = ns["ml"]
    # print(ml) looks as the README's comment says: Interactions(name='ml-100k', interactions=..., users=..., ...)
    assert runner.printed[("Loading data", 0)].startswith(
        f"Interactions(name='ml-100k', interactions={written['interactions']}, users={written['users']}, ")
    assert ml.name == "ml-100k" and len(ml.log) == written["interactions"]
    assert ml.log.user_id.nunique() == written["users"] and len(ml.items) == written["items"]
    assert ml.items.title.iloc[0] == written["first_title"]  # u.item read as latin-1
    assert list(ml.log.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert len(ns["logs"].log) == runner.facts["clicks"]["interactions"]
    assert ns["logs"].items.loc["s1", "title"] == runner.synthetic.items.title.iloc[0]
    assert ns["synthetic"].log.user_id.nunique() == 30


def check_pretrain(ns, runner):
    printed = runner.printed[("Pretrain, evaluate, export", 0)].strip().splitlines()[-1]
    metrics = ast.literal_eval(printed)  # the README's comment names them
    assert {"hr@10", "ndcg@10", "mrr@10", "recall@10", "coverage@10"} <= set(metrics), printed
    assert 0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1
    assert ns["vocab"].size == runner.facts["ml"]["items"] + 2  # + padding and unknown
    assert (runner.tmp / "savedmodels" / "ml100k" / "1" / "saved_model.pb").is_file()
    assert list((runner.tmp / "runs" / "ml100k" / "tb").rglob("events.out.tfevents.*"))


def check_new_items(ns, runner):
    printed = [line for line in runner.printed[("New items and new users", 0)].strip().splitlines()
               if line.startswith("{") or line.startswith(str(runner.tmp))]  # not pretrain's progress lines
    assert len(printed) == 3, printed
    cold = ast.literal_eval(printed[0])
    assert {"all_catalog", "cold_only", "cold_items"} <= set(cold) and cold["cold_items"] == len(ns["cold"].cold_items)
    assert 0 <= cold["cold_only"]["ndcg@10"] <= 1
    buckets = ast.literal_eval(printed[1])
    assert list(buckets) == ["1", "2-5", "6-20", ">20"]
    version = runner.tmp / "savedmodels" / "ml100k-cold" / "2"
    assert printed[2] == str(version) and (version / "saved_model.pb").is_file()
    info = json.loads((version / "assets.extra" / "tfmarl.json").read_text())
    assert info["num_items"] == ns["vocab"].size + 1 and info["added_items"] == 1


def check_text(ns, runner):
    assert ns["text"].shape == (ns["vocab"].size, 16) and ns["text"].dtype == np.float32
    assert np.abs(ns["text"][2:]).sum(axis=1).min() > 0  # every real item got an embedding


def check_interface(ns, runner):
    assert ns["algorithm"].name == "dqn"
    assert np.isfinite(float(runner.printed[(INTERFACE, 0)].strip().splitlines()[-1]))  # the mean return
    assert (runner.tmp / "savedmodels" / "dqn" / "1" / "saved_model.pb").is_file()
    assert list((runner.tmp / "runs" / "dqn" / "ckpt").iterdir())


def check_bandit(ns, runner):
    ns["linucb"].ope_log.flush()
    assert ns["linucb"].ope_log.rows_written == 3 * 4  # 3 rounds of 4 sessions, each logged


def check_marl(ns, runner):
    assert ns["marl"].name == "multiagent" and ns["marl"].strategy.num_replicas_in_sync == 1
    assert np.isfinite(float(runner.printed[("Multi-agent training", 0)].strip().splitlines()[-1]))
    assert list((runner.tmp / "runs" / "marl" / "ckpt").iterdir())


def check_ope(ns, runner):
    rounds = runner.facts["impressions"]["rounds"]
    assert len(ns["log"]) == rounds
    for estimate in (ns["estimate"], ns["gain"]):
        assert np.isfinite(estimate.value)
    lines = runner.printed[("Evaluate a policy from your logs", 0)].splitlines()
    # as the README's comment: pseudo_inverse: 0.412 [0.391, 0.433] (se=0.011, n=100000, ess=...)
    assert re.match(rf"pseudo_inverse: \S+ \[\S+, \S+\] \(se=\S+, n={rounds}, ess=", lines[0]), lines[0]
    assert lines[1].startswith("pseudo_inverse − logging: "), lines[1]
    assert "AUC" in lines[2] and any(line.startswith("marl ") for line in lines), lines


def check_grpc(ns, runner):
    item_ids, scores = ns["item_ids"], ns["scores"]
    assert item_ids.shape == (2, 10) and item_ids.dtype == object and scores.shape == (2, 10)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert not {b"50", b"172", b"133"} & set(item_ids[0])  # history items are never recommended


CHECKS = {
    ("Loading data", 0): check_loading,
    ("Pretrain, evaluate, export", 0): check_pretrain,
    ("Text backbones", 0): check_text,
    ("New items and new users", 0): check_new_items,
    (INTERFACE, 0): check_interface,
    (INTERFACE, 2): check_bandit,
    ("Multi-agent training", 0): check_marl,
    ("Evaluate a policy from your logs", 0): check_ope,
    ("gRPC", 0): check_grpc,
}


# --- running ----------------------------------------------------------------------------------------

class NotRun(Exception):
    """A block not run because an earlier one failed."""


class Runner:
    """Runs the python blocks in README order in one namespace, each at most once, on demand (so
    ``-k`` on one block still runs the blocks before it)."""

    def __init__(self, tmp: pathlib.Path):
        self.tmp = tmp
        self.ns: dict = {"__name__": "__readme__"}
        self.values: dict = {"tmp": str(tmp)}
        self.facts: dict = {}  # what the setup functions wrote, for the checks
        self.synthetic = None  # the generated log behind every file (setup_movielens)
        self.cleanups: list = []
        self.outcomes: dict = {}  # block index -> None (ran) or the exception
        self.printed: dict = {}  # block key -> what the block printed

    def run_through(self, index: int):
        for i in range(len(self.outcomes), index + 1):
            block = PYTHON[i]
            failed = next((PYTHON[j] for j, error in self.outcomes.items() if error is not None), None)
            if failed is not None:
                self.outcomes[i] = NotRun(f"not run: the earlier block {failed.name!r} failed")
                continue
            try:
                self._run(block)
                self.outcomes[i] = None
            except Exception as error:  # noqa: BLE001  (reported by that block's test)
                self.outcomes[i] = error
        return self.outcomes[index]

    def _run(self, block):
        if block.key in SETUP:
            self.values.update(SETUP[block.key](self))
        if block.key in PRELUDES:
            exec(compile(PRELUDES[block.key], f"<prelude of {block.name}>", "exec"), self.ns)
        code = substitute(block, SUBSTITUTIONS.get(block.key, ()), self.values)
        if block.key in SKIPPED:
            self._run_head_of_distributed(block, code)
            return
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile("\n" * (block.lineno - 1) + code, "README.md", "exec"), self.ns)
        finally:
            sys.stdout.write(printed.getvalue())  # still shown by pytest when the block fails
        self.printed[block.key] = printed.getvalue()
        if block.key in CHECKS:
            CHECKS[block.key](self.ns, self)

    def _run_head_of_distributed(self, block, code):
        """The distributed block's imports and TF_CONFIG lines, with ``os.environ`` a dict (the
        real one would leak TF_CONFIG into the other tests); the strategy and training need the
        cluster's hosts."""
        assert block.key == DISTRIBUTED, block.name
        head = leading_statements(code, lambda statement: "get_strategy(" in statement)
        assert head.startswith("import os\n"), head[:80]
        head = head[len("import os\n"):]  # the stand-in below replaces the real os module
        environ = {}
        namespace = {**self.ns, "os": types.SimpleNamespace(environ=environ)}
        exec(compile(head, "README.md (distributed block, head)", "exec"), namespace)
        config = json.loads(environ["TF_CONFIG"])
        assert config["cluster"]["worker"] == ["host1:12345", "host2:12345"]
        assert config["task"] == {"type": "worker", "index": 0}

    def close(self):
        for cleanup in reversed(self.cleanups):
            cleanup()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("readme"))
    yield runner
    runner.close()


def test_the_readme_has_exactly_the_known_python_blocks():
    found = [(b.section, b.first_line.split("(")[0].strip()) for b in PYTHON]
    assert found == EXPECTED_PYTHON_BLOCKS, "README.md's python blocks changed: update tests/test_readme.py"
    assert len(PYTHON) == 12
    keys = {b.key for b in PYTHON}
    assert set(SKIPPED) == {DISTRIBUTED}
    for table in (SKIPPED, PRELUDES, SUBSTITUTIONS, SETUP, CHECKS):
        assert set(table) <= keys, f"entries for blocks that are gone: {set(table) - keys}"
    # Every other block is shell, config or JSON: no python hides under another tag ("py", "python3").
    others = {b.lang for b in BLOCKS if b.lang != "python"}
    assert others <= OTHER_LANGUAGES, f"fenced blocks in unexpected languages: {others - OTHER_LANGUAGES}"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON)), ids=[re.sub(r"\s+", " ", b.name)[:90] for b in PYTHON])
def test_readme_block_runs(runner, index):
    block = PYTHON[index]
    error = runner.run_through(index)
    if error is not None:
        if isinstance(error, NotRun):
            pytest.skip(str(error))
        raise error
    if block.key in SKIPPED:
        pytest.skip(f"{block.name}: {SKIPPED[block.key]}")
