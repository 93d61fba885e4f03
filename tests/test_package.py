"""Package-level behaviour: Keras selection and the lazy public API."""

import os
import subprocess
import sys

import pytest

# Each import scenario needs a fresh interpreter; importing TensorFlow takes seconds, so the
# module's interpreters are started together (`fresh_python`) and each test reads its own.
SCENARIOS = {
    "legacy": ("import tfmarl, tensorflow as tf; print(tf.keras.layers.Layer.__module__)", None),
    "keras3_first": ("import tensorflow as tf; tf.keras.layers.Layer\nimport tfmarl", None),
    "tensorflow_first": ("import tensorflow\nimport tfmarl", None),
    "tensorflow_first_with_variable": (
        "import tensorflow as tf\nimport tfmarl\nprint(tf.keras.optimizers.Adam.__module__)",
        {"TF_USE_LEGACY_KERAS": "1"}),
}


def start_python(code, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.fixture(scope="module")
def fresh_python():
    """name -> the finished `subprocess.CompletedProcess` of that scenario's interpreter."""
    processes = {name: start_python(code, env) for name, (code, env) in SCENARIOS.items()}
    done = {}

    def result(name):
        if name not in done:
            process = processes[name]
            stdout, stderr = process.communicate(timeout=600)
            done[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        return done[name]

    yield result
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_import_selects_legacy_keras(fresh_python):
    out = fresh_python("legacy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("tf_keras")


@pytest.mark.slow
def test_import_after_keras3_binding_raises_clear_error(fresh_python):
    out = fresh_python("keras3_first")
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "TF_USE_LEGACY_KERAS=1" in out.stderr


@pytest.mark.slow
def test_import_after_tensorflow_without_the_variable_raises(fresh_python):
    out = fresh_python("tensorflow_first")
    assert out.returncode != 0 and "import tfmarl before TensorFlow" in out.stderr


def test_import_after_tensorflow_with_the_variable_works(fresh_python):
    out = fresh_python("tensorflow_first_with_variable")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("tf_keras")


def test_lazy_public_api():
    import tfmarl

    assert tfmarl.UserAgent.__name__ == "UserAgent"
    assert callable(tfmarl.export_recommender)
    assert "SequentialRecommender" in dir(tfmarl)
