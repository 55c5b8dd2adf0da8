"""Diagnostics: the batch-vs-running statistics gap per normalization group."""

import torch
from torch import nn

from smallbatch.norms import BatchNorm2d
from smallbatch.run.diagnostics import BatchStatGap


def _gap_by_hand(x, running_mean, running_var, eps, groups):
    xg = x.view(groups, -1, *x.shape[1:])
    mean = xg.mean(dim=(1, 3, 4))
    var = xg.var(dim=(1, 3, 4), unbiased=False)
    sigma = (running_var + eps).sqrt()
    return (
        float(((mean - running_mean) / sigma).abs().mean()),
        float(((var + eps).sqrt() / sigma).log().abs().mean()),
    )


def test_stat_gap_is_measured_per_ghost_batch():
    torch.manual_seed(0)
    layer = BatchNorm2d(3)
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    model = nn.Sequential(layer)
    gap = BatchStatGap(model)
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    start = {k: v.clone() for k, v in layer.state_dict().items()}
    for norm_batch, groups in ((None, 1), (2, 4)):
        layer.load_state_dict(start)
        layer.norm_batch = norm_batch
        expected = _gap_by_hand(x, layer.running_mean.clone(), layer.running_var.clone(),
                                layer.eps, groups)  # fmt: skip
        gap.armed = True
        model.train()
        model(x)
        out = gap.collect()
        assert abs(out["norm/stat_gap_mean"] - expected[0]) < 1e-5
        assert abs(out["norm/stat_gap_logstd"] - expected[1]) < 1e-5
    gap.remove()
