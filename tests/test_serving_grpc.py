"""TF Serving's gRPC API (`tfmarl.serving.grpc_api`) with the unmodified `tensorflow-serving-api` stubs."""

import http.client
import json
import shutil
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tfmarl.export import export_recommender
from tfmarl.serving import ModelServer

NAME = "cycle"
LIMIT = 64 * 1024
HISTORIES = [["m3", "m4", "m5"], ["m9"], ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"], ["m20", "bogus", "m21"]]


@pytest.fixture(scope="module")
def exported_v1(exported_cycle):
    assert exported_cycle.parent.name == NAME
    return exported_cycle  # conftest.py: one export, shared by the serving tests and never written to


@pytest.fixture(scope="module")
def saved_model(exported_v1):
    return tf.saved_model.load(str(exported_v1)).signatures["serving_default"]


@pytest.fixture(scope="module")
def server(exported_v1):
    srv = ModelServer(exported_v1.parent, poll_seconds=0, grpc_port=0, max_body_bytes=LIMIT, max_batch_size=64,
                      max_history_length=100)
    srv.start(port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def predictions(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def padded(histories):
    width = max(1, max(len(h) for h in histories))
    return [list(h) + [""] * (width - len(h)) for h in histories]


def direct(saved_model, histories):
    out = saved_model(history=tf.constant(padded(histories)))
    return out["item_ids"].numpy(), out["scores"].numpy()


def predict_request(histories=None, name=NAME, tensor=None, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    if tensor is None and histories is not None:
        tensor = tf.make_tensor_proto(padded(histories), dtype=tf.string)
    if tensor is not None:
        request.inputs["history"].CopyFrom(tensor)
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    return e.value.code(), e.value.details()


# --- good requests -----------------------------------------------------------------------------


def test_predict_equals_the_saved_model(predictions, saved_model):
    ids, scores = direct(saved_model, HISTORIES)
    for spec in ({}, {"version": 1}, {"signature_name": "serving_default"}):
        response = predictions.Predict(predict_request(HISTORIES, **spec), timeout=30)
        assert sorted(response.outputs) == ["item_ids", "scores"]
        assert (response.model_spec.name, response.model_spec.version.value,
                response.model_spec.signature_name) == (NAME, 1, "serving_default")
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["item_ids"]), ids)
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["scores"]), scores)
    # Filled as TF Serving fills outputs by default: typed fields, readable without TensorFlow.
    scores_proto = response.outputs["scores"]
    assert scores_proto.dtype == types_pb2.DT_FLOAT and not scores_proto.tensor_content
    assert [d.size for d in scores_proto.tensor_shape.dim] == [4, 5]
    np.testing.assert_array_equal(np.float32(scores_proto.float_val).reshape(4, 5), scores)
    assert list(response.outputs["item_ids"].string_val[:1]) == [b"m6"]  # the cycle continues


def test_output_filter_and_empty_histories(predictions, saved_model):
    response = predictions.Predict(predict_request(HISTORIES[:1]), timeout=30)
    only = predict_request(HISTORIES[:1])
    only.output_filter.append("item_ids")
    filtered = predictions.Predict(only, timeout=30)
    assert list(filtered.outputs) == ["item_ids"] and filtered.outputs["item_ids"] == response.outputs["item_ids"]
    # [batch, 0]: histories of padding only get the cold-start slate, as [[""]] does.
    empty = tf.make_tensor_proto(np.zeros((2, 0), dtype=object), dtype=tf.string, shape=[2, 0])
    got = tf.make_ndarray(predictions.Predict(predict_request(tensor=empty), timeout=30).outputs["item_ids"])
    np.testing.assert_array_equal(got, direct(saved_model, [[], []])[0])


