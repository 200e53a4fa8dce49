"""``leukolab bench active``: the product's labelling loop, simulated, with MANIFEST labels as
the cytologist.

Cold start: the first labels are chosen with no model (``ml.coldstart``: k-means++ over colour and
texture features, one cell per cluster; or a uniform draw). Each round then retrains exactly as
the worker does (``ml.retrain.retrain``: a fifth of the labels held out, the config from the
profile, method and run params, warm-started from the previous round's model), scores the
unlabelled pool, and "labels" the first cells the product's queue would show
(``ml.active.rank_for_queue``: pseudo-label filters, cells unlike any known class first, then the
strategy). ``random`` is the baseline: a random cold start and random rounds.

Every round records the accuracy on the fixed validation split (``ml.splits``; choices are made
on it) and on the test split, with the macro-F1 and its wall time. ``plot_active`` draws accuracy
against labels per strategy, the mean over seeds with a min-max band.

With ``--json``, the run keeps its last round's model beside the file (``NAME.last.pt``) and the
pool rows it labelled in the file, so ``--resume`` goes on from the last round written: after a
run was cut short, or to extend a finished schedule (``50,100`` to ``50,100,250``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ml.active import DEFAULT_STRATEGY, STRATEGIES
from ml.coldstart import COLD_STARTS, DEFAULT_FEATURES, FEATURES
from ml.config import DEFAULT_METHOD, METHODS, PROFILES
from ml.files import atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    import torch

BENCH = "active"
# The targets: test accuracy (mean of 3 seeds) at these total label counts.
TARGETS = {100: 0.985, 250: 0.990}
TARGET_SEEDS = 3  # the targets are means over seeds 0-2
PRODUCT_ARM, RANDOM_ARM = "diverse / kmeans", "random / random"  # summarise's names of the two arms
# What a resumed run must share with the file it goes on from (the schedule: its first rounds).
RESUME_KEYS = ("dataset", "strategy", "cold_start", "cold_features", "method", "profile", "seed",
               "params_first_round", "params_warm_rounds", "overrides", "n_pool", "n_validation", "n_test",
               "class_names")  # fmt: skip
RESUME_ROUNDS = "bench_active_rounds"  # the kept model's key: how many rounds it ends


def parse_schedule(schedule: str | None, budget: int, step: int, initial: int | None) -> list[int]:
    """Total labels after each round: ``schedule`` ("50,100,250"), else ``initial`` (default
    ``step``) then ``+step`` up to ``budget``. Raises typer.BadParameter when not increasing."""
    if schedule:
        try:
            totals = [int(part) for part in schedule.split(",") if part.strip()]
        except ValueError:
            message = f"--schedule {schedule!r}: expected increasing label counts, e.g. 50,100,250"
            raise typer.BadParameter(message) from None
    else:
        first = initial if initial is not None else step
        totals = list(range(first, budget, step)) + [budget] if first < budget else [budget]
    if not totals or totals[0] < 2 or any(b <= a for a, b in zip(totals, totals[1:], strict=False)):
        raise typer.BadParameter(f"label counts {totals}: they must start at 2 or more and increase")
    return totals


def bench_active(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder with MANIFEST.csv (train/test split)")],
    budget: Annotated[int, typer.Option("--budget", help="labels to spend in all")] = 250,
    step: Annotated[int, typer.Option("--step", help="labels added per round")] = 50,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="total labels after each round, e.g. 50,100,250 (overrides)")
    ] = None,
    initial: Annotated[int | None, typer.Option("--initial", help="labels of the cold start (default: step)")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help=f"one of {', '.join(STRATEGIES)}")] = DEFAULT_STRATEGY,
    cold_start: Annotated[
        str | None,
        typer.Option("--cold-start", help=f"one of {', '.join(COLD_STARTS)} (default: random for random, else kmeans)"),
    ] = None,
    cold_features: Annotated[
        str, typer.Option("--cold-features", help=f"features of the k-means cold start: {', '.join(FEATURES)}")
    ] = DEFAULT_FEATURES,
    profile: Annotated[str, typer.Option("--profile", help=f"one of {', '.join(PROFILES)}")] = "cpu",
    method: Annotated[str, typer.Option("--method", help=f"one of {', '.join(METHODS)}")] = DEFAULT_METHOD,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="the run param 'epochs' of the first round (default: profile's)")
    ] = None,
    warm_epochs: Annotated[
        int | None, typer.Option("--warm-epochs", help="the run param 'epochs' of warm-started rounds")
    ] = None,
    warm_fraction: Annotated[
        float, typer.Option("--warm-fraction", help="without --warm-epochs: warm rounds' epochs over the first's")
    ] = 0.25,
    lab_default: Annotated[
        bool,
        typer.Option(
            "--lab-default", help="every round retrains with a lab's default run params (no 'epochs'): the full length"
        ),
    ] = False,
    pool_limit: Annotated[
        int | None, typer.Option("--pool-limit", help="use at most this many train images (quick runs)")
    ] = None,
    test_limit: Annotated[int | None, typer.Option("--test-limit", help="at most this many test images")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="training config override key=value (JSON value), repeatable")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="go on from the rounds already in --json (a run cut short, or a longer --schedule)"
        ),
    ] = False,
) -> dict:
    """Simulate the product's labelling loop with STRATEGY; report validation and test accuracy
    after each round."""
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    cold_start = cold_start or ("random" if strategy == "random" else "kmeans")
    if cold_start not in COLD_STARTS:
        raise typer.BadParameter(f"unknown cold start {cold_start!r}; choose from {COLD_STARTS}")
    if cold_features not in FEATURES:
        raise typer.BadParameter(f"unknown cold-start features {cold_features!r}; choose from {FEATURES}")
    totals = parse_schedule(schedule, budget, step, initial)
    if resume and (json_out is None or not json_out.is_file()):
        raise typer.BadParameter("--resume goes on from the --json file of an earlier run: name one that exists")
    import numpy as np

    from ml.checkpoint import load_model
    from ml.coldstart import cold_start as choose_cold
    from ml.config import config_from_dict, make_config, parse_overrides
    from ml.data import load_manifest_split
    from ml.device import device_name, pick_device
    from ml.images import MODEL_SIZE
    from ml.splits import VALIDATION

    started = time.perf_counter()
    try:
        extra = parse_overrides(overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    device = pick_device()
    rng = np.random.default_rng(seed)
    train_set = load_manifest_split(data, "train", MODEL_SIZE)  # 64 px, like the stored cells
    names = train_set.class_names
    val_set = load_manifest_split(data, VALIDATION, MODEL_SIZE, class_names=names)
    test_set = load_manifest_split(data, "test", MODEL_SIZE, class_names=names)
    x_pool, y_pool = _subsample(rng, train_set.x, train_set.y.numpy(), pool_limit)
    x_test, y_test = _subsample(rng, test_set.x, test_set.y.numpy(), test_limit)
    x_val, y_val = val_set.x, val_set.y.numpy()
    first_epochs = epochs or make_config(profile, method, **extra).epochs
    if lab_default and (epochs or warm_epochs):
        raise typer.BadParameter("--lab-default retrains at the profile's length: leave out --epochs and --warm-epochs")
    warm = None if lab_default else warm_epochs or max(1, round(first_epochs * warm_fraction))

    rounds: list[dict] = []
    out: dict = {
        "bench": BENCH,
        "dataset": str(data),
        "strategy": strategy,
        "cold_start": cold_start,
        "cold_features": cold_features if cold_start == "kmeans" else None,
        "cold_start_seconds": None,  # set below, or taken from the run resumed
        "method": method,
        "profile": profile,
        "seed": seed,
        "schedule": totals,
        "params_first_round": {"epochs": epochs} if epochs else {},
        "params_warm_rounds": {"epochs": warm} if warm else {},
        "overrides": extra,
        "n_pool": int(len(y_pool)),
        "n_validation": int(len(y_val)),
        "n_test": int(len(y_test)),
        "class_names": names,
        "device": device_name(device),
        "rounds": rounds,
    }
    previous: dict | None = None
    earlier_seconds = 0.0
    if resume:
        done, checkpoint = _resumable(json_out, out, totals)
        rounds.extend(done["rounds"])
        labelled = np.asarray(done["labelled"], dtype=np.int64)
        model = load_model(checkpoint, which="teacher", device=device)
        previous = {"checkpoint": checkpoint, "model": model, "config": config_from_dict(checkpoint["train_config"])}
        out["cold_start_seconds"] = done["cold_start_seconds"]
        out["resumed_after_rounds"] = [*done.get("resumed_after_rounds", []), len(rounds)]
        earlier_seconds = done["wall_seconds"]
        typer.echo(f"going on from {len(rounds)} rounds in {json_out} ({len(labelled)} labels)")
    else:
        cold_started = time.perf_counter()
        labelled = choose_cold(x_pool, totals[0], method=cold_start, features=cold_features, seed=seed)
        out["cold_start_seconds"] = round(time.perf_counter() - cold_started, 1)
    written = len(rounds)  # the rounds json_out holds
    data = _Data(x_pool, y_pool, x_val, y_val, x_test, y_test, names)
    try:
        for number, total in enumerate(totals[len(rounds) :], start=len(rounds)):  # after the rounds resumed
            round_started = time.perf_counter()
            if number:  # the queue of the previous round's model tops the labels up to ``total``
                chosen = _next_labels(
                    previous, x_pool, y_pool, labelled, total - len(labelled), strategy, seed + number, rounds[-1]
                )
                labelled = np.concatenate([labelled, chosen])
            record, previous = _train_round(
                data,
                labelled,
                previous,
                number,
                method=method,
                profile=profile,
                params=out["params_warm_rounds"] if previous else out["params_first_round"],
                seed=seed * 1000 + number,
                overrides=extra,
                device=device,
            )
            record["round_seconds"] = round(time.perf_counter() - round_started, 1)
            rounds.append(record)
            out["labelled"] = labelled.tolist()  # the pool rows labelled so far, in order: what --resume goes on with
            typer.echo(
                f"[{strategy}/{cold_start}] {record['labels']:4d} labels: "
                f"validation {100 * record['val_accuracy']:.2f} %, "
                f"test {100 * record['accuracy']:.2f} %, macro-F1 {record['macro_f1']:.3f} "
                f"({record['round_seconds']:.0f} s)"
            )
            out["wall_seconds"] = round(earlier_seconds + time.perf_counter() - started, 1)
            if json_out is not None:  # the model first: a file never names a round whose model is not kept
                _save_last_model(json_out, len(rounds), previous["checkpoint"])
                _write_json(json_out, out)
                written = len(rounds)
    except BaseException:  # a cut (Ctrl-C, a crash): say how to go on from the rounds already written
        if json_out is not None and written:
            typer.echo(
                f"stopped after {written} of {len(totals)} rounds; {json_out} keeps them: the same command "
                "with --resume goes on from there",
                err=True,
            )
        raise

    if json_out is not None:
        plot = json_out.with_suffix(".png")
        out["comparison"] = plot_active(json_out.parent, plot, method=method, profile=profile)
        _write_json(json_out, out)
        typer.echo(f"wrote {json_out} and {plot}")
    return out


@dataclass(frozen=True)
class _Data:
    """The loop's cells: the pool (its labels play the cytologist), the validation and the test split."""

    x_pool: torch.Tensor
    y_pool: np.ndarray
    x_val: torch.Tensor
    y_val: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray
    names: list[str]


