"""Training: the next-item recommender model, `pretrain`, callbacks and distribution strategies."""

from tfmarl.training.callbacks import RankingValidation, Throughput
from tfmarl.training.pretrain import PretrainResult, pretrain
from tfmarl.training.recommender import SequentialRecommender
from tfmarl.training.strategy import cluster_spec, get_strategy, split_cpu, start_server, tf_config_for

__all__ = ["PretrainResult", "RankingValidation", "SequentialRecommender", "Throughput", "cluster_spec",
           "get_strategy", "pretrain", "split_cpu", "start_server", "tf_config_for"]
