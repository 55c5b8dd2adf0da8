"""Norm-activation layers (EvoNorm-B0/S0, FRN + TLU) are built into networks as their papers
build them: each BN→ReLU pair becomes the layer, the ReLU goes, and the norm before a residual
add takes the non-activation form (EvoNorm: γ = 0 on the main branch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smallbatch.models import CifarResNet, create_model
from smallbatch.models.swap import SelectiveActivation, replaces_activation
from smallbatch.norms import EvoNormB0, EvoNormS0, FilterResponseNormTLU

NORM_ACTS = ["evonorm_b0", "evonorm_s0", "frn"]
BACKBONES = ["resnet8", "resnet20", "resnet18", "timm/resnet10t"]


def _flows(model: nn.Module, x: torch.Tensor) -> tuple[list, list]:
    """(activation calls that took a norm-activation layer's unchanged output, norm-act layers'
    names with whether an activation ever took their output), by one forward."""
    outputs, fed = {}, []

    def norm_hook(name):
        def hook(_m, _i, out):
            outputs[id(out)] = (name, out._version, out)

        return hook

    def act_hook(name):
        def hook(_m, inputs):
            found = outputs.get(id(inputs[0]))
            if found is not None and found[1] == inputs[0]._version:
                fed.append((name, found[0]))

        return hook

    handles = []
    for name, m in model.named_modules():
        if replaces_activation(m):
            handles.append(m.register_forward_hook(norm_hook(name)))
        elif isinstance(m, nn.ReLU):
            handles.append(m.register_forward_pre_hook(act_hook(name)))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return fed, outputs


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("norm", NORM_ACTS)
def test_norm_relu_pairs_become_norm_act_layers(backbone, norm):
    model = create_model(backbone, norm, 10, 3)
    layers = {n: m for n, m in model.named_modules() if replaces_activation(m)}
    assert layers and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fed, _ = _flows(model, torch.randn(2, 3, 32, 32))
    assert fed == []  # no ReLU takes a norm-activation layer's output
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus, "the ReLUs after residual adds stay"
    for name, layer in layers.items():
        last_in_block = name.endswith(("bn2", "bn3")) and "downsample" not in name
        shortcut = "downsample" in name
        # pre-add norms (a block's last, the projection shortcut's) in the non-activation form
        assert layer.apply_act == (not (last_in_block or shortcut)), name
        if last_in_block and isinstance(layer, EvoNormB0 | EvoNormS0):
            assert torch.count_nonzero(layer.weight) == 0, name  # γ = 0 (init_zero)
        elif isinstance(layer, EvoNormB0 | EvoNormS0 | FilterResponseNormTLU):
            assert torch.all(layer.weight == 1), name


def test_torchvision_shared_relu_is_skipped_only_after_the_norm():
    model = create_model("resnet18", "evonorm_b0", 10, 3)
    relu = model.layer1[0].relu
    assert isinstance(relu, SelectiveActivation) and relu.skip == (True, False)
    assert isinstance(model.relu, nn.Identity)  # the stem's ReLU follows its norm alone


@pytest.mark.parametrize("norm", NORM_ACTS)
def test_swapped_cifar_block_equals_a_hand_built_reference(norm):
    torch.manual_seed(0)
    model = create_model("resnet8", norm, 10, 1)
    block = model.layer2[0]  # stride 2, zero-padded shortcut
    with torch.no_grad():  # non-trivial affine parameters everywhere
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 16, 14, 14)

    def reference(x):
        out = block.bn1(block.conv1(x))  # norm-act: no ReLU after it
        out = block.bn2(block.conv2(out))  # non-activation form
        return torch.relu(out + block.shortcut(x))

    block.train()  # batch statistics: the output does not depend on the running ones
    torch.testing.assert_close(block(x), reference(x))


@pytest.mark.parametrize("norm", NORM_ACTS)
def test_swapped_torchvision_block_equals_a_hand_built_reference(norm):
    torch.manual_seed(0)
    model = create_model("resnet18", norm, 10, 3)
    block = model.layer2[0]  # with a projection shortcut
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    block.eval()
    x = torch.randn(2, 64, 8, 8)

    def reference(x):
        out = block.bn1(block.conv1(x))
        out = block.bn2(block.conv2(out))
        return torch.relu(out + block.downsample(x))

    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x))


@pytest.mark.parametrize("norm", NORM_ACTS)
def test_keep_activation_restores_the_earlier_network(norm):
    model = create_model("resnet8", norm, 10, 1, norm_act="keep_activation")
    layers = [m for m in model.modules() if replaces_activation(m)]
    assert len(layers) == 7 and all(m.apply_act for m in layers)
    assert all(torch.all(m.weight == 1) for m in layers)
    reference = CifarResNet(8, 10, 1)
    relus = [type(m) for m in reference.modules() if isinstance(m, nn.ReLU)]
    assert [type(m) for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    fed, _ = _flows(model, torch.randn(2, 1, 28, 28))
    assert len(fed) == 4  # the stem's and each block's first ReLU take a norm-act output


def test_unknown_norm_act_mode_is_a_clear_error():
    from smallbatch.norms import NormConfigError

    with pytest.raises(NormConfigError, match="norm_act 'fuse' is not one of"):
        create_model("resnet8", "frn", 10, 1, norm_act="fuse")


def test_plain_norms_are_swapped_as_before():
    model = create_model("resnet18", "gn", 10, 3)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 9  # shared per block + stem
    assert not any(isinstance(m, SelectiveActivation) for m in model.modules())
