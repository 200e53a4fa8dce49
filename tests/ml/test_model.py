import subprocess
import sys

import numpy as np
import pytest
import torch

from ml.model import ModelConfig, WBCNet, build_model


def test_paper_network_shapes_at_full_width():
    net = WBCNet(ModelConfig(n_classes=5, width=1.0, image_size=64)).eval()
    convs = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in net.backbone.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 10 and len(pools) == 4
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert net.backbone(net.normalise(x)).shape == (2, 512, 4, 4)
    linears = [m for m in net.embed.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8192, 1024), (1024, 1024)]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in net.embed.modules()) == 2
    logits, features = net.forward_with_features(x)
    assert logits.shape == (2, 5) and features.shape == (2, 1024)


def test_width_multiplier_and_channels_last_give_same_output():
    net = build_model(ModelConfig(width=0.25, image_size=64)).eval()
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a = net(x)
        b = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-4)
    assert net.backbone[-1][0].out_channels == 128


def test_pooled_blocks_rectify_after_the_pool_with_the_same_values_and_gradients():
    # ReLU after the 2×2 max-pool (a quarter of the values) is the same function and the same
    # gradients as the textbook order; old checkpoints load, since only conv and BN hold weights
    from ml.model import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(3, 8, pool=True)
    assert [type(m) for m in block] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d, torch.nn.ReLU]
    textbook = torch.nn.Sequential(block[0], block[1], torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    x = torch.randn(4, 3, 16, 16)
    outputs, grads = [], []
    for net in (block, textbook):
        net.zero_grad()
        out = net(x)
        out.square().sum().backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in net.parameters()])
    assert torch.equal(outputs[0], outputs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert set(block.state_dict()) == set(textbook.state_dict())


def test_attention_rescales_channels():
    net = WBCNet(ModelConfig(width=0.125, image_size=32)).eval()
    z = torch.rand(2, net.attention.fc[0].in_features, 2, 2)
    out = net.attention(z)
    ratio = out / z
    # one weight per (sample, channel), in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert (ratio > 0).all() and (ratio < 1).all()


def test_resnet50_option():
    net = build_model(ModelConfig(arch="resnet50", image_size=64)).eval()
    with torch.no_grad():
        logits, features = net.forward_with_features(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 5) and features.shape == (1, 2048)


def test_package_import_does_not_load_torch():
    modules = "ml, ml.images, ml.config, ml.device, ml.cli, bench.cli"
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_arch_rejected():
    with pytest.raises(ValueError):
        build_model(ModelConfig(arch="alexnet"))


class _QuadrantNet(torch.nn.Module):
    """Logits are the brightness of the image's left, right, top and bottom halves and its
    top-left quarter: a model that sees orientation, unlike a cell's class."""

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(n_classes=5, image_size=32)
        self.feature_dim = 5
        self.scale = torch.nn.Parameter(torch.tensor(0.05))

    def forward_with_features(self, x):
        g = x.float().mean(dim=1)
        h = g.shape[-1] // 2
        parts = [g[:, :, :h], g[:, :, h:], g[:, :h, :], g[:, h:, :], g[:, :h, :h]]
        logits = torch.stack([p.mean(dim=(1, 2)) for p in parts], dim=1) * self.scale
        return logits, logits


def test_tta_predictions_do_not_depend_on_orientation():
    from ml.infer import dihedral, predict

    net = _QuadrantNet()
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    x[:, :, :, :12] //= 4  # dark on the left: not symmetric
    views = [dihedral(x, k) for k in range(8)]
    assert len({v.numpy().tobytes() for v in views}) == 8  # eight distinct symmetries
    turned = x.transpose(-1, -2).flip(-1)  # a 90 degree rotation
    plain, plain_turned = predict(net, x, tta=False), predict(net, turned, tta=False)
    assert np.abs(plain.probs - plain_turned.probs).max() > 0.1
    averaged, averaged_turned = predict(net, x, tta=True), predict(net, turned, tta=True)
    np.testing.assert_allclose(averaged.probs, averaged_turned.probs, atol=1e-5)
    np.testing.assert_allclose(averaged.features, averaged_turned.features, atol=1e-4)
    np.testing.assert_allclose(averaged.probs.sum(axis=1), 1.0, atol=1e-5)
    # the model config's flag is the default
    net.config.tta = True
    np.testing.assert_allclose(predict(net, x).probs, averaged.probs, atol=1e-6)
