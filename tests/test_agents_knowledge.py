"""Knowledge-graph encoder and the Content agent's new-item parts (known items, id dropout,
numeric attributes): values, gradients, serialisation, tf.function and strategies."""

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.agents import ContentAgent, KnowledgeGraphEncoder
from tfmarl.training import SequentialRecommender
from tfmarl.training.recommender import full_softmax_loss

N, D, M = 10, 8, 3


def kg_tables():
    relations = np.zeros((N, M), np.int32)
    entities = np.zeros((N, M), np.int32)
    for item in range(2, N):  # two neighbours each; items 2..5 share entity 1
        relations[item, :2] = [1, 2]
        entities[item, :2] = [1 if item < 6 else 2, 3 + item % 3]
    return relations, entities


def kg_agent(**kwargs):
    relations, entities = kg_tables()
    agent = ContentAgent(N, dim=D, num_entities=7, num_relations=3, max_neighbours=M, **kwargs)
    agent.set_item_features({"kg_relations": relations, "kg_entities": entities})
    return agent


def test_knowledge_encoder_attends_over_present_neighbours_only():
    layer = KnowledgeGraphEncoder(num_entities=5, num_relations=3, dim=D)
    query = tf.random.normal([2, D], seed=1)
    relations = tf.constant([[1, 2, 0], [0, 0, 0]])
    entities = tf.constant([[3, 4, 0], [0, 0, 0]])
    out = layer(query, relations, entities).numpy()
    assert out.shape == (2, D)
    np.testing.assert_allclose(out[1], 0.0, atol=1e-7)  # no neighbour: nothing added
    # Changing what sits in an empty slot changes nothing; changing a present entity does.
    layer.entity_embeddings.assign_add(np.outer(np.eye(5)[0], np.ones(D)).astype(np.float32) * 3.0)
    np.testing.assert_allclose(layer(query, relations, entities).numpy(), out, atol=1e-6)
    layer.entity_embeddings.assign_add(np.outer(np.eye(5)[3], np.ones(D)).astype(np.float32) * 3.0)
    assert np.abs(layer(query, relations, entities).numpy()[0] - out[0]).max() > 1e-3
    # By hand: softmax over the two present messages, then the output projection.
    messages = (tf.gather(layer.entity_embeddings, [3, 4]) + tf.gather(layer.relation_embeddings, [1, 2])).numpy()
    q = layer.query_projection(query[:1]).numpy()[0]
    logits = messages @ q / np.sqrt(D) + layer.relation_bias.numpy()[[1, 2]]
    weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    expected = layer.output_projection(tf.constant((weights @ messages)[None], tf.float32)).numpy()[0]
    np.testing.assert_allclose(layer(query, relations, entities).numpy()[0], expected, rtol=1e-5, atol=1e-6)


def test_knowledge_encoder_rejects_bad_config_and_round_trips():
    with pytest.raises(ValueError, match="hops"):
        KnowledgeGraphEncoder(4, 3, D, hops=3)
    with pytest.raises(ValueError, match="num_entities"):
        KnowledgeGraphEncoder(1, 3, D)
    layer = KnowledgeGraphEncoder(4, 3, D, hops=2, name="kg")
    clone = KnowledgeGraphEncoder.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert tf.keras.layers.deserialize(tf.keras.layers.serialize(layer)).hops == 2


@pytest.mark.parametrize("hops", [1, 2])
def test_gradients_reach_entity_and_relation_embeddings(hops):
    agent = kg_agent(knowledge_hops=hops)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(agent.catalog() ** 2)
    names = [v.name for v in agent.trainable_variables]
    grads = dict(zip(names, tape.gradient(loss, agent.trainable_variables)))
    entity = next(g for n, g in grads.items() if "entity_embeddings" in n)
    relation = next(g for n, g in grads.items() if "relation_embeddings" in n)
    assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(entity)))) > 0
    assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(relation)))) > 0
    # Entity 0 ("none") and the unused entity 6 never get a gradient.
    entity = tf.convert_to_tensor(entity).numpy()
    np.testing.assert_allclose(entity[[0, 6]], 0.0)