def _train_round(
    data: _Data, labelled: np.ndarray, previous: dict | None, number: int, *, device: torch.device, **retrain_args
) -> tuple[dict, dict]:
    """Round ``number`` (from 0): retrain on the ``labelled`` pool rows as the worker does (the rest of the
    pool unlabelled, warm-started from ``previous``'s model, round ``number - 1``'s), then score the validation
    and test splits: the round's record (all but its seconds) and what the next round starts from."""
    import numpy as np
    import torch

    from ml.checkpoint import load_model
    from ml.data import resize
    from ml.infer import predict
    from ml.metrics import classification_metrics
    from ml.retrain import ActiveModel, retrain

    unlabelled = np.setdiff1d(np.arange(len(data.y_pool)), labelled)
    warm_start = previous["checkpoint"] if previous else None
    retrained = retrain(
        data.x_pool[torch.from_numpy(labelled)],
        data.y_pool[labelled].tolist(),
        data.x_pool[torch.from_numpy(unlabelled)],
        data.names,
        active=ActiveModel(id=number - 1, load=lambda: warm_start) if warm_start is not None else None,
        device=device,
        **retrain_args,
    )
    model = load_model(retrained.result.checkpoint, which="teacher", device=device)
    size = retrained.config.image_size
    val = classification_metrics(data.y_val, predict(model, resize(data.x_val, size)).labels, data.names)
    test = classification_metrics(data.y_test, predict(model, resize(data.x_test, size)).labels, data.names)
    record = {
        "labels": int(len(labelled)),
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "per_class_labels": np.bincount(data.y_pool[labelled], minlength=len(data.names)).tolist(),
        "data": retrained.data,
        "epochs": retrained.config.epochs,
        "round_epochs": retrained.config.round_epochs,
        "train_seconds": round(retrained.result.wall_seconds, 1),
        "funnel": retrained.result.funnel,
    }
    return record, {"checkpoint": retrained.result.checkpoint, "model": model, "config": retrained.config}


