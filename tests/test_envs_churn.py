"""Catalog churn in the session simulator: new items arrive over time, unclickable before, counted
after; candidate retrieval leaves out the items that do not exist yet."""

import numpy as np
import pytest

from tfmarl.envs import SessionConfig, SessionEnvironment, myopic_oracle_policy, run_episodes
from tfmarl.envs.candidates import CandidateSessionEnvironment

import fakes


@pytest.fixture(scope="module")
def tiny_model():
    return fakes.tiny_model()


def test_new_items_arrive_evenly_and_are_unclickable_before(tiny_model):
    config = SessionConfig(slate_size=5, new_item_fraction=0.25, new_item_arrival_steps=40)
    env = SessionEnvironment(tiny_model, config, batch_size=8, seed=3)
    new = env.new_items
    assert len(new) == round(0.25 * (tiny_model.num_items - 2)) and len(np.unique(new)) == len(new)
    assert not env.available_items[new].any() and env.available_items[2:].sum() == tiny_model.num_items - 2 - len(new)
    env.reset()
    # A slate of only not-yet-arrived items is never clicked.
    env.step(np.tile(new[:5], (8, 1)))
    assert env.last_info["click"].sum() == 0 and env.last_info["new_item_click"].sum() == 0
    arrived = [int(env.available_items[new].sum())]
    for _ in range(45):
        env.step(myopic_oracle_policy(env)(env.current_time_step().observation))
        arrived.append(int(env.available_items[new].sum()))
    assert arrived == sorted(arrived) and arrived[-1] == len(new)  # all arrived by step 40
    assert 0 < arrived[19] < len(new)  # about half way through the arrival period
    # The same seed picks the same new items; explicit ones override the fraction.
    assert np.array_equal(SessionEnvironment(tiny_model, config, batch_size=8, seed=3).new_items, new)
    chosen = SessionEnvironment(tiny_model, config, batch_size=8, new_items=[5, 6, 7]).new_items
    assert sorted(chosen.tolist()) == [5, 6, 7]
    with pytest.raises(ValueError, match="new_items must lie"):
        SessionEnvironment(tiny_model, config, new_items=[1])
    with pytest.raises(ValueError, match="new_item_fraction"):
        SessionConfig(new_item_fraction=1.0)


def test_new_item_clicks_are_counted(tiny_model):
    config = SessionConfig(slate_size=5, new_item_fraction=0.5, new_item_arrival_steps=1)
    env = SessionEnvironment(tiny_model, config, batch_size=16, seed=0)
    new = set(env.new_items.tolist())

    def only_new(observation):  # after the first step every new item exists
        items = np.array(sorted(new))
        return np.stack([np.random.default_rng(int(s)).choice(items, 5, replace=False) for s in observation["step"]])

    result = run_episodes(env, only_new, 32, seed=0)
    assert result["clicks"].sum() > 0
    # Every click after the first step is on a new item; no old item was shown.
    assert result["new_item_clicks"].sum() <= result["clicks"].sum()
    assert result["new_item_clicks"].sum() >= result["clicks"].sum() - 16
    plain = run_episodes(SessionEnvironment(tiny_model, SessionConfig(slate_size=5), batch_size=16), only_new, 32)
    assert plain["new_item_clicks"].sum() == 0  # without churn nothing is new


def test_candidates_leave_out_items_not_arrived(tiny_model):
    config = SessionConfig(slate_size=3, history_length=5, new_item_fraction=0.3, new_item_arrival_steps=10)
    session = SessionEnvironment(tiny_model, config, batch_size=4, seed=1)
    seen = []

    def retrieve(history, available):
        seen.append(available.copy())
        scores = np.where(available, np.arange(tiny_model.num_items, dtype=float), -np.inf)
        scores[:2] = -np.inf
        return np.argsort(-scores)[None, :8].repeat(len(history), 0).astype(np.int32)

    env = CandidateSessionEnvironment(session, retrieve, 8)
    step = env.reset()
    for _ in range(12):
        assert session.available_items[step.observation["candidates"]].all()
        step = env.step(np.tile(np.arange(3, dtype=np.int32), (4, 1)))
    assert not seen[0][session.new_items].any() and seen[-1][session.new_items].all()


@pytest.mark.slow
def test_candidate_retriever_leaves_out_unavailable_items(trained_cycle_model):
    from tfmarl.rl import CandidateRetriever

    retriever = CandidateRetriever(trained_cycle_model, num_candidates=5)
    history = np.array([[2, 3, 0]], np.int32)
    top = retriever(history)["candidates"][0]
    available = np.ones(trained_cycle_model.num_items, bool)
    available[top[:2]] = False
    again = retriever(history, available=available)["candidates"][0]
    assert not set(top[:2]) & set(again) and list(again[:3]) == list(top[2:])
    with pytest.raises(ValueError, match="available"):
        retriever(history, available=available[:-1])


def test_policies_on_the_retriever_follow_its_availability(trained_cycle_model):
    from tfmarl.rl import CandidateRetriever, GreedySlatePolicy

    retriever = CandidateRetriever(trained_cycle_model, num_candidates=6)
    observation = {"history": np.array([[2, 3, 0]], np.int32), "step": np.zeros(1, np.int32)}
    slate = GreedySlatePolicy(retriever, 3)(observation)[0]
    mask = np.ones(trained_cycle_model.num_items, bool)
    mask[slate[0]] = False
    retriever.available = lambda: mask
    assert slate[0] not in GreedySlatePolicy(retriever, 3)(observation)[0]


def test_retriever_reserves_places_for_new_items():
    import tensorflow as tf

    from tfmarl.agents import ContentAgent
    from tfmarl.rl import CandidateRetriever
    from tfmarl.training import SequentialRecommender

    tf.keras.utils.set_random_seed(1)
    n = 40
    model = SequentialRecommender(n, dim=8, max_length=5, num_layers=1,
                                  content_agent=ContentAgent(n, dim=8, id_dropout=0.2))
    model.build_all()
    new = np.arange(30, 40)
    known = np.ones(n, bool)
    known[new] = False
    model.set_known_items(known)
    history = np.array([[2, 3, 0], [4, 0, 0]], np.int32)
    plain = CandidateRetriever(model, num_candidates=8)(history)
    out = CandidateRetriever(model, num_candidates=8, new_item_candidates=3)(history)
    for row in range(2):
        got, scores = out["candidates"][row], out["scores"][row]
        assert len(set(got)) == 8 and np.all(np.diff(scores) <= 1e-6)  # distinct, best first
        assert np.isin(got, new).sum() >= 3
        # The new items placed are the three best-scored new ones; the rest are the plain top.
        all_scores = model.score_catalog(tf.constant(history)).numpy()[row]
        all_scores[:2] = -np.inf
        all_scores[history[row][history[row] > 0]] = -np.inf
        best_new = new[np.argsort(-all_scores[new])[:3]]
        rest = all_scores.copy()
        rest[best_new] = -np.inf
        assert set(got) == set(best_new) | set(np.argsort(-rest)[:5])
        assert set(plain["candidates"][row]) == set(np.argsort(-all_scores)[:8])
    with pytest.raises(ValueError, match="new_item_candidates"):
        CandidateRetriever(model, num_candidates=8, new_item_candidates=9)
    # Only two new items exist: the third reserved place goes to the rest.
    available = np.ones(n, bool)
    available[new[2:]] = False
    few = CandidateRetriever(model, num_candidates=8, new_item_candidates=3)(history, available=available)
    assert all(np.isin(row, new[:2]).sum() <= 2 and len(set(row)) == 8 for row in few["candidates"])
