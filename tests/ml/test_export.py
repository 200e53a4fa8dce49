"""Model export: the ONNX file under onnxruntime and the TorchScript file against PyTorch, and the card."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from ml.checkpoint import load_model, make_checkpoint
from ml.config import make_config
from ml.export import card_path, export_model
from ml.model import ModelConfig, build_model

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
PER_CLASS = {
    name: {"precision": 0.9, "recall": 0.8 + i / 100, "f1": 0.85, "support": 4} for i, name in enumerate(CLASSES)
}
FACTS = {
    "model_version": 7,
    "run_id": 3,
    "created_at": "2026-01-02T03:04:05+00:00",
    "expert_labels": 120,
    "pseudo_labels": 431,
    "metrics": {"accuracy": 0.85, "macro_f1": 0.84, "per_class": PER_CLASS},
}


def _checkpoint() -> dict:
    """A small network whose BatchNorm statistics moved away from their initial values."""
    torch.manual_seed(0)
    config = ModelConfig(n_classes=5, width=0.125, image_size=32, mean=(180.0, 150.0, 170.0), std=(40.0, 45.0, 35.0))
    student, teacher = build_model(config), build_model(config)
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randint(0, 256, (16, 3, 32, 32)).float())
    return make_checkpoint(
        student=student,
        teacher=teacher,
        model_config=config,
        train_config=make_config("tiny", "mean-teacher+lp"),
        class_names=CLASSES,
        metrics={"accuracy": 0.5},
    )


def _pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3, 32, 32)).astype(np.float32)


def _torch_probs(checkpoint: dict, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(load_model(checkpoint, which="teacher")(torch.from_numpy(x)), dim=1).numpy()


def test_onnx_matches_pytorch_under_onnxruntime_and_has_a_card(tmp_path) -> None:
    checkpoint = _checkpoint()
    out = tmp_path / "out" / "wbc.onnx"

    card_file = export_model(checkpoint, out, format="onnx", facts=FACTS)

    assert card_file == card_path(out) == tmp_path / "out" / "wbc.card.json"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch, seed in ((1, 0), (7, 1)):  # the batch axis is dynamic
        x = _pixels(batch, seed)
        (logits,) = session.run(["logits"], {"image": x})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        onnx_probs = exp / exp.sum(axis=1, keepdims=True)
        torch_probs = _torch_probs(checkpoint, x)
        assert onnx_probs.shape == (batch, 5)
        assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
        assert not np.allclose(torch_probs, 0.2, atol=1e-3)  # a real network, not a uniform output

    card = json.loads(card_file.read_text())
    assert card["format"] == "onnx" and card["file"] == "wbc.onnx"
    assert card["classes"] == CLASSES
    assert card["input"]["image_size"] == 32 and card["input"]["shape"] == ["batch", 3, 32, 32]
    assert card["input"]["normalization"]["mean"] == [180.0, 150.0, 170.0]
    assert card["input"]["normalization"]["std"] == [40.0, 45.0, 35.0]
    assert card["metrics"]["per_class"] == PER_CLASS and card["metrics"]["accuracy"] == 0.85
    assert card["labels"] == {"expert": 120, "pseudo": 431}
    assert card["training_config"]["method"] == "mean-teacher+lp"
    assert card["training_config"] == checkpoint["train_config"]
    assert card["model_version"] == 7 and card["training_run"] == 3
    assert card["code_version"]["leukolab"] and card["code_version"]["torch"] == torch.__version__
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_torchscript_loads_and_matches(tmp_path) -> None:
    checkpoint = _checkpoint()
    out = tmp_path / "wbc.pt"

    export_model(checkpoint, out, format="torchscript", facts=FACTS)

    loaded = torch.jit.load(str(out))
    x = torch.from_numpy(_pixels(5, 2))
    with torch.no_grad():
        scripted = torch.softmax(loaded(x), dim=1).numpy()
    np.testing.assert_allclose(scripted, _torch_probs(checkpoint, x.numpy()), atol=1e-5)
    card = json.loads(card_path(out).read_text())
    assert card["format"] == "torchscript" and card["file"] == "wbc.pt" and card["classes"] == CLASSES


def test_unknown_format_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown model format"):
        export_model(_checkpoint(), tmp_path / "m.bin", format="tflite", facts=FACTS)
    assert list(tmp_path.iterdir()) == []