def _subsample(rng: np.random.Generator, x: torch.Tensor, y: np.ndarray, limit: int | None) -> tuple:
    """At most ``limit`` of the images ``x`` and their labels ``y``, drawn at random, in their order."""
    import numpy as np
    import torch

    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), limit, replace=False))
    return x[torch.from_numpy(keep)], y[keep]


def _next_labels(
    previous: dict,
    x_pool: torch.Tensor,
    y_pool: np.ndarray,
    labelled: np.ndarray,
    n: int,
    strategy: str,
    seed: int,
    record: dict,
) -> np.ndarray:
    """The ``n`` unlabelled pool cells the product's queue shows first after ``previous``'s
    model (``worker.scoring.refresh_queue``'s call of ``rank_for_queue``, with the OOD score);
    ``random`` draws them uniformly. What was picked and why goes into ``record``."""
    import numpy as np
    import torch

    from ml.active import rank_for_queue
    from ml.data import resize
    from ml.infer import predict
    from ml.ood import OODScorer

    unlabelled = np.setdiff1d(np.arange(len(y_pool)), labelled)
    n = min(n, len(unlabelled))
    if strategy == "random":  # the strategy needs no scores: skip scoring the pool
        chosen = unlabelled[np.random.default_rng(seed).permutation(len(unlabelled))[:n]]
        record["reasons"] = {"random": int(n)}
    else:
        model, config = previous["model"], previous["config"]
        size = config.image_size
        pool_images = x_pool[torch.from_numpy(unlabelled)]
        ood_state = previous["checkpoint"].get("ood")
        scorer = OODScorer.from_state(ood_state) if ood_state else None
        scored = predict(model, resize(pool_images, size), layers=bool(scorer and scorer.uses_layers))
        lab_features = predict(model, resize(x_pool[torch.from_numpy(labelled)], size)).features
        ood_scores = ood_threshold = None
        if scorer is not None:
            ood_scores = scorer.score(scored.logits, scored.features, images=pool_images, layers=scored.layers)
            ood_threshold = float(ood_state["threshold"])
        selection, pseudo = rank_for_queue(
            scored.probs.astype(np.float64),
            scored.features,
            lab_features,
            y_pool[labelled],
            config,
            n,
            strategy=strategy,
            seed=seed,
            ood_scores=ood_scores,
            ood_threshold=ood_threshold,
        )
        chosen = unlabelled[selection.indices]
        record["reasons"] = {r: selection.reasons.count(r) for r in sorted(set(selection.reasons))}
        record["queue_funnel"] = pseudo.funnel
    record["picked_per_class"] = np.bincount(y_pool[chosen], minlength=len(record["per_class_labels"])).tolist()
    return chosen


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2))


