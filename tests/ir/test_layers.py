import torch

from lcpaq.ir import capture, find_layers, precision_groups, scale_groups
from lcpaq.tools.models.resnet import resnet18


def test_layer_view_of_block(block) -> None:
    gm = capture(block, (torch.randn(1, 3, 8, 8),))
    layers = find_layers(gm)
    assert [(layer.name, layer.kind) for layer in layers] == [("c1", "conv"), ("c2", "conv"), ("fc", "linear"), ("fc2", "linear")]
    assert all(layer.weight is not None and len(layer.act_inputs) == 1 for layer in layers)
    assert layers[0].weight_name == "c1.weight"


def test_groups_of_block(block) -> None:
    layers = find_layers(capture(block, (torch.randn(1, 3, 8, 8),)))
    # c1 and c2 read the input x; fc and fc2 read the pooled vector
    assert precision_groups(layers) == [("c1", "c2"), ("fc", "fc2")]
    # c1 (through bn, relu) and c2 meet in an add; so do fc and fc2
    assert scale_groups(layers) == [("c1", "c2"), ("fc", "fc2")]


def test_resnet18_groups() -> None:
    layers = find_layers(capture(resnet18().eval(), (torch.randn(1, 3, 64, 64),)))
    names = [layer.name for layer in layers]
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    # each downsampling block: its first conv and the 1x1 shortcut read the same tensor
    assert ("layer2.0.downsample.0", "layer2.0.conv1") in precision_groups(layers)  # graph order
    assert ("layer2.0.downsample.0", "layer2.0.conv2") in scale_groups(layers)
