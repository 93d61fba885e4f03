"""Run configuration: YAML -> validated dataclasses, with errors that name the bad key.

Every section is a dataclass; unknown keys, wrong types and values outside an allowed set raise
`ConfigError` naming the dotted key (``pretrain.encoder``), the problem and what is allowed.
`default_config()` is the built-in configuration of `tfmarl quickstart`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import pathlib
import typing

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the allowed values."""


def choice(default, *options, doc: str = ""):
    """A field whose value must be one of ``options``."""
    return dataclasses.field(default=default, metadata={"choices": options, "doc": doc})


@dataclasses.dataclass
class SyntheticConfig:
    n_users: int = 3000
    n_items: int = 1000
    n_categories: int = 12
    interactions_per_user: int = 40
    interest_drift: float = 0.05
    popularity_skew: float = 1.0
    knowledge_graph: bool = False  # emit a knowledge graph (creator / studio triples)


@dataclasses.dataclass
class LogConfig:
    """Column names for `load_interactions` (``data.source: interactions``)."""
    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: typing.Optional[str] = None
    event: typing.Optional[str] = None
    items: typing.Optional[str] = None
    item_id: str = "item_id"
    item_title: typing.Optional[str] = None
    item_text: typing.Optional[str] = None
    item_categories: typing.Optional[str] = None


@dataclasses.dataclass
class FeaturesConfig:
    categories: bool = True
    titles: bool = True
    title_length: int = 8
    text_vocabulary_size: int = 500
    title_vocabulary: str = "word_piece"  # or "words": whole words in >= min_word_count titles
    min_word_count: int = 2
    text_preset: typing.Optional[str] = None  # a keras-hub preset directory for text embeddings
    knowledge: bool = True  # use the data's knowledge graph (MovieLens: genres, decades, tags)
    knowledge_graph: typing.Optional[str] = None  # a triples file (item_id, relation, entity) instead
    max_neighbours: int = 16


@dataclasses.dataclass
class NewItemsConfig:
    """Catalog churn (`tfmarl.data.cold_item_split`): this share of the items is held out of
    pretraining with all its interactions, and arrives while the RL and the evaluation sessions
    run (over ``simulator.session.new_item_arrival_steps`` steps); the evaluation reports each
    policy's share of clicks on them."""
    fraction: float = 0.0  # 0: a fixed catalog
    how: str = choice("random", "random", "newest")


@dataclasses.dataclass
class DataConfig:
    source: str = choice("synthetic", "synthetic", "movielens", "interactions")
    path: typing.Optional[str] = None
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    split: str = choice("leave_one_out", "leave_one_out", "temporal")
    on_duplicates: str = choice("warn", "warn", "drop", "error")
    features: FeaturesConfig = dataclasses.field(default_factory=FeaturesConfig)
    new_items: NewItemsConfig = dataclasses.field(default_factory=NewItemsConfig)


@dataclasses.dataclass
class PretrainConfig:
    encoder: str = choice("transformer", "transformer", "gru", "lstm")
    dim: int = 64
    max_length: int = 50
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    interaction: str = choice("dot", "dot", "mlp", "dcn")
    loss: str = choice("auto", "auto", "full", "in_batch", "sampled")
    num_negatives: int = 1024
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 0.001
    patience: int = 3
    id_dropout: float = 0.0  # drop trained items' id part while training: features learn new items
    knowledge_hops: int = choice(1, 1, 2)
    knowledge_entities: str = choice("embedding", "embedding", "item_mean")  # see ContentAgent


@dataclasses.dataclass
class SimulatorConfig:
    dim: int = 16
    heldout_fraction: float = 0.2
    session: dict = dataclasses.field(default_factory=dict)  # `SessionConfig` overrides, validated there


@dataclasses.dataclass
class MultiAgentConfig:
    facets: int = 8
    domains: int = 2
    critic: bool = True
    adaptive_reward: bool = True
    diversity_floor: float = 1.5  # x the greedy two-tower's slate diversity
    satisfaction_floor: float = 1.5  # mean satisfaction per recommendation
    gamma: float = 0.9
    learning_rate: float = 0.001
    trainable_encoders: bool = False  # fine-tune the pretrained agents' layers end to end in RL
    encoder_learning_rate: float = 0.0001
    new_item_slots: int = 0  # slate slots for the critic's best new candidates (data.new_items)


@dataclasses.dataclass
class DqnConfig:
    double: bool = True  # Double DQN
    trainable_encoders: bool = False  # fine-tune the pretrained agents' layers end to end in RL


@dataclasses.dataclass
class RLConfig:
    algorithm: str = choice("multiagent", "multiagent", "dqn", "linucb", "lints", "neural_linucb",
                            "neural_epsilon_greedy", "none")
    candidates: int = 100
    steps: int = 1000
    batch_size: int = 64  # concurrent simulated sessions
    gamma: float = 0.9
    epsilon_start: float = 0.2
    epsilon_end: float = 0.02
    new_item_candidates: int = 0  # candidate places reserved for items the pretrained model never trained on
    multiagent: MultiAgentConfig = dataclasses.field(default_factory=MultiAgentConfig)
    dqn: DqnConfig = dataclasses.field(default_factory=DqnConfig)


