"""`load_bandit_feedback`: impression files -> SlateLog, and every error names file, line and column."""

import json

import numpy as np
import pandas as pd
import pytest

from tfmarl.data import DataError, Vocabulary, load_bandit_feedback
from tfmarl.evaluation.ope import iips

HEADER = "round_id,position,item_id,reward,propensity,conditional,history,user\n"
ROWS = ["r1,1,a,1,0.5,0.5,x y,u1", "r1,2,b,0,0.4,0.8,x y,u1", "r2,1,b,0,0.3,0.3,,u2", "r2,2,c,1,0.6,0.857142857,,u2"]


def write(tmp_path, rows, header=HEADER, name="log.csv"):
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def load(path, **kw):
    kw = {"propensity": "propensity", "conditional_propensity": "conditional", "history": "history",
          "user": "user", **kw}
    return load_bandit_feedback(path, **kw)


def test_reads_slates_propensities_and_histories(tmp_path):
    log = load(write(tmp_path, ROWS))
    assert log.item_vocab == ["a", "b", "c", "x", "y"]
    np.testing.assert_array_equal(log.slates, [[2, 3], [3, 4]])
    np.testing.assert_array_equal(log.rewards, [[1, 0], [0, 1]])
    np.testing.assert_allclose(log.position_propensities, [[0.5, 0.4], [0.3, 0.6]])
    np.testing.assert_allclose(log.cascade_propensities, [[0.5, 0.4], [0.3, 0.3 * 0.857142857]])
    np.testing.assert_array_equal(log.history, [[5, 6], [0, 0]])
    assert log.users == ["u1", "u2"] and log.round_ids == ["r1", "r2"]
    # Rows in any order, Parquet too, and a given vocabulary.
    shuffled = write(tmp_path, [ROWS[3], ROWS[0], ROWS[2], ROWS[1]], name="shuffled.csv")
    again = load(shuffled, items=Vocabulary(["c", "b", "a", "x", "y"]))
    np.testing.assert_array_equal(again.slates, [[3, 2], [4, 3]])  # round r2 first now
    frame = pd.read_csv(write(tmp_path, ROWS), dtype=str, keep_default_na=False)
    frame.to_parquet(tmp_path / "log.parquet")
    np.testing.assert_array_equal(load(tmp_path / "log.parquet").slates, log.slates)
    assert iips(log, _self(log), num_bootstrap=0).n == 2


def _self(log):
    from tfmarl.evaluation.ope import SlateTarget
    return SlateTarget.deterministic(log, log.slates)


def test_single_action_and_distribution_columns(tmp_path):
    dist = [json.dumps({"a": 0.25, "b": 0.75}), json.dumps({"a": 0.5, "b": 0.5})]
    path = tmp_path / "one.csv"
    pd.DataFrame({"round_id": ["1", "2"], "position": [0, 0], "item_id": ["a", "b"], "reward": [1, 0],
                  "dist": dist}).to_csv(path, index=False)
    log = load_bandit_feedback(path, behaviour_probs="dist")
    assert log.slate_size == 1
    np.testing.assert_allclose(log.position_propensities[:, 0], [0.25, 0.5])
    companion = tmp_path / "probs.csv"
    companion.write_text("round_id,position,item_id,probability\n1,0,a,0.25\n1,0,b,0.75\n2,0,a,0.5\n2,0,b,0.5\n")
    log2 = load_bandit_feedback(path, behaviour_file=companion)
    np.testing.assert_allclose(log2.position_propensities, log.position_propensities)
    bad = tmp_path / "bad_probs.csv"
    bad.write_text("round_id,position,item_id,probability\n1,0,a,0.25\n1,0,b,0.5\n2,0,a,0.5\n2,0,b,0.5\n")
    with pytest.raises(DataError, match=r"bad_probs.csv, line 2, column 'probability': .*sums to 0.75"):
        load_bandit_feedback(path, behaviour_file=bad)
    with pytest.raises(DataError, match=r"line 2, column 'dist': behaviour distribution is not a JSON"):
        pd.DataFrame({"round_id": ["1"], "position": [0], "item_id": ["a"], "reward": [1],
                      "dist": ["nope"]}).to_csv(tmp_path / "nojson.csv", index=False)
        load_bandit_feedback(tmp_path / "nojson.csv", behaviour_probs="dist")


@pytest.mark.parametrize("rows, kw, pattern", [
    ([ROWS[0], "r1,2,b,0,1.5,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'propensity': propensity 1.5 outside \(0, 1\]"),
    ([ROWS[0], "r1,2,b,0,0,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'propensity': propensity 0.0 outside"),
    ([ROWS[0], "r1,3,b,0,0.4,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'position': missing positions"),
    ([ROWS[0], "r1,1,b,0,0.4,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'position': duplicate \(round, position\)"),
    ([*ROWS, "r3,1,a,0,0.5,0.5,,u3"], {}, r"line 6, column 'round_id': round 'r3' has 1 positions"),
    (ROWS, {"items": ["a", "b"]}, r"line 5, column 'item_id': unknown item 'c'"),
    (ROWS, {"items": ["a", "b", "c"]}, r"line 2, column 'history': unknown item 'x'"),
    ([ROWS[0], "r1,2,a,0,0.4,0.8,x y,u1", *ROWS[2:]], {}, r"line 2, column 'item_id': .*same item twice"),
    ([ROWS[0], "r1,2,b,maybe,0.4,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'reward': reward 'maybe'"),
    ([ROWS[0], "r1,1.5,b,0,0.4,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'position': .*not an integer"),
    ([ROWS[0], ",2,b,0,0.4,0.8,x y,u1", *ROWS[2:]], {}, r"line 3, column 'round_id': empty round id"),
])
def test_errors_name_file_line_and_column(tmp_path, rows, kw, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        load(write(tmp_path, rows), **kw)
    assert "log.csv" in str(info.value)


def test_missing_columns_and_arguments(tmp_path):
    path = write(tmp_path, ROWS)
    with pytest.raises(DataError, match=r"column 'score': missing column"):
        load(path, reward="score")
    with pytest.raises(ValueError, match="give the logging probabilities"):
        load_bandit_feedback(path)
    with pytest.raises(ValueError, match="need the marginal propensity"):
        load_bandit_feedback(path, conditional_propensity="conditional")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.csv")
