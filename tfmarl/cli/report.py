"""Run reports: text and Markdown tables, plots, and the Markdown report of a pipeline run."""

from __future__ import annotations

import pathlib

import numpy as np


def format_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4f}") -> str:
    """Renders ``rows`` (dicts) as an aligned text table with the given columns."""
    def cell(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])


def markdown_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4f}") -> str:
    """Renders ``rows`` as a GitHub-flavoured Markdown table."""
    def cell(v):
        return floatfmt.format(v) if isinstance(v, float) else ("" if v is None else str(v))

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def _plot_learning_curves(path, state):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = state.get("pretrain", {})
    curve = state.get("rl", {}).get("curve", [])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    if history.get("loss"):
        epochs = range(1, len(history["loss"]) + 1)
        axes[0].plot(epochs, history["loss"], label="train loss")
        axes[0].set_xlabel("epoch")
        if history.get("val_ndcg@10"):
            twin = axes[0].twinx()
            twin.plot(epochs, history["val_ndcg@10"], color="C1", label="val NDCG@10")
            twin.set_ylabel("val NDCG@10")
        axes[0].set_title("Pretraining")
        axes[0].legend(loc="upper left")
    points = [p for p in curve if "session_return" in p or "reward" in p]
    if points:
        key = "session_return" if "session_return" in points[0] else "reward"
        axes[1].plot([p["step"] for p in points], [p.get(key, np.nan) for p in points])
        axes[1].set_xlabel("environment step")
        axes[1].set_ylabel(key.replace("_", " "))
        axes[1].set_title(f"RL training ({state.get('rl', {}).get('algorithm', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_policies(path, online):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(online)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].bar(names, [online[n]["return_mean"] for n in names], color="#4c72b0")
    axes[0].set_title("Return per session (held-out simulated users)")
    axes[1].bar(names, [online[n]["diversity"] for n in names], color="#55a868")
    axes[1].set_title("Intra-list diversity")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reward_weights(path, curve):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for p in curve for k in p if k.startswith("weight/")})
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        ax.plot([p["step"] for p in curve], [p.get(key, np.nan) for p in curve], label=key[7:])
    ax.set_xlabel("environment step")
    ax.set_title("System agent: adaptive reward weights")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir, config, state, timings) -> pathlib.Path:
    """Writes ``report.md`` and its PNG plots into ``run_dir``; returns the report's path."""
    from tfmarl.atomic import atomic_write_text

    run_dir = pathlib.Path(run_dir)
    lines = [f"# tfmarl run report: `{run_dir}`", ""]
    data = state.get("data", {})
    if data:
        lines += ["## Data", "", f"{data['name']} ({data['source']}): {data['interactions']:,} interactions, "
                  f"{data['users']:,} users, {data['items']:,} items; {data['train_targets']:,} training targets, "
                  f"{data['test_users']:,} test users ({config.data.split}).", ""]
    history = state.get("pretrain", {})
    if history:
        lines += ["## Pretraining", "",
                  f"{config.pretrain.encoder} User agent, dim {config.pretrain.dim}, loss `{config.pretrain.loss}`; "
                  f"best epoch {history.get('best_epoch')} (val NDCG@10 {history.get('best_val_ndcg@10', 0):.4f})"
                  + (f", {history['targets_per_second']:,.0f} next-item targets/s" if history.get("targets_per_second")
                     else "") + ".", ""]
    metrics = state.get("metrics", {})
    if metrics.get("ranking"):
        r = metrics["ranking"]
        cols = [k for k in r if "@" in k]
        lines += ["## Ranking (test split, full catalog, history excluded)", "",
                  markdown_table([{"model": "pretrained", **{c: r[c] for c in cols}}], ["model", *cols]), ""]
    if metrics.get("online"):
        rows = [{"policy": name, **values} for name, values in metrics["online"].items()]
        churn = ["new_item_click_share"] if all("new_item_click_share" in row for row in rows) else []
        lines += [f"## Simulated sessions ({metrics['episodes']} per policy, held-out users)", "",
                  markdown_table(rows, ["policy", "return_mean", "ctr_mean", "session_length_mean",
                                        "satisfaction_mean", "coverage", "diversity", *churn]), "",
                  "![policies](policies.png)", ""]
        _plot_policies(run_dir / "policies.png", metrics["online"])
    offline = metrics.get("offline")
    if offline:
        rows = [{"policy": name, "estimate": e["value"]["value"], "ci_low": e["value"]["ci_low"],
                 "ci_high": e["value"]["ci_high"], "minus_logging": e["minus_logging"]["value"]}
                for name, e in offline["policies"].items()]
        v = offline["simulator_validation"]
        lines += [f"## Off-policy evaluation ({offline['estimator']}, {offline['rounds']:,} logged impressions)", "",
                  markdown_table(rows, ["policy", "estimate", "ci_low", "ci_high", "minus_logging"]), "",
                  f"Simulator against the log: click AUC {v['auc']:.3f}, log loss {v['log_loss']:.4f}, "
                  f"calibration error {v['calibration_error']:.4f}"
                  + (f", policy-ranking agreement (Kendall tau) {v['kendall_tau']:.3f}" if v.get("kendall_tau")
                     is not None else "") + ".", "", "![calibration](calibration.png)", ""]
    rl = state.get("rl", {})
    if rl.get("curve"):
        lines += ["## RL training", "", f"`{rl['algorithm']}`, {rl['steps']} steps, "
                  f"{rl['env_steps_per_second']:,.0f} user-steps/s, {rl['train_steps_per_second']:.1f} train steps/s.",
                  ""]
        weights = [p for p in rl["curve"] if any(k.startswith("weight/") for k in p)]
        if weights:
            last = {k[7:]: round(v, 3) for k, v in weights[-1].items() if k.startswith("weight/")}
            lines += [f"Final reward weights: {last}.", "", "![reward weights](reward_weights.png)", ""]
            _plot_reward_weights(run_dir / "reward_weights.png", weights)
    _plot_learning_curves(run_dir / "learning_curves.png", state)
    lines += ["## Learning curves", "", "![learning curves](learning_curves.png)", ""]
    export = state.get("export")
    if export:
        name = pathlib.Path(export["model_base_path"]).name
        lines += ["## Serving", "", f"Exported `{export['path']}`. Serve it with "
                  f"`tfmarl serve --model_base_path {export['model_base_path']}` (or TF Serving) and POST to "
                  f"`/v1/models/{name}:predict`:", "", "```json",
                  '{"instances": [{"history": ["<item id>", "<item id>", ""]}]}', "```", ""]
    if timings:
        lines += ["## Stage timings", "", markdown_table([{"stage": k, "seconds": v} for k, v in timings.items()],
                                                         ["stage", "seconds"], "{:.1f}"), ""]
    lines += ["TensorBoard: `tensorboard --logdir " + str(run_dir / "tensorboard") + "`", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