def test_second_hop_carries_linked_items_signal():
    """With hops=2 a new item's vector moves when another item sharing its entity changes."""
    agent = kg_agent(knowledge_hops=2)
    known = np.ones(N, bool)
    known[2] = False  # item 2 is new: features only
    agent.set_known_items(known)
    before = agent(tf.constant([2])).numpy()
    ids = agent.id_embeddings.numpy()
    ids[3] += 5.0  # item 3 shares entity 1 with item 2
    agent.id_embeddings.assign(ids)
    assert np.abs(agent(tf.constant([2])).numpy() - before).max() > 1e-3
    one_hop = kg_agent(knowledge_hops=1)
    one_hop.set_weights(agent.get_weights())
    before = one_hop(tf.constant([2])).numpy()
    ids[3] += 5.0
    one_hop.id_embeddings.assign(ids)
    np.testing.assert_allclose(one_hop(tf.constant([2])).numpy(), before, atol=1e-6)


def test_item_mean_entities_are_the_other_known_items_mean_id_vector():
    agent = kg_agent(knowledge_entities="item_mean")
    assert not any("entity_embeddings" in v.name for v in agent.weights)
    known = np.ones(N, bool)
    known[2] = False  # item 2 is new: it shares entity 1 with items 3, 4, 5
    agent.set_known_items(known)
    relations, entities = kg_tables()
    ids = agent.id_embeddings.numpy()
    means = agent.knowledge.neighbour_item_means(agent.id_embeddings, agent.known_items, entities,
                                                 tf.constant([2, 3])).numpy()
    np.testing.assert_allclose(means[0, 0], ids[[3, 4, 5]].mean(0), atol=1e-6)  # the new item: all three
    np.testing.assert_allclose(means[1, 0], ids[[4, 5]].mean(0), atol=1e-6)  # item 3: not itself
    np.testing.assert_allclose(means[:, 2], 0.0)  # an empty slot
    # Item 3's vector does not depend on its own id through its entities; the new item's follows item 3's.
    with tf.GradientTape(persistent=True) as tape:
        vectors = agent(tf.constant([2, 3]))
        new_item, item_3 = tf.reduce_sum(vectors[0] ** 2), tf.reduce_sum(vectors[1] ** 2)
    from_new = tf.convert_to_tensor(tape.gradient(new_item, agent.id_embeddings)).numpy()
    assert np.abs(from_new[3]).max() > 0 and np.abs(from_new[2]).max() == 0
    # The item's own features (its id vector here) are the attention's query.
    knowledge_only = agent.knowledge(tf.constant(ids[3:4]), relations[3:4], entities[3:4],
                                     neighbour_vectors=tf.constant(means[1:2]))
    np.testing.assert_allclose(agent(tf.constant([3])).numpy() - ids[3], knowledge_only.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="neighbour_vectors"):
        agent.knowledge(tf.zeros([1, D]), relations[3:4], entities[3:4])
    with pytest.raises(ValueError, match="hops=1"):
        KnowledgeGraphEncoder(4, 3, D, hops=2, entity_encoding="item_mean")
    with pytest.raises(ValueError, match="entity_encoding"):
        KnowledgeGraphEncoder(4, 3, D, entity_encoding="mean")
    with pytest.raises(ValueError, match="knowledge_hops=1"):
        ContentAgent(N, dim=D, num_entities=7, num_relations=3, knowledge_hops=2, knowledge_entities="item_mean")
    assert ContentAgent.from_config(agent.get_config()).get_config()["knowledge_entities"] == "item_mean"
    # A catalog update: the added item (entity 1, like item 2) inherits from the same known items.
    grown = agent.with_new_items({"kg_relations": relations[2:3], "kg_entities": entities[2:3]})
    np.testing.assert_allclose(grown(tf.constant([N])).numpy(), agent(tf.constant([2])).numpy(), atol=1e-5)


