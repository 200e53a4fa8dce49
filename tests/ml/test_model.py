import subprocess
import sys

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
    code = "import sys, ml, ml.images, ml.config, ml.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_arch_rejected():
    with pytest.raises(ValueError):
        build_model(ModelConfig(arch="alexnet"))