@dataclasses.dataclass
class ImpressionsConfig:
    """A held-out impression log (`tfmarl.data.load_bandit_feedback` columns) for off-policy
    evaluation and simulator validation; ``path: null`` skips both."""
    path: typing.Optional[str] = None
    round: str = "round_id"
    position: str = "position"
    item: str = "item_id"
    reward: str = "reward"
    propensity: typing.Optional[str] = "propensity"
    conditional_propensity: typing.Optional[str] = None
    history: typing.Optional[str] = "history"
    user: typing.Optional[str] = "user_id"
    # pseudo_inverse: the most accurate slate estimator with calibrated intervals in benchmarks/ope.py
    estimator: str = choice("pseudo_inverse", "pseudo_inverse", "iips", "sips", "rips", "cascade_dr")


@dataclasses.dataclass
class EvaluateConfig:
    ks: list = dataclasses.field(default_factory=lambda: [10])
    episodes: int = 500
    baselines: list = dataclasses.field(default_factory=lambda: ["random", "popular", "greedy"])
    impressions: ImpressionsConfig = dataclasses.field(default_factory=ImpressionsConfig)


@dataclasses.dataclass
class IndexConfig:
    """Knobs of ``export.retrieval: partitioned`` (`tfmarl.export.partitioned.PartitionedIndex`);
    null takes its default."""
    partitions: typing.Optional[int] = None  # default about 2 sqrt(catalog size)
    probes: typing.Optional[int] = None  # partitions scored per request (default 24)
    quantization: typing.Optional[str] = choice(None, "int8", "bfloat16", doc="or null: float32 partitions")
    rerank: typing.Optional[int] = None  # float32 re-ranking candidates with quantization (default 100)

    def options(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclasses.dataclass
class ExportConfig:
    dir: str = "savedmodels/quickstart"
    k: int = 10
    retrieval: str = choice("brute_force", "brute_force", "partitioned", "scann", "exact")
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    warmup: bool = True

    def index_options(self) -> typing.Optional[dict]:
        """``index`` as the exporters' ``index_options`` (None unless retrieval is partitioned)."""
        return self.index.options() if self.retrieval == "partitioned" else None


@dataclasses.dataclass
class Config:
    run_dir: str = "runs/quickstart"
    seed: int = 0
    # Every stage (pretraining, RL) trains under this tf.distribute strategy.
    strategy: str = choice("auto", "auto", "cpu", "gpu", "mirrored", "tpu",
                           doc="the tfmarl command runs on one machine; for multi_worker or parameter_server "
                               "train through the Python API, see docs/distributed.md")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    simulator: SimulatorConfig = dataclasses.field(default_factory=SimulatorConfig)
    rl: RLConfig = dataclasses.field(default_factory=RLConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BASELINES = ("random", "popular", "greedy")
# Keys that moved: the old dotted key -> its replacement (named in the error).
MOVED = {"pretrain.strategy": "strategy"}


def _build(cls, values, where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if path in MOVED:
            raise ConfigError(f"config key {path!r} has moved: write it as {MOVED[path]!r} (it now applies to "
                              "every stage)")
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}; allowed keys here: {', '.join(fields)}")
        kwargs[key] = _convert(hints[key], fields[key], value, path)
    config = cls(**kwargs)
    _check_values(config, where)
    return config


def _convert(hint, field, value, path):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: a value is required")
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        doc = field.metadata.get("doc")
        raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}"
                          + (f" ({doc})" if doc else ""))
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if base is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return value
    if base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    return value


_POSITIVE = {"n_users", "n_items", "n_categories", "interactions_per_user", "title_length", "dim", "max_length",
             "num_layers", "num_heads", "epochs", "batch_size", "candidates", "steps", "episodes", "k", "facets",
             "domains", "num_negatives", "text_vocabulary_size", "max_neighbours", "min_word_count"}