def last_model_path(json_out: Path) -> Path:
    """Where a run with ``--json json_out`` keeps its last round's model for ``--resume``."""
    return json_out.with_suffix(".last.pt")


def _save_last_model(json_out: Path, n_rounds: int, checkpoint: dict) -> None:
    from ml.checkpoint import save_checkpoint

    save_checkpoint(last_model_path(json_out), {**checkpoint, RESUME_ROUNDS: n_rounds})


def _resumable(json_out: Path, out: dict, totals: list[int]) -> tuple[dict, dict]:
    """The run in ``json_out`` and its last round's model when this run can go on from them; else
    typer.BadParameter saying why."""
    from ml.checkpoint import load_checkpoint

    try:
        done = json.loads(json_out.read_text())
    except (OSError, ValueError) as error:
        raise typer.BadParameter(f"--resume: {json_out} is not a bench active run ({error})") from None
    if done.get("bench") != BENCH or not done.get("rounds") or "labelled" not in done:
        raise typer.BadParameter(f"--resume: {json_out} holds no round to go on from (an older version's file?)")
    differ = [key for key in RESUME_KEYS if done.get(key) != out[key]]
    if differ:
        said = ", ".join(f"{key} {done.get(key)!r} there, {out[key]!r} here" for key in differ)
        raise typer.BadParameter(f"--resume: {json_out} was run with other settings: {said}")
    labels = [record["labels"] for record in done["rounds"]]
    if labels != totals[: len(labels)] or len(labels) >= len(totals):
        raise typer.BadParameter(
            f"--resume: {json_out} has rounds at {labels} labels; --schedule {totals} must start with them and go on"
        )
    last = last_model_path(json_out)
    if not last.is_file():
        raise typer.BadParameter(f"--resume: the last round's model {last} is missing; run again without --resume")
    checkpoint = load_checkpoint(last)
    kept = checkpoint.pop(RESUME_ROUNDS, None)
    if kept != len(labels):
        raise typer.BadParameter(
            f"--resume: {last} is the model of round {kept}, {json_out} ends at round {len(labels)}: "
            "run again without --resume"
        )
    return done, checkpoint


