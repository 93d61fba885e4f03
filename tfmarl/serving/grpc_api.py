"""TF Serving's gRPC API: ``PredictionService`` (Predict, GetModelMetadata) and
``ModelService.GetModelStatus``, with the protos and stubs of ``tensorflow-serving-api``.

The same `VersionTable` and `Limits` as the REST API, and TF Serving's status codes and messages:

* no ``model_spec``: INVALID_ARGUMENT "Missing ModelSpec";
* unknown model or version: NOT_FOUND "Servable not found for request: Latest(name)" /
  "Specific(name, n)" (status: "Could not find any versions of model ..." / "Could not find version");
* a ``version_label``: INVALID_ARGUMENT "Unrecognized servable version label: ..." (tfmarl serves
  no labels: ask for a version number, or for none to get the newest);
* a signature other than ``serving_default``: FAILED_PRECONDITION "Serving signature key ... not found.";
* inputs other than ``history``, a tensor that is not DT_STRING, not of rank 2, whose values do not
  fill its shape, or an unknown ``output_filter`` alias: INVALID_ARGUMENT; so are batches or
  histories beyond the limits;
* a message over ``max_message_bytes``: RESOURCE_EXHAUSTED (gRPC's own check, before any parsing);
  more than ``max_concurrent_rpcs`` calls at once: RESOURCE_EXHAUSTED (gRPC's own check).

Outputs are filled as TF Serving fills them by default (typed fields: ``string_val``, ``float_val``).
Classify and Regress answer INVALID_ARGUMENT (the signature is a predict one); MultiInference and
HandleReloadConfigRequest UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
import numpy as np
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc, status_pb2)

from tfmarl.contract import INPUT_NAME, PAD_ID, PREDICT_METHOD_NAME, SIGNATURE_KEY
from tfmarl.serving.errors import Code, RequestError, clip
from tfmarl.serving.limits import Limits
from tfmarl.serving.versions import LoadedVersion, VersionTable

log = logging.getLogger("tfmarl.serving")

_TYPED_FIELDS = {np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
                 np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
                 np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
                 np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
                 np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val")}


def _bad(message: str) -> RequestError:
    return RequestError(Code.INVALID_ARGUMENT, message)


def history_array(proto: tensor_pb2.TensorProto, limits: Limits) -> np.ndarray:
    """The ``history`` input of a PredictRequest -> object array [batch, max(1, length)] of bytes."""
    where = f"input '{INPUT_NAME}'"
    if proto.dtype != types_pb2.DT_STRING:
        name = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else proto.dtype
        raise _bad(f"{where}: expects a DT_STRING tensor of item ids, got {name}")
    if proto.tensor_shape.unknown_rank:
        raise _bad(f"{where}: the shape must be known: [batch, length]")
    dims = [d.size for d in proto.tensor_shape.dim]
    if len(dims) != 2:
        raise _bad(f"{where}: expects rank 2 [batch, length], got shape {dims}")
    batch, length = dims
    if batch < 0 or length < 0:
        raise _bad(f"{where}: negative dimension in shape {dims}")
    if batch == 0:
        raise _bad(f"{where}: empty batch (shape {dims}): expecting at least one history")
    limits.check_batch(batch)
    limits.check_history(length, where)
    if proto.tensor_content:
        raise _bad(f"tensor parsing error: {INPUT_NAME}: a DT_STRING tensor carries its values in string_val")
    if len(proto.string_val) != batch * length:
        raise _bad(f"tensor parsing error: {INPUT_NAME}: shape {dims} needs {batch * length} values, "
                   f"string_val has {len(proto.string_val)}")
    if length == 0:  # all padding: the model needs one column
        return np.full((batch, 1), PAD_ID.encode(), dtype=object)
    return np.array(proto.string_val, dtype=object).reshape(batch, length)


def fill_tensor_proto(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Writes ``array`` into ``proto`` as TF Serving does by default (typed value fields)."""
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in array.shape]))
    if array.dtype == object:
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(array.ravel().tolist())
    elif array.dtype in _TYPED_FIELDS:
        proto.dtype, field = _TYPED_FIELDS[array.dtype]
        getattr(proto, field).extend(array.ravel().tolist())
    else:  # any other dtype a custom export might return
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(array))


def _model_spec(name: str, loaded: LoadedVersion, signature: str | None = None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, version=wrappers_pb2.Int64Value(value=loaded.version))
    if signature:
        spec.signature_name = signature
    return spec


