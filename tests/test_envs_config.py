"""Tests for `tfmarl.envs.config`: `SessionConfig` validation and normalisation."""

import dataclasses

import numpy as np
import pytest

from tfmarl.envs import SIGNALS, SessionConfig


@pytest.mark.parametrize("field, value, message", [
    ("slate_size", 0, "slate_size"), ("max_steps", 2.5, "max_steps"), ("boredom_decay", 1.5, "boredom_decay"),
    ("initial_budget", float("nan"), "initial_budget"), ("step_cost", -1.0, "step_cost"),
    ("reward_weights", {"clicks": 1.0}, "unknown signal 'clicks'"),
    ("reward_weights", {"click": "1"}, r"reward_weights\['click'\]"), ("interest_step", 2.0, "interest_step"),
    ("history_length", True, "history_length"), ("initial_budget", 0.0, "initial_budget must be > 0"),
    ("no_click_utility", float("inf"), "no_click_utility must be a finite number"),
    ("reward_weights", [("click", 1.0)], "must be a dict"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        SessionConfig(**{field: value})


def test_config_normalises_numbers_and_round_trips():
    config = SessionConfig(slate_size=np.int64(4), step_cost=1,
                           reward_weights={"click": 1, "conversion": np.float32(2)})
    assert type(config.slate_size) is int and config.slate_size == 4
    assert type(config.step_cost) is float and config.step_cost == 1.0
    assert config.reward_weights == {"click": 1.0, "conversion": 2.0}
    assert all(type(w) is float for w in config.reward_weights.values())
    assert SessionConfig(**config.to_dict()) == config
    assert set(SessionConfig().reward_weights) <= set(SIGNALS) == {"click", "satisfaction", "conversion"}
    # Defaults of the mutable field are not shared between instances.
    a, b = SessionConfig(), SessionConfig()
    a.reward_weights["satisfaction"] = 0.5
    assert b.reward_weights == {"click": 1.0}
    assert dataclasses.replace(config, slate_size=2).slate_size == 2
