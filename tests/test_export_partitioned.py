"""`retrieval="partitioned"`: the `PartitionedIndex` (recall, exactness at full probing, padding,
reserved rows, quantization), its exports (history exclusion, loading without tfmarl, RL exports)
and its CLI config knobs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.cli.config import ConfigError, config_from_dict, dump_config
from tfmarl.export import PartitionedIndex, export_recommender
from tfmarl.export.partitioned import check_index_options, default_partitions, default_probes
from tfmarl.export.policy import export_candidate_recommender

RESERVED = 2


def clustered(n=4000, dim=16, clusters=40, seed=0):
    """Rows 0-1 reserved (huge, so returning them would show), then clustered vectors of varied norms."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))
    x *= rng.uniform(0.5, 1.5, size=(n, 1))
    reserved = np.full((RESERVED, dim), 100.0)
    queries = centres[rng.integers(clusters, size=200)] + 0.5 * rng.normal(size=(200, dim))
    return np.concatenate([reserved, x]).astype(np.float32), queries.astype(np.float32)


def exact_top(vectors, queries, k):
    scores = queries @ vectors[RESERVED:].T
    rows = np.argsort(-scores, axis=1)[:, :k]
    return rows + RESERVED, np.take_along_axis(scores, rows, axis=1)


def recall(rows, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, truth)])


@pytest.fixture(scope="module")
def data():
    return clustered()


def test_recall_against_exact_search_is_high(data):
    vectors, queries = data
    index = PartitionedIndex(vectors, reserved=RESERVED, partitions=63, probes=12)  # 1/5 of the partitions
    assert default_partitions(len(vectors) - RESERVED) == 126 and default_probes(126) == 24
    assert PartitionedIndex(vectors[:40], reserved=RESERVED).probes == default_probes(12) == 12
    scores, rows = index(queries, 10)
    truth, _ = exact_top(vectors, queries, 10)
    assert recall(rows.numpy(), truth) >= 0.9
    # Scores are the exact inner products of the rows returned, best first.
    expected = np.einsum("bd,bkd->bk", queries, vectors[rows.numpy()])
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores.numpy(), axis=1) <= 1e-6).all()
    more = PartitionedIndex(vectors, reserved=RESERVED, partitions=63, probes=24)
    assert recall(more(queries, 10)[1].numpy(), truth) >= recall(rows.numpy(), truth)


def test_probing_every_partition_is_exact_search(data):
    vectors, queries = data
    index = PartitionedIndex(vectors, reserved=RESERVED, partitions=20, probes=20)
    scores, rows = tf.function(lambda q: index(q, tf.constant(25)))(queries)
    truth, truth_scores = exact_top(vectors, queries, 25)
    np.testing.assert_array_equal(rows.numpy(), truth)
    np.testing.assert_allclose(scores.numpy(), truth_scores, rtol=1e-5, atol=1e-5)


def test_padding_and_reserved_rows_are_never_returned():
    vectors, queries = clustered(n=300, dim=8, clusters=3)  # uneven partitions: padding slots exist
    index = PartitionedIndex(vectors, reserved=RESERVED, partitions=17, probes=1)
    assert index.partition_size * index.partitions > index.count  # there is padding
    for k in (5, 100, 300, 1000):  # beyond one partition: more are probed; beyond the catalog: all of it
        scores, rows = index(queries[:7], k)
        rows = rows.numpy()
        assert rows.shape == (7, min(k, 300))
        assert rows.min() >= RESERVED and rows.max() < len(vectors)
        assert all(len(set(r)) == len(r) for r in rows)
        assert np.isfinite(scores.numpy()).all()
    np.testing.assert_array_equal(np.sort(rows, axis=1), np.tile(np.arange(RESERVED, 302), (7, 1)))


@pytest.mark.parametrize("quantization", ["int8", "bfloat16"])
def test_quantized_partitions_with_float32_reranking(data, quantization):
    vectors, queries = data
    truth, truth_scores = exact_top(vectors, queries, 10)
    full = PartitionedIndex(vectors, reserved=RESERVED, partitions=20, probes=20, quantization=quantization,
                            rerank=50)
    assert full.slots.dtype == {"int8": tf.int8, "bfloat16": tf.bfloat16}[quantization]
    scores, rows = full(queries, 10)
    assert recall(rows.numpy(), truth) >= 0.99  # the re-ranked short list holds the true top 10
    expected = np.einsum("bd,bkd->bk", queries, vectors[rows.numpy()])
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-5)  # exact float32 scores
    approx = PartitionedIndex(vectors, reserved=RESERVED, partitions=63, probes=12, quantization=quantization)
    assert approx.rerank == 100
    unquantized = PartitionedIndex(vectors, reserved=RESERVED, partitions=63, probes=12)
    assert recall(approx(queries, 10)[1].numpy(), truth) >= recall(unquantized(queries, 10)[1].numpy(), truth) - 0.01
    # A short list shorter than k still returns k rows (the re-ranking takes at least k).
    assert PartitionedIndex(vectors, reserved=RESERVED, quantization=quantization, rerank=3)(queries, 10)[1].shape \
        == (200, 10)


