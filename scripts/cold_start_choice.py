"""Choose the cold start's features on the validation split: for each seed, 50 first labels drawn
at random or by k-means++ on each feature kind (``ml.coldstart``), a short supervised run on them,
and its accuracy on the fixed validation split (never the test split).

Usage: python scripts/cold_start_choice.py [--data ../shared/data/pbc] [--labels 50] [--seeds 0 1]
       [--epochs 2] [--json docs/results/active/cold_start_choice.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ml.checkpoint import load_model  # noqa: E402
from ml.coldstart import FEATURES, features_for, kmeans_pick  # noqa: E402
from ml.config import make_config  # noqa: E402
from ml.data import load_manifest_split  # noqa: E402
from ml.images import MODEL_SIZE  # noqa: E402
from ml.infer import predict  # noqa: E402
from ml.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pbc"))
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=2, help="supervised epochs (100 steps each, cpu profile)")
    parser.add_argument("--json", type=Path, default=Path("docs/results/active/cold_start_choice.json"))
    args = parser.parse_args()
    train_set = load_manifest_split(args.data, "train", MODEL_SIZE)
    val_set = load_manifest_split(args.data, "validation", MODEL_SIZE, class_names=train_set.class_names)
    y = train_set.y.numpy()
    feature_seconds, features = {}, {}
    for kind in FEATURES:
        started = time.perf_counter()
        features[kind] = features_for(train_set.x, kind)
        feature_seconds[kind] = round(time.perf_counter() - started, 1)
    runs = []
    for seed in args.seeds:
        picks = {"random": np.random.default_rng(seed).choice(len(y), args.labels, replace=False)}
        picks.update({f"kmeans/{kind}": kmeans_pick(f, args.labels, seed=seed) for kind, f in features.items()})
        for name, chosen in picks.items():
            started = time.perf_counter()
            chosen = np.sort(chosen)
            config = make_config("cpu", "supervised", epochs=args.epochs, seed=seed)
            result = train(config, train_set.x[torch.from_numpy(chosen)], torch.from_numpy(y[chosen]), None,
                           train_set.class_names)  # fmt: skip
            model = load_model(result.checkpoint, which="teacher")
            accuracy = float((predict(model, val_set.x).labels == val_set.y.numpy()).mean())
            run = {
                "seed": seed,
                "cold_start": name,
                "per_class": np.bincount(y[chosen], minlength=len(train_set.class_names)).tolist(),
                "classes_covered": int((np.bincount(y[chosen], minlength=len(train_set.class_names)) > 0).sum()),
                "val_accuracy": accuracy,
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(run), flush=True)
            runs.append(run)
    means = {
        name: statistics.mean(r["val_accuracy"] for r in runs if r["cold_start"] == name)
        for name in dict.fromkeys(r["cold_start"] for r in runs)
    }
    best_kmeans = max((n for n in means if n.startswith("kmeans/")), key=means.get)
    out = {
        "what": "round-0 validation accuracy of a short supervised run on the cold start's labels",
        "labels": args.labels,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "class_names": train_set.class_names,
        "feature_seconds": feature_seconds,
        "runs": runs,
        "mean_val_accuracy": means,
        "chosen_features": best_kmeans.split("/", 1)[1],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"mean validation accuracy {means}; chosen: {out['chosen_features']}; wrote {args.json}")


if __name__ == "__main__":
    main()
