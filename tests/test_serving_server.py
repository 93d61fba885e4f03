"""`tfmarl serve` (`tfmarl.serving.server`): options, exit statuses, both protocols on their ports."""

import argparse
import socket
import subprocess
import sys
import time

import pytest

from tfmarl.serving import ModelServer
from tfmarl.serving.server import add_arguments, run


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model_base_path", "savedmodels/movies", *argv])


def test_cli_arguments_default_to_tf_servings_ports():
    args = parse()
    assert (args.port, args.grpc_port, args.host, args.poll_seconds, args.model_name) == \
        (8501, 8500, "127.0.0.1", 2.0, None)
    args = parse("--model_name", "x", "--port", "0", "--grpc_port", "0", "--poll_seconds", "0.5")
    assert (args.model_name, args.port, args.grpc_port, args.poll_seconds) == ("x", 0, 0, 0.5)


def test_run_reports_bad_config_and_busy_ports(tmp_path, capsys):
    assert run(parse("--grpc_port", "-3")) == 2
    assert "--grpc_port must be a port number or 0" in capsys.readouterr().out
    args = parse()
    args.model_base_path = str(tmp_path / "missing")
    assert run(args) == 2 and "is not a directory" in capsys.readouterr().out
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = parse("--grpc_port", "0", "--port", str(port))
        args.model_base_path = str(tmp_path)
        assert run(args) == 1  # the REST port is taken
        assert "cannot serve on 127.0.0.1" in capsys.readouterr().out
        args = parse("--port", "0", "--grpc_port", str(port))
        args.model_base_path = str(tmp_path)
        assert run(args) == 1 and "cannot bind gRPC" in capsys.readouterr().out


def test_server_validates_its_config(tmp_path):
    for kwargs, message in [({"max_body_bytes": 0}, "max_message_bytes"), ({"max_batch_size": -1}, "max_batch_size"),
                            ({"read_timeout": 0}, "read_timeout"), ({"grpc_workers": 0}, "grpc_workers")]:
        with pytest.raises(ValueError, match=message):
            ModelServer(tmp_path, **kwargs)
    server = ModelServer(tmp_path, poll_seconds=0)
    server.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    finally:
        server.stop()


@pytest.mark.slow
def test_serve_subprocess_answers_both_protocols_and_stops_on_sigterm(tmp_path):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
    import grpc

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    (tmp_path / "empty").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tfmarl.serving.server", "--model_base_path",
                             str(tmp_path / "empty"), "--port", str(ports[0]), "--grpc_port", str(ports[1])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("serving model"):  # after the log lines
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)  # "": the server exited
        assert f"/v1/models/empty and gRPC 127.0.0.1:{ports[1]}" in lines[-1], lines
        with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "empty"}),
                                    timeout=30)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        proc.terminate()
        started = time.monotonic()
        assert proc.wait(30) == 0 and time.monotonic() - started < 30
