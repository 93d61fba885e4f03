"""User, Content and System agents: shapes, masking, causality, serialisation, tf.function, strategies."""

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.agents import ContentAgent, SystemAgent, UserAgent, mask_excluded

ENCODERS = ["transformer", "gru", "lstm"]


def embedded(batch=3, length=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(batch, length, dim)).astype("float32"))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_user_agent_shapes_and_cold_start(encoder):
    agent = UserAgent(encoder, dim=16, max_length=6, num_layers=1, dropout=0.0)
    x = embedded()
    mask = tf.constant([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]) > 0
    states = agent(x, mask=mask, return_sequences=True)
    assert states.shape == (3, 6, 16)
    final = agent(x, mask=mask)
    assert final.shape == (3, 16)
    np.testing.assert_allclose(final[0], states[0, 2], atol=1e-6)
    np.testing.assert_allclose(final[2], agent.cold_start.numpy(), atol=1e-6)
    assert np.isfinite(final.numpy()).all()


def test_transformer_final_state_is_the_sequence_state_at_the_last_item():
    # The final state computes the last block at one position per row only: it must equal the
    # full sequence's state there, for every length (including a single item and none).
    agent = UserAgent("transformer", dim=16, max_length=6, num_layers=3, num_heads=4, dropout=0.0)
    x = embedded(batch=5, length=6)
    lengths = np.array([6, 3, 1, 0, 5])
    mask = tf.constant(np.arange(6)[None, :] < lengths[:, None])
    states = agent(x, mask=mask, return_sequences=True).numpy()
    final = tf.function(lambda x, m: agent(x, mask=m))(x, mask).numpy()
    for row, length in enumerate(lengths):
        expected = states[row, length - 1] if length else agent.cold_start.numpy()
        np.testing.assert_allclose(final[row], expected, atol=1e-5)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_user_agent_is_causal_and_ignores_padding(encoder):
    agent = UserAgent(encoder, dim=8, max_length=8, num_layers=2, dropout=0.0)
    x = embedded(batch=1, length=6)
    mask = tf.constant([[1, 1, 1, 1, 0, 0]]) > 0
    base = agent(x, mask=mask, return_sequences=True).numpy()
    changed = x.numpy().copy()
    changed[0, 3] = np.random.default_rng(9).normal(size=8)  # a later item
    changed[0, 5] -= 7.0  # padding
    other = agent(tf.constant(changed), mask=mask, return_sequences=True).numpy()
    np.testing.assert_allclose(base[0, :3], other[0, :3], atol=1e-5)
    assert not np.allclose(base[0, 3], other[0, 3])
    # The final state ignores trailing padding: same as the unpadded history.
    np.testing.assert_allclose(agent(x, mask=mask).numpy(), agent(x[:, :4], mask=mask[:, :4]).numpy(), atol=1e-5)


def test_user_agent_rejects_bad_config_and_long_history():
    with pytest.raises(ValueError, match="encoder"):
        UserAgent("cnn")
    agent = UserAgent("transformer", dim=8, max_length=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_length"):
        agent(embedded(batch=1, length=5))


@pytest.mark.parametrize("layer", [
    lambda: UserAgent("gru", dim=8, max_length=5, num_layers=1),
    lambda: UserAgent("transformer", dim=8, max_length=5, num_heads=2),
    lambda: ContentAgent(10, dim=8, num_categories=4, text_vocabulary_size=7, title_length=3, text_embedding_dim=5),
    lambda: SystemAgent(k=3, interaction="dcn"),
])
def test_agents_round_trip_config(layer):
    original = layer()
    clone = type(original).from_config(original.get_config())
    assert clone.get_config() == original.get_config()
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(original))
    assert type(restored) is type(original)


def content_features(num_items=10):
    cats = np.zeros((num_items, 4), np.int32)
    cats[2:, 0] = 1 + np.arange(num_items - 2) % 3
    titles = np.zeros((num_items, 3), np.int32)
    titles[2:, :2] = 1 + np.arange(num_items - 2)[:, None] % 6
    text = np.zeros((num_items, 5), np.float32)
    text[2:] = np.random.default_rng(0).normal(size=(num_items - 2, 5))
    return {"categories": cats, "title_tokens": titles, "text_embeddings": text}


def test_content_agent_uses_every_feature():
    agent = ContentAgent(10, dim=8, num_categories=4, text_vocabulary_size=7, title_length=3, text_embedding_dim=5)
    before = agent.catalog().numpy()
    agent.set_item_features(content_features())
    after = agent.catalog().numpy()
    assert after.shape == (10, 8)
    # Reserved rows carry no features; feature rows changed.
    np.testing.assert_allclose(before[:2], after[:2], atol=1e-6)
    assert not np.allclose(before[2:], after[2:])
    assert agent(tf.constant([[2, 3], [4, 0]])).shape == (2, 2, 8)
    assert len(agent.trainable_weights) == 4 and len(agent.non_trainable_weights) == 4  # + known_items


