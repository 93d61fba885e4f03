"""SavedModel export: versioning, atomicity, the serving contract, loading without tfmarl."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.export import existing_versions, export_recommender, write_version

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_cycle_model):
    base = tmp_path_factory.mktemp("models") / "cycle"
    return export_recommender(trained_cycle_model, base)


def test_versions_increment_and_metadata(tmp_path, trained_cycle_model):
    first = export_recommender(trained_cycle_model, tmp_path / "m")
    second = export_recommender(trained_cycle_model, tmp_path / "m")
    assert (first.name, second.name) == ("1", "2")
    assert existing_versions(tmp_path / "m") == [1, 2]
    info = json.loads((second / "assets.extra" / "tfmarl.json").read_text())
    assert info["k"] == 5 and info["num_items"] == trained_cycle_model.num_items
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_failed_write_leaves_no_partial_version(tmp_path):
    def crash(path):
        (path / "saved_model.pb").write_bytes(b"partial")
        raise RuntimeError("disk full")

    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="disk full"):
        write_version(tmp_path / "m", crash)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_export_needs_a_vocabulary(tmp_path):
    from tfmarl.training import SequentialRecommender

    with pytest.raises(ValueError, match="item_vocabulary"):
        export_recommender(SequentialRecommender(num_items=10, dim=8, max_length=4), tmp_path / "m")


def test_serving_contract_in_process(exported, cycle_vocab):
    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    history = tf.constant([["m3", "m4", "m5", ""],  # a normal history
                           ["nope", "", "", ""],  # only unknown ids
                           ["", "", "", ""],  # all padding
                           ["m9", "", "m10", "bogus"]])  # padding and unknown ids in the middle
    out = serve(history=history)
    assert out["item_ids"].dtype == tf.string and out["scores"].dtype == tf.float32
    assert out["item_ids"].shape == (4, 5) and out["scores"].shape == (4, 5)
    ids = out["item_ids"].numpy().astype(str)
    assert ids[0, 0] == "m6"  # the cycle continues
    assert ids[3, 0] == "m11"
    assert not {"m3", "m4", "m5"} & set(ids[0]) and not {"m9", "m10"} & set(ids[3])
    assert np.isfinite(out["scores"].numpy()).all()
    np.testing.assert_array_equal(ids[1], ids[2])  # unknown ids are ignored: cold start
    assert all(i.startswith("m") for i in ids.ravel())
    scores = out["scores"].numpy()
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_long_history_uses_its_end_and_excludes_everything(exported, cycle_vocab):
    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    long = [f"m{i}" for i in range(20)]  # longer than the model's window (12)
    out = serve(history=tf.constant([long]))["item_ids"].numpy().astype(str)[0]
    assert not set(out) & set(long)  # items before the window are excluded too
    assert out[0] == "m20"  # the prediction follows the end of the history


@pytest.mark.slow
def test_loads_in_a_fresh_process_without_tfmarl(exported):
    code = f"""
import sys, json, tensorflow as tf
model = tf.saved_model.load({str(exported)!r})
out = model.signatures["serving_default"](history=tf.constant([["m1", "m2", ""]]))
print(json.dumps({{"ids": out["item_ids"].numpy().astype(str).tolist(), "tfmarl": "tfmarl" in sys.modules,
                   "tf_agents": "tf_agents" in sys.modules}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tfmarl"] is False and result["ids"][0][0] == "m3"


@pytest.mark.slow
def test_saved_model_cli_shows_the_signature(exported):
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or shutil.which("saved_model_cli")
    assert cli, "saved_model_cli is installed with tensorflow"
    proc = subprocess.run([cli, "show", "--dir", str(exported), "--all"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "signature_def['serving_default']" in text
    assert "inputs['history'] tensor_info:" in text and "dtype: DT_STRING" in text
    assert "outputs['item_ids'] tensor_info:" in text and "outputs['scores'] tensor_info:" in text
    assert "shape: (-1, -1)" in text and "shape: (-1, 5)" in text


def test_brute_force_index_matches_exact_scoring(tmp_path, trained_cycle_model):
    histories = tf.constant([["m3", "m4", "m5", ""], ["", "", "", ""], [f"m{i}" for i in range(0, 8, 2)],
                             ["m29", "bogus", "m0", "m1"]])
    answers = {}
    for retrieval in ("brute_force", "exact"):
        path = export_recommender(trained_cycle_model, tmp_path / retrieval, retrieval=retrieval)
        out = tf.saved_model.load(str(path)).signatures["serving_default"](history=histories)
        answers[retrieval] = (out["item_ids"].numpy(), out["scores"].numpy())
        assert json.loads((path / "assets.extra" / "tfmarl.json").read_text())["retrieval"] == retrieval
    np.testing.assert_array_equal(answers["brute_force"][0], answers["exact"][0])
    np.testing.assert_allclose(answers["brute_force"][1], answers["exact"][1], rtol=1e-5)
    with pytest.raises(ValueError, match="retrieval"):
        export_recommender(trained_cycle_model, tmp_path / "x", retrieval="annoy")


def test_a_batch_of_only_empty_histories_gets_cold_start_answers(exported):
    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    for request in (tf.constant([["", ""], ["unknown", ""]]), tf.zeros([2, 0], tf.string)):
        out = serve(history=request)
        assert out["item_ids"].shape == (2, 5) and np.isfinite(out["scores"].numpy()).all()
        np.testing.assert_array_equal(out["item_ids"][0], out["item_ids"][1])
