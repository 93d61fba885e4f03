"""The command line: config validation, the resumable pipeline, the report."""

import json
import re
import shutil

import pytest
import yaml

from tfmarl.cli.config import ConfigError, config_from_dict, default_config, dump_config, load_config
from tfmarl.cli.main import main

TINY = {
    "data": {"synthetic": {"n_users": 120, "n_items": 60, "interactions_per_user": 15, "knowledge_graph": True},
             "features": {"title_length": 4, "text_vocabulary_size": 100}},
    "pretrain": {"dim": 16, "max_length": 10, "num_layers": 1, "epochs": 1, "batch_size": 64, "id_dropout": 0.2},
    "simulator": {"dim": 4, "session": {"slate_size": 3, "history_length": 5, "max_steps": 6}},
    "rl": {"candidates": 12, "steps": 8, "batch_size": 8, "multiagent": {"facets": 3, "domains": 2}},
    "evaluate": {"episodes": 16, "baselines": ["random", "greedy"]},
}


@pytest.mark.parametrize("values,message", [
    ({"pretrain": {"encoderr": "gru"}}, "unknown config key 'pretrain.encoderr' (did you mean 'encoder'?)"),
    ({"pretrain": {"encoder": "cnn"}}, "pretrain.encoder: 'cnn' is not allowed; choose one of transformer, gru, lstm"),
    ({"rl": {"steps": "many"}}, "rl.steps: expected an integer"),
    ({"rl": {"algorithm": "ppo"}}, "rl.algorithm: 'ppo' is not allowed"),
    ({"rl": {"steps": 0}}, "rl.steps: must be a positive integer"),
    ({"pretrain": {"dropout": 1.5}}, "pretrain.dropout: must be in [0, 1)"),
    ({"data": {"source": "movielens"}}, "data.path: required"),
    ({"data": {"source": "movielens"}}, "ml-100k: u.data and u.item"),  # where to get each layout
    ({"simulator": {"session": {"slate": 3}}}, "unknown config key 'simulator.session.slate'"),
    ({"simulator": {"session": {"slate_size": 0}}}, "simulator.session"),
    ({"evaluate": {"baselines": ["oracle"]}}, "evaluate.baselines: 'oracle' is not allowed"),
    ({"export": {"warmup": "yes"}}, "export.warmup: expected true or false"),
    ({"pretrain": 3}, "pretrain: expected a mapping"),
    ({"colour": "blue"}, "unknown config key 'colour'"),
    ({"strategy": "multi_worker"}, "strategy: 'multi_worker' is not allowed; choose one of auto, cpu, gpu, mirrored, "
                                   "tpu (the tfmarl command"),
    ({"pretrain": {"strategy": "cpu"}}, "config key 'pretrain.strategy' has moved: write it as 'strategy'"),
    ({"rl": {"multiagent": {"encoder_learning_rate": 0}}}, "rl.multiagent.encoder_learning_rate: must be positive"),
    ({"rl": {"epsilon_start": 5}}, "rl.epsilon_start: must be in [0, 1], got 5"),
    ({"rl": {"multiagent": {"diversity_floor": -1}}}, "rl.multiagent.diversity_floor: must be >= 0"),
    ({"rl": {"multiagent": {"facets": 2, "domains": 3}}}, "rl.multiagent.domains: 3 domains need at least"),
    ({"rl": {"candidates": 20}, "export": {"k": 30}}, "export.k: 30 is more than rl.candidates=20"),
    ({"rl": {"candidates": 5000}}, "rl.candidates: 5000 is more than the catalog's 1000 items"),
    ({"rl": {"candidates": 8}, "export": {"k": 5}}, "simulator.session.slate_size: 10 is more than rl.candidates=8"),
    ({"data": {"new_items": {"fraction": 1.0}}}, "data.new_items.fraction: must be in [0, 1)"),
    ({"rl": {"multiagent": {"new_item_slots": -1}}}, "rl.multiagent.new_item_slots: must be >= 0"),
    ({"data": {"new_items": {"how": "oldest"}}}, "data.new_items.how: 'oldest' is not allowed"),
    ({"data": {"new_items": {"fraction": 0.1}}, "simulator": {"session": {"new_item_fraction": 0.1}}},
     "simulator.session.new_item_fraction: the simulator would pick its own new items"),
    ({"data": {"new_items": {"fraction": 0.1}, "split": "temporal"}}, "data.new_items: needs data.split: leave_one_out"),
])
def test_config_errors_name_the_key_and_the_allowed_values(values, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(values)
    assert message in str(error.value)


def test_default_config_round_trips_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(default_config()))
    assert load_config(path) == default_config()
    path.write_text("pretrain: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"rl": {"algorithm": "ppo"}}))
    assert main(["train", str(path)]) == 2
    assert "rl.algorithm: 'ppo' is not allowed" in capsys.readouterr().err
    assert main(["config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["rl"]["algorithm"] == "multiagent"


def test_cli_refuses_a_cluster_it_cannot_run(tmp_path, capsys, monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, run_dir=str(tmp_path / "run"))))
    assert main(["train", str(path), "--no-progress"]) == 2
    assert "strategy: 'auto' found a cluster in TF_CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()  # refused before any stage ran


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = dict(TINY, run_dir=str(root / "run"), export={"dir": str(root / "models" / "tiny")})
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--no-progress"]) == 0
    # A pristine copy of the finished run, before the tests below change this one: the tests that
    # vary only a later stage start from it, so the stages they keep load instead of retraining.
    shutil.copytree(root / "run", root / "pristine")
    return root, path


def from_tiny_run(tiny_run, run_dir):
    """``run_dir`` as a copy of the tiny run just after it finished. Stage hashes depend on the
    config alone (not on run_dir), so a config that changes only stage S re-runs S and what
    follows and loads the earlier stages from the copy."""
    root, _ = tiny_run
    shutil.copytree(root / "pristine", run_dir)
    return run_dir


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_writes_a_report(tiny_run):
    root, _ = tiny_run
    run = root / "run"
    for stage in ("data", "pretrain", "simulator", "rl", "evaluate", "export", "report"):
        assert (run / "stages" / f"{stage}.json").exists(), stage
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert set(metrics["online"]) == {"random", "greedy", "multiagent"}
    assert 0 <= metrics["ranking"]["ndcg@10"] <= 1
    report = (run / "report.md").read_text()
    assert "## Simulated sessions" in report and "reward weights" in report.lower()
    for png in ("policies.png", "learning_curves.png", "reward_weights.png"):
        assert (run / png).stat().st_size > 1000
    assert (root / "models" / "tiny" / "1" / "saved_model.pb").exists()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    projector = run / "tensorboard" / "pretrain" / "projector"
    assert (projector / "projector_config.pbtxt").exists()
    # TensorBoard lists the projector folder as a run, so its Projector tab finds the config there.
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    runs = EventMultiplexer().AddRunsFromDirectory(str(run / "tensorboard")).Runs()
    assert "pretrain/projector" in runs
    rows = (projector / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "title\tid" and len(rows) == 1 + 60  # header, then one row per item
    # The synthetic knowledge graph reached the Content agent.
    from tfmarl.data.item_features import ItemFeatures

    features = ItemFeatures.load(run / "data" / "features")
    assert features.relation_names == ["creator", "studio"] and (features.kg_entities > 0).sum() == 2 * 60


@pytest.mark.slow
def test_pipeline_resumes_and_reruns_only_what_changed(tiny_run, capsys):
    root, path = tiny_run
    assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for stage in ("data", "pretrain", "simulator", "rl", "evaluate", "export"):
        assert f"== {stage} (finished earlier: loading)" in out
    # A new evaluation setting re-runs evaluate and what follows, not the training stages.
    config = yaml.safe_load(path.read_text())
    config["evaluate"]["episodes"] = 8
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== rl (finished earlier: loading)" in out
    assert "== evaluate\n" in out and "== export\n" in out
    assert (root / "models" / "tiny" / "2").exists()  # the export ran again: a new version


@pytest.mark.slow
def test_export_and_simulate_commands(tiny_run, capsys):
    root, path = tiny_run
    assert main(["export", str(path), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("/3")
    assert main(["simulate", str(path), "--no-progress", "--policies", "random,learned", "--episodes", "8"]) == 0
    table = capsys.readouterr().out
    assert "random" in table and "learned" in table


@pytest.mark.slow
def test_interrupted_rl_stage_resumes_from_its_checkpoint(tiny_run, capsys):
    root, path = tiny_run
    run = root / "run"
    checkpoints = {p.name for p in (run / "rl" / "checkpoints").iterdir()}
    assert len(checkpoints) == 1  # one folder: the current configuration's
    (run / "stages" / "rl.json").unlink()  # as if the run died after the last checkpoint
    assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== pretrain (finished earlier: loading)" in out and "== rl\n" in out
    result = json.loads((run / "rl" / "result.json").read_text())
    assert result["curve"] == []  # restored at the final step: nothing left to train
    assert {p.name for p in (run / "rl" / "checkpoints").iterdir()} == checkpoints


@pytest.mark.slow
def test_a_changed_earlier_stage_retrains_rl_instead_of_restoring_it(tiny_run, capsys):
    root, path = tiny_run
    run = root / "run"
    before = {stage: {p.name for p in (run / stage / "checkpoints").iterdir()} for stage in ("pretrain", "rl")}
    config = yaml.safe_load(path.read_text())
    config["pretrain"]["epochs"] = 2
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== pretrain\n" in out and "== rl\n" in out
    result = json.loads((run / "rl" / "result.json").read_text())
    assert result["curve"] and result["curve"][-1]["step"] == config["rl"]["steps"]  # trained from scratch
    for stage, names in before.items():
        after = {p.name for p in (run / stage / "checkpoints").iterdir()}
        assert len(after) == 1 and after.isdisjoint(names), stage  # the old configuration's state is gone


def test_every_command_help_shows_an_example(capsys):
    from tfmarl.cli.main import EXAMPLES

    names = ["quickstart", "train", "evaluate", "export", "simulate", "config", "serve"]
    assert sorted(EXAMPLES) == sorted(names)  # a new command needs its example
    for argv, name in [(["--help"], "quickstart")] + [([n, "--help"], n) for n in names]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        assert "example:" in lines, argv
        examples = lines[lines.index("example:") + 1:]
        assert any(line.startswith(f"  tfmarl {name}") for line in examples), (argv, examples)


def test_simulate_refuses_an_unknown_policy_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["simulate", str(tmp_path / "c.yaml"), "--policies", "random,oracle"])
    assert done.value.code == 2
    assert "--policies: unknown policy 'oracle'; choose from random, popular, greedy, learned" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["dqn", "linucb"])
def test_pipeline_trains_exports_and_evaluates_every_family_through_the_registry(algorithm, tmp_path, tiny_run,
                                                                                 capsys):
    """The RL stage builds any registered family from the config alone (no branching on its name)."""
    from_tiny_run(tiny_run, tmp_path / "run")  # data, pretrain and simulator load; rl onwards run
    config = dict(TINY, run_dir=str(tmp_path / "run"), export={"dir": str(tmp_path / "models")},
                  rl=dict(TINY["rl"], algorithm=algorithm))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== simulator (finished earlier: loading)" in out and "== rl\n" in out
    metrics = json.loads((tmp_path / "run" / "evaluate" / "metrics.json").read_text())
    assert algorithm in metrics["online"]
    info = json.loads((tmp_path / "models" / "1" / "assets.extra" / "tfmarl.json").read_text())
    assert info["algorithm"] == algorithm


@pytest.mark.slow
def test_evaluate_estimates_policies_off_policy_and_validates_the_simulator(tmp_path, capsys, tiny_run):
    """With ``evaluate.impressions`` the evaluate stage scores every policy on the logged slates
    (value and gain over the logging policy, with intervals) and validates the simulator against
    the log; the report shows the calibration plot."""
    import numpy as np
    import pandas as pd

    from tfmarl.data import generate_synthetic

    synthetic = TINY["data"]["synthetic"]
    interactions = generate_synthetic(**synthetic, seed=0)  # the pipeline's data (seed 0)
    items = sorted(interactions.log["item_id"].unique())
    users = interactions.log.groupby("user_id")["item_id"].apply(list)
    rng = np.random.default_rng(0)
    rows = []
    for r in range(300):  # a uniformly random logging policy over the items a user has not seen
        user = users.index[r % len(users)]
        history = users[user][-3:]
        pool = [i for i in items if i not in history]
        slate = rng.choice(pool, size=3, replace=False)
        for position, item in enumerate(slate):
            rows.append({"round_id": r, "position": position, "item_id": item, "reward": float(rng.random() < 0.2),
                         "propensity": 1.0 / len(pool), "history": " ".join(history), "user_id": user})
    log_path = tmp_path / "impressions.csv"
    pd.DataFrame(rows).to_csv(log_path, index=False)
    config = dict(TINY, run_dir=str(tmp_path / "run"), export={"dir": str(tmp_path / "models")},
                  evaluate=dict(TINY["evaluate"], baselines=["random", "greedy"],
                                impressions={"path": str(log_path)}))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    from_tiny_run(tiny_run, tmp_path / "run")  # data, pretrain, simulator and rl load; evaluate onwards run
    capsys.readouterr()
    assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== rl (finished earlier: loading)" in out and "== evaluate\n" in out
    assert re.search(r"offline +greedy: pseudo_inverse: \S+ \[", out) and "click model on 300 held-out impressions" in out
    offline = json.loads((tmp_path / "run" / "evaluate" / "metrics.json").read_text())["offline"]
    assert set(offline["policies"]) == {"greedy", "multiagent"}  # random is stochastic: not scored
    for estimate in offline["policies"].values():
        assert estimate["value"]["ci_low"] <= estimate["value"]["value"] <= estimate["value"]["ci_high"]
        assert estimate["minus_logging"]["relative_to"] == "logging"
    assert 0 <= offline["simulator_validation"]["auc"] <= 1
    assert (tmp_path / "run" / "calibration.png").stat().st_size > 1000
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Off-policy evaluation (pseudo_inverse, 300 logged impressions)" in report
    assert "![calibration](calibration.png)" in report
    bad = dict(config, evaluate=dict(config["evaluate"], impressions={"path": str(log_path), "reward": "clicked"}))
    path.write_text(yaml.safe_dump(bad))
    assert main(["train", str(path), "--no-progress", "--stages", "evaluate"]) == 2
    assert "clicked" in capsys.readouterr().err  # the missing column is named


def test_cold_start_and_churn_keys_are_checked():
    from tfmarl.cli.config import config_from_dict

    config = config_from_dict({"data": {"features": {"knowledge_graph": "kg.csv", "max_neighbours": 8}},
                               "pretrain": {"id_dropout": 0.3, "knowledge_hops": 2, "knowledge_entities": "item_mean"},
                               "rl": {"new_item_candidates": 5, "dqn": {"trainable_encoders": True}}})
    assert config.data.features.knowledge_graph == "kg.csv" and config.pretrain.knowledge_hops == 2
    assert config.pretrain.knowledge_entities == "item_mean"
    assert config.rl.dqn.trainable_encoders is True and config.rl.new_item_candidates == 5
    for bad, message in (({"pretrain": {"id_dropout": 1.0}}, "pretrain.id_dropout"),
                         ({"pretrain": {"knowledge_hops": 3}}, "pretrain.knowledge_hops"),
                         ({"pretrain": {"knowledge_entities": "mean"}}, "pretrain.knowledge_entities"),
                         ({"rl": {"new_item_candidates": -1}}, "rl.new_item_candidates"),
                         ({"data": {"features": {"max_neighbours": 0}}}, "data.features.max_neighbours"),
                         ({"data": {"features": {"title_vocabulary": "chars"}}}, "data.features.title_vocabulary"),
                         ({"data": {"features": {"min_word_count": 0}}}, "data.features.min_word_count"),
                         ({"rl": {"dqn": {"dueling": True}}}, "rl.dqn")):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            config_from_dict(bad)


@pytest.mark.slow
def test_pipeline_with_catalog_churn_holds_new_items_out_and_reports_their_clicks(tmp_path):
    """``data.new_items``: the new items never reach pretraining (no train interaction, unknown to
    the Content agent), arrive during RL and evaluation, and every policy's share of clicks on
    them is reported."""
    import numpy as np

    config = dict(TINY, run_dir=str(tmp_path / "run"), export={"dir": str(tmp_path / "models")})
    config["data"] = dict(TINY["data"], new_items={"fraction": 0.2, "how": "random"})
    config["simulator"] = {"dim": 4, "session": dict(TINY["simulator"]["session"], new_item_arrival_steps=4)}
    config["rl"] = dict(TINY["rl"], new_item_candidates=3, multiagent=dict(TINY["rl"]["multiagent"], new_item_slots=1))
    config["evaluate"] = dict(TINY["evaluate"], episodes=64)
    path = tmp_path / "churn.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "data" / "summary.json").read_text())["new_items"] == 12  # 20% of 60
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    shares = {name: values["new_item_click_share"] for name, values in metrics["online"].items()}
    assert set(shares) == {"random", "greedy", "multiagent"} and all(0 <= v <= 1 for v in shares.values())
    assert max(shares.values()) > 0  # the new items arrived and were clicked
    assert "new_item_click_share" in (run / "report.md").read_text()

    from tfmarl.cli.pipeline import Pipeline

    pipeline = Pipeline(load_config(path), progress=False)
    state = pipeline.run(stages=("rl",))  # loads the finished stages
    assert state["algorithm"].learner.new_item_slots == 1
    new = state["new_items"]
    assert len(new) == 12 and state["counts"][new].sum() == 0
    known = state["model"].content_agent.known_items.numpy()
    assert not known[new].any() and known.sum() == state["vocab"].size - 12
