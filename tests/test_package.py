"""Package-level behaviour: Keras selection and the lazy public API."""

import os
import subprocess
import sys


def run_python(code, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_import_selects_legacy_keras():
    out = run_python("import tfmarl, tensorflow as tf; print(tf.keras.layers.Layer.__module__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("tf_keras")


def test_import_after_keras3_binding_raises_clear_error():
    out = run_python("import tensorflow as tf; tf.keras.layers.Layer\nimport tfmarl")
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "TF_USE_LEGACY_KERAS=1" in out.stderr


def test_import_after_tensorflow_without_the_variable_raises():
    out = run_python("import tensorflow\nimport tfmarl")
    assert out.returncode != 0 and "import tfmarl before TensorFlow" in out.stderr


def test_import_after_tensorflow_with_the_variable_works():
    out = run_python("import tensorflow as tf\nimport tfmarl\nprint(tf.keras.optimizers.Adam.__module__)",
                     {"TF_USE_LEGACY_KERAS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("tf_keras")


def test_lazy_public_api():
    import tfmarl

    assert tfmarl.UserAgent.__name__ == "UserAgent"
    assert callable(tfmarl.export_recommender)
    assert "SequentialRecommender" in dir(tfmarl)
