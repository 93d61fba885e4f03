"""Loaded versions (`tfmarl.serving.versions`): polling, atomic switches, failed loads, warm-up."""

import logging
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.contract import EXTRA_DIR, SIGNATURE_KEY, WARMUP_FILE
from tfmarl.export import export_recommender
from tfmarl.export.warmup import default_warmup_histories, read_warmup_requests, warmup_path, write_warmup_requests
from tfmarl.serving import Code, RequestError, VersionTable

NAME = "cycle"


@pytest.fixture(scope="module")
def exported_v1(exported_cycle):
    assert exported_cycle.parent.name == NAME
    return exported_cycle  # conftest.py: one export, shared by the serving tests and never written to


@pytest.fixture(scope="module")
def saved_model(exported_v1):
    return tf.saved_model.load(str(exported_v1)).signatures[SIGNATURE_KEY]


def wait_for(predicate, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def slate_size(table, version=None):
    try:
        loaded = table.servable(NAME, version)
    except RequestError as e:
        return e.code
    return loaded.predict(np.array([[b"m1"]], dtype=object))["item_ids"].shape[1]


def test_new_versions_are_picked_up(tmp_path, exported_v1, trained_cycle_model, caplog):
    caplog.set_level(logging.INFO, logger="tfmarl.serving")
    base = tmp_path / NAME
    shutil.copytree(exported_v1, base / "1")
    table = VersionTable(base, keep_versions=2, max_load_attempts=2)
    table.start_polling(0.2)
    try:
        assert table.versions == [1] and table.status(NAME) == [1] and slate_size(table) == 5
        # A half-written export (hidden temporary directory) and non-version entries are ignored.
        hidden = base / ".tmp-export-half"
        hidden.mkdir()
        (hidden / "saved_model.pb").write_bytes(b"partial")
        (base / "latest").mkdir()
        (base / "README").write_text("not a version")
        # A second version, exported while serving (slate of 3 tells its answers apart).
        assert export_recommender(trained_cycle_model, base, k=3).name == "2"
        wait_for(lambda: table.status(NAME) == [2, 1])
        assert slate_size(table) == 3 and slate_size(table, 2) == 3 and slate_size(table, "1") == 5
        # A broken version: its load fails, is logged, and versions 2 and 1 keep serving.
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        wait_for(lambda: "loading version 3 failed (attempt 2 of 2)" in caplog.text)
        assert table.status(NAME) == [2, 1] and slate_size(table) == 3
        # Another good version (renamed into place): 4 and 2 are kept, 1 is unloaded.
        shutil.copytree(exported_v1, base / ".tmp-copy")
        os.rename(base / ".tmp-copy", base / "4")
        wait_for(lambda: table.status(NAME) == [4, 2])
        assert slate_size(table) == 5 and slate_size(table, 1) == Code.NOT_FOUND
        assert not [r for r in caplog.records if ".tmp-" in r.getMessage() or "latest" in r.getMessage()]
    finally:
        table.stop_polling()


def test_lookups_answer_not_found_in_tf_servings_words(exported_v1):
    table = VersionTable(exported_v1.parent)
    assert table.servable(NAME).version == table.servable(NAME, 1).version == table.servable(NAME, "1").version == 1
    for name, version, message in [("other", None, "Servable not found for request: Latest(other)"),
                                   (NAME, 9, f"Servable not found for request: Specific({NAME}, 9)"),
                                   (NAME, "01x", f"Specific({NAME}, 01x)"), (NAME, -1, "Specific"),
                                   (NAME, True, "Specific")]:
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            table.servable(name, version)
        assert (e.value.code, e.value.status) == (Code.NOT_FOUND, 404)
    with pytest.raises(RequestError, match=f"Could not find version 9 of model {NAME}"):
        table.status(NAME, 9)
    with pytest.raises(RequestError, match="Could not find any versions of model other"):
        table.status("other")


def test_table_validates_its_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        VersionTable(tmp_path / "missing")
    (tmp_path / "bad name").mkdir()
    with pytest.raises(ValueError, match="model name"):
        VersionTable(tmp_path / "bad name")
    for kwargs, message in [({"keep_versions": 0}, "keep_versions"), ({"max_load_attempts": 0}, "max_load_attempts")]:
        with pytest.raises(ValueError, match=message):
            VersionTable(tmp_path, **kwargs)
    assert VersionTable(tmp_path).versions == []  # no version yet: waits for one


def test_prediction_errors_keep_tensorflows_code(exported_v1, caplog):
    loaded = VersionTable(exported_v1.parent).servable(NAME)
    with pytest.raises(RequestError, match="Graph execution error") as e:
        loaded.serve(np.array([b"m1", b"m2"], dtype=object))  # rank 1: the graph refuses it
    assert (e.value.code, e.value.status) == (Code.INVALID_ARGUMENT, 400)
    with pytest.raises(RequestError, match="internal error: ValueError") as e:
        loaded.serve(np.array([[1.5]], dtype=object))  # not bytes: a bug upstream, never a client's input
    assert (e.value.code, e.value.status) == (Code.INTERNAL, 500) and "prediction failed" in caplog.text


# --- warm-up records ---------------------------------------------------------------------------


def test_warmup_records_are_written_readable_and_replayable(tmp_path, exported_v1, cycle_vocab, saved_model, caplog):
    from tensorflow_serving.apis import prediction_log_pb2

    version = tmp_path / NAME / "1"
    shutil.copytree(exported_v1, version)
    histories = default_warmup_histories(cycle_vocab, max_length=12)
    assert [len(h) for h in histories] == [0, 1, 5, 12] * 2
    path = write_warmup_requests(version, histories + [[["m1", "m2"], ["m3"]]], model_name=NAME)
    assert path == warmup_path(version) == version / EXTRA_DIR / WARMUP_FILE
    assert path == version / "assets.extra" / "tf_serving_warmup_requests"  # TF Serving's own names
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # atomic: no temp left

    # Readable with nothing but TensorFlow and the serving-API protos.
    raw = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert raw == read_warmup_requests(version) and len(raw) == 9
    for log, history in zip(raw, histories + [None]):
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == (NAME, "serving_default")
        assert list(request.inputs) == ["history"]
        tensor = request.inputs["history"]
        assert tensor.dtype == tf.string.as_datatype_enum
        array = tf.make_ndarray(tensor)
        if history is None:
            assert array.shape == (2, 2) and array[1, 1] == b""
            continue
        assert array.shape == (1, max(1, len(history)))
        assert [v.decode() for v in array[0] if v] == history
        # Every record replays through the SavedModel.
        out = saved_model(history=tf.constant(array))
        assert out["item_ids"].shape == (1, 5) and np.isfinite(out["scores"].numpy()).all()

    # The table replays them when it loads the version (a failing record fails the load).
    caplog.set_level(logging.INFO, logger="tfmarl.serving")
    assert VersionTable(version.parent).versions == [1]
    assert "(9 warm-up requests)" in caplog.text
    for bad in (b"garbage" * 4, None):
        if bad is None:  # well-formed records for a signature the model lacks
            write_warmup_requests(version, [["m1"]], signature="nope")
        else:
            path.write_bytes(bad)
        caplog.clear()
        assert VersionTable(version.parent).versions == []
        assert "loading version 1 failed" in caplog.text


def test_warmup_argument_errors(tmp_path, cycle_vocab):
    with pytest.raises(ValueError):
        write_warmup_requests(tmp_path, [])
    with pytest.raises(TypeError):
        write_warmup_requests(tmp_path, ["m1"])  # a string is not a history
    assert read_warmup_requests(tmp_path) == []
    capped = default_warmup_histories(["a", "b"], n=3, lengths=(5,))
    assert len(capped) == 3 and all(sorted(h) == ["a", "b"] for h in capped)  # capped at the catalog size
    assert default_warmup_histories(cycle_vocab, seed=1) == default_warmup_histories(cycle_vocab, seed=1)