def test_config_rebuilds_the_same_index(data):
    vectors, _ = data
    index = PartitionedIndex(vectors, reserved=RESERVED, partitions=30, probes=5, quantization="int8", rerank=40,
                             seed=3)
    config = json.loads(json.dumps(index.config))
    assert config == {"partitions": 30, "probes": 5, "quantization": "int8", "rerank": 40, "seed": 3,
                      "reserved": RESERVED}
    again = PartitionedIndex(vectors, **config)
    for a, b in ((index.rows, again.rows), (index.slots, again.slots), (index.keys, again.keys)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert index.description["partition_size"] == again.description["partition_size"]


def test_options_are_validated_by_name(data):
    vectors, _ = data
    assert check_index_options({"probes": 3, "quantization": None}) == {"probes": 3}
    for options, match in (({"probe": 3}, "unknown index option 'probe'"), ({"probes": 0}, "probes"),
                           ({"partitions": 2.5}, "partitions"), ({"quantization": "int4"}, "quantization"),
                           ({"partitions": 4, "probes": 5}, "probes must be at most partitions=4"),
                           ({"rerank": 10}, "rerank applies to quantized"), ({"probes": True}, "probes")):
        with pytest.raises(ValueError, match=match):
            check_index_options(options)
    with pytest.raises(ValueError, match="partitions must be at most"):
        PartitionedIndex(vectors[:12], reserved=RESERVED, partitions=11)
    with pytest.raises(ValueError, match="probes must be at most partitions=5"):
        PartitionedIndex(vectors, reserved=RESERVED, partitions=5, probes=6)
    with pytest.raises(ValueError, match="vectors hold NaN"):
        PartitionedIndex(np.full((5, 2), np.nan, np.float32))
    assert PartitionedIndex(vectors[:12], reserved=RESERVED, partitions=10).probes == 10  # default, within range


def test_saved_index_answers_the_same_with_stock_ops(tmp_path, data):
    vectors, queries = data
    module = tf.Module()
    module.index = PartitionedIndex(vectors, reserved=RESERVED, quantization="int8")
    module.search = tf.function(lambda q: module.index(q, 10), input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "index"))
    loaded = tf.saved_model.load(str(tmp_path / "index"))
    np.testing.assert_array_equal(loaded.search(queries)[1].numpy(), module.search(queries)[1].numpy())


# --- exports -------------------------------------------------------------------------------------------

HISTORIES = [["m3", "m4", "m5", ""], ["", "", "", ""], [f"m{i}" for i in range(0, 8, 2)], ["m29", "bogus", "m0", "m1"],
             [f"m{i}" for i in range(27)]]  # all but 3 items: the exclusion must reach past the first partitions


def answers(path, histories=HISTORIES):
    width = max(map(len, histories))
    padded = [h + [""] * (width - len(h)) for h in histories]
    out = tf.saved_model.load(str(path)).signatures["serving_default"](history=tf.constant(padded))
    return out["item_ids"].numpy().astype(str), out["scores"].numpy()


@pytest.fixture(scope="module")
def exact_answers(trained_cycle_model, tmp_path_factory):
    return answers(export_recommender(trained_cycle_model, tmp_path_factory.mktemp("exact") / "m", retrieval="exact"))


@pytest.mark.parametrize("options", [{"partitions": 6, "probes": 6}, {"partitions": 6, "probes": 6, "quantization": "int8"},
                                     {"partitions": 5, "probes": 5, "quantization": "bfloat16", "rerank": 8}])
def test_full_probing_export_answers_as_exact_retrieval(tmp_path, trained_cycle_model, exact_answers, options):
    path = export_recommender(trained_cycle_model, tmp_path / "m", retrieval="partitioned", index_options=options)
    ids, scores = answers(path)
    valid = exact_answers[1] > -1e8  # past the items left (the last history), masked ones of any id
    np.testing.assert_array_equal(np.where(valid, ids, ""), np.where(valid, exact_answers[0], ""))
    np.testing.assert_allclose(scores, exact_answers[1], rtol=1e-5, atol=1e-5)
    info = json.loads((path / "assets.extra" / "tfmarl.json").read_text())
    assert info["retrieval"] == "partitioned"
    assert {key: info["index"][key] for key in options} == options
    assert info["index"]["reserved"] == 2 and info["index"]["indexed"] == 30