def load_runs(folder: Path, method: str | None = None, profile: str | None = None) -> list[dict]:
    """The ``bench active`` JSONs in ``folder`` of this loop (with validation figures), of
    ``method`` and ``profile`` when given."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(payload, dict) and payload.get("bench") == BENCH and payload.get("rounds")):
            continue
        if "val_accuracy" not in payload["rounds"][0] or "cold_start" not in payload:
            continue  # an earlier version of the bench (no validation split, labelled start)
        if (method and payload.get("method") != method) or (profile and payload.get("profile") != profile):
            continue
        payload["_file"] = path.name
        runs.append(payload)
    return runs


def summarise(runs: list[dict]) -> dict:
    """Per arm (strategy / cold start) and total labels: the seeds and their test and validation
    accuracy (mean, sd, min, max), macro-F1 and round seconds."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        arm = f"{run['strategy']} / {run['cold_start']}"
        for record in run["rounds"]:
            cell = table[arm][int(record["labels"])]
            cell["seeds"].append(run["seed"])
            for key in ("accuracy", "val_accuracy", "macro_f1", "round_seconds"):
                cell[key].append(record[key])
    summary: dict = {}
    for arm, by_labels in table.items():
        summary[arm] = {}
        for labels, cell in sorted(by_labels.items()):
            entry: dict = {"seeds": sorted(cell["seeds"])}
            for key in ("accuracy", "val_accuracy", "macro_f1", "round_seconds"):
                values = cell[key]
                entry[key] = {
                    "mean": statistics.mean(values),
                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                }
            summary[arm][labels] = entry
    return summary


def plot_active(folder: Path, png: Path, method: str | None = None, profile: str | None = None) -> dict:
    """Plot test and validation accuracy against total labels for each arm of the ``bench active``
    runs in ``folder`` (mean over seeds, min-max band); return ``summarise``'s table. No runs: no plot."""
    return plot_summary(summarise(load_runs(folder, method, profile)), png, method, profile)


