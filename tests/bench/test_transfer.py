"""``leukolab reference build`` and ``leukolab bench transfer`` on generated data (tiny profile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support.images import make_cell_image, make_imagefolder, make_manifest_dataset, write_image

CLASSES = ("basophil", "eosinophil", "lymphocyte")
TINY = ["--set", "epochs=1", "--set", "steps_per_epoch=3", "--set", "batch_size=12", "--set", "tta=false"]


def make_lab(root: Path, train_per_class: int = 20, test_per_class: int = 3) -> Path:
    """A MANIFEST data set (PBC's layout) of 32 px generated cells."""
    return make_manifest_dataset(root, CLASSES, train_per_class, test_per_class, size=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    data = make_lab(root / "gen-lab")
    other = root / "other-labs" / "src-a"
    make_imagefolder(other, classes=CLASSES, per_class=4, seed=7)
    out = root / "out" / "ref.pt"
    args = ["reference", "build", "--data", str(data), "--out", str(out), "--profile", "tiny"]
    args += ["--transfer", str(root / "other-labs"), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_reference_build_writes_checkpoint_and_card(reference: Path) -> None:
    import torch

    from ml.data import read_manifest
    from ml.splits import validation_files

    card = json.loads(reference.with_name("ref.card.json").read_text())
    assert card["class_names"] == list(CLASSES)
    held_out = len(validation_files(card["data"]["path"], read_manifest(card["data"]["path"])))
    assert 0 < held_out < 3 * 20
    assert card["data"]["n_validation"] == held_out and card["data"]["n_train"] == 3 * 20 - held_out
    assert set(card["metrics"]) == {"validation", "test"}
    assert card["metrics"]["test"]["n"] == 9
    assert set(card["transfer"]["src-a"]) == {"reference", "adapted_batchnorm", "adapted_lab", "adapted_im"}
    lab = card["transfer"]["src-a"]["adapted_lab"]
    assert str(lab["input_zoom"]) == min(lab["zoom_entropy"], key=lab["zoom_entropy"].get)
    assert card["transfer"]["src-a"]["reference"]["n"] == 12
    assert "src-a" in reference.with_name("ref.card.md").read_text()
    checkpoint = torch.load(reference, weights_only=True)
    assert checkpoint["class_names"] == list(CLASSES)
    assert checkpoint["reference_card"]["method"] == "supervised"


def _transfer(reference: Path, data: Path, out: Path, n: int, *extra: str) -> dict:
    args = ["bench", "transfer", "--reference", str(reference), "--data", str(data), "--labels-per-class", str(n)]
    args += ["--json", str(out), "--profile", "tiny", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_bench_transfer_reference_alone_and_fine_tuned(reference: Path, tmp_path: Path) -> None:
    lab = tmp_path / "new-lab"
    make_imagefolder(lab, classes=CLASSES[:2], per_class=6, seed=11)
    write_image(lab / "lymphocyte" / "only.png", make_cell_image(5, 32, 2))  # one cell: always labelled when N > 0
    write_image(lab / "platelet" / "p.png", make_cell_image(6, 32, 4))  # a class the reference does not know

    alone = _transfer(reference, lab, tmp_path / "n0.json", 0)
    assert alone["splits"] == 1 and alone["method"] == "reference"  # deterministic: one split is enough
    assert alone["n"] == 13 and alone["n_per_class"] == {"basophil": 6, "eosinophil": 6, "lymphocyte": 1}
    assert alone["classes_ignored"] == ["platelet"]
    assert alone["runs"][0]["n_test"] == 13 and alone["runs"][0]["n_labelled"] == 0
    assert 0.0 <= alone["accuracy"] <= 1.0 and alone["accuracy_sd"] == 0.0

    adapted = _transfer(reference, lab, tmp_path / "n0bn.json", 0, "--adapt-bn", "--splits", "2")
    assert adapted["adapt_bn"] is True and adapted["adapt_zoom"] is False and adapted["adapt_im"] is False
    trained = _transfer(reference, lab, tmp_path / "n0im.json", 0, "--adapt-im")
    assert trained["adapt_bn"] is True and trained["adapt_im"] is True and trained["adapt_zoom"] is False
    assert adapted["splits"] == 1  # every cell is unlabelled: nothing to draw
    zoomed = _transfer(reference, lab, tmp_path / "n0zoom.json", 0, "--adapt-zoom")
    assert zoomed["adapt_bn"] is True and zoomed["adapt_zoom"] is True
    entropies = zoomed["zoom_entropy"]
    assert len(entropies) == 5 and zoomed["input_zoom"] == float(min(entropies, key=entropies.get))

    short = ["--splits", "2", "--epochs", "1", "--steps-per-epoch", "2"]
    tuned = _transfer(reference, lab, tmp_path / "n2.json", 2, *short)
    assert tuned["splits"] == 2 and tuned["method"] == "mean-teacher" and tuned["fit_to_lab"] is True
    for run in tuned["runs"]:
        assert run["n_labelled"] == 2 + 2 + 1 and run["n_test"] == 13 - 5
        assert run["per_class"]["lymphocyte"]["support"] == 0
    lymph = tuned["per_class"]["lymphocyte"]
    assert lymph["splits_scored"] == 0 and lymph["recall"] is None and lymph["n"] == 1
    assert tuned["per_class"]["basophil"]["recall"] is not None
    assert tuned["finetune_config"]["rounds"] == 1 and tuned["finetune_config"]["epochs"] == 1
    # the fine-tuning starts from the reference at a lower learning rate than the profile's
    assert tuned["finetune_config"]["lr"] < 0.05
    # different splits draw different labelled cells: the per-split figures are their own
    assert {run["split"] for run in tuned["runs"]} == {0, 1}
    assert alone["fit_to_lab"] is False  # nothing to fit a head on
    unfitted = _transfer(reference, lab, tmp_path / "n2-nofit.json", 2, *short, "--no-fit")
    assert unfitted["fit_to_lab"] is False and unfitted["splits"] == 2
    assert tuned["finetune_overrides"] == {} and tuned["finetune_config"]["stain_hed_alpha"] == 0.0
    stained = _transfer(reference, lab, tmp_path / "n2-stain.json", 2, *short, "--set", "stain_hed_alpha=0.2")
    assert stained["finetune_overrides"] == {"stain_hed_alpha": 0.2}
    assert stained["finetune_config"]["stain_hed_alpha"] == 0.2
    assert tuned["finetune_keep"] == 1.0 and alone["finetune_keep"] is None
    halfway = _transfer(reference, lab, tmp_path / "n2-keep.json", 2, *short, "--keep", "0.5")
    assert halfway["finetune_keep"] == 0.5 and halfway["splits"] == 2


def test_bench_transfer_refuses_an_unknown_fine_tuning_setting(reference: Path, tmp_path: Path) -> None:
    lab = tmp_path / "new-lab"
    make_imagefolder(lab, classes=CLASSES[:2], per_class=3, seed=12)
    args = ["bench", "transfer", "--reference", str(reference), "--data", str(lab), "--labels-per-class", "1"]
    result = CliRunner().invoke(app, [*args, "--profile", "tiny", "--set", "no_such_setting=1"])
    assert result.exit_code == 2 and "no_such_setting" in result.output


def test_bench_transfer_refuses_a_missing_reference(tmp_path: Path) -> None:
    args = ["bench", "transfer", "--reference", str(tmp_path / "none.pt"), "--data", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--labels-per-class", "1"])
    assert result.exit_code == 2 and "--reference" in result.output


def test_the_cpu_reference_trains_four_times_a_retrains_length_at_quarter_width() -> None:
    from cli.reference import reference_recipe
    from ml.config import make_config

    recipe = reference_recipe("cpu")
    # docs/results/transfer/ablation-epochs/: 80 epochs transferred better without labels than 20 or 40
    assert recipe["epochs"] == 4 * make_config("cpu", "supervised").epochs
    assert recipe["width"] == 0.25 and recipe["fit_ood"] is False
    assert "epochs" not in reference_recipe("tiny")  # the test profile keeps its own short length
