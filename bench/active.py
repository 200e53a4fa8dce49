"""``leukolab bench active``: the product's labelling loop, simulated, with MANIFEST labels as
the cytologist.

Start from 2 labels per class of the train split. Each round trains (warm-started from the
previous round's model, as a lab would retrain), scores the unlabelled pool, runs the same
pseudo-label filters and selection as the queue refresh (``ml.active.rank_for_queue``), and
"labels" the first ``step`` cells the queue would show, until ``budget`` labels are spent.
Accuracy on the test split is recorded after every round; a PNG plots accuracy against labels
for every strategy whose JSON lies beside ``--json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ml.active import STRATEGIES
from ml.config import DEFAULT_METHOD, METHODS, PROFILES

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ml.config import TrainConfig

BENCH = "active"


def bench_active(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder with MANIFEST.csv (train/test split)")],
    budget: Annotated[int, typer.Option("--budget", help="labels to spend in all")] = 250,
    step: Annotated[int, typer.Option("--step", help="labels added per round")] = 50,
    strategy: Annotated[str, typer.Option("--strategy", help=f"one of {', '.join(STRATEGIES)}")] = "diverse",
    profile: Annotated[str, typer.Option("--profile", help=f"one of {', '.join(PROFILES)}")] = "cpu",
    method: Annotated[str, typer.Option("--method", help=f"one of {', '.join(METHODS)}")] = DEFAULT_METHOD,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    initial_per_class: Annotated[int, typer.Option("--initial-per-class", help="labels per class to start")] = 2,
    warm_fraction: Annotated[
        float, typer.Option("--warm-fraction", help="epochs of a warm-started round, as a fraction of the first's")
    ] = 0.25,
    epochs: Annotated[int | None, typer.Option("--epochs", help="epochs of the first round (profile's)")] = None,
    pool_limit: Annotated[
        int | None, typer.Option("--pool-limit", help="use at most this many train images (quick runs)")
    ] = None,
    test_limit: Annotated[int | None, typer.Option("--test-limit", help="at most this many test images")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="training config override key=value (JSON value), repeatable")
    ] = None,
) -> dict:
    """Simulate active labelling with STRATEGY; report test accuracy after each round."""
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    import numpy as np
    import torch

    from ml.checkpoint import load_model
    from ml.config import entropy_threshold_for, make_config, parse_overrides
    from ml.data import load_manifest_split, resize
    from ml.device import device_name, pick_device
    from ml.images import MODEL_SIZE
    from ml.infer import predict
    from ml.metrics import classification_metrics
    from ml.train import train

    started = time.perf_counter()
    try:
        extra = parse_overrides(overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    device = pick_device()
    rng = np.random.default_rng(seed)
    train_set = load_manifest_split(data, "train", MODEL_SIZE)  # 64 px, like the stored cells
    test_set = load_manifest_split(data, "test", MODEL_SIZE, class_names=train_set.class_names)
    x_pool, y_pool = _subsample(rng, train_set.x, train_set.y.numpy(), pool_limit)
    x_test, y_test = _subsample(rng, test_set.x, test_set.y.numpy(), test_limit)
    names = train_set.class_names
    n_classes = len(names)

    labelled = np.concatenate(
        [rng.choice(np.flatnonzero(y_pool == c), initial_per_class, replace=False) for c in range(n_classes)]
    )
    first = make_config(profile, method, **{"seed": seed, **extra, **({"epochs": epochs} if epochs else {})})
    size = first.image_size
    x_pool_small, x_test_small = resize(x_pool, size), resize(x_test, size)
    rounds: list[dict] = []
    checkpoint = None
    out: dict = {
        "bench": BENCH,
        "dataset": str(data),
        "strategy": strategy,
        "method": method,
        "profile": profile,
        "seed": seed,
        "budget": budget,
        "step": step,
        "initial_per_class": initial_per_class,
        "warm_fraction": warm_fraction,
        "overrides": extra,
        "n_pool": int(len(y_pool)),
        "n_test": int(len(y_test)),
        "class_names": names,
        "device": device_name(device),
        "rounds": rounds,
    }
    while True:
        round_started = time.perf_counter()
        per_class = int(np.bincount(y_pool[labelled], minlength=n_classes).min())
        overrides = {
            "entropy_threshold": entropy_threshold_for(max(per_class, 1)),
            **extra,
            "seed": seed + len(rounds),
        }
        if checkpoint is None:
            overrides["epochs"] = first.epochs
        else:  # a warm-started round is shorter, as a lab's retrain on top of the last model
            overrides["epochs"] = max(1, round(first.epochs * warm_fraction))
            overrides["round_epochs"] = max(1, round(first.round_epochs * warm_fraction))
        config = make_config(profile, method, **overrides)
        unlabelled = np.setdiff1d(np.arange(len(y_pool)), labelled)
        t_lab, t_unl = torch.from_numpy(np.sort(labelled)), torch.from_numpy(unlabelled)
        result = train(
            config,
            x_pool_small[t_lab],
            torch.from_numpy(y_pool[np.sort(labelled)]),
            x_pool_small[t_unl],
            names,
            init_checkpoint=checkpoint,
            device=device,
        )
        checkpoint = result.checkpoint
        model = load_model(checkpoint, which="teacher", device=device)
        test = predict(model, x_test_small)
        metrics = classification_metrics(y_test, test.labels, names)
        record = {
            "labels": int(len(labelled)),
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "per_class_labels": np.bincount(y_pool[labelled], minlength=n_classes).tolist(),
            "train_seconds": round(result.wall_seconds, 1),
            "funnel": result.funnel,
        }
        if len(labelled) < budget and len(unlabelled):
            chosen = _pick(
                model,
                config,
                x_pool_small,
                y_pool,
                labelled,
                unlabelled,
                n=min(step, budget - len(labelled), len(unlabelled)),
                strategy=strategy,
                seed=seed + len(rounds),
                record=record,
            )
            labelled = np.concatenate([labelled, chosen])
        record["round_seconds"] = round(time.perf_counter() - round_started, 1)
        rounds.append(record)
        typer.echo(
            f"[{strategy}] {record['labels']:4d} labels: accuracy {100 * record['accuracy']:.2f} %, "
            f"macro-F1 {record['macro_f1']:.3f} ({record['round_seconds']:.0f} s)"
        )
        out["wall_seconds"] = round(time.perf_counter() - started, 1)
        if json_out is not None:
            _write_json(json_out, out)
        if record["labels"] >= budget or len(unlabelled) == 0:
            break
    if json_out is not None:
        plot = json_out.with_suffix(".png")
        summary = plot_strategies(json_out.parent, plot)
        out["comparison"] = summary
        _write_json(json_out, out)
        typer.echo(f"wrote {json_out} and {plot}")
    return out


def _subsample(rng: np.random.Generator, x: torch.Tensor, y: np.ndarray, limit: int | None) -> tuple:
    """At most ``limit`` of the images ``x`` and their labels ``y``, drawn at random, in their order."""
    import numpy as np
    import torch

    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), limit, replace=False))
    return x[torch.from_numpy(keep)], y[keep]


def _pick(
    model: torch.nn.Module,
    config: TrainConfig,
    x_pool: torch.Tensor,
    y_pool: np.ndarray,
    labelled: np.ndarray,
    unlabelled: np.ndarray,
    *,
    n: int,
    strategy: str,
    seed: int,
    record: dict,
) -> np.ndarray:
    """The ``n`` unlabelled pool images the strategy would queue next (their indices in the pool); what it
    picked and why goes into ``record``."""
    import numpy as np
    import torch

    from ml.active import rank_for_queue
    from ml.infer import predict

    t_lab, t_unl = torch.from_numpy(np.sort(labelled)), torch.from_numpy(unlabelled)
    scored = predict(model, x_pool[t_unl])
    lab_features = predict(model, x_pool[t_lab]).features
    selection, pseudo = rank_for_queue(
        scored.probs.astype(np.float64),
        scored.features,
        lab_features,
        y_pool[np.sort(labelled)],
        config,
        n,
        strategy=strategy,
        seed=seed,
    )
    chosen = unlabelled[selection.indices]
    record["picked_per_class"] = np.bincount(y_pool[chosen], minlength=len(record["per_class_labels"])).tolist()
    record["reasons"] = {r: selection.reasons.count(r) for r in sorted(set(selection.reasons))}
    record["queue_funnel"] = pseudo.funnel
    return chosen


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def labels_to_reach(rounds: list[dict], accuracy: float) -> int | None:
    """The fewest labels at which a run reached ``accuracy``; None if it never did."""
    for record in rounds:
        if record["accuracy"] >= accuracy:
            return int(record["labels"])
    return None


def plot_strategies(folder: Path, png: Path) -> dict:
    """Plot accuracy against labels for every ``bench active`` JSON in ``folder``; return, per
    strategy, the labels it needed to reach ``random``'s final accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and payload.get("bench") == BENCH and payload.get("rounds"):
            runs.append(payload)
    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    axes = figure.add_subplot()
    for run in runs:
        xs = [r["labels"] for r in run["rounds"]]
        ys = [100 * r["accuracy"] for r in run["rounds"]]
        axes.plot(xs, ys, marker="o", label=f"{run['strategy']} (seed {run['seed']})")
    randoms = [r for r in runs if r["strategy"] == "random"]
    summary: dict = {}
    if randoms:
        target = sum(r["rounds"][-1]["accuracy"] for r in randoms) / len(randoms)
        axes.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label="random at its budget")
        summary["random_final_accuracy"] = target
        summary["labels_to_reach_random_final"] = {
            f"{r['strategy']}/seed{r['seed']}": labels_to_reach(r["rounds"], target) for r in runs
        }
    axes.set_xlabel("expert labels")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Active labelling: accuracy against labels")
    axes.grid(alpha=0.3)
    if runs:
        axes.legend(fontsize=8)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png)
    return summary
