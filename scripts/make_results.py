"""Generate docs/results.md (and its plot) from the benchmark JSON files in docs/results/.

Usage: python scripts/make_results.py [--results docs/results] [--out docs/results.md]
The page's prose is the Jinja2 template scripts/results.md.j2; this script computes its tables.
Each JSON is the output of ``leukolab bench ssl ... --json``; runs are grouped by
(method, labels per class, profile, set-up) and reported as mean ± sd over seeds. The set-up
is what a run's resolved config changed from the profile's current config for its method
(empty: the current profile), so runs of an earlier profile stay apart and say how they differ.
Runs made before the validation split (their JSON has no ``val_accuracy``) had their settings
chosen on the test split; their set-up says so (``BEFORE_VALIDATION``).
Runs under the validation rule are kept in ``docs/results/val/`` beside the older ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jinja2  # noqa: E402

from ml.config import TrainConfig, make_config  # noqa: E402  (no torch: cheap to import)
from ml.device import CPU_VECTOR_UNITS  # noqa: E402  (torch only inside its functions)

# Song & Wang 2024, Table 4 (accuracy %, their private data, 64 px, 180 epochs)
PAPER_TABLE4 = {
    "mean-teacher": {10: 63.7, 20: 85.9, 50: 93.2, 100: 94.0, 150: 94.6},
    "mean-teacher+lp": {10: 65.4, 20: 88.6, 50: 94.3, 100: 94.4, 150: 95.2},
}
PAPER_TABLE4_ENTROPY = {10: 0.001, 20: 0.005, 50: 0.01, 100: 0.01, 150: 0.01}
# Table 5: model A (supervised, all 9069 labels), B (supervised, 100/class), C (semi, 100/class)
PAPER_TABLE5 = {("supervised", "all"): 97.9, ("supervised", 100): 86.5, ("mean-teacher+lp", 100): 94.4}
# Rows the issue asks for (cpu profile, seeds 0-2)
REQUIRED = [
    ("lp+mean-teacher", 20),
    ("lp+mean-teacher", 100),
    ("supervised", "all"),
    ("supervised", 20),
    ("supervised", 100),
    ("mean-teacher+lp", 10),
    ("mean-teacher+lp", 20),
    ("mean-teacher+lp", 50),
    ("mean-teacher+lp", 100),
    ("fixmatch", 20),
]
TARGETS = {
    ("mean-teacher+lp", 20): 96.5,
    ("supervised", "all"): 99.0,
}
TARGET_BEST_20 = 97.5
TARGET_100 = 98.8
TEMPLATE = Path(__file__).resolve().parent / "results.md.j2"


ACCURACY_HEADER = (
    "| method | labels/class | profile | seeds | accuracy % | val % | single view % | macro-F1 % | wall s "
    "| pseudo-labels kept | pseudo-label accuracy % | paper % |"
)
ACCURACY_RULE = "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
# The set-up of runs whose JSON has no val_accuracy: their settings were chosen on test accuracy
BEFORE_VALIDATION = "chosen on test, before the validation split"
# The seed-paired speed check (scripts/speed_check): the profile before issue 15 (float32, eight-view
# predictions) in docs/results/variants/<FP32_VARIANT>, the current profile's runs in docs/results/val/
FP32_VARIANT = "fp32-val"
# Config fields that a benchmark sets per run, or that do not change what is trained
_PER_RUN_FIELDS = {"method", "profile", "seed", "entropy_threshold", "eval_every", "extra"}


def _key_labels(value):
    return (1, 0) if value == "all" else (0, int(value))


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _matters(key: str, config: TrainConfig) -> bool:
    """Whether config field ``key`` can change what ``config.method`` trains."""
    algorithms = {config.algorithm, config.later_algorithm}
    if config.pseudo_filter is None and (
        key.startswith(("round_", "pseudo_", "lp_")) or key in {"rounds", "true_label_share"}
    ):
        return False
    if key == "pretrain_epochs":
        return config.pretrains_student
    if key.startswith("fixmatch_"):
        return "fixmatch" in algorithms
    if key in {"ema_decay", "consistency_weight", "consistency_rampup", "consistency_mixup"}:
        return "mean-teacher" in algorithms
    return not (key == "labelled_per_batch" and algorithms == {"supervised"})


def _full_config(run: dict) -> dict:
    """``run``'s config, with the fields added to ``TrainConfig`` since at their defaults (as they were then)."""
    return {**asdict(TrainConfig()), **run.get("config", {})}


