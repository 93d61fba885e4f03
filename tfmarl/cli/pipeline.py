"""The main job: data -> pretrain -> simulator -> RL -> evaluate -> export -> report.

Each stage writes its outputs under the run directory and a marker ``stages/<stage>.json`` holding
a hash of the configuration it depends on. Running again skips finished stages whose inputs did
not change (and resumes an interrupted pretraining or RL stage from its checkpoints); a change
re-runs that stage and everything after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import sys
import time

import numpy as np

from tfmarl.cli.config import Config, ConfigError, dump_config
from tfmarl.atomic import atomic_write_text

STAGES = ("data", "pretrain", "simulator", "rl", "evaluate", "export", "report")
# The config sections each stage's outputs depend on (its own and all earlier stages').
DEPENDS = {"data": ("seed", "data"), "pretrain": ("pretrain",), "simulator": ("simulator",), "rl": ("rl",),
           "evaluate": ("evaluate",), "export": ("export",), "report": ()}


class Pipeline:
    """Runs the stages of `Config` in order, resumably (see the module docstring).

    Args:
      config: the validated configuration.
      fresh: delete the run directory first.
      progress: progress bars on long loops.
      out: where progress lines go (default: standard output).
    """

    def __init__(self, config: Config, *, fresh: bool = False, progress: bool = True, out=None):
        self.config = config
        self.run_dir = pathlib.Path(config.run_dir)
        if fresh and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        (self.run_dir / "stages").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(config))
        self.progress = progress
        self.out = out
        self.state: dict = {}
        self.timings: dict = {}
        self.strategy = None

    # --- bookkeeping -------------------------------------------------------------------------
    def _hash(self, stage: str) -> str:
        cfg = self.config.to_dict()
        upto = STAGES[: STAGES.index(stage) + 1]
        keys = [k for s in upto for k in DEPENDS[s]]
        return hashlib.sha256(json.dumps({k: cfg[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]

    def _done(self, stage: str) -> bool:
        marker = self.run_dir / "stages" / f"{stage}.json"
        if not marker.exists():
            return False
        return json.loads(marker.read_text()).get("config_hash") == self._hash(stage)

    def _mark(self, stage: str, seconds: float, **extra) -> None:
        atomic_write_text(self.run_dir / "stages" / f"{stage}.json",
                          json.dumps({"config_hash": self._hash(stage), "seconds": seconds,
                                      "finished": time.time(), **extra}, indent=2))

    def _checkpoints(self, stage: str) -> pathlib.Path:
        """Where ``stage`` checkpoints an interrupted run: one folder per configuration hash, so a
        changed configuration never restores another configuration's state."""
        return self.run_dir / stage / "checkpoints" / self._hash(stage)

    def _clear_stale_checkpoints(self, stage: str, *, upstream_ran: bool) -> None:
        """Before ``stage`` runs: keep only the checkpoints it can resume from, i.e. those of its
        current configuration, and none at all when an earlier stage has just produced new outputs
        (they were made from the old ones)."""
        root = self.run_dir / stage / "checkpoints"
        if not root.is_dir():
            return
        keep = None if upstream_ran else self._checkpoints(stage)
        for path in root.iterdir():
            if path != keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def say(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def run(self, stages=STAGES) -> dict:
        """Runs ``stages`` (and the earlier stages they need); returns the collected results."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
        last = max(STAGES.index(s) for s in stages)
        if last >= STAGES.index("pretrain") and self.strategy is None:
            self.strategy = self._make_strategy()  # before any other TensorFlow op (TPU set-up needs that)
        invalid = False
        for stage in STAGES[: last + 1]:
            reuse = not invalid and self._done(stage)
            if not reuse:
                self._clear_stale_checkpoints(stage, upstream_ran=invalid)
            started = time.perf_counter()
            self.say(f"\n== {stage}{' (finished earlier: loading)' if reuse else ''}")
            getattr(self, f"stage_{stage}")(reuse)
            seconds = time.perf_counter() - started
            self.timings[stage] = seconds
            if not reuse:
                invalid = True  # later stages depend on this one's fresh outputs
                self._mark(stage, seconds)
            self.say(f"   {stage}: {seconds:.1f}s")
        return self.state

    # --- stages ------------------------------------------------------------------------------
    def stage_data(self, reuse: bool) -> None:
        from tfmarl.data import (Vocabulary, build_item_features, build_sequences, generate_synthetic, leave_one_out,
                                 load_interactions, load_movielens, temporal_split)
        from tfmarl.data.item_features import ItemFeatures

        cfg = self.config.data
        if cfg.source == "synthetic":
            interactions = generate_synthetic(**dataclasses.asdict(cfg.synthetic), seed=self.config.seed)
        elif cfg.source == "movielens":
            interactions = load_movielens(cfg.path, on_duplicates=cfg.on_duplicates)
        else:
            log = cfg.log
            interactions = load_interactions(
                cfg.path, user=log.user, item=log.item, timestamp=log.timestamp, rating=log.rating, event=log.event,
                items=log.items, item_id=log.item_id, item_title=log.item_title, item_text=log.item_text,
                item_categories=log.item_categories, on_duplicates=cfg.on_duplicates)
        data_dir = self.run_dir / "data"
        if reuse:
            vocab = Vocabulary.load(data_dir / "vocabulary.json")
            sequences, _ = build_sequences(interactions, vocab)
            features = ItemFeatures.load(data_dir / "features")
        else:
            sequences, vocab = build_sequences(interactions)
            f = cfg.features
            knowledge = f.knowledge
            if f.knowledge_graph:
                from tfmarl.data import load_knowledge_graph

                knowledge = load_knowledge_graph(f.knowledge_graph)
            features = build_item_features(interactions, vocab, categories=f.categories, titles=f.titles,
                                           title_length=f.title_length, text_vocabulary_size=f.text_vocabulary_size,
                                           title_vocabulary=f.title_vocabulary, min_word_count=f.min_word_count,
                                           knowledge=knowledge, max_neighbours=f.max_neighbours)
            if f.text_preset:
                from tfmarl.data import embed_item_texts

                features = features.with_text_embeddings(embed_item_texts(interactions, vocab, f.text_preset))
            vocab.save(data_dir / "vocabulary.json")
            features.save(data_dir / "features")
        new_items = np.zeros(0, np.int32)
        if cfg.new_items.fraction:  # catalog churn: these items exist for the simulator only
            from tfmarl.data import cold_item_split
            from tfmarl.data.splits import Split

            churn = cold_item_split(sequences, cfg.new_items.fraction, how=cfg.new_items.how, seed=self.config.seed)
            split, new_items = Split(churn.train, churn.valid, churn.warm_test), churn.cold_items
        elif cfg.split == "leave_one_out":
            split = leave_one_out(sequences)
        else:
            split = temporal_split(sequences)
        summary = {"source": cfg.source, "name": interactions.name, "interactions": interactions.num_interactions,
                   "users": interactions.num_users, "items": interactions.num_items,
                   "train_targets": split.train.num_interactions, "test_users": len(split.test),
                   "new_items": int(len(new_items))}
        atomic_write_text(data_dir / "summary.json", json.dumps(summary, indent=2))
        self.say(f"   {interactions}; {summary['train_targets']} train targets, {summary['test_users']} test users"
                 + (f"; {len(new_items)} new items held out of training" if len(new_items) else ""))
        self.state.update(interactions=interactions, vocab=vocab, split=split, features=features, data=summary,
                          counts=np.bincount(split.train.items, minlength=vocab.size), new_items=new_items)

    def _make_strategy(self):
        from tfmarl.training import get_strategy
        from tfmarl.training.strategy import auto_strategy_name

        if self.config.strategy == "auto" and auto_strategy_name() in ("multi_worker", "parameter_server"):
            raise ConfigError("strategy: 'auto' found a cluster in TF_CONFIG, but the tfmarl command runs "
                              "on one machine: unset TF_CONFIG, or train on the cluster through the Python API "
                              "(docs/distributed.md)")
        return get_strategy(self.config.strategy)

    def _build_model(self):
        import tensorflow as tf

        from tfmarl.agents import ContentAgent, SystemAgent
        from tfmarl.training import SequentialRecommender

        cfg, s = self.config.pretrain, self.state
        with self.strategy.scope():
            content = ContentAgent(s["vocab"].size, dim=cfg.dim, name="content_agent", id_dropout=cfg.id_dropout,
                                   knowledge_hops=cfg.knowledge_hops, knowledge_entities=cfg.knowledge_entities,
                                   **s["features"].content_agent_kwargs())
            content.set_item_features(s["features"])
            model = SequentialRecommender(
                item_vocabulary=s["vocab"], content_agent=content, encoder=cfg.encoder, dim=cfg.dim,
                max_length=cfg.max_length, num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout=cfg.dropout,
                loss=cfg.loss, num_negatives=cfg.num_negatives, item_frequencies=s["counts"],
                system_agent=SystemAgent(k=self.config.export.k, interaction=cfg.interaction, name="system_agent"))
            model.build_all()
            if len(s["new_items"]):  # encoded from their features alone, left out of the training softmax
                known = np.ones(s["vocab"].size, bool)
                known[s["new_items"]] = False
                model.set_known_items(known)
        tf.keras.utils.set_random_seed(self.config.seed)
        return model

    def stage_pretrain(self, reuse: bool) -> None:
        import tensorflow as tf

        from tfmarl.progress import epoch_lines, is_terminal
        from tfmarl.training import pretrain
        from tfmarl.training.monitoring import write_embedding_projector

        cfg, s = self.config.pretrain, self.state
        out = self.run_dir / "pretrain"
        tf.keras.utils.set_random_seed(self.config.seed)
        model = self._build_model()
        if reuse:
            model.load_weights(str(out / "weights" / "model")).expect_partial()
            history = json.loads((out / "history.json").read_text())
        else:
            terminal = is_terminal(sys.stdout)  # a bar per epoch there; one plain line per epoch elsewhere
            result = pretrain(model, s["split"].train, s["split"].valid, epochs=cfg.epochs, batch_size=cfg.batch_size,
                              learning_rate=cfg.learning_rate, patience=cfg.patience, seed=self.config.seed,
                              log_dir=self.run_dir / "tensorboard" / "pretrain",
                              checkpoint_dir=self._checkpoints("pretrain"), histogram_freq=1,
                              verbose=1 if self.progress and terminal else 0,
                              callbacks=[epoch_lines(cfg.epochs)] if self.progress and not terminal else [])
            history = {**result.history, "best_epoch": result.best_epoch, "best_val_ndcg@10": result.best_metric,
                       "targets_per_second": result.targets_per_second, "train_seconds": result.train_seconds}
            out.mkdir(parents=True, exist_ok=True)
            model.save_weights(str(out / "weights" / "model"))
            atomic_write_text(out / "history.json", json.dumps(history, indent=2))
            interactions = s["interactions"]
            titles = (interactions.items["title"].to_dict() if interactions.items is not None else {})
            labels = [""] * 2 + [titles.get(t, t) or t for t in s["vocab"].tokens]
            write_embedding_projector(self.run_dir / "tensorboard" / "pretrain" / "projector",
                                      model.item_vectors(training=False).numpy()[2:], labels[2:],
                                      ids=s["vocab"].tokens)
            self.say(f"   best epoch {result.best_epoch}: val NDCG@10 {result.best_metric:.4f}; "
                     f"{result.targets_per_second:,.0f} targets/s")
        s.update(model=model, pretrain=history)

    def stage_simulator(self, reuse: bool) -> None:
        from tfmarl.envs import UserModel, fit_user_model

        cfg, s = self.config.simulator, self.state
        path = self.run_dir / "simulator" / "user_model.npz"
        if reuse:
            user_model = UserModel.load(path)
        else:
            user_model = fit_user_model(s["interactions"], s["vocab"], dim=cfg.dim, heldout_fraction=cfg.heldout_fraction,
                                        seed=self.config.seed)
            user_model.save(path)
        self.say(f"   {user_model}")
        s["user_model"] = user_model

    def _session_config(self):
        from tfmarl.envs import SessionConfig

        return SessionConfig(**self.config.simulator.session)

    def stage_rl(self, reuse: bool) -> None:
        from tfmarl.rl import CandidateRetriever
        from tfmarl.rl.algorithms import ALGORITHMS, make_algorithm

        cfg, s = self.config.rl, self.state
        out = self.run_dir / "rl"
        s["retriever"] = CandidateRetriever(s["model"], num_candidates=cfg.candidates)
        s["rl"] = {"algorithm": cfg.algorithm}
        s["algorithm"] = None
        if cfg.algorithm == "none":
            return
        options = ALGORITHMS[cfg.algorithm].options_from_config(cfg)
        algorithm = make_algorithm(cfg.algorithm, s["model"], s["user_model"], session_config=self._session_config(),
                                   candidates=cfg.candidates, batch_size=cfg.batch_size, seed=self.config.seed,
                                   item_counts=s["counts"], new_item_candidates=cfg.new_item_candidates,
                                   new_items=s["new_items"] if len(s["new_items"]) else None,
                                   checkpoint_dir=self._checkpoints("rl"),
                                   log_dir=self.run_dir / "tensorboard" / "rl", strategy=self.strategy, **options)
        # On reuse this restores the finished run's checkpoint and trains no further.
        result = algorithm.train(cfg.steps, progress=self.progress)
        s["algorithm"] = algorithm
        summary = {"algorithm": cfg.algorithm, "steps": cfg.steps, "seconds": result.seconds,
                   "env_steps_per_second": result.env_steps_per_second,
                   "train_steps_per_second": result.train_steps_per_second, "curve": result.curve}
        path = out / "result.json"
        if reuse and path.exists():
            summary = json.loads(path.read_text())
        else:
            atomic_write_text(path, json.dumps(summary, indent=2, default=float))
        s["rl"] = summary

    def learned_policy(self):
        """The trained policy as a slate policy over plain session observations (or None)."""
        algorithm = self.state.get("algorithm")
        return None if algorithm is None else algorithm.slate_policy()

    def stage_evaluate(self, reuse: bool) -> None:
        from tfmarl.envs import SessionEnvironment, run_episodes
        from tfmarl.evaluation import evaluate_ranking
        from tfmarl.rl import GreedySlatePolicy, PopularSlatePolicy, RandomSlatePolicy

        cfg, s = self.config.evaluate, self.state
        path = self.run_dir / "evaluate" / "metrics.json"
        if reuse:
            s["metrics"] = json.loads(path.read_text())
            return
        ranking = evaluate_ranking(s["model"], s["split"].test, ks=cfg.ks)
        session = self._session_config()
        k = session.slate_size
        policies = {"random": lambda: RandomSlatePolicy(s["vocab"].size, k, seed=self.config.seed),
                    "popular": lambda: PopularSlatePolicy(s["counts"], k),
                    "greedy": lambda: GreedySlatePolicy(s["retriever"], k)}
        chosen = {name: policies[name]() for name in cfg.baselines}
        learned = self.learned_policy()
        if learned is not None:
            chosen[self.config.rl.algorithm] = learned
        online = {}
        new_items = s["new_items"] if len(s["new_items"]) else None
        algorithm = s.get("algorithm")
        retrievers = {s["retriever"], *([algorithm.retriever] if algorithm is not None else [])}
        for name, policy in chosen.items():
            env = SessionEnvironment(s["user_model"], session, batch_size=100, users="heldout",
                                     seed=10_000 + self.config.seed, new_items=new_items)
            for retriever in retrievers:  # under churn, policies propose only the items that exist
                retriever.available = (lambda env=env: env.available_items) if new_items is not None else None
            try:
                r = run_episodes(env, policy, cfg.episodes)
            finally:
                for retriever in retrievers:
                    retriever.available = None
            online[name] = {"return_mean": float(np.mean(r["return"])), "ctr_mean": float(np.mean(r["ctr"])),
                            "session_length_mean": float(np.mean(r["length"])), "coverage": float(r["coverage"]),
                            "diversity": float(r["diversity"]),
                            "satisfaction_mean": float(np.mean(r["satisfaction"]))}
            churn = ""
            if new_items is not None:
                share = float(r["new_item_clicks"].sum() / max(float(r["clicks"].sum()), 1.0))
                online[name]["new_item_click_share"] = share
                churn = f", new-item click share {share:.3f}"
            self.say(f"   {name:>12}: return {online[name]['return_mean']:.2f}, CTR {online[name]['ctr_mean']:.3f}, "
                     f"length {online[name]['session_length_mean']:.1f}, diversity {online[name]['diversity']:.3f}"
                     + churn)
        metrics = {"ranking": ranking, "online": online, "episodes": cfg.episodes, "users": "heldout"}
        if cfg.impressions.path:
            metrics["offline"] = self._evaluate_offline(chosen)
        atomic_write_text(path, json.dumps(metrics, indent=2))
        s["metrics"] = metrics

    def _evaluate_offline(self, policies: dict) -> dict:
        """Off-policy estimates of every policy (and of its gain over the logging policy) on the
        held-out impression log, and how well the fitted simulator agrees with that log."""
        from tfmarl.data import load_bandit_feedback
        from tfmarl.evaluation import evaluate_policy_offline, validate_simulator

        cfg, s = self.config.evaluate.impressions, self.state
        log = load_bandit_feedback(cfg.path, round=cfg.round, position=cfg.position, item=cfg.item,
                                   reward=cfg.reward, propensity=cfg.propensity,
                                   conditional_propensity=cfg.conditional_propensity, history=cfg.history,
                                   user=cfg.user, items=s["vocab"])
        # A sampling policy (e.g. random) has no slates to score: it would need its own distribution.
        policies = {name: policy for name, policy in policies.items() if policy.deterministic}
        estimates = {}
        for name, policy in policies.items():
            value = evaluate_policy_offline(log, policy, estimators=(cfg.estimator,), seed=self.config.seed)
            gain = evaluate_policy_offline(log, policy, estimators=(cfg.estimator,), versus_logging=True,
                                           seed=self.config.seed)
            estimates[name] = {"value": dataclasses.asdict(value[cfg.estimator]),
                               "minus_logging": dataclasses.asdict(gain[cfg.estimator])}
            self.say(f"   offline {name:>12}: {value[cfg.estimator]}; minus logging {gain[cfg.estimator]}")
        validation = validate_simulator(s["user_model"], log, config=self._session_config(),
                                        policies=policies,
                                        estimator=cfg.estimator, seed=self.config.seed)
        for line in validation.format().splitlines():
            self.say(f"   {line}")
        validation.plot_calibration(self.run_dir / "calibration.png")
        return {"estimator": cfg.estimator, "log": str(cfg.path), "rounds": len(log), "policies": estimates,
                "simulator_validation": validation.to_dict()}

    def stage_export(self, reuse: bool) -> None:
        from tfmarl.export import export_recommender

        cfg, s = self.config.export, self.state
        record = self.run_dir / "export.json"
        if reuse and record.exists():
            s["export"] = json.loads(record.read_text())
            self.say(f"   {s['export']['path']}")
            return
        algorithm = s.get("algorithm")
        meta = {"run_dir": str(self.run_dir), "algorithm": self.config.rl.algorithm}
        if algorithm is None:
            path = export_recommender(s["model"], cfg.dir, k=cfg.k, retrieval=cfg.retrieval,
                                      index_options=cfg.index_options(), metadata=meta, warmup=cfg.warmup,
                                      item_features=s["features"])
        else:
            path = algorithm.export(cfg.dir, k=cfg.k, retrieval=cfg.retrieval, index_options=cfg.index_options(),
                                    metadata=meta, warmup=cfg.warmup)
        s["export"] = {"path": str(path), "model_base_path": cfg.dir}
        atomic_write_text(record, json.dumps(s["export"], indent=2))
        self.say(f"   wrote {path}")

    def stage_report(self, reuse: bool) -> None:
        from tfmarl.cli.report import write_report

        path = write_report(self.run_dir, self.config, self.state, self.timings)
        self.say(f"   {path}")
