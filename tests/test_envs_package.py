"""Tests for `tfmarl.envs` itself: the public names resolve lazily, and cheaply where they can."""

import importlib
import subprocess
import sys

import pytest

import tfmarl.envs

# Every name the README and the package's docstrings cite as `tfmarl.envs.X`, with its module.
PUBLIC = {
    "UserModel": "fit", "fit_user_model": "fit", "SessionConfig": "config", "SIGNALS": "config",
    "SessionEnvironment": "session", "random_slates": "session", "first_repeat": "session",
    "CandidateSessionEnvironment": "candidates", "PerArmBanditEnvironment": "bandit",
    "run_episodes": "metrics", "slate_diversity": "metrics",
    "myopic_oracle_policy": "oracles", "quality_variety_oracle_policy": "oracles",
}


def test_public_names_come_from_their_modules():
    assert sorted(tfmarl.envs.__all__) == sorted(PUBLIC)
    for name, module in PUBLIC.items():
        assert getattr(tfmarl.envs, name) is getattr(importlib.import_module(f"tfmarl.envs.{module}"), name)
    with pytest.raises(AttributeError, match="'tfmarl.envs' has no attribute 'SessionEnv'"):
        tfmarl.envs.SessionEnv


def test_config_and_metrics_do_not_load_tf_agents():
    code = ("import sys, tfmarl.envs as e; e.SessionConfig(); e.slate_diversity; e.run_episodes; "
            "e.myopic_oracle_policy; e.fit_user_model; "
            "print(sorted(m for m in ('tf_agents', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