def plot_summary(summary: dict, png: Path, method: str | None = None, profile: str | None = None) -> dict:
    """``plot_active``'s plot of a ``summarise`` table, which it returns. An empty table: no plot."""
    if not summary:
        return summary
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2), dpi=110)
    panels = figure.subplots(1, 2, sharey=True)
    for axes, key, title in ((panels[0], "accuracy", "test split"), (panels[1], "val_accuracy", "validation split")):
        for arm, by_labels in sorted(summary.items()):
            xs = sorted(by_labels)
            mean = [100 * by_labels[x][key]["mean"] for x in xs]
            low = [100 * by_labels[x][key]["min"] for x in xs]
            high = [100 * by_labels[x][key]["max"] for x in xs]
            seeds = max(len(by_labels[x]["seeds"]) for x in xs)
            (line,) = axes.plot(xs, mean, marker="o", label=f"{arm} ({seeds} seed{'s' if seeds > 1 else ''})")
            axes.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if key == "accuracy":
            for labels, target in TARGETS.items():
                axes.plot([labels], [100 * target], marker="*", color="black", markersize=10, linestyle="none")
            axes.plot([], [], marker="*", color="black", linestyle="none", label="issue's target")
        axes.set_xlabel("expert labels in total")
        axes.set_title(title)
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("accuracy (%), mean over seeds, band min-max")
    if summary:
        panels[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"The product's labelling loop{f' ({method}, {profile} profile)' if method else ''}")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png)
    return summary