class _Api:
    """The request logic of both services (plain methods; the servicers wrap them)."""

    def __init__(self, table: VersionTable, limits: Limits):
        self.table = table
        self.limits = limits

    @staticmethod
    def model_and_version(request) -> tuple:
        """(model name, version number or None for the newest) of a request's ``model_spec``."""
        if not request.HasField("model_spec"):
            raise _bad("Missing ModelSpec")
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise _bad(f"Unrecognized servable version label: {clip(spec.version_label)}")
        return spec.name, spec.version.value if choice == "version" else None

    def servable(self, request) -> LoadedVersion:
        return self.table.servable(*self.model_and_version(request))

    @staticmethod
    def check_signature(request) -> str:
        signature = request.model_spec.signature_name or SIGNATURE_KEY
        if signature != SIGNATURE_KEY:
            raise RequestError(Code.FAILED_PRECONDITION, f"Serving signature key \"{clip(signature)}\" not found.")
        return signature

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        loaded = self.servable(request)
        signature = self.check_signature(request)
        names = set(request.inputs)
        if names != {INPUT_NAME}:
            if len(names) != 1:  # TF Serving's words
                sent, extra = clip(",".join(sorted(names))), clip(",".join(sorted(names - {INPUT_NAME})))
                missing = "" if INPUT_NAME in names else INPUT_NAME
                raise _bad(f"input size does not match signature: {len(names)}!=1 len({{{sent}}}) != "
                           f"len({{{INPUT_NAME}}}). Sent extra: {{{extra}}}. Missing but required: {{{missing}}}.")
            raise _bad(f"input tensor alias not found in signature: {clip(names.pop())}. Inputs expected to be in "
                       f"the set {{{INPUT_NAME}}}.")
        outputs = list(request.output_filter) or loaded.output_names
        for alias in request.output_filter:
            if alias not in loaded.output_names:
                raise _bad(f"output tensor alias not found in signature: {clip(alias)} Outputs expected to be in "
                           f"the set {{{','.join(loaded.output_names)}}}.")
        if len(set(outputs)) != len(outputs):
            raise _bad(f"duplicate output tensor alias: {clip(','.join(outputs))}")
        result = loaded.serve(history_array(request.inputs[INPUT_NAME], self.limits))
        response = predict_pb2.PredictResponse(model_spec=_model_spec(self.table.model_name, loaded, signature))
        for name in outputs:
            fill_tensor_proto(response.outputs[name], result[name])
        return response

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise _bad("Missing ModelSpec")
        if not request.metadata_field:
            raise _bad("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise _bad(f"Metadata field {clip(field)} is not supported")
        loaded = self.servable(request)
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=_model_spec(self.table.model_name, loaded))
        response.metadata["signature_def"].Pack(
            get_model_metadata_pb2.SignatureDefMap(signature_def={SIGNATURE_KEY: loaded.signature_def}))
        return response

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        versions = self.table.status(*self.model_and_version(request))
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
            get_model_status_pb2.ModelVersionStatus(version=v, state=available, status=status_pb2.StatusProto())
            for v in versions])

    def not_predict(self, request, kind: str):
        self.servable(request)
        self.check_signature(request)
        raise _bad(f"Expected {kind} signature method_name to be tensorflow/serving/{kind}. Was: "
                   f"{PREDICT_METHOD_NAME} (tfmarl exports answer Predict)")


def _answer(context, call, *args):
    """Runs ``call``; a `RequestError` (or a crash, as INTERNAL) ends the RPC with its status code."""
    try:
        return call(*args)
    except RequestError as e:
        error = e
    except Exception:  # noqa: BLE001 - a bug must not leak a traceback to the client
        log.exception("gRPC request failed")
        error = RequestError(Code.INTERNAL, "internal error")
    context.abort(grpc.StatusCode[error.code.name], error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: _Api):
        self._api = api

    def Predict(self, request, context):  # noqa: N802 - the proto's method names
        return _answer(context, self._api.predict, request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, self._api.metadata, request)

    def Classify(self, request, context):  # noqa: N802
        return _answer(context, self._api.not_predict, request, "classify")

    def Regress(self, request, context):  # noqa: N802
        return _answer(context, self._api.not_predict, request, "regress")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: _Api):
        self._api = api

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, self._api.status, request)


class GrpcServer:
    """The two services on ``host:port`` (port 0: any free port), ``workers`` handler threads.

    `start` binds and returns the port; `stop` ends the server (in-flight calls get ``grace`` s).
    """

    def __init__(self, table: VersionTable, limits: Limits, host: str = "127.0.0.1", port: int = 0, *,
                 workers: int = 16, max_concurrent_rpcs: int = 256):
        if workers < 1 or max_concurrent_rpcs < 1:
            raise ValueError(f"workers and max_concurrent_rpcs must be >= 1, got {workers}, {max_concurrent_rpcs}")
        self.host, self.port = host, int(port)
        self._api = _Api(table, limits)
        self._workers = int(workers)
        self._max_concurrent_rpcs = int(max_concurrent_rpcs)
        self._server: grpc.Server | None = None

    def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("the gRPC server is already started")
        options = [("grpc.max_receive_message_length", self._api.limits.max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a port in use is an error, not a second listener
        server = grpc.server(futures.ThreadPoolExecutor(self._workers, thread_name_prefix="tfmarl-serving-grpc"),
                             options=options, maximum_concurrent_rpcs=self._max_concurrent_rpcs)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self._api), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self._api), server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as e:  # grpcio >= 1.5x raises where it used to return 0
            raise OSError(f"cannot bind gRPC to {address}: {e}") from None
        if not bound:
            raise OSError(f"cannot bind gRPC to {address}")
        server.start()
        self._server, self.port = server, bound
        return bound

    def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)
            self._server = None
