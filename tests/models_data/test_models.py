"""Backbones, norm swapping, every norm training a few steps, and the clear errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smallbatch.models import (
    BackboneError,
    CifarResNet,
    build_backbone,
    create_model,
    known_backbones,
    swap_norms,
)
from smallbatch.norms import (
    BatchStatsError,
    CrossIterationBatchNorm2d,
    NormConfigError,
    available_norms,
    builtin_norms,
    create_norm,
    probe_norm,
)

# every built-in norm, from the registry: a new built-in is tested without editing this file
BUILTIN = builtin_norms()
BATCH_STATS = [n for n in BUILTIN if not probe_norm(n).batch_free]


def test_cifar_resnet_sizes():
    for depth, params in ((20, 0.27e6), (56, 0.85e6)):
        n = sum(p.numel() for p in CifarResNet(depth).parameters())
        assert abs(n - params) / params < 0.05, (depth, n)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def test_cifar_stem_and_channels():
    model = build_backbone("resnet18", num_classes=10, in_chans=1, cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    timm_model = build_backbone("timm:resnet18", num_classes=5, in_chans=3, cifar_stem=True)
    assert timm_model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_backbone_names_timm_hub_convention_plain_timm_names_and_arguments():
    # timm/<name> (the hub's convention) and a plain name torchvision does not have are timm's
    hub = build_backbone("timm/resnet10t", num_classes=4, in_chans=1)
    plain = build_backbone("resnet10t", num_classes=4, in_chans=1)
    assert type(hub) is type(plain) and type(hub).__module__.startswith("timm")
    assert plain(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    # resnet18 stays torchvision's; tv: forces torchvision
    assert type(build_backbone("resnet18")).__module__.startswith("torchvision")
    # backbone_args reach the constructor of each kind
    wide = build_backbone("resnet8", backbone_args={"width": 8})
    assert wide.conv1.out_channels == 8
    assert build_backbone("timm/resnet10t", backbone_args={"drop_rate": 0.5}).drop_rate == 0.5
    assert build_backbone("tv:resnet18", backbone_args={"zero_init_residual": True}) is not None
    assert "resnet8" in known_backbones()


@pytest.mark.parametrize(
    "name, args, match",
    [
        ("renset18", None, "unknown backbone 'renset18'; did you mean 'resnet18'"),
        ("resnet21", None, "6n\\+2"),
        ("timm/resnet10tt", None, "unknown timm model 'resnet10tt'; did you mean 'resnet10t'"),
        ("tv:resnet19", None, "unknown torchvision model 'resnet19'"),
        ("resnet8", {"widht": 8}, "rejects backbone_args"),
    ],
)
def test_backbone_errors_are_backbone_errors_with_suggestions(name, args, match):
    with pytest.raises(BackboneError, match=match):
        build_backbone(name, backbone_args=args)


@pytest.mark.parametrize("backbone", ["resnet20", "resnet18", "timm:resnet18"])
def test_cbn_pairs_every_norm_with_its_conv(backbone):
    model = create_model(backbone, "cbn", num_classes=10)
    cbns = {n: m for n, m in model.named_modules() if isinstance(m, CrossIterationBatchNorm2d)}
    assert cbns
    modules = dict(model.named_modules())
    for name, cbn in cbns.items():
        conv = cbn.feeding_conv
        assert isinstance(conv, nn.Conv2d) and conv.out_channels == cbn.num_features
        conv_name = next(n for n, m in modules.items() if m is conv)
        if name.endswith("downsample.1"):
            assert conv_name == name[: -len("1")] + "0"
        elif name == "bn1":
            assert conv_name == "conv1"  # the stem
        else:
            assert conv_name == name.replace("bn", "conv")
    if backbone == "resnet18":
        assert "layer2.0.downsample.1" in cbns


def _train_losses(model, x, y, steps=6, lr=0.02):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("norm", BUILTIN)
@pytest.mark.parametrize("backbone", ["resnet20", "resnet18"])
def test_every_norm_trains(norm, backbone):
    torch.manual_seed(0)
    extra = {"window": 2} if norm == "cbn" else {}
    model = create_model(backbone, norm, num_classes=10, cifar_stem=backbone == "resnet18", **extra)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    losses = _train_losses(model, x, y)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses


def test_registry_lists_builtins():
    names = set(available_norms())
    assert set(BUILTIN) <= names


def test_unknown_norm_lists_registered():
    with pytest.raises(NormConfigError, match=r"unknown norm 'bnx'.*Registered norms: .*brn"):
        create_norm("bnx", 8)


def test_class_path_that_does_not_import():
    with pytest.raises(NormConfigError, match="no module named 'no_such_pkg'.*PYTHONPATH"):
        create_norm({"class_path": "no_such_pkg.Norm", "init_args": {}}, 8)
    with pytest.raises(NormConfigError, match="has no attribute 'Nope'"):
        create_norm("torch.nn.Nope", 8)


def test_class_path_and_init_args_build_any_class():
    layer = create_norm({"class_path": "torch.nn.GroupNorm", "init_args": {"num_channels": 8}}, 2)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 2
    brn = create_norm({"class_path": "brn", "init_args": {"rmax": 2.0}}, 4)
    assert brn.ramp.rmax == 2.0


def test_bad_init_args_list_accepted_ones():
    with pytest.raises(NormConfigError, match="rejected arguments.*Accepted: .*window=4"):
        create_norm("cbn", 8, windw=3)


def test_groupnorm_groups_must_divide_channels_and_name_layer():
    model = build_backbone("resnet20")
    with pytest.raises(NormConfigError, match=r"layer 'bn1' \(16 channels\).*3 groups do not"):
        swap_norms(model, "gn", num_groups=3)


def test_cbn_without_feeding_conv_names_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(NormConfigError, match=r"layer '2'.*does not come directly from a Conv2d"):
        swap_norms(model, "cbn")
    # window 1 needs no conv
    swap_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), "cbn", window=1)


@pytest.mark.parametrize("norm", BATCH_STATS)
def test_batch_one_at_one_by_one_is_clear_error(norm):
    model = create_model("resnet18", norm, num_classes=10)  # ImageNet stem: 32 px -> 1x1
    with pytest.raises(BatchStatsError, match=r"layer4\.\d\.bn\d .*batch 1 at a 1x1 feature map"):
        model(torch.randn(1, 3, 32, 32))
    model(torch.randn(2, 3, 32, 32))  # batch 2 works
    model.eval()
    model(torch.randn(1, 3, 32, 32))  # eval uses running stats: fine
