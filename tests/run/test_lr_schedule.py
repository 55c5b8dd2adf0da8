"""The LR rule and schedule against the recipes they come from (per optimizer step)."""

from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT

from smallbatch.run.module import SmallBatchModule


def _lrs(total_steps: int, epochs: int, **hparams) -> list[float]:
    module = SmallBatchModule(backbone="resnet8", norm="bn", **hparams)
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=total_steps, max_epochs=epochs, num_devices=1, num_nodes=1,
        accumulate_grad_batches=1, datamodule=SimpleNamespace(batch_size=32),
    )  # fmt: skip
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_the_uniform_protocol_warms_up_over_epochs_then_cosine_to_zero():
    lrs = _lrs(300, 3, lr=0.1, reference_batch=32, warmup_epochs=0.2)  # warm-up 20 steps
    assert lrs[0] == pytest.approx(0.1 / 20) and lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.1)  # cosine from the peak
    assert lrs[20 + 140] == pytest.approx(0.05, rel=1e-2)  # half-way through the decay
    assert lrs[-1] < 1e-4


def test_evonorm_authors_recipe_is_tensorflow_tpu_resnets_schedule():
    """tensorflow/tpu resnet: 0.1 per 256 images, linear warm-up over 5 of 90 epochs, x0.1 at
    epochs 30, 60 and 80 of 90 -- here 90 "epochs" of 10 steps at total batch 32."""
    recipe = yaml.safe_load((ROOT / "configs/recipes/authors/evonorm_b0.yaml").read_text())
    lrs = _lrs(900, 90, **recipe["model"])
    peak = 0.1 * 32 / 256
    assert lrs[0] == pytest.approx(peak / 50) and lrs[49] == pytest.approx(peak)  # 5 epochs
    for start, end, factor in ((50, 300, 1), (300, 600, 0.1), (600, 800, 0.01), (800, 900, 1e-3)):
        assert lrs[start] == pytest.approx(peak * factor), start
        assert lrs[end - 1] == pytest.approx(peak * factor), end - 1


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_warmup_fraction_outside_the_run_is_refused(fraction):
    with pytest.raises(ValueError, match=r"warmup_fraction is a share of the run in \[0, 1\)"):
        SmallBatchModule(backbone="resnet8", norm="bn", warmup_fraction=fraction)


def test_cbn_authors_burnin_ends_at_epoch_8_of_12():
    """The official configs' burnin8 of a 12-epoch (1x) schedule: 12 epochs of 100 steps give
    plain BN for steps 0-799 and cross-iteration statistics from step 800."""
    from smallbatch.norms import CrossIterationBatchNorm2d

    recipe = yaml.safe_load((ROOT / "configs/recipes/authors/cbn.yaml").read_text())
    layer = CrossIterationBatchNorm2d(16, **recipe["model"]["norm_args"])
    layer.set_total_steps(1200)
    assert layer.burnin == 800 and layer.window == 4


@pytest.mark.parametrize(("per_gpu", "lr"), [(32, 0.1), (16, 0.05), (2, 0.00625)])
def test_the_imagenet_configs_lr_is_the_gn_papers(per_gpu, lr):
    """GN paper (Wu & He 2018, section 4.1, after Goyal et al.): 8 GPUs, LR 0.1 at 32 images
    per GPU, scaled linearly, 0.1·b/32 for b images per GPU (issue 37: the config gave 8×)."""
    config = yaml.safe_load((ROOT / "configs" / "imagenet_resnet50.yaml").read_text())
    model = config["model"]
    module = SmallBatchModule(backbone="resnet8", norm="bn", lr=model["lr"],
                              reference_batch=model["reference_batch"])  # fmt: skip
    module._trainer = SimpleNamespace(
        num_devices=config["trainer"]["devices"], num_nodes=1, accumulate_grad_batches=1,
        datamodule=SimpleNamespace(batch_size=per_gpu),
    )  # fmt: skip
    assert module.scaled_lr() == pytest.approx(lr)