def test_metadata(predictions, saved_model):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    response = predictions.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == (NAME, 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["history"].dtype == types_pb2.DT_STRING
    assert [d.size for d in signature.inputs["history"].tensor_shape.dim] == [-1, -1]
    assert signature.outputs["scores"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in signature.outputs["item_ids"].tensor_shape.dim] == [-1, 5]


def test_status(models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = NAME
    for response in (models.GetModelStatus(request, timeout=30),):
        [status] = response.model_version_status
        assert (status.version, status.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        assert status.HasField("status") and (status.status.error_code, status.status.error_message) == (0, "")
    request.model_spec.version.value = 1
    assert [s.version for s in models.GetModelStatus(request, timeout=30).model_version_status] == [1]


# --- errors ------------------------------------------------------------------------------------


def tensor(dtype=types_pb2.DT_STRING, dims=(1, 2), values=(b"m1", b"m2"), **fields):
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    if dims is not None:
        proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(values)
    return proto


MALFORMED = [
    (tf.make_tensor_proto([[1, 2]], dtype=tf.int32), "expects a DT_STRING tensor of item ids, got DT_INT32"),
    (tf.make_tensor_proto([[0.5]], dtype=tf.float32), "got DT_FLOAT"),
    (tf.make_tensor_proto(["m1", "m2"], dtype=tf.string), "expects rank 2 [batch, length], got shape [2]"),
    (tf.make_tensor_proto([[["m1"]]], dtype=tf.string), "got shape [1, 1, 1]"),
    (tf.make_tensor_proto("m1", dtype=tf.string), "got shape []"),
    (tensor(dims=None, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)), "the shape must be known"),
    (tensor(dims=(2, 2)), "shape [2, 2] needs 4 values, string_val has 2"),
    (tensor(dims=(1, 1)), "shape [1, 1] needs 1 values, string_val has 2"),
    (tensor(values=(), tensor_content=b"m1m2"), "carries its values in string_val"),
    (tensor(dims=(0, 2), values=()), "empty batch"),
    (tensor(dims=(-1, 2)), "negative dimension"),
    (tf.make_tensor_proto([["m1"]] * 65, dtype=tf.string), "65 histories; at most 64 per request"),
    (tf.make_tensor_proto([["m1"] * 101], dtype=tf.string), "history of 101 ids; at most 100 per history"),
]


@pytest.mark.parametrize("proto, message", MALFORMED)
def test_malformed_tensors_are_invalid_argument(predictions, proto, message):
    code, details = rpc_error(predictions.Predict, predict_request(tensor=proto))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


def test_missing_extra_and_renamed_inputs(predictions):
    good = tf.make_tensor_proto([["m1"]], dtype=tf.string)
    missing = predict_request()
    extra = predict_request(tensor=good)
    extra.inputs["user"].CopyFrom(good)
    renamed = predict_request()
    renamed.inputs["hist"].CopyFrom(good)
    for request, message in [
            (missing, "input size does not match signature: 0!=1 len({}) != len({history}). Sent extra: {}. "
                      "Missing but required: {history}."),
            (extra, "input size does not match signature: 2!=1 len({history,user}) != len({history}). Sent extra: "
                    "{user}. Missing but required: {}."),
            (renamed, "input tensor alias not found in signature: hist. Inputs expected to be in the set {history}.")]:
        assert rpc_error(predictions.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    unknown = predict_request([["m1"]])
    unknown.output_filter.append("logits")
    code, details = rpc_error(predictions.Predict, unknown)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output tensor alias not found in signature: logits" in details
    twice = predict_request([["m1"]])
    twice.output_filter.extend(["scores", "scores"])
    assert rpc_error(predictions.Predict, twice)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_models_versions_labels_and_signatures(predictions, models):
    found = grpc.StatusCode.NOT_FOUND
    cases = [(predict_request([["m1"]], name="other"), found, "Servable not found for request: Latest(other)"),
             (predict_request([["m1"]], version=9), found, f"Servable not found for request: Specific({NAME}, 9)"),
             (predict_request([["m1"]], name=""), found, "Servable not found for request: Latest()"),
             (predict_request([["m1"]], version_label="stable"), grpc.StatusCode.INVALID_ARGUMENT,
              "Unrecognized servable version label: stable"),
             (predict_request([["m1"]], signature_name="predict"), grpc.StatusCode.FAILED_PRECONDITION,
              "Serving signature key \"predict\" not found."),
             (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")]
    for request, code, message in cases:
        assert rpc_error(predictions.Predict, request) == (code, message)
    # The model is looked up before the tensor is read, as in TF Serving.
    assert rpc_error(predictions.Predict, predict_request(tensor=MALFORMED[0][0], name="other"))[0] == found

    metadata = get_model_metadata_pb2.GetModelMetadataRequest
    for request, code, message in [
            (metadata(metadata_field=["signature_def"]), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
            (metadata(model_spec={"name": NAME}), grpc.StatusCode.INVALID_ARGUMENT, "at least one metadata_field"),
            (metadata(model_spec={"name": NAME}, metadata_field=["x"]), grpc.StatusCode.INVALID_ARGUMENT,
             "Metadata field x is not supported"),
            (metadata(model_spec={"name": "other"}, metadata_field=["signature_def"]), found, "Latest(other)")]:
        got_code, details = rpc_error(predictions.GetModelMetadata, request)
        assert got_code == code and message in details, details

    status = get_model_status_pb2.GetModelStatusRequest
    for request, code, message in [
            (status(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
            (status(model_spec={"name": "other"}), found, "Could not find any versions of model other"),
            (status(model_spec={"name": NAME, "version": wrappers_pb2.Int64Value(value=9)}), found,
             f"Could not find version 9 of model {NAME}"),
            (status(model_spec={"name": NAME, "version_label": "canary"}), grpc.StatusCode.INVALID_ARGUMENT,
             "Unrecognized servable version label: canary")]:
        assert rpc_error(models.GetModelStatus, request) == (code, message)

    classify = classification_pb2.ClassificationRequest(model_spec={"name": NAME})
    code, details = rpc_error(predictions.Classify, classify)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tensorflow/serving/predict" in details
    multi = inference_pb2.MultiInferenceRequest()
    assert rpc_error(predictions.MultiInference, multi)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_oversized_messages_are_resource_exhausted(predictions):
    big = predict_request([[f"m{i % 30}-{'x' * 100}" for i in range(100)]] * 10)  # ~100 kB > 64 KiB
    assert big.ByteSize() > LIMIT
    code, details = rpc_error(predictions.Predict, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    assert predictions.Predict(predict_request([["m1"]]), timeout=30).outputs["item_ids"].string_val[0] == b"m2"


# --- concurrency and the shared version table --------------------------------------------------


def test_concurrent_clients(server, saved_model):
    expected = {i: direct(saved_model, [h])[0][0] for i, h in enumerate(HISTORIES)}
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") for _ in range(3)]
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]

    def one(r):
        i = r % len(HISTORIES)
        response = stubs[r % len(stubs)].Predict(predict_request([HISTORIES[i]]), timeout=60)
        return list(response.outputs["item_ids"].string_val) == list(expected[i])

    try:
        with futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(48)))
    finally:
        for c in channels:
            c.close()
    assert results == [True] * 48


def rest_status(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/v1/models/{NAME}")
        return [int(s["version"]) for s in json.loads(conn.getresponse().read())["model_version_status"]]
    finally:
        conn.close()


def test_rest_and_grpc_share_one_version_table(tmp_path, exported_v1, trained_cycle_model):
    base = tmp_path / NAME
    shutil.copytree(exported_v1, base / "1")
    with ModelServer(base, poll_seconds=0, grpc_port=0) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        status = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": NAME})
        export_recommender(trained_cycle_model, base, k=3)
        assert server.poll() == [1, 2]
        assert [s.version for s in stub.GetModelStatus(status, timeout=30).model_version_status] \
            == rest_status(server.port) == [2, 1]
        response = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(predict_request([["m1"]]), timeout=30)
        assert response.model_spec.version.value == 2 and len(response.outputs["item_ids"].string_val) == 3
        # A port in use is refused (no second listener on the same port).
        with pytest.raises(OSError, match="cannot bind gRPC"):
            ModelServer(base, poll_seconds=0, grpc_port=server.grpc_port).start()