def test_default_export_excludes_history_padding_and_reserved(tmp_path, trained_cycle_model):
    path = export_recommender(trained_cycle_model, tmp_path / "m", retrieval="partitioned")
    info = json.loads((path / "assets.extra" / "tfmarl.json").read_text())
    assert info["index"]["partitions"] == 11 and info["index"]["probes"] == 11  # defaults: 2 sqrt(30), all 11
    ids, scores = answers(path)
    assert ids.shape == (5, 5) and np.isfinite(scores).all()
    for history, row, score in zip(HISTORIES, ids, scores):
        assert all(i.startswith("m") for i in row)  # never "" (padding) or "[OOV]"
        assert len(set(row)) == len(row)
        assert not set(history) & set(row[score > -1e8])  # history items only as masked fillers
    assert sorted(ids[4][:3]) == ["m27", "m28", "m29"]  # the only items left
    assert (scores[4][3:] <= -1e8).all()  # fewer than K left: the rest are masked, as with brute_force
    assert ids[0][0] == "m6"  # the cycle continues


@pytest.mark.slow
def test_partitioned_export_loads_in_a_fresh_process_without_tfmarl(tmp_path, trained_cycle_model):
    path = export_recommender(trained_cycle_model, tmp_path / "m", retrieval="partitioned",
                              index_options={"quantization": "int8", "rerank": 10})
    code = f"""
import sys, json, tensorflow as tf
model = tf.saved_model.load({str(path)!r})
out = model.signatures["serving_default"](history=tf.constant([["m1", "m2", ""], ["m3", "m4", "m5"]]))
print(json.dumps({{"ids": out["item_ids"].numpy().astype(str).tolist(), "tfmarl": "tfmarl" in sys.modules,
                   "tfrs": "tensorflow_recommenders" in sys.modules}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tfmarl"] is False and result["tfrs"] is False
    assert result["ids"] == answers(path, [["m1", "m2", ""], ["m3", "m4", "m5"]])[0].tolist()
    assert result["ids"][0][0] == "m3"


def test_index_options_need_the_partitioned_retrieval(tmp_path, trained_cycle_model):
    with pytest.raises(ValueError, match="index_options apply to retrieval='partitioned' only"):
        export_recommender(trained_cycle_model, tmp_path / "m", retrieval="brute_force", index_options={"probes": 2})
    with pytest.raises(ValueError, match="unknown index option 'probs'"):
        export_recommender(trained_cycle_model, tmp_path / "m", retrieval="partitioned", index_options={"probs": 2})


def test_rl_export_retrieves_its_candidates_with_the_partitioned_index(tmp_path, trained_cycle_model):
    def score(history, candidates, item_vectors):  # a stand-in learned scorer: prefer low item indices
        return -tf.cast(candidates, tf.float32)

    paths = {retrieval: export_candidate_recommender(
        trained_cycle_model, score, tmp_path / retrieval, k=3, num_candidates=8, retrieval=retrieval,
        index_options={"partitions": 6, "probes": 6} if retrieval == "partitioned" else None)
        for retrieval in ("exact", "partitioned")}
    info = json.loads((paths["partitioned"] / "assets.extra" / "tfmarl.json").read_text())
    assert info["retrieval"] == "partitioned" and info["index"]["probes"] == 6
    np.testing.assert_array_equal(answers(paths["partitioned"])[0], answers(paths["exact"])[0])


# --- CLI config ---------------------------------------------------------------------------------------


def test_cli_config_accepts_the_index_knobs():
    config = config_from_dict({"export": {"retrieval": "partitioned", "index": {
        "partitions": 32, "probes": 4, "quantization": "int8", "rerank": 50}}})
    assert config.export.index_options() == {"partitions": 32, "probes": 4, "quantization": "int8", "rerank": 50}
    assert config_from_dict({"export": {"retrieval": "partitioned"}}).export.index_options() == {}
    assert config_from_dict({}).export.index_options() is None  # brute_force: no index options
    again = config_from_dict(__import__("yaml").safe_load(dump_config(config)))
    assert again.export == config.export


@pytest.mark.parametrize("export, message", [
    ({"retrieval": "partitioned", "index": {"probe": 4}}, "unknown config key 'export.index.probe' (did you mean 'probes'?)"),
    ({"retrieval": "partitioned", "index": {"probes": 0}}, "export.index.probes: must be a positive integer"),
    ({"retrieval": "partitioned", "index": {"partitions": "many"}}, "export.index.partitions: expected an integer"),
    ({"retrieval": "partitioned", "index": {"quantization": "int4"}},
     "export.index.quantization: 'int4' is not allowed; choose one of int8, bfloat16"),
    ({"retrieval": "partitioned", "index": {"partitions": 4, "probes": 8}},
     "export.index.probes: 8 is more than export.index.partitions=4"),
    ({"retrieval": "partitioned", "index": {"rerank": 50}}, "export.index.rerank: applies to quantized partitions"),
    ({"retrieval": "brute_force", "index": {"probes": 4}},
     "export.index.probes: applies only with export.retrieval: partitioned"),
    ({"retrieval": "partitioned", "index": {"partitions": 5000}}, "export.index.partitions: 5000 is more than"),
    ({"retrieval": "annoy"}, "export.retrieval: 'annoy' is not allowed; choose one of brute_force, partitioned"),
])
def test_cli_config_rejects_bad_index_knobs_by_name(export, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"export": export})
    assert message in str(error.value)