def test_new_items_get_what_their_features_predict_of_an_id():
    agent = ContentAgent(N, dim=D, id_dropout=0.3, num_categories=3, max_categories=1)
    categories = np.zeros((N, 1), np.int32)
    categories[2:] = 1 + np.arange(N - 2)[:, None] % 2
    agent.set_item_features({"categories": categories})
    agent.unknown_id.assign(np.arange(D, dtype=np.float32))
    agent.set_known_items(np.arange(N - 1))
    vectors = agent.catalog().numpy()
    features = agent.category_embeddings.numpy()[categories[:, 0]]
    predicted = agent.id_output(agent.id_hidden(tf.constant(features[N - 1:]))).numpy()[0]
    assert np.abs(predicted).max() > 0
    np.testing.assert_allclose(vectors[N - 1], features[N - 1] + np.arange(D) + predicted, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[3], features[3] + agent.id_embeddings.numpy()[3], atol=1e-6)


def test_new_items_are_encoded_from_features_alone():
    agent = ContentAgent(N, dim=D, num_categories=4, max_categories=2)
    categories = np.zeros((N, 2), np.int32)
    categories[2:] = [[1, 2]] * (N - 2)
    agent.set_item_features({"categories": categories})
    agent.set_known_items(np.arange(2, N - 1))  # the last item is new
    vectors = agent.catalog().numpy()
    category_part = agent.category_embeddings.numpy()[[1, 2]].mean(0)
    np.testing.assert_allclose(vectors[N - 1], category_part, atol=1e-6)  # no id part
    assert np.abs(vectors[N - 2] - category_part).max() > 1e-4  # a known item keeps its id
    with pytest.raises(ValueError, match="shape"):
        agent.set_known_items(np.ones(N - 1, bool))
    with pytest.raises(ValueError, match="indices"):
        agent.set_known_items([N])


def test_id_dropout_drops_the_id_part_only_while_training():
    agent = ContentAgent(N, dim=D, id_dropout=0.5)
    ids = tf.constant(np.full(4000, 3, np.int32))
    np.testing.assert_allclose(agent(ids).numpy(), np.tile(agent.id_embeddings.numpy()[3], (4000, 1)), atol=1e-7)
    agent.unknown_id.assign(np.full(D, 0.5, np.float32))  # what a dropped id becomes
    trained = agent(ids, training=True).numpy()
    dropped = np.all(trained == 0.5, axis=1)
    assert 0.45 < dropped.mean() < 0.55
    np.testing.assert_allclose(trained[~dropped], agent.id_embeddings.numpy()[3][None].repeat((~dropped).sum(), 0))
    kept = agent(ids, training=True, drop_ids=False).numpy()  # how the recommender reads histories
    np.testing.assert_allclose(kept, np.tile(agent.id_embeddings.numpy()[3], (4000, 1)), atol=1e-7)
    with pytest.raises(ValueError, match="id_dropout"):
        ContentAgent(N, id_dropout=1.0)


def test_numeric_attributes_are_projected_and_checked():
    agent = ContentAgent(N, dim=D, numeric_dim=2)
    numeric = np.zeros((N, 2), np.float32)
    numeric[4] = [1.0, -2.0]
    agent.set_item_features({"numeric": numeric})
    vectors = agent(tf.constant([3, 4])).numpy()
    expected = agent.numeric_projection(tf.constant(numeric[4:5])).numpy()[0]
    np.testing.assert_allclose(vectors[1] - agent.id_embeddings.numpy()[4], expected, atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        agent.set_item_features({"numeric": np.full((N, 2), np.nan)})
    with pytest.raises(ValueError, match="numeric_dim"):
        ContentAgent(N, dim=D).set_item_features({"numeric": numeric})


@pytest.mark.parametrize("knowledge", [dict(knowledge_hops=2), dict(knowledge_entities="item_mean")])
def test_content_agent_with_knowledge_round_trips_and_runs_under_a_strategy(knowledge):
    agent = kg_agent(id_dropout=0.2, numeric_dim=1, **knowledge)
    config = agent.get_config()
    clone = ContentAgent.from_config(config)
    assert clone.get_config() == config
    clone.build()
    clone.set_weights(agent.get_weights())
    np.testing.assert_allclose(clone.catalog().numpy(), agent.catalog().numpy(), atol=1e-6)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = ContentAgent.from_config(config)
        mirrored.build()
    mirrored.set_weights(agent.get_weights())

    @tf.function
    def encode(ids):
        return mirrored(ids, training=True)

    result = strategy.run(encode, (tf.constant([[2, 3], [7, 8]]),))
    for part in strategy.experimental_local_results(result):
        assert part.shape == (2, 2, D) and np.isfinite(part.numpy()).all()


def test_full_softmax_loss_bias_leaves_new_items_out():
    rng = np.random.default_rng(0)
    queries = tf.constant(rng.normal(size=(5, D)), tf.float32)
    items = tf.constant(rng.normal(size=(N, D)), tf.float32)
    positives = tf.constant([2, 3, 4, 5, 6])
    bias = np.zeros(N - 2, np.float32)
    bias[-2:] = -1e9  # items 8 and 9 are new
    with tf.GradientTape() as tape:
        tape.watch(items)
        loss = full_softmax_loss(queries, positives, items, tf.constant(bias))
    reference = tf.nn.sparse_softmax_cross_entropy_with_logits(
        positives - 2, tf.matmul(queries, items[2:8], transpose_b=True))
    np.testing.assert_allclose(loss.numpy(), tf.reduce_sum(reference).numpy(), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, items).numpy()[8:], 0.0, atol=1e-7)