def setup_of(run: dict, against: dict | None = None) -> str:
    """The settings where ``run``'s config differs from its profile's current config, or from the
    config of the run ``against`` ("" if none)."""
    try:
        resolved = make_config(run["profile"], run["method"])
    except ValueError:
        return "unknown profile or method"
    defaults = asdict(TrainConfig())
    reference = asdict(resolved) if against is None else _full_config(against)
    config = _full_config(run)
    changed = []
    for key, value in reference.items():
        if key in _PER_RUN_FIELDS or key not in defaults or not _matters(key, resolved):
            continue
        used = config[key]
        if key == "tta_scoring" and config["tta"]:
            continue  # a run that predicted over the eight symmetries throughout scored its model so too
        if used != value:
            changed.append(f"{key}={used}")
    init, reference_init = run.get("init"), (against or {}).get("init")
    if init != reference_init:  # bench ssl --init: the network it started from, by file name
        changed.append(f"init={Path(init).stem if init else None}")
    return ", ".join(changed)


def group_setup(run: dict) -> str:
    """``setup_of``, led by ``BEFORE_VALIDATION`` for a run made before the validation split."""
    parts = [] if "val_accuracy" in run else [BEFORE_VALIDATION]
    changed = setup_of(run)
    return "; ".join(parts + ([changed] if changed else []))


def load_runs(folder: Path) -> dict:
    """Runs grouped by (method, labels per class, profile, set-up)."""
    groups: dict = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if "accuracy" not in run or "method" not in run:
            continue
        groups[(run["method"], run["labels_per_class"], run["profile"], group_setup(run))].append(run)
    return groups


def current_groups(groups: dict) -> dict:
    """One group per (method, labels, profile): the current set-up's where it was run, else the
    set-up closest to it (fewest settings changed; on a tie, the later in ``_ordered``)."""

    def distance(key: tuple) -> tuple[bool, int]:
        return key[3] != "", key[3].count("=")

    chosen: dict = {}
    for key in _ordered(groups):
        if key[:3] not in chosen or distance(key) <= distance(chosen[key[:3]]):
            chosen[key[:3]] = key
    return {short: groups[key] for short, key in chosen.items()}


def _profile_label(profile: str, setup: str) -> str:
    return f"{profile} ({setup})" if setup else profile