def test_content_agent_rejects_bad_features():
    agent = ContentAgent(10, dim=8, num_categories=4)
    with pytest.raises(ValueError, match="shape"):
        agent.set_item_features({"categories": np.zeros((9, 4), np.int32)})
    with pytest.raises(ValueError, match="outside"):
        agent.set_item_features({"categories": np.full((10, 4), 9, np.int32)})
    with pytest.raises(ValueError, match="text_vocabulary_size=0"):
        agent.set_item_features({"title_tokens": np.zeros((10, 16), np.int32)})


@pytest.mark.parametrize("interaction", ["dot", "mlp", "dcn"])
def test_system_agent_scores_and_excludes(interaction):
    agent = SystemAgent(k=3, interaction=interaction)
    states = tf.constant(np.random.default_rng(1).normal(size=(2, 4)).astype("float32"))
    items = tf.constant(np.random.default_rng(2).normal(size=(8, 4)).astype("float32"))
    scores = agent.score(states, items)
    assert scores.shape == (2, 8)
    per_row = agent.score(states, tf.stack([items[:5], items[3:]]))
    np.testing.assert_allclose(per_row[0], scores[0, :5], atol=1e-5)
    top = agent(states, items, exclude=tf.constant([[2, 3, 0], [4, 0, 0]]))
    assert top.indices.shape == (2, 3)
    flat = top.indices.numpy()
    assert not set(flat[0]) & {0, 1, 2, 3} and not set(flat[1]) & {0, 1, 4}
    masked = mask_excluded(scores, tf.constant([[2, 3, 0], [4, 0, 0]])).numpy()
    expected = np.argsort(-masked, kind="stable", axis=1)[:, :3]
    np.testing.assert_array_equal(flat, expected)
    with pytest.raises(ValueError, match=r"items must be \[num_items, dim\]"):
        agent(states, tf.stack([items[:5], items[3:]]))  # per-row candidates go through score()


def test_system_agent_rejects_unknown_interaction():
    with pytest.raises(ValueError, match="interaction"):
        SystemAgent(interaction="attention")


def test_agents_run_in_tf_function_and_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        content = ContentAgent(12, dim=8)
        user = UserAgent("transformer", dim=8, max_length=4, num_layers=1)
        system = SystemAgent(k=2)

    @tf.function
    def recommend(history):
        items = content.catalog()
        state = user(tf.gather(items, history), mask=history > 0)
        return system(state, items, exclude=history).indices

    history = tf.constant([[2, 3, 0, 0], [5, 6, 7, 8]])
    result = strategy.run(recommend, (history,))
    for replica_result in strategy.experimental_local_results(result):
        assert replica_result.shape == (2, 2)
    assert recommend(history).shape == (2, 2)


def _window_reference(row, max_length):
    return [int(i) for i in row if i >= 2][-max_length:]


@pytest.mark.parametrize("jit", [False, True])
def test_history_window_keeps_each_rows_last_known_items_in_order(jit):
    from tfmarl.agents.blocks import history_window

    rng = np.random.default_rng(3)
    rows = [np.zeros(9, np.int64), np.array([0, 0, 5, 1, 7, 0, 9, 3, 0]),  # left padding, an OOV (1), gaps
            np.arange(2, 11), np.array([4, 1, 1, 1, 1, 1, 1, 1, 1])]
    rows += [rng.integers(0, 12, 9) for _ in range(12)]
    indices = np.stack(rows).astype(np.int32)
    fn = tf.function(history_window, jit_compile=True) if jit else history_window
    for max_length in (1, 4, 9, 20):
        for width in ((None,) if jit else (None, 1, 3)) + (6, 12):
            got = fn(tf.constant(indices), max_length, width).numpy()
            expected = [_window_reference(r, max_length) for r in rows]
            columns = width or max(1, min(max(map(len, expected)), max_length))
            assert got.shape == (len(rows), columns), (max_length, width)
            for r, (out, keep) in enumerate(zip(got, expected)):
                keep = (keep + [0] * columns)[:columns]
                np.testing.assert_array_equal(out, keep, err_msg=f"row {r}, max_length {max_length}, width {width}")
    empty = history_window(tf.zeros([3, 0], tf.int32), 5).numpy()
    np.testing.assert_array_equal(empty, np.zeros((3, 1), np.int32))
