"""Data: loaders, validation, vocabularies, sequences, splits and tf.data pipelines.

Importing this package does not import TensorFlow; `tfmarl.data.pipelines` and
`tfmarl.data.text` do, and are loaded on first use.
"""

from tfmarl._lazy import lazy_getattr
from tfmarl.data.errors import DataError, DataWarning
from tfmarl.data.interactions import Interactions
from tfmarl.data.sequences import Sequences, build_sequences
from tfmarl.data.cold_start import (HISTORY_BUCKETS, ColdItemSplit, ColdUserSplit, bucket_name, cold_item_split,
                                    cold_user_split)
from tfmarl.data.knowledge import KnowledgeGraph, load_knowledge_graph, movielens_knowledge_graph
from tfmarl.data.splits import EvalSet, Split, leave_one_out, temporal_split
from tfmarl.data.vocab import OOV_INDEX, PAD_INDEX, Vocabulary

_LAZY = {
    "load_movielens": "tfmarl.data.movielens",
    "MovieLensNotFoundError": "tfmarl.data.movielens",
    "MOVIELENS_LAYOUTS": "tfmarl.data.movielens",
    "describe_movielens_layouts": "tfmarl.data.movielens",
    "load_interactions": "tfmarl.data.logs",
    "load_bandit_feedback": "tfmarl.data.bandit_feedback",
    "generate_synthetic": "tfmarl.data.synthetic",
    "ItemFeatures": "tfmarl.data.item_features",
    "build_item_features": "tfmarl.data.item_features",
    "tokenize_texts": "tfmarl.data.tokenize",
    "learn_word_tokenizer": "tfmarl.data.tokenize",
    "embed_texts": "tfmarl.data.text",
    "embed_item_texts": "tfmarl.data.text",
    "build_tiny_text_preset": "tfmarl.data.text",
    "training_dataset": "tfmarl.data.pipelines",
    "evaluation_dataset": "tfmarl.data.pipelines",
    "next_item_windows": "tfmarl.data.pipelines",
}

__getattr__ = lazy_getattr(globals(), _LAZY)

__all__ = [
    "ColdItemSplit", "ColdUserSplit", "DataError", "DataWarning", "EvalSet", "HISTORY_BUCKETS", "KnowledgeGraph", "Interactions", "OOV_INDEX", "PAD_INDEX", "Sequences",
    "Split", "Vocabulary", "bucket_name", "build_sequences", "cold_item_split", "cold_user_split", "leave_one_out",
    "load_knowledge_graph", "movielens_knowledge_graph", "temporal_split", *sorted(_LAZY),
]
