"""scripts/make_results.py: runs grouped by set-up, and the run-time table by CPU."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from ml.config import make_config
from tests.support.cli import load_script

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
FAST = "cpu: AMD EPYC (AVX-512 BF16), 1 threads"
UNRECORDED = "cpu: AMD EPYC, 1 threads"


@pytest.fixture()
def results_script():
    return load_script("make_results")


def _run(
    method: str, n, seed: int, accuracy: float, wall: float, device: str, *, before_validation: bool = False, **config
) -> dict:
    """A run's JSON as ``bench ssl`` writes it now (validation figures 2 points below test), or as it
    wrote it before the validation split (no val_* keys; the single view scored on the test split)."""
    per_class = {c: {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": 200} for c in CLASSES}
    run = {
        "method": method,
        "labels_per_class": n,
        "profile": "cpu",
        "seed": seed,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "wall_seconds": wall,
        "device": device,
        "per_class": per_class,
        "class_names": CLASSES,
        "pseudo_labels": None,
        "config": asdict(make_config("cpu", method, **config)),
    }
    if before_validation:
        run["single_view_accuracy"] = accuracy - 0.01
    else:
        run.update(val_accuracy=accuracy - 0.02, val_macro_f1=accuracy - 0.02, val_single_view_accuracy=accuracy - 0.03)
    return run


def _write(folder: Path, runs: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for run in runs:
        name = f"{run['method']}_{run['labels_per_class']}_cpu_s{run['seed']}_{run['wall_seconds']:.0f}.json"
        (folder / name).write_text(json.dumps(run))


def test_runs_group_by_setup_and_time_by_cpu(results_script, tmp_path):
    _write(
        tmp_path,
        [
            _run("supervised", 20, 0, 0.95, 600, FAST),
            _run("supervised", 20, 1, 0.93, 1800, UNRECORDED),
            _run("supervised", 20, 3, 0.94, 1200, "cpu: Intel(R) Xeon(R) Gold, 1 threads"),  # brackets, no unit
            _run("supervised", 20, 2, 0.90, 300, FAST, tta=True),  # an earlier profile's run
        ],
    )
    groups = results_script.load_runs(tmp_path)
    assert sorted(groups) == [("supervised", 20, "cpu", ""), ("supervised", 20, "cpu", "tta=True")]
    assert sorted(r["seed"] for r in groups[("supervised", 20, "cpu", "")]) == [0, 1, 3]

    rows = results_script.run_time_rows(groups)
    # the current profile only, one row per CPU, in minutes; the earlier profile's run is not timed here
    assert rows[2:] == [
        "| supervised | 20 | cpu, vector unit not recorded | 2 | 25.0 | 30.0 |",
        "| supervised | 20 | cpu: AMD EPYC (AVX-512 BF16) | 1 | 10.0 | 10.0 |",
    ]


def test_page_reports_mean_sd_and_missing_seeds(results_script, tmp_path):
    _write(
        tmp_path,
        [
            _run("supervised", "all", 0, 0.99, 900, FAST),
            _run("supervised", "all", 1, 0.97, 900, FAST),
            _run("supervised", 20, 0, 0.90, 300, FAST, tta=True),
        ],
    )
    page = results_script.render(results_script.load_runs(tmp_path), "plot.png", tmp_path)
    assert "| supervised | all | cpu | 0,1 | 98.0 ± 1.4 | 96.0 ± 1.4 | 95.0 ± 1.4 |" in page
    assert "| supervised | 20 | cpu (tta=True) | 0 | 90.0 | 88.0 | 87.0 |" in page
    missing = page.split("## Missing runs", 1)[1]
    assert "supervised @ all: seeds 2 not run with the current profile" in missing
    # the earlier profile's run does not count for the current profile
    assert "supervised @ 20: seeds 0, 1, 2 not run" in missing
    assert "## Throughput" not in page and page.endswith("current profile\n")


def test_page_ends_with_the_throughput_run_when_there_is_one(results_script, tmp_path):
    _write(tmp_path, [_run("supervised", "all", seed, 0.99, 900, FAST) for seed in (0, 1, 2)])
    throughput = {
        "device": FAST,
        "train": {"leukolab": 332.4, "reference": 226.0},
        "train_speedup": 1.47,
        "inference": {"leukolab": 647.6, "reference": 357.2},
        "train_bf16": {"leukolab": 580.2, "speedup": 2.56},
    }
    page = results_script.render(results_script.load_runs(tmp_path), "plot.png", tmp_path, throughput)
    assert page.endswith(
        "\n## Throughput\n\n"
        f"`leukolab bench throughput` on {FAST}: training 332 img/s (reference 226 img/s, 1.5×), inference "
        "648 img/s (reference 357 img/s). The reference is torchvision ImageFolder + DataLoader + per-image "
        "PIL transforms, same model, same process.\n"
        "\nWith bf16 training on this CPU (`cpu_bf16`, off by default when this was measured): 580 img/s, 2.6× "
        "the reference.\n"
    )
    assert "- supervised @ all: target ≥ 99.0 %, got 99.0 % — met" in page
    # a run that records its network names the width it measured (the profile's width changes)
    with_model = {**throughput, "model": {"arch": "vgg", "width": 0.5, "image_size": 64, "batch_size": 40}}
    page = results_script.render(results_script.load_runs(tmp_path), "plot.png", tmp_path, with_model)
    assert f"`leukolab bench throughput` on {FAST}, the network at width 0.5: training 332 img/s" in page


def test_runs_before_the_validation_split_are_marked_and_kept_apart(results_script, tmp_path):
    _write(
        tmp_path,
        [
            _run("supervised", 20, 0, 0.95, 600, FAST, before_validation=True),
            _run("supervised", 20, 1, 0.93, 600, FAST, before_validation=True, tta=True),
            _run("supervised", 20, 0, 0.94, 500, FAST),
        ],
    )
    groups = results_script.load_runs(tmp_path)
    marker = results_script.BEFORE_VALIDATION
    assert sorted(groups) == [
        ("supervised", 20, "cpu", ""),
        ("supervised", 20, "cpu", marker),
        ("supervised", 20, "cpu", f"{marker}; tta=True"),
    ]
    page = results_script.render(groups, "plot.png", tmp_path)
    # the old run: no val figure, its single view on the test split; the new run: both on validation
    assert f"| supervised | 20 | cpu ({marker}) | 0 | 95.0 | – | 94.0 |" in page
    assert "| supervised | 20 | cpu | 0 | 94.0 | 92.0 | 91.0 |" in page
    # the per-class table stands on the run under the validation rule, not on those chosen on test
    assert "**supervised, 20 labels/class, cpu, seed 0** (accuracy 94.0 %)" in page


def test_speed_table_pairs_the_profile_with_its_float32_eight_view_past_by_seed(results_script, tmp_path):
    now = _run("lp+mean-teacher", 20, 0, 0.95, 300, FAST)
    before = _run("lp+mean-teacher", 20, 0, 0.96, 600, FAST, cpu_bf16=not now["config"]["cpu_bf16"], tta=True)
    unpaired = _run("lp+mean-teacher", 20, 1, 0.94, 310, FAST)
    _write(tmp_path / "val", [now, unpaired])
    _write(tmp_path / "variants" / results_script.FP32_VARIANT, [before])
    assert results_script.speed_lines(tmp_path)[2:] == [
        "| lp+mean-teacher | 20 | 0 | 94.0 | 93.0 | 96.0 | 95.0 | 10.0 | 5.0 | 2.00× |"
    ]
    # the float32 runs differ from the current profile, and say so where they are listed
    groups = results_script.load_runs(tmp_path / "variants" / results_script.FP32_VARIANT)
    [(_, _, _, setup)] = list(groups)
    assert "cpu_bf16=" in setup
    assert "| lp+mean-teacher | 20 | 0 | 94.0 | 93.0 |" in results_script.render({}, "plot.png", tmp_path)


def test_levers_and_thread_counts_are_paired_with_the_profile_by_seed(results_script, tmp_path):
    _write(tmp_path / "val", [_run("lp+mean-teacher", 20, seed, 0.95, 300, FAST) for seed in (0, 1)])
    lever = _run("lp+mean-teacher", 20, 1, 0.97, 320, FAST, balance_unlabelled=True)
    orphan = _run("lp+mean-teacher", 20, 5, 0.99, 320, FAST, balance_unlabelled=True)  # no seed-5 profile run
    _write(tmp_path / "ablations-val", [lever, orphan])
    threads = dict(_run("lp+mean-teacher", 20, 0, 0.93, 500, FAST), threads=1)
    _write(tmp_path / "val-threads", [threads])
    for path in (tmp_path / "val").glob("*.json"):
        path.write_text(json.dumps(dict(json.loads(path.read_text()), threads=2)))
    assert results_script.lever_lines(tmp_path)[2:] == [
        "| lp+mean-teacher | 20 | 1 | balance_unlabelled=True | 93.0 | 95.0 | 95.0 | 97.0 |",
        "",
        "- balance_unlabelled=True, lp+mean-teacher @ 20, seeds 1: validation 93.0 % with the profile, 95.0 % "
        "changed (per seed +2.0 points); test 95.0 against 97.0 %",
    ]
    assert results_script.thread_lines(tmp_path)[2:] == [
        "| lp+mean-teacher | 20 | 0 | 1 thread(s), not 2 | 93.0 | 91.0 | 95.0 | 93.0 |"
    ]
    page = results_script.render({}, "plot.png", tmp_path)
    assert "| balance_unlabelled=True | 93.0 | 95.0 |" in page and "- no lever run yet" not in page


def test_the_same_seeds_on_another_cpu_pair_by_seed_with_their_means(results_script, tmp_path):
    bf16 = [
        dict(_run("lp+mean-teacher", 20, s, acc, 900, FAST), train_precision="bf16")
        for s, acc in ((0, 0.98), (1, 0.96))
    ]
    slow = "cpu: AMD EPYC (no native bf16), 2 threads"
    f32 = [
        dict(_run("lp+mean-teacher", 20, s, acc, 1900, slow), train_precision="float32")
        for s, acc in ((0, 0.97), (1, 0.93))
    ]
    _write(tmp_path / "levers-epyc-current", bf16)
    _write(tmp_path / "val-epyc-f32", f32 + [dict(f32[0], seed=7)])  # seed 7 has no run to pair with
    lines = results_script.machine_lines(tmp_path, "val-epyc-f32", "levers-epyc-current")
    change = "cpu: AMD EPYC (no native bf16), float32, not cpu: AMD EPYC (AVX-512 BF16), bf16"
    assert lines[2:] == [
        f"| lp+mean-teacher | 20 | 0 | {change} | 96.0 | 95.0 | 98.0 | 97.0 |",
        f"| lp+mean-teacher | 20 | 1 | {change} | 94.0 | 91.0 | 96.0 | 93.0 |",
        "",
        "- lp+mean-teacher @ 20, seeds 0, 1: validation 95.0 against 93.0 %, test 97.0 ± 1.4 against 95.0 ± 2.8 %",
    ]
    assert f"| {change} | 96.0 | 95.0 |" in results_script.render({}, "plot.png", tmp_path)


def test_several_levers_of_one_seed_each_pair_with_the_profile_and_get_a_mean_line(results_script, tmp_path):
    _write(
        tmp_path / "val", [_run("lp+mean-teacher", 20, seed, acc, 300, FAST) for seed, acc in ((0, 0.95), (1, 0.91))]
    )
    _write(
        tmp_path / "ablations-val",
        [
            _run("lp+mean-teacher", 20, 0, 0.97, 320, FAST, strong_student=True),
            _run("lp+mean-teacher", 20, 1, 0.90, 320, FAST, strong_student=True),
            _run("lp+mean-teacher", 20, 0, 0.96, 400, FAST, rounds=3),  # same seed, another lever
        ],
    )
    lines = results_script.lever_lines(tmp_path)
    assert "| lp+mean-teacher | 20 | 0 | strong_student=True | 93.0 | 95.0 | 95.0 | 97.0 |" in lines
    assert "| lp+mean-teacher | 20 | 1 | strong_student=True | 89.0 | 88.0 | 91.0 | 90.0 |" in lines
    assert "| lp+mean-teacher | 20 | 0 | rounds=3 | 93.0 | 94.0 | 95.0 | 96.0 |" in lines
    assert (
        "- strong_student=True, lp+mean-teacher @ 20, seeds 0, 1: validation 91.0 % with the profile, "
        "91.5 % changed (per seed +2.0, -1.0 points); test 93.0 against 93.5 %"
    ) in lines


def test_a_lever_run_at_two_label_counts_gets_a_mean_line_for_each(results_script, tmp_path):
    runs = [(20, 0, 0.90, 0.94), (20, 1, 0.92, 0.94), (100, 0, 0.97, 0.98)]
    _write(tmp_path / "val", [_run("lp+mean-teacher", n, seed, acc, 300, FAST) for n, seed, acc, _ in runs])
    wider = [_run("lp+mean-teacher", n, seed, acc, 600, FAST, width=0.75) for n, seed, _, acc in runs]
    _write(tmp_path / "ablations-val", wider)
    means = [line for line in results_script.lever_lines(tmp_path) if line.startswith("- ")]
    assert means == [
        "- width=0.75, lp+mean-teacher @ 20, seeds 0, 1: validation 89.0 % with the profile, 92.0 % changed "
        "(per seed +4.0, +2.0 points); test 91.0 against 94.0 %",
        "- width=0.75, lp+mean-teacher @ 100, seeds 0: validation 95.0 % with the profile, 96.0 % changed "
        "(per seed +1.0 points); test 97.0 against 98.0 %",
    ]


def test_a_lever_is_named_by_its_difference_from_its_paired_run_not_from_todays_profile(results_script, tmp_path):
    # the profile has moved on since these runs (cpu_bf16 flipped): the lever still reads as its one change
    flipped = not results_script.make_config("cpu", "lp+mean-teacher").cpu_bf16
    _write(tmp_path / "classes8", [_run("lp+mean-teacher", 20, 0, 0.88, 300, FAST, cpu_bf16=flipped)])
    lever = _run("lp+mean-teacher", 20, 0, 0.90, 300, FAST, cpu_bf16=flipped, pseudo_prior_shift=True)
    _write(tmp_path / "classes8-levers", [lever])
    assert results_script.lever_lines(tmp_path, "classes8-levers", "classes8")[2] == (
        "| lp+mean-teacher | 20 | 0 | pseudo_prior_shift=True | 86.0 | 88.0 | 88.0 | 90.0 |"
    )
    assert set(results_script.setup_of(lever).split(", ")) == {f"cpu_bf16={flipped}", "pseudo_prior_shift=True"}
    # the same pair on an AMX CPU lands in the page's second lever table
    _write(tmp_path / "val-amx", [_run("lp+mean-teacher", 20, 0, 0.88, 300, FAST, cpu_bf16=flipped)])
    _write(tmp_path / "ablations-val-amx", [lever])
    page = results_script.render({}, "plot.png", tmp_path)
    assert "- no lever run on such a CPU yet" not in page and page.count("| pseudo_prior_shift=True | 86.0 |") == 1


def test_levers_pair_only_with_the_base_runs_of_their_set_up_in_a_mixed_folder(results_script, tmp_path):
    # a folder of levers of an earlier profile also holds the runs of the lever adopted from it; the profile has
    # moved on since (cpu_bf16 flipped), so neither set-up reads today as the adopted lever alone
    flipped = not make_config("cpu", "lp+mean-teacher").cpu_bf16
    _write(
        tmp_path / "ablations",
        [
            _run("lp+mean-teacher", 20, 1, 0.90, 300, FAST, mixup=0.0, cpu_bf16=flipped),  # before the lever
            _run("lp+mean-teacher", 20, 1, 0.94, 290, FAST, mixup=0.2, cpu_bf16=flipped),  # the lever, adopted
        ],
    )
    lever = _run("lp+mean-teacher", 20, 1, 0.95, 300, FAST, mixup=0.2, cpu_bf16=flipped, pseudo_prior_shift=True)
    _write(tmp_path / "levers", [lever])
    assert make_config("cpu", "lp+mean-teacher").mixup not in (0.0, 0.2)  # both set-ups name their mixup
    assert results_script.lever_lines(tmp_path, "levers", "ablations", base_settings={"mixup": 0.2})[2] == (
        "| lp+mean-teacher | 20 | 1 | pseudo_prior_shift=True | 92.0 | 93.0 | 94.0 | 95.0 |"
    )
    # a setting a run predates counts at its default, as setup_of reads it
    older = _run("lp+mean-teacher", 20, 1, 0.94, 290, FAST, mixup=0.2, cpu_bf16=flipped)
    del older["config"]["tta_scoring"]  # written before the field existed, at TrainConfig's default: off
    _write(tmp_path / "older", [older])
    assert results_script.lever_lines(tmp_path, "levers", "older", base_settings={"tta_scoring": False})
    assert not results_script.lever_lines(tmp_path, "levers", "older", base_settings={"tta_scoring": True})
    unfiltered = results_script.lever_lines(tmp_path, "levers", "ablations")[2]  # the last file of the seed
    assert unfiltered.startswith("| lp+mean-teacher | 20 | 1 | mixup=0.2, pseudo_prior_shift=True | 88.0 |")


def test_the_figure_of_a_row_not_rerun_comes_from_the_set_up_closest_to_the_profile(results_script):
    def groups(*setups: str) -> dict:
        return {("supervised", 20, "cpu", setup): [setup] for setup in setups}

    chosen = results_script.current_groups(groups("a=1, b=2", "a=1", "c=3, d=4, e=5"))
    assert chosen[("supervised", 20, "cpu")] == ["a=1"]
    chosen = results_script.current_groups(groups("a=1", "", "b=2"))
    assert chosen[("supervised", 20, "cpu")] == [""]


def test_gpu_runs_are_listed_with_their_device_or_said_to_be_missing(results_script, tmp_path):
    assert "- not run yet: no session has been lent a GPU" in results_script.render({}, "plot.png", tmp_path)
    paper = dict(_run("lp+mean-teacher", 20, 0, 0.97, 480, "cuda: NVIDIA H200"), profile="paper")
    _write(tmp_path / "gpu", [paper])
    assert results_script.gpu_lines(tmp_path)[2:] == [
        "| lp+mean-teacher | 20 | paper | 0 | 95.0 | 97.0 | 8.0 | cuda: NVIDIA H200 |"
    ]


def test_eight_class_runs_show_the_extra_classes_recall_and_the_mean_over_seeds(results_script, tmp_path):
    runs = []
    for seed, accuracy, ig in ((0, 0.95, 0.70), (1, 0.93, 0.60)):
        run = _run("lp+mean-teacher", 20, seed, accuracy, 600, FAST)
        run["per_class"].update({c: {"recall": r} for c, r in (("erythroblast", 0.99), ("ig", ig), ("platelet", 1.0))})
        runs.append(run)
    _write(tmp_path / "classes8", runs)
    lines = results_script.classes8_lines(tmp_path)
    assert lines[0].endswith("| erythroblast recall | ig recall | platelet recall | minutes | trained in |")
    assert "| lp+mean-teacher | 20 | 1 | 91.0 | 93.0 | 0.99 | 0.60 | 1.00 | 10.0 | – |" in lines
    assert lines[-1] == (
        "- 20 labels/class, seeds 0, 1: test 94.0 ± 1.4 %, validation 92.0 ± 1.4 %; erythroblast recall 0.99; "
        "ig recall 0.65; platelet recall 1.00"
    )


def test_eight_class_runs_of_several_set_ups_show_each_and_average_only_within_one(results_script, tmp_path):
    runs = []
    set_ups = ((0, 0.5, 64, 0.96, 600), (1, 0.5, 64, 0.94, 600), (0, 0.25, 96, 0.90, 660))
    for seed, width, size, accuracy, wall in set_ups:
        run = _run("supervised", "all", seed, accuracy, wall, FAST, width=width, image_size=size)
        run["per_class"].update({c: {"recall": 0.8} for c in ("erythroblast", "ig", "platelet")})
        runs.append(run)
    _write(tmp_path / "ceiling", runs)
    lines = results_script.classes8_lines(tmp_path, "ceiling", ("width", "image_size"))
    assert lines[0].startswith("| method | labels/class | width | image_size | seed | val % |")
    assert "| supervised | all | 0.25 | 96 | 0 | 88.0 | 90.0 | 0.80 | 0.80 | 0.80 | 11.0 | – |" in lines
    # the two half-width seeds are averaged; the 96 px run, alone in its set-up, is not folded into them
    means = [line for line in lines if line.startswith("- ")]
    assert means == [
        "- all labels/class, seeds 0, 1: test 95.0 ± 1.4 %, validation 93.0 ± 1.4 %"
        "; erythroblast recall 0.80; ig recall 0.80; platelet recall 0.80"
    ]
    assert results_script.classes8_ceiling_summary(tmp_path / "ceiling").startswith(
        "95.0 ± 1.4 % on the test split and 93.0 ± 1.4 % on validation at the profile's width 0.5 and 64 px "
        "(`ig` test recall 0.80; seeds 0, 1)"
    )
    assert results_script.classes8_ceiling_summary(tmp_path / "none") == "(not run yet)"


def test_the_taught_class_auroc_is_given_as_its_range_over_checkpoints(results_script, tmp_path):
    assert results_script.taught_auroc(tmp_path, "ig") == "(not measured yet)"
    for i, (eight, one) in enumerate(((0.99, 0.98), (0.97, 0.98))):
        views = {"eight_views": {"ig": {"auroc_own_class": eight}}, "one_view": {"ig": {"auroc_own_class": one}}}
        (tmp_path / f"taught_{i}.json").write_text(json.dumps(views))
    assert results_script.taught_auroc(tmp_path, "ig") == "0.970-0.990 over the eight symmetries (0.980 on one view)"


def test_an_adopted_levers_folder_keeps_the_runs_that_differ_only_by_later_adoptions(results_script, tmp_path):
    profile = make_config("cpu", "lp+mean-teacher")
    later = results_script.ADOPTED["ablations-val-epyc-half"]  # the mixup lever's folder
    assert "mixup" not in later and "tta_scoring" in later
    _write(
        tmp_path / "ablations-val-epyc-half",
        [
            # the adopted lever's run, before the settings adopted after it
            _run("lp+mean-teacher", 20, 0, 0.97, 700, FAST, pseudo_ood_calibration="labelled", tta_scoring=False),
            # a lever of the profile before it, never adopted: not the profile of any time
            _run("lp+mean-teacher", 20, 0, 0.96, 600, FAST, mixup=profile.mixup / 2),
        ],
    )
    groups = results_script.adopted_groups(tmp_path)
    assert [[run["wall_seconds"] for run in runs] for runs in groups.values()] == [[700]]
    assert results_script._setup_keys(next(iter(groups))[3]) <= set(later)


def test_a_run_that_predicted_over_eight_views_throughout_is_not_named_for_tta_scoring(results_script):
    profile = make_config("cpu", "lp+mean-teacher")
    flipped = not profile.tta_scoring
    assert results_script.setup_of(_run("lp+mean-teacher", 20, 0, 0.9, 1, FAST, tta_scoring=flipped)) == (
        f"tta_scoring={flipped}"
    )
    assert results_script.setup_of(_run("lp+mean-teacher", 20, 0, 0.9, 1, FAST, tta=True, tta_scoring=flipped)) == (
        "tta=True"
    )


def test_a_run_started_from_another_network_is_named_by_that_network_and_pairs_as_a_lever(results_script, tmp_path):
    base = _run("lp+mean-teacher", 20, 0, 0.96, 900, FAST)
    started = {**_run("lp+mean-teacher", 20, 0, 0.95, 900, FAST), "init": "/tmp/ck/simclr10.pt"}
    assert results_script.setup_of(base) == ""
    assert results_script.setup_of(started) == "init=simclr10"
    assert results_script.setup_of(started, against={**base, "init": None}) == "init=simclr10"
    _write(tmp_path / "profile", [base])
    _write(tmp_path / "selfsup", [started])
    assert results_script.lever_lines(tmp_path, "selfsup", "profile")[2] == (
        "| lp+mean-teacher | 20 | 0 | init=simclr10 | 94.0 | 93.0 | 96.0 | 95.0 |"
    )


def _loop_run(strategy: str, seed: int, accuracies: list[float]) -> dict:
    """A ``bench active --lab-default`` JSON of the default method, one round per accuracy."""
    return {
        "bench": "active",
        "strategy": strategy,
        "cold_start": "kmeans" if strategy == "diverse" else "random",
        "method": "lp+mean-teacher",
        "profile": "cpu",
        "seed": seed,
        "schedule": [50 * (i + 1) for i in range(len(accuracies))],
        "params_first_round": {},
        "params_warm_rounds": {},
        "overrides": {},
        "device": FAST,
        "rounds": [
            {"labels": 50 * (i + 1), "accuracy": a, "val_accuracy": a - 0.01, "macro_f1": a, "round_seconds": 900.0}
            for i, a in enumerate(accuracies)
        ],
    }


def test_each_lab_default_folder_of_the_loop_gets_its_own_section_and_an_empty_one_none(results_script, tmp_path):
    results, page = tmp_path / "results", tmp_path / "results.md"
    old = results / "active" / results_script.LAB_DEFAULT
    now = results / "active" / results_script.LAB_DEFAULT_NOW
    for folder, runs in ((old, [_loop_run("random", 0, [0.80, 0.90])]), (now, [_loop_run("diverse", 0, [0.93, 0.96])])):
        folder.mkdir(parents=True)
        for run in runs:
            (folder / f"loop-{run['strategy']}-s{run['seed']}.json").write_text(json.dumps(run))
    text = "\n".join(results_script.active_lines(results, page))
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## The product's loop (`bench active`), at a lab's default retrain length, the quarter-width profile",
        "## The product's loop (`bench active`), at a lab's default retrain length, the profile of 2026-12-07",
    ]
    newer = text[text.index("profile of 2026-12-07") :]
    assert "| 100 | 96.0 | 95.0 | 0 |" in newer and "random" not in newer
    assert (now / "loop.png").exists() and not (results / "active" / "loop.png").exists()


def test_the_loop_summary_gives_each_arms_mean_per_budget_the_products_first(results_script, tmp_path):
    assert results_script.loop_summary(tmp_path) == "(not run yet)"
    runs = [_loop_run("diverse", 0, [0.93, 0.98]), _loop_run("diverse", 1, [0.95, 0.99])]
    for run in runs:
        (tmp_path / f"loop-{run['strategy']}-s{run['seed']}.json").write_text(json.dumps(run))
    product = (
        "94.0 ± 1.4 % (93.0 ± 1.4) at 50 labels (seeds 0, 1); 98.5 ± 0.7 % (97.5 ± 0.7) at 100 labels (seeds 0, 1)"
    )
    assert results_script.loop_summary(tmp_path) == f"the product's queue {product}"
    random = _loop_run("random", 0, [0.5])
    (tmp_path / "loop-random-s0.json").write_text(json.dumps(random))
    assert results_script.loop_summary(tmp_path) == (
        f"the product's queue {product}; against random labels 50.0 % (49.0) at 50 labels (seed 0)"
    )