def category_recommender(id_dropout):
    """A one-layer recommender whose Content agent has two categories (alternating items) and ids."""
    content = ContentAgent(N, dim=D, num_categories=3, max_categories=1, id_dropout=id_dropout)
    categories = np.zeros((N, 1), np.int32)
    categories[2:] = ((np.arange(2, N) % 2) + 1)[:, None]
    content.set_item_features({"categories": categories})
    model = SequentialRecommender(N, dim=D, max_length=4, num_layers=1, content_agent=content, dropout=0.0)
    model.build_all()
    return model, content


ONE_HISTORY = {"history": tf.constant([[2, 3, 4, 0]]), "targets": tf.constant([[3, 4, 5, 0]]),
               "target_weights": tf.constant([[1.0, 1.0, 1.0, 0.0]]), "first_item": tf.constant([2])}


def test_recommender_trains_without_new_items_and_ranks_them():
    model, content = category_recommender(id_dropout=0.3)
    model.set_known_items(np.arange(2, N - 1))
    with tf.GradientTape() as tape:
        loss = model.compute_loss(ONE_HISTORY, training=True)
    grads = tape.gradient(loss, content.id_embeddings)
    np.testing.assert_allclose(tf.convert_to_tensor(grads).numpy()[N - 1], 0.0, atol=1e-9)
    scores = model.score_catalog(tf.constant([[2, 3]])).numpy()
    assert np.isfinite(scores[0, N - 1])  # the new item is ranked like any other


def test_id_dropout_acts_on_the_scored_catalog_not_on_the_history():
    model, _ = category_recommender(id_dropout=0.9)
    seen = {}
    history_states, summed_loss = model.history_states, model._summed_loss
    model.history_states = lambda history, items, training: seen.setdefault("history", items) is not None and \
        history_states(history, items, training)
    model._summed_loss = lambda queries, positives, items: seen.setdefault("scored", items) is not None and \
        summed_loss(queries, positives, items)
    model.compute_loss(ONE_HISTORY, training=True)
    np.testing.assert_allclose(seen["history"].numpy(), model.item_vectors(training=False).numpy(), atol=1e-6)
    changed = np.any(np.abs(seen["scored"].numpy() - seen["history"].numpy()) > 1e-6, axis=1)
    assert changed[2:].mean() > 0.5  # ~90% of the scored rows had their id part dropped


def test_copy_weights_matches_by_name_when_the_target_is_frozen():
    from tfmarl.agents.blocks import copy_weights

    source = kg_agent(numeric_dim=2)
    target = ContentAgent.from_config(source.get_config())
    target.trainable = False  # get_weights order now differs from the source's
    target.build()
    assert [w.shape for w in target.get_weights()] != [w.shape for w in source.get_weights()]
    copy_weights(source, target)
    np.testing.assert_allclose(target.catalog().numpy(), source.catalog().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="different weights"):
        copy_weights(source, ContentAgent(N, dim=D))
