"""Pretrain the User + Content agents on MovieLens, evaluate, export.

    .venv/bin/python examples/pretrain_movielens.py path/to/ml-100k
"""

import sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
from tfmarl.agents import ContentAgent
from tfmarl.data import build_item_features, build_sequences, leave_one_out, load_movielens
from tfmarl.evaluation import evaluate_ranking
from tfmarl.export import export_recommender
from tfmarl.training import SequentialRecommender, pretrain

if len(sys.argv) != 2:
    sys.exit(__doc__)
interactions = load_movielens(sys.argv[1])
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)

# The Content agent sees ids, genres and title tokens (a keras-hub WordPiece tokenizer in tf.data).
features = build_item_features(interactions, vocab)
content = ContentAgent(vocab.size, dim=64, name="content_agent", **features.content_agent_kwargs())
content.set_item_features(features)

model = SequentialRecommender(item_vocabulary=vocab, content_agent=content, encoder="transformer")
pretrain(model, split.train, split.valid, epochs=40, log_dir="runs/example/tensorboard", verbose=2)
print(evaluate_ranking(model, split.test, ks=(10, 20)))
print("exported to", export_recommender(model, "savedmodels/movielens"))