def plot(groups: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({m for (m, n, p, setup) in groups if n != "all"})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, method in enumerate(methods):
        # the current profile solid; earlier profiles' runs dotted with open markers
        for current in (True, False):
            points = sorted(
                (int(n), [100 * r["accuracy"] for r in runs])
                for (m, n, _profile, setup), runs in groups.items()
                if m == method and n != "all" and (setup == "") == current
            )
            if not points:
                continue
            means = [statistics.mean(v) for _, v in points]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
            ax.errorbar(
                [x for x, _ in points],
                means,
                yerr=sds,
                marker="o",
                capsize=3,
                color=colours[index % len(colours)],
                linestyle="-" if current else ":",
                markerfacecolor=None if current else "white",
                label=f"leukolab {method}" + ("" if current else ", earlier set-up"),
            )
    for index, (method, table) in enumerate(PAPER_TABLE4.items(), start=len(methods)):
        ax.plot(
            list(table),
            list(table.values()),
            linestyle="--",
            marker="x",
            color=colours[index % len(colours)],
            label=f"paper {method} (Table 4)",
        )
    for (method, n, _profile), runs in current_groups(groups).items():
        if n == "all":
            acc = statistics.mean(100 * r["accuracy"] for r in runs)
            ax.axhline(acc, color="grey", linestyle=":", label=f"leukolab {method}, all labels")
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(60, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _ordered(groups: dict) -> list[tuple]:
    """Group keys by profile, method, labels per class ("all" last), then the current set-up last."""
    return sorted(groups, key=lambda k: (k[2], k[0], _key_labels(k[1]), k[3] == "", k[3]))


def accuracy_rows(groups: dict) -> list[str]:
    """One table row per (method, labels per class, profile, set-up): mean ± sd over the seeds."""
    rows = []
    for key in _ordered(groups):
        method, n, profile, setup = key
        runs = groups[key]
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        acc = _mean_sd([100 * r["accuracy"] for r in runs])
        val = _mean_sd([100 * r["val_accuracy"] for r in runs if r.get("val_accuracy") is not None])
        single = _mean_sd([100 * v for r in runs if (v := _single_view(r)) is not None])
        f1 = _mean_sd([100 * r["macro_f1"] for r in runs])
        wall = _mean_sd([r["wall_seconds"] for r in runs])
        pls = [r["pseudo_labels"] for r in runs if r.get("pseudo_labels")]
        kept = _mean_sd([100 * p["coverage"] for p in pls]) + " %" if pls else "–"
        pacc = "–"
        if pls:
            pacc = _mean_sd([100 * p["accepted_accuracy"] for p in pls if p.get("accepted_accuracy") is not None])
        paper = PAPER_TABLE5.get((method, n)) or PAPER_TABLE4.get(method, {}).get(n if n == "all" else int(n))
        paper_s = f"{paper:.1f}" if paper is not None else "–"
        label = _profile_label(profile, setup)
        rows.append(
            f"| {method} | {n} | {label} | {seeds} | {acc} | {val} | {single} | {f1} | {wall} | {kept} | {pacc} "
            f"| {paper_s} |"
        )
    return rows


def _single_view(run: dict) -> float | None:
    """Single-view accuracy: on the validation split, or on the test split before there was one."""
    if "val_accuracy" in run:
        return run.get("val_single_view_accuracy")
    return run.get("single_view_accuracy")


def _cpu_of(run: dict) -> str:
    """The run's CPU as its JSON names it; runs before the vector unit was recorded say so."""
    device = run.get("device", "?")
    # match the unit itself: model names carry brackets too ("Intel(R) Xeon(R)")
    if device.startswith("cpu:") and not any(f"({unit})" in device for unit in CPU_VECTOR_UNITS):
        return "cpu, vector unit not recorded"
    return device.rsplit(",", 1)[0]  # drop the thread count: every grid run used one thread


def run_time_rows(groups: dict) -> list[str]:
    """Minutes per run of the current profile, by method, labels and CPU: the 15-minute budget."""
    lines = ["| method | labels/class | CPU | runs | minutes, mean | minutes, max |", "|---|---:|---|---:|---:|---:|"]
    for method, n, profile, setup in _ordered(groups):
        if profile != "cpu" or setup:
            continue
        by_cpu: dict = defaultdict(list)
        for run in groups[(method, n, profile, setup)]:
            by_cpu[_cpu_of(run)].append(run["wall_seconds"] / 60)
        for cpu, minutes in sorted(by_cpu.items()):
            lines.append(
                f"| {method} | {n} | {cpu} | {len(minutes)} | {statistics.mean(minutes):.1f} | {max(minutes):.1f} |"
            )
    return lines


def variant_sections(results: Path) -> list[str]:
    """A table per folder of docs/results/variants/: its README, then its runs as above."""
    lines: list[str] = []
    for folder in sorted(p for p in (results / "variants").glob("*") if p.is_dir()):
        groups = load_runs(folder)
        if not groups:
            continue
        readme = folder / "README.md"
        lines += ["", f"### {folder.name}", ""]
        lines += [readme.read_text().strip(), ""] if readme.exists() else []
        lines += [ACCURACY_HEADER, ACCURACY_RULE, *accuracy_rows(groups)]
    if lines:
        lines = ["", "## Variants", "", "Whole grids with settings that are not the cpu profile's defaults."] + lines
    return lines


def funnel_rows(groups: dict) -> list[str]:
    """Per run with pseudo-labels: unlabelled cells, sets 1 and 2, and how many were right."""
    lines = [
        "| method | labels/class | profile | seed | unlabelled | set 1 | set 2 | set 1 accuracy % | kept accuracy % |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, n, profile, setup in _ordered(groups):
        for r in sorted(groups[(method, n, profile, setup)], key=lambda r: r["seed"]):
            p = r.get("pseudo_labels")
            if not p:
                continue
            f = p["funnel"]
            s1 = _percent(p.get("set1_accuracy"))
            ka = _percent(p.get("accepted_accuracy"))
            set2 = f["set2"] if f.get("set2") is not None else "–"
            lines.append(
                f"| {method} | {n} | {_profile_label(profile, setup)} | {r['seed']} | {f['unlabelled']} | {f['set1']} "
                f"| {set2} | {s1} | {ka} |"
            )
    return lines


def _percent(fraction: float | None) -> str:
    return f"{100 * fraction:.1f}" if fraction is not None else "–"


def _by_profile_method_labels(chosen: dict) -> list[tuple]:
    return sorted(chosen, key=lambda k: (k[2], k[0], _key_labels(k[1])))


def per_class_lines(chosen: dict) -> list[str]:
    """Seed 0 of each chosen group (else its first run), per class, like the paper's Table 5."""
    lines = []
    for method, n, profile in _by_profile_method_labels(chosen):
        runs = [r for r in chosen[(method, n, profile)] if r["seed"] == 0] or chosen[(method, n, profile)][:1]
        r = runs[0]
        label = _profile_label(profile, group_setup(r))
        title = f"**{method}, {n} labels/class, {label}, seed {r['seed']}** (accuracy {100 * r['accuracy']:.1f} %)"
        lines += [title, "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for name in r["per_class"]:
            pc = r["per_class"][name]
            lines.append(f"| {name} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
        lines.append("")
    return lines


def _mean_accuracy(chosen: dict, method: str, n, profile: str = "cpu") -> float | None:
    runs = chosen.get((method, n, profile))
    return statistics.mean(100 * r["accuracy"] for r in runs) if runs else None


def _tag(chosen: dict, method: str, n, profile: str = "cpu") -> str:
    """Which runs a figure stands on, where that is not seeds 0-2 of the current profile."""
    runs = chosen.get((method, n, profile)) or []
    seeds = sorted(r["seed"] for r in runs)
    word = "seed" if len(seeds) == 1 else "seeds"
    parts = [f"{word} {','.join(map(str, seeds))}"] if seeds != [0, 1, 2] else []
    parts += ["chosen on test"] if any("val_accuracy" not in r for r in runs) else []
    parts += ["earlier profile"] if any(setup_of(r) for r in runs) else []
    return f" [{'; '.join(parts)}]" if parts else ""


def _best_target_line(chosen: dict, n: int, target: float, title: str, missing: str, methods: list[str]) -> str:
    """The best of ``methods`` at ``n`` labels per class against ``target``."""
    best = max(((_mean_accuracy(chosen, m, n), m) for m in methods), default=(None, None))
    if best[0] is None:
        return f"- {missing}: target ≥ {target} % — missing"
    verdict = "met" if best[0] >= target else "MISSED"
    return f"- {title} ({best[1]}): target ≥ {target} %, got {best[0]:.1f} %{_tag(chosen, best[1], n)} — {verdict}"


def target_lines(chosen: dict) -> list[str]:
    """The issue's accuracy targets, and whether each semi-supervised row beats supervised."""
    lines = []
    for (method, n), target in TARGETS.items():
        acc = _mean_accuracy(chosen, method, n)
        verdict = "missing" if acc is None else ("met" if acc >= target else "MISSED")
        shown = "–" if acc is None else f"{acc:.1f}"
        lines.append(f"- {method} @ {n}: target ≥ {target} %, got {shown} %{_tag(chosen, method, n)} — {verdict}")
    at_20 = [m for (m, n, p) in chosen if n == 20 and p == "cpu" and m != "supervised"]
    lines.append(_best_target_line(chosen, 20, TARGET_BEST_20, "best method @ 20", "best method @ 20", at_20))
    at_100 = [m for (m, n, p) in chosen if n == 100 and p == "cpu"]
    lines.append(_best_target_line(chosen, 100, TARGET_100, "best @ 100", "@ 100", at_100))
    for method, n, p in _by_profile_method_labels(chosen):
        if method == "supervised" or n == "all" or p != "cpu":
            continue
        sup = _mean_accuracy(chosen, "supervised", n)
        acc = _mean_accuracy(chosen, method, n)
        if sup is None:
            lines.append(f"- {method} @ {n} beats supervised @ {n}: no supervised row yet")
        else:
            beats = "yes" if acc > sup else "NO"
            lines.append(
                f"- {method} @ {n} ({acc:.1f} %{_tag(chosen, method, n)}) beats supervised @ {n} "
                f"({sup:.1f} %{_tag(chosen, 'supervised', n)}): {beats}"
            )
    return lines


def ablation_lines(results: Path) -> list[str]:
    """Single runs with one setting changed (``results/ablations``), one row each."""
    ablations = sorted((results / "ablations").glob("*.json"))
    if not ablations:
        return []
    lines = [
        "",
        "## Ablations",
        "",
        "Single runs with one setting changed (`docs/results/ablations/`).",
        "",
        "| method | labels/class | seed | change | accuracy % | macro-F1 % | pseudo-labels kept | kept accuracy % |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for path in ablations:
        r = json.loads(path.read_text())
        p = r.get("pseudo_labels") or {}
        kept = f"{100 * p['coverage']:.1f} %" if p else "–"
        ka = _percent(p.get("accepted_accuracy"))
        lines.append(
            f"| {r['method']} | {r['labels_per_class']} | {r['seed']} | {r.get('note', path.stem)} | "
            f"{100 * r['accuracy']:.1f} | {100 * r['macro_f1']:.1f} | {kept} | {ka} |"
        )
    return lines


def _runs_by_seed(folder: Path, settings: dict | None = None) -> dict:
    """A folder's runs keyed by (method, labels per class, seed); with ``settings``, only those whose
    config has these values (a folder that also holds levers of another profile)."""
    runs = {}
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if "accuracy" in run and "method" in run and _has_settings(run, settings or {}):
            runs[(run["method"], run["labels_per_class"], run["seed"])] = run
    return runs


def _has_settings(run: dict, settings: dict) -> bool:
    """Whether ``run``'s config (``_full_config``) has these values."""
    config = _full_config(run)
    return all(config[key] == value for key, value in settings.items())


def speed_lines(results: Path) -> list[str]:
    """Seed-paired runs (scripts/speed_check): the current profile (docs/results/val/) against the
    same seed as the profile was before (float32, eight-view predictions): validation and test
    accuracy, minutes."""
    fast = _runs_by_seed(results / "val")
    slow = _runs_by_seed(results / "variants" / FP32_VARIANT)
    pairs = sorted(set(fast) & set(slow), key=lambda k: (k[0], _key_labels(k[1]), k[2]))
    if not pairs:
        return []
    lines = [
        "| method | labels/class | seed | val % before | val % now | test % before | test % now "
        "| minutes before | minutes now | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in pairs:
        a, b = slow[key], fast[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_percent(a.get('val_accuracy'))} | {_percent(b.get('val_accuracy'))} "
            f"| {_percent(a['accuracy'])} | {_percent(b['accuracy'])} | {a['wall_seconds'] / 60:.1f} "
            f"| {b['wall_seconds'] / 60:.1f} | {a['wall_seconds'] / b['wall_seconds']:.2f}× |"
        )
    return lines


def _paired_rows(runs: dict, base: dict, change) -> list[str]:
    """One row per run of ``runs`` that has a same-seed run in ``base``; ``change(run)`` names it."""
    rows = []
    for key in sorted(set(runs) & set(base), key=lambda k: (k[0], _key_labels(k[1]), k[2])):
        a, b = base[key], runs[key]
        rows.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {change(b)} | {_percent(a.get('val_accuracy'))} "
            f"| {_percent(b.get('val_accuracy'))} | {_percent(a['accuracy'])} | {_percent(b['accuracy'])} |"
        )
    return rows


PAIRED_HEADER = [
    "| method | labels/class | seed | change | val % profile | val % changed | test % profile | test % changed |",
    "|---|---:|---:|---|---:|---:|---:|---:|",
]


# The profiles that the levers of docs/results/levers-epyc-mixup/ and levers-epyc-current/ changed one setting
# of (mixup at half width; then with the filter calibrated on validation cells), by the values that tell their
# runs from the other runs of their folder. Values, not set-ups named against today's profile: adopting a
# later lever leaves them as they are.
EPYC_MIXUP_BASE = {"mixup": 0.4, "pseudo_ood_calibration": "labelled"}
EPYC_CURRENT_BASE = {"pseudo_ood_calibration": "validation", "tta_scoring": False}

# Folders of lever runs whose lever was adopted: their runs were the cpu profile's own for a while. Each keeps
# the runs that differ from today's profile only in settings adopted after them (setup_of's keys), so they stay
# in the accuracy table as the profile of their time; their other levers stay in the lever tables only.
ADOPTED = {
    "ablations-val-amx-b": ("mixup", "pseudo_ood_calibration", "tta_scoring"),  # half width
    "ablations-val-epyc-half": ("pseudo_ood_calibration", "tta_scoring"),  # mixup
    "levers-epyc-mixup": ("tta_scoring",),  # the filter calibrated on validation cells
    "levers-epyc-current": (),  # the trained model scored over the eight symmetries
}


def _setup_keys(setup: str) -> set[str]:
    """The setting names of a set-up as ``group_setup`` writes it ("" for today's profile)."""
    settings = setup.split("; ")[-1] if setup and setup != BEFORE_VALIDATION else ""
    return {part.split("=", 1)[0] for part in settings.split(", ") if "=" in part}


def adopted_groups(results: Path) -> dict:
    """The runs of ``ADOPTED``'s folders that were the profile of their time, grouped as ``load_runs`` does."""
    groups: dict = defaultdict(list)
    for folder, later in ADOPTED.items():
        for key, runs in load_runs(results / folder).items():
            if BEFORE_VALIDATION not in key[3] and _setup_keys(key[3]) <= set(later):
                groups[key].extend(runs)
    return groups


def lever_lines(
    results: Path, changed: str = "ablations-val", profile: str = "val", base_settings: dict | None = None
) -> list[str]:
    """Runs of the profile with one setting changed (``results/changed``), each against the same
    seed of the profile (``results/profile``; with ``base_settings``, only its runs whose config has those
    values) and named by how their configs differ, then one line per change: the mean over its paired
    seeds. The choice is made on the val columns."""
    base = _runs_by_seed(results / profile, base_settings)
    changes: dict = defaultdict(dict)
    for path in sorted((results / changed).glob("*.json")):
        run = json.loads(path.read_text())
        key = (run.get("method"), run.get("labels_per_class"), run.get("seed"))
        if "accuracy" in run and key in base:
            changes[setup_of(run, against=base[key]) or "none"][key] = run
    rows: list[str] = []
    means: list[str] = []
    for label, runs in changes.items():
        rows += _paired_rows(runs, base, lambda run, label=label: label)
        for paired in _paired_seeds(runs, base):
            if any(runs[k].get("val_accuracy") is None for k in paired):
                continue
            deltas = [100 * (runs[k]["val_accuracy"] - base[k]["val_accuracy"]) for k in paired]
            means.append(
                f"- {label}, {paired[0][0]} @ {paired[0][1]}, seeds {', '.join(str(k[2]) for k in paired)}: "
                f"validation {_mean_of(base, paired, 'val_accuracy')} % with the profile, "
                f"{_mean_of(runs, paired, 'val_accuracy')} % changed (per seed "
                f"{', '.join(f'{d:+.1f}' for d in deltas)} points); test {_mean_of(base, paired, 'accuracy')} "
                f"against {_mean_of(runs, paired, 'accuracy')} %"
            )
    return PAIRED_HEADER + rows + [""] + means if rows else []


def _paired_seeds(runs: dict, base: dict) -> list[list[tuple]]:
    """The (method, labels, seed) keys that ``runs`` and ``base`` share, one seed-sorted list per (method, labels)."""
    shared = set(runs) & set(base)
    settings = sorted({k[:2] for k in shared}, key=lambda m: (m[0], _key_labels(m[1])))
    return [sorted(k for k in shared if k[:2] == setting) for setting in settings]


def _mean_of(runs: dict, keys: list, field: str) -> str:
    return f"{100 * statistics.mean(runs[k][field] for k in keys):.1f}"


def thread_lines(results: Path, changed: str = "val-threads", profile: str = "val") -> list[str]:
    """The same command and seed with another ``--threads`` (``results/changed``) against ``results/profile``."""
    return rerun_lines(
        results, changed, profile, lambda run, paired: f"{run['threads']} thread(s), not {paired['threads']}"
    )


def _machine(run: dict) -> str:
    return f"{_cpu_of(run)}, {run.get('train_precision', '?')}"


def machine_lines(results: Path, changed: str, profile: str) -> list[str]:
    """The same command and seed on another CPU (``results/changed``) against ``results/profile``, then the
    mean over the paired seeds of each."""
    return rerun_lines(results, changed, profile, lambda run, paired: f"{_machine(run)}, not {_machine(paired)}")


def rerun_lines(results: Path, changed: str, profile: str, change: Callable[[dict, dict], str]) -> list[str]:
    """Runs of ``results/changed``, each against the same command and seed in ``results/profile``;
    ``change(run, paired)`` names what differs. With more than one seed, a line of the means."""
    runs = _runs_by_seed(results / changed)
    base = _runs_by_seed(results / profile)
    rows = _paired_rows(
        runs, base, lambda run: change(run, base[(run["method"], run["labels_per_class"], run["seed"])])
    )
    if not rows:
        return []
    means = []
    for paired in _paired_seeds(runs, base):
        if len(paired) > 1 and all(runs[k].get("val_accuracy") is not None for k in paired):
            means.append(
                f"- {paired[0][0]} @ {paired[0][1]}, seeds {', '.join(str(k[2]) for k in paired)}: validation "
                f"{_mean_of(base, paired, 'val_accuracy')} against {_mean_of(runs, paired, 'val_accuracy')} %, "
                f"test {_mean_sd([100 * base[k]['accuracy'] for k in paired])} against "
                f"{_mean_sd([100 * runs[k]['accuracy'] for k in paired])} %"
            )
    return PAIRED_HEADER + rows + ([""] + means if means else [])


def classes8_lines(results: Path, folder: str = "classes8", settings: tuple[str, ...] = ()) -> list[str]:
    """Eight classes (issue 18: ``bench ssl --extra-classes``, ``results/<folder>``): one row a run with
    the config ``settings`` that tell its runs apart and the extra classes' test recall, then the mean ±
    sd over the seeds of each set-up (label count and ``settings``) run for more than one."""
    runs = [json.loads(p.read_text()) for p in sorted((results / folder).glob("*.json"))]
    runs = sorted(
        (r for r in runs if "accuracy" in r),
        key=lambda r: (_key_labels(r["labels_per_class"]), *(r["config"][k] for k in settings), r["seed"]),
    )
    if not runs:
        return []
    extra = [c for c in ("erythroblast", "ig", "platelet") if c in runs[0]["per_class"]]
    lines = [
        "| method | labels/class | "
        + "".join(f"{k} | " for k in settings)
        + "seed | val % | test % | "
        + " | ".join(f"{c} recall" for c in extra)
        + " | minutes | trained in |",
        "|---|---:|" + "---:|" * len(settings) + "---:|---:|---:|" + "---:|" * len(extra) + "---:|---|",
    ]
    for r in runs:
        recalls = " | ".join(f"{r['per_class'][c]['recall']:.2f}" for c in extra)
        lines.append(
            f"| {r['method']} | {r['labels_per_class']} | "
            + "".join(f"{r['config'][k]} | " for k in settings)
            + f"{r['seed']} | {_percent(r.get('val_accuracy'))} "
            f"| {_percent(r['accuracy'])} | {recalls} | {r['wall_seconds'] / 60:.1f} "
            f"| {r.get('train_precision', '–')} |"
        )

    def setting(r: dict) -> tuple:
        return (r["labels_per_class"], *(r["config"][k] for k in settings))

    for key in dict.fromkeys(setting(r) for r in runs):  # in the rows' order
        n, group = key[0], [r for r in runs if setting(r) == key]
        if len(group) > 1:
            val = [100 * r["val_accuracy"] for r in group if r.get("val_accuracy") is not None]
            lines += [
                "",
                f"- {n} labels/class, seeds {', '.join(str(r['seed']) for r in group)}: test "
                f"{_mean_sd([100 * r['accuracy'] for r in group])} %, validation {_mean_sd(val)} %"
                + "".join(
                    f"; {c} recall {statistics.mean(r['per_class'][c]['recall'] for r in group):.2f}" for c in extra
                ),
            ]
    return lines


def classes8_ceiling_summary(folder: Path) -> str:
    """Test and validation accuracy and ``ig`` test recall of the cpu profile's own network (its width and
    input size) trained on every label, for the prose (``results/classes8-ceiling``)."""
    profile = make_config("cpu", "supervised")
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    runs = [
        r
        for r in runs
        if r["labels_per_class"] == "all"
        and r["config"]["width"] == profile.width
        and r["config"]["image_size"] == profile.image_size
    ]
    if not runs:
        return "(not run yet)"
    test = [100 * r["accuracy"] for r in runs]
    val = [100 * r["val_accuracy"] for r in runs]
    ig = statistics.mean(r["per_class"]["ig"]["recall"] for r in runs)
    return (
        f"{_mean_sd(test)} % on the test split and {_mean_sd(val)} % on validation at the profile's width "
        f"{profile.width:g} and {profile.image_size} px (`ig` test recall {ig:.2f}; "
        f"seed{'s' if len(runs) > 1 else ''} {', '.join(str(r['seed']) for r in runs)})"
    )


def taught_auroc(folder: Path, name: str) -> str:
    """The range over ``scripts/taught_class_auroc.py``'s files of a class's AUROC over the eight views (one
    view in brackets)."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not runs:
        return "(not measured yet)"

    def span(key: str) -> str:
        values = sorted(r[key][name]["auroc_own_class"] for r in runs)
        return f"{values[0]:.3f}" if values[0] == values[-1] else f"{values[0]:.3f}-{values[-1]:.3f}"

    return f"{span('eight_views')} over the eight symmetries ({span('one_view')} on one view)"


def gpu_lines(results: Path) -> list[str]:
    """The paper profile on a GPU (``scripts/gpu_paper``: ``results/gpu``), one row a run; the runs of
    one call share the GPU, so their minutes are an upper bound for a run alone."""
    runs = [json.loads(p.read_text()) for p in sorted((results / "gpu").glob("*.json"))]
    runs = [r for r in runs if "accuracy" in r]
    if not runs:
        return []
    lines = [
        "| method | labels/class | profile | seed | val % | test % | minutes | device |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["profile"], _key_labels(r["labels_per_class"]))):
        lines.append(
            f"| {r['method']} | {r['labels_per_class']} | {r['profile']} | {r['seed']} "
            f"| {_percent(r.get('val_accuracy'))} | {_percent(r['accuracy'])} | {r['wall_seconds'] / 60:.1f} "
            f"| {r.get('device', '?')} |"
        )
    return lines


def missing_lines(groups: dict) -> list[str]:
    """The required rows that lack seeds 0-2 of the current profile."""
    missing = []
    for method, n in REQUIRED:
        seeds = {r["seed"] for r in groups.get((method, n, "cpu", ""), [])}
        lack = sorted({0, 1, 2} - seeds)
        if lack:
            missing.append(f"- {method} @ {n}: seeds {', '.join(map(str, lack))} not run with the current profile")
    return missing


# bench active --lab-default runs (every round at the profile's own length), beside the shorter runs: the
# quarter-width profile of 2026-12-06 morning, then the profile as it stood on 2026-12-07
LAB_DEFAULT = "lab-default"
LAB_DEFAULT_NOW = "lab-default-2026-12-07"


def active_lines(results: Path, page: Path) -> list[str]:
    """The product loop's sections (``bench.active``): the runs of results/active and of its
    ``LAB_DEFAULT`` folders, each plot drawn into its folder's loop.png (a folder without runs: no section)."""
    from bench.active import results_lines

    lines = []
    for folder, title in (
        (results / "active", None),
        (results / "active" / LAB_DEFAULT, "at a lab's default retrain length, the quarter-width profile"),
        (results / "active" / LAB_DEFAULT_NOW, "at a lab's default retrain length, the profile of 2026-12-07"),
    ):
        png = folder / "loop.png"
        lines += results_lines(folder, png, png.relative_to(page.parent).as_posix(), title=title)
    return lines


def loop_summary(folder: Path) -> str:
    """Each arm's test accuracy (validation in brackets) at each budget of a ``bench active`` folder, mean ± sd
    over its seeds, the product's arm first, for the prose."""
    from bench.active import PRODUCT_ARM, RANDOM_ARM, load_runs, mean_sd, summarise

    summary = summarise(load_runs(folder, "lp+mean-teacher", "cpu"))
    parts = []
    for arm, name in ((PRODUCT_ARM, "the product's queue"), (RANDOM_ARM, "random labels")):
        if arm in summary:
            budgets = "; ".join(
                f"{mean_sd(e['accuracy'])} % ({mean_sd(e['val_accuracy'])}) at {n} labels "
                f"(seed{'s' if len(e['seeds']) > 1 else ''} {', '.join(map(str, e['seeds']))})"
                for n, e in summary[arm].items()
            )
            parts.append(f"{name} {budgets}")
    return "; against ".join(parts) if parts else "(not run yet)"


def render(
    groups: dict, plot_name: str, results: Path, throughput: dict | None = None, active: list[str] | None = None
) -> str:
    """docs/results.md: the template, with the tables of ``groups`` and of ``results``' sub-folders."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    chosen = current_groups(groups)
    return environment.get_template(TEMPLATE.name).render(
        accuracy_header=ACCURACY_HEADER,
        accuracy_rule=ACCURACY_RULE,
        accuracy_rows=accuracy_rows(groups),
        before_validation=BEFORE_VALIDATION,
        speed_lines=speed_lines(results),
        lever_lines=lever_lines(results),
        amx_lever_lines=lever_lines(results, "ablations-val-amx", "val-amx"),
        amx_b_lever_lines=lever_lines(results, "ablations-val-amx-b", "val-amx-b"),
        epyc_half_lever_lines=lever_lines(results, "ablations-val-epyc-half", "val-epyc-half"),
        epyc_mixup_lever_lines=lever_lines(
            results, "levers-epyc-mixup", "ablations-val-epyc-half", base_settings=EPYC_MIXUP_BASE
        ),
        epyc_current_lever_lines=lever_lines(
            results, "levers-epyc-current", "levers-epyc-mixup", base_settings=EPYC_CURRENT_BASE
        ),
        thread_lines=thread_lines(results),
        current_thread_lines=thread_lines(results, "levers-epyc-current/threads", "levers-epyc-current"),
        machine_lines=machine_lines(results, "val-epyc-f32", "levers-epyc-current"),
        xeon_machine_lines=machine_lines(results, "val-xeon", "levers-epyc-current"),
        xeon_current_lever_lines=lever_lines(results, "levers-xeon-current", "levers-epyc-current"),
        epyc_tta_scoring_lever_lines=lever_lines(results, "levers-epyc-tta-scoring", "levers-epyc-current"),
        epyc_selfsup_lever_lines=lever_lines(results, "levers-epyc-selfsup", "levers-epyc-current"),
        epyc_selfsup30_lever_lines=lever_lines(results, "levers-epyc-selfsup30", "levers-epyc-current"),
        ood_reference_cells=make_config("cpu", "lp+mean-teacher").ood_reference_cells,
        profile_bf16=make_config("cpu", "lp+mean-teacher").cpu_bf16,
        profile_tta=make_config("cpu", "lp+mean-teacher").tta,
        run_time_rows=run_time_rows(groups),
        plot_name=plot_name,
        paper_entropy=PAPER_TABLE4_ENTROPY,
        funnel_rows=funnel_rows(groups),
        per_class_lines=per_class_lines(chosen),
        target_lines=target_lines(chosen),
        variant_lines=variant_sections(results),
        ablation_lines=ablation_lines(results),
        missing_lines=missing_lines(groups),
        gpu_lines=gpu_lines(results),
        loop_now_summary=loop_summary(results / "active" / LAB_DEFAULT_NOW),
        classes8_lines=classes8_lines(results),
        classes8_ceiling_lines=classes8_lines(results, "classes8-ceiling", ("width", "image_size")),
        classes8_ceiling_summary=classes8_ceiling_summary(results / "classes8-ceiling"),
        classes8_taught_ig=taught_auroc(results / "classes8-ceiling" / "oracle", "ig"),
        classes8_lever_lines=lever_lines(results, "classes8-levers-amx", "classes8-amx"),
        classes8_epyc_lines=lever_lines(results, "classes8-levers-epyc", "classes8-epyc"),
        classes8_mixup_lines=lever_lines(results, "classes8-epyc-mixup", "classes8-levers-epyc"),
        classes8_tta_scoring_lines=lever_lines(results, "classes8-epyc-tta-scoring", "classes8-epyc-mixup"),
        throughput=throughput,
        active_lines=active or [],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("docs/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()
    groups = load_runs(args.results)
    # runs of earlier cpu profiles, kept beside the current profile's (bench_grid reruns only
    # what docs/results/*.json lacks)
    for key, runs in load_runs(args.results / "earlier").items():
        groups.setdefault(key, []).extend(runs)
    # runs under the validation rule (val_accuracy beside accuracy)
    for key, runs in load_runs(args.results / "val").items():
        groups.setdefault(key, []).extend(runs)
    # levers adopted as the profile: their runs were the current profile's own
    for key, runs in adopted_groups(args.results).items():
        groups.setdefault(key, []).extend(runs)
    plot_path = args.results / "accuracy_vs_labels.png"
    plot(groups, plot_path)
    throughput_path = args.results / "throughput.json"
    throughput = json.loads(throughput_path.read_text()) if throughput_path.exists() else None
    active = active_lines(args.results, args.out)
    page = render(groups, str(plot_path.relative_to(args.out.parent)), args.results, throughput, active)
    args.out.write_text(page)
    print(f"wrote {args.out} and {plot_path}")


if __name__ == "__main__":
    main()