def results_lines(
    folder: Path, png: Path, link: str, method: str = DEFAULT_METHOD, profile: str = "cpu", title: str | None = None
) -> list[str]:
    """The ``docs/results.md`` section of the loop: a table per total labels (test and validation
    accuracy per arm, mean ± sd over seeds) and the plot, drawn into ``png`` and linked as ``link``;
    ``title`` ends the heading."""
    runs = load_runs(folder, method, profile)
    summary = plot_summary(summarise(runs), png, method, profile)
    if not summary:
        return []
    settings = sorted(
        {
            f"run param epochs {r['params_first_round'].get('epochs', 'default')} for the cold round and "
            f"{r['params_warm_rounds'].get('epochs', 'default')} for warm rounds, "
            f"overrides {r['overrides'] or 'none'}, "
            f"labels after each round {r['schedule']}"
            for r in runs
        }
    )
    machines: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: (r["strategy"], r["seed"])):
        machines.setdefault(r.get("device", "unknown"), []).append(f"{r['strategy']} seed {r['seed']}")
    arms = sorted(summary)
    labels = sorted({n for arm in arms for n in summary[arm]})
    lines = [
        "",
        f"## The product's loop (`bench active`){', ' + title if title else ''}",
        "",
        f"{method}, {profile} profile: a cold start without a model, then rounds chosen by the product's queue, "
        "each retrained as the worker does (`ml.retrain`), warm-started from the round before. Accuracy in %, "
        f"mean ± sd over seeds (`{_docs_path(folder)}`, `docs/results/active/README.md` for the commands). "
        f"Settings: {'; '.join(settings)}.",
        *(
            [
                "",
                "The runs come from more than one machine, which moves a run as much as a lever does "
                "(`docs/results/val-machines/`): compare arms of one seed on one machine. "
                + "; ".join(f"{device}: {', '.join(names)}" for device, names in machines.items())
                + ".",
            ]
            if len(machines) > 1
            else []
        ),
        "",
        "| labels | " + " | ".join(f"{arm}: test | {arm}: validation | seeds" for arm in arms) + " |",
        "|---:|" + "---:|---:|---|" * len(arms),
    ]
    for n in labels:
        cells = []
        for arm in arms:
            entry = summary[arm].get(n)
            if entry is None:
                cells += ["–", "–", "–"]
                continue
            cells += [
                mean_sd(entry["accuracy"]),
                mean_sd(entry["val_accuracy"]),
                ", ".join(map(str, entry["seeds"])),
            ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", *run_lines(runs, labels), "", *target_lines(summary)]
    choice = folder / "cold_start_choice.json"
    if choice.exists():
        picked = json.loads(choice.read_text())
        means = ", ".join(f"{name} {100 * v:.1f} %" for name, v in picked["mean_val_accuracy"].items())
        lines += [
            "",
            f"The k-means cold start's features were chosen on the validation split (`scripts/cold_start_choice.py`: "
            f"{picked['labels']} first labels, a {picked['epochs']}-epoch supervised run, seeds "
            f"{', '.join(map(str, picked['seeds']))}; mean validation accuracy {means}): "
            f"**{picked['chosen_features']}**.",
        ]
    lines += ["", f"![accuracy against labels, the product's loop]({link})"]
    return lines


def run_lines(runs: list[dict], labels: list[int]) -> list[str]:
    """A row per run: its test (validation) accuracy and the labels per class after each of its rounds, and
    the machine it ran on."""
    names = ", ".join(name[:4] for name in runs[0]["class_names"]) if runs and runs[0].get("class_names") else ""
    lines = [
        f"Each run: test (validation) accuracy in %, and the labels per class{f' ({names})' if names else ''} "
        "after the round.",
        "",
        "| arm | seed | " + " | ".join(f"{n} labels" for n in labels) + " | machine |",
        "|---|---:|" + "---|" * len(labels) + "---|",
    ]
    for run in sorted(runs, key=lambda r: (r["strategy"] != "diverse", r["strategy"], r["seed"], r["_file"])):
        by_labels = {int(record["labels"]): record for record in run["rounds"]}
        cells = [
            f"{100 * r['accuracy']:.1f} ({100 * r['val_accuracy']:.1f}) {r.get('per_class_labels', '')}"
            if (r := by_labels.get(n))
            else "–"
            for n in labels
        ]
        arm = f"{run['strategy']} / {run['cold_start']}"
        lines.append(f"| {arm} | {run['seed']} | " + " | ".join(cells) + f" | {run.get('device', 'unknown')} |")
    return lines


def target_lines(summary: dict) -> list[str]:
    """A line per budget of ``TARGETS`` that the runs reached: each arm's mean test accuracy there against
    the target, met or missed where it rests on ``TARGET_SEEDS`` seeds, else above or below on the seeds run."""
    lines = []
    for labels, target in TARGETS.items():
        verdicts = []
        for arm in sorted(summary):
            entry = summary[arm].get(labels)
            if entry is None:
                continue
            mean, seeds = entry["accuracy"]["mean"], len(entry["seeds"])
            gap = f"{abs(100 * (mean - target)):.1f} points"
            if seeds >= TARGET_SEEDS:
                verdict = "met" if mean >= target else f"missed by {gap}"
            else:
                verdict = (
                    f"{'above' if mean >= target else 'below'} it by {gap} on {_count(seeds, 'seed')}, "
                    f"short of the {TARGET_SEEDS} the target is a mean over"
                )
            verdicts.append(f"{arm} {100 * mean:.1f} %, {verdict}")
        if verdicts:
            head = f"- Target ≥ {100 * target:.1f} % on the test split at {labels} labels: "
            lines.append(head + "; ".join(verdicts))
    product, random = summary.get(PRODUCT_ARM), summary.get(RANDOM_ARM)
    budgets = sorted(set(product or {}) & set(random or {}))
    if budgets:
        gains = {n: 100 * (product[n]["accuracy"]["mean"] - random[n]["accuracy"]["mean"]) for n in budgets}
        every = all(gain > 0 for gain in gains.values())
        # settled only where both arms ran every budget of the product's with the target's seeds
        settled = set(budgets) == set(product) and all(
            len(arm[n]["seeds"]) >= TARGET_SEEDS for arm in (product, random) for n in budgets
        )
        said = ", ".join(
            f"{gain:+.1f} points at {n}" + ("" if settled else f" ({_count(len(random[n]['seeds']), 'random seed')})")
            for n, gain in gains.items()
        )
        verdict = (
            f"{'met' if every else 'missed'} ({said})"
            if settled
            else f"{'above random at every budget run' if every else 'below random at a budget'} so far ({said}), "
            f"short of {TARGET_SEEDS} seeds of each arm at each of the product's budgets"
        )
        lines.append(
            f"- Target, the product's strategy above random at every budget (test, mean over seeds): {verdict}"
        )
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _docs_path(folder: Path) -> str:
    """``folder`` from its ``docs/`` on (the page names its sources so), else as it is."""
    parts = folder.parts
    return "/".join(parts[parts.index("docs") :]) + "/" if "docs" in parts else f"{folder}/"


def mean_sd(stats: dict) -> str:
    """``summarise``'s statistics of a fraction as a percentage: the mean, and ± sd where the values differ."""
    if stats["sd"] == 0.0 and stats["min"] == stats["max"]:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['sd']:.1f}"