def _check_values(config, where):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if f.name in _POSITIVE and isinstance(value, int) and value < 1:
            raise ConfigError(f"{path}: must be a positive integer, got {value}")
        if f.name in ("learning_rate", "encoder_learning_rate") and value <= 0:
            raise ConfigError(f"{path}: must be positive, got {value}")
        if f.name in ("dropout", "heldout_fraction", "id_dropout", "fraction") and not 0 <= value < 1:
            raise ConfigError(f"{path}: must be in [0, 1), got {value}")
        if f.name in ("gamma", "epsilon_start", "epsilon_end") and not 0 <= value <= 1:
            raise ConfigError(f"{path}: must be in [0, 1], got {value}")
        if (f.name.endswith("_floor") or f.name in ("new_item_candidates", "new_item_slots")) and value < 0:
            raise ConfigError(f"{path}: must be >= 0, got {value}")
    if isinstance(config, FeaturesConfig) and config.title_vocabulary not in ("word_piece", "words"):
        raise ConfigError(f"{where}.title_vocabulary: must be 'word_piece' or 'words', "
                          f"got {config.title_vocabulary!r}")
    if isinstance(config, IndexConfig):
        for key in ("partitions", "probes", "rerank"):
            value = getattr(config, key)
            if value is not None and value < 1:
                raise ConfigError(f"{where}.{key}: must be a positive integer or null, got {value}")
        if config.probes is not None and config.partitions is not None and config.probes > config.partitions:
            raise ConfigError(f"{where}.probes: {config.probes} is more than {where}.partitions={config.partitions}")
        if config.rerank is not None and config.quantization is None:
            raise ConfigError(f"{where}.rerank: applies to quantized partitions only; set {where}.quantization "
                              "to int8 or bfloat16")
    if isinstance(config, EvaluateConfig):
        bad = [b for b in config.baselines if b not in BASELINES]
        if bad:
            raise ConfigError(f"{where}.baselines: {bad[0]!r} is not allowed; choose from {', '.join(BASELINES)}")
        if not config.ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in config.ks):
            raise ConfigError(f"{where}.ks: expected a list of positive integers, got {config.ks!r}")
    if isinstance(config, DataConfig) and config.source != "synthetic" and not config.path:
        hint = ""
        if config.source == "movielens":
            from tfmarl.data.movielens import describe_movielens_layouts

            hint = "\n" + describe_movielens_layouts()
        raise ConfigError(f"{where}.path: required when {where}.source is {config.source!r}{hint}")
    if isinstance(config, SimulatorConfig) and config.session:
        from tfmarl.envs import SessionConfig

        allowed = [f.name for f in dataclasses.fields(SessionConfig)]
        for key in config.session:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown config key '{where}.session.{key}'{hint}; allowed keys here: "
                                  f"{', '.join(allowed)}")
        try:
            SessionConfig(**config.session)
        except ValueError as e:
            raise ConfigError(f"{where}.session: {e}") from None


def config_from_dict(values: dict) -> Config:
    """Validates a nested dict (e.g. parsed YAML) into a `Config`."""
    config = _build(Config, values, "")
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Checks between sections, so that a run does not fail after hours of pretraining."""
    from tfmarl.envs import SessionConfig

    rl, ma = config.rl, config.rl.multiagent
    session = SessionConfig(**config.simulator.session)
    slate_size = session.slate_size
    if config.data.new_items.fraction:
        if session.new_item_fraction:
            raise ConfigError("simulator.session.new_item_fraction: the simulator would pick its own new items "
                              "besides data.new_items; set one of the two (data.new_items also holds its items "
                              "out of pretraining)")
        if config.data.split != "leave_one_out":
            raise ConfigError(f"data.new_items: needs data.split: leave_one_out (got {config.data.split!r})")
    if config.data.source == "synthetic" and rl.candidates > config.data.synthetic.n_items:
        raise ConfigError(f"rl.candidates: {rl.candidates} is more than the catalog's "
                          f"{config.data.synthetic.n_items} items (data.synthetic.n_items)")
    if rl.algorithm != "none":
        if config.export.k > rl.candidates:
            raise ConfigError(f"export.k: {config.export.k} is more than rl.candidates={rl.candidates}, the "
                              "items the learned policy chooses among")
        if slate_size > rl.candidates:
            raise ConfigError(f"simulator.session.slate_size: {slate_size} is more than rl.candidates={rl.candidates}")
    if rl.algorithm == "multiagent" and ma.domains > ma.facets:
        raise ConfigError(f"rl.multiagent.domains: {ma.domains} domains need at least as many facets "
                          f"(rl.multiagent.facets={ma.facets})")
    knobs = config.export.index.options()
    if knobs and config.export.retrieval != "partitioned":
        raise ConfigError(f"export.index.{next(iter(knobs))}: applies only with export.retrieval: partitioned "
                          f"(got {config.export.retrieval})")
    partitions = config.export.index.partitions
    if config.data.source == "synthetic" and partitions is not None and partitions > config.data.synthetic.n_items:
        raise ConfigError(f"export.index.partitions: {partitions} is more than the catalog's "
                          f"{config.data.synthetic.n_items} items (data.synthetic.n_items)")
    if config.export.retrieval == "scann" and importlib.util.find_spec("scann") is None:
        raise ConfigError("export.retrieval: 'scann' needs the scann package (pip install scann); "
                          "choose brute_force or exact otherwise")


def load_config(path) -> Config:
    """Reads and validates a YAML config file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return config_from_dict(values or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def default_config() -> Config:
    """The built-in configuration (`tfmarl quickstart`)."""
    return Config()


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
