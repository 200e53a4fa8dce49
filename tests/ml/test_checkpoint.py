import os

import numpy as np
import pytest
import torch

from ml.checkpoint import export_onnx, export_torchscript, load_checkpoint, load_model, make_checkpoint, save_checkpoint
from ml.config import make_config
from ml.infer import predict
from ml.model import ModelConfig, build_model


def _checkpoint():
    torch.manual_seed(0)
    config = ModelConfig(n_classes=5, width=0.125, image_size=32, mean=(120.0, 110.0, 100.0), std=(50.0, 40.0, 30.0))
    student = build_model(config)
    teacher = build_model(config)
    return (
        make_checkpoint(
            student=student,
            teacher=teacher,
            model_config=config,
            train_config=make_config("tiny", "mean-teacher+lp"),
            class_names=["a", "b", "c", "d", "e"],
            metrics={"accuracy": 0.5},
        ),
        teacher.eval(),
        student.eval(),
    )


def test_checkpoint_round_trip(tmp_path):
    ckpt, teacher, student = _checkpoint()
    path = tmp_path / "models" / "model.pt"
    save_checkpoint(path, ckpt)
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == 1
    assert loaded["class_names"] == ["a", "b", "c", "d", "e"]
    assert loaded["normalization"]["mean"] == [120.0, 110.0, 100.0]
    assert loaded["metrics"] == {"accuracy": 0.5}
    assert loaded["train_config"]["method"] == "mean-teacher+lp"
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    model = load_model(loaded, which="teacher")
    assert not model.training
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-5)
        assert torch.allclose(load_model(loaded, which="student")(x), student(x), atol=1e-5)
        assert not torch.allclose(model(x), student(x))
    pred = predict(loaded, x, batch_size=4)
    assert pred.probs.shape == (6, 5) and pred.probs.dtype == np.float32
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-5)
    assert pred.features.shape == (6, model.feature_dim)
    assert model.config.tta is False


def test_checkpoint_keeps_test_time_averaging(tmp_path):
    ckpt, teacher, _ = _checkpoint()
    ckpt["model_config"]["tta"] = True
    save_checkpoint(tmp_path / "m.pt", ckpt)
    model = load_model(load_checkpoint(tmp_path / "m.pt"))
    assert model.config.tta is True
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    # the checkpoint's predictions are the eight-view average, not the single view
    np.testing.assert_allclose(predict(model, x).probs, predict(teacher, x, tta=True).probs, atol=1e-5)


def test_save_replaces_atomically(tmp_path):
    ckpt, _, _ = _checkpoint()
    path = tmp_path / "model.pt"
    save_checkpoint(path, ckpt)
    ckpt2 = dict(ckpt, metrics={"accuracy": 0.9})
    save_checkpoint(path, ckpt2)
    assert load_checkpoint(path)["metrics"] == {"accuracy": 0.9}
    assert os.listdir(tmp_path) == ["model.pt"]


def test_rejects_unknown_format(tmp_path):
    ckpt, _, _ = _checkpoint()
    save_checkpoint(tmp_path / "m.pt", dict(ckpt, format_version=99))
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "m.pt")


def test_export_torchscript_and_onnx(tmp_path):
    ckpt, teacher, _ = _checkpoint()
    model = load_model(ckpt)
    x = torch.randint(0, 256, (3, 3, 32, 32)).float()
    export_torchscript(model, tmp_path / "m.ts")
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), teacher(x), atol=1e-4)
    onnx = pytest.importorskip("onnx")
    export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["image"]
