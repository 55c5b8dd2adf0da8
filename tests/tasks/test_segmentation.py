"""Segmentation through the Task abstraction (issue 34): a fit of FashionScenes records mIoU in
every evaluation mode, the report prints it (and its attribution), the encoder starts from a
classification checkpoint under frozen BN, and the head's norm is its own choice."""

from pathlib import Path

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from smallbatch.analysis.report import main as report_main
from smallbatch.eval_modes import EVAL_MODES
from smallbatch.models import (
    BackboneWeightsError,
    create_model,
    create_segmentation_model,
    freeze_stages,
    load_backbone_weights,
)
from smallbatch.norms import FrozenBatchNorm2d, GroupNorm2d
from smallbatch.results import load_result_file
from smallbatch.run.cell import lightning_main
from smallbatch.tasks import NonFiniteOutputs, TaskConfigError, create_task

ROOT = Path(__file__).resolve().parents[2]


def seg_fit_args(data_dir: str, run_dir: Path, *extra: str) -> list[str]:
    """A seconds-long segmentation fit: 56×56 scenes, 64 train / 32 test, 1 epoch."""
    return [
        "fit", "--config", str(ROOT / "configs" / "seg_fashion.yaml"),
        "--data.data_dir", data_dir, "--data.canvas", "56", "--data.scale", "[1.0, 1.5]",
        "--data.train_scenes", "64", "--data.test_scenes", "32", "--data.batch_size", "8",
        "--model.norm_batch", "2", "--model.precise_images", "32",
        "--trainer.max_epochs", "1", "--trainer.logger", "false",
        "--trainer.enable_model_summary", "false", "--run_dir", str(run_dir), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_segmentation_fit_records_miou_in_every_mode_and_the_report_prints_it(
    fashion_dir, tmp_path, capsys
):
    run = tmp_path / "grid" / "s0"
    lightning_main(seg_fit_args(fashion_dir, run))
    result = load_result_file(run / "result.json")
    assert result["task"] == "segmentation" and result["metric"] == "miou"
    assert result["status"] == "finished" and "best_val_acc" not in result
    assert set(result["eval_miou"]) == set(EVAL_MODES)
    assert all(0 <= v <= 1 for v in result["eval_miou"].values())
    assert result["eval_miou"]["ema"] == result["final_val_miou"]
    capsys.readouterr()
    assert report_main([str(tmp_path / "grid"), "--attribution"]) == 0
    out = capsys.readouterr().out
    assert "mIoU (%), final evaluation (`final_val_miou`)" in out
    assert "| bn | " in out and "| ema mIoU | drop | estimate |" in out


def test_head_norm_is_refused_for_classification(fashion_dir, tmp_path, capsys):
    from conftest import tiny_fit_args

    from smallbatch.cli import main as cli_main

    args = tiny_fit_args(fashion_dir, tmp_path / "run", "--model.head_norm", "gn")
    assert cli_main(args) != 0
    err = capsys.readouterr().err
    assert "task 'classification' takes no head_norm" in err and "Traceback" not in err


def test_the_encoder_starts_from_a_classification_checkpoint_under_frozen_bn(tmp_path):
    classifier = create_model("resnet8", "bn", 10, 1)
    classifier.train()
    for _ in range(3):  # running statistics away from their initial values
        classifier(torch.randn(8, 1, 28, 28))
    classifier.eval()
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()}}, ckpt)
    seg = create_segmentation_model("resnet8", "frozen_bn", 11, 1, head_norm="gn")
    loaded = load_backbone_weights(seg, ckpt)
    assert "conv1.weight" in loaded and "layer3.0.bn2.running_var" in loaded
    assert isinstance(seg.encoder.bn1, FrozenBatchNorm2d) and isinstance(seg.head[1], GroupNorm2d)
    seg.train()  # frozen: training mode computes what the classifier's evaluation does
    x = torch.randn(2, 1, 28, 28)
    expected = classifier.layer3(classifier.layer2(classifier.layer1(
        classifier.relu(classifier.bn1(classifier.conv1(x))))))  # fmt: skip
    torch.testing.assert_close(seg.encoder(x), expected.detach(), rtol=1e-4, atol=1e-4)
    gn = create_model("resnet8", "gn", 10, 1)
    torch.save({"state_dict": {f"model.{k}": v for k, v in gn.state_dict().items()}}, ckpt)
    with pytest.raises(BackboneWeightsError, match="does not fit the encoder"):
        load_backbone_weights(seg, ckpt)


def test_head_norm_args_reach_the_head_only():
    seg = create_segmentation_model("resnet8", "frozen_bn", 11, 1, head_norm="cbn",
                                    head_norm_args={"window": 3})  # fmt: skip
    assert seg.head[1].window == 3 and isinstance(seg.encoder.bn1, FrozenBatchNorm2d)
    same = create_segmentation_model("resnet8", "cbn", 11, 1, window=2)  # no head_norm: shared
    assert same.head[1].window == 2 and same.encoder.bn1.window == 2


def test_freeze_at_stops_the_gradient_of_the_stem_and_first_stages():
    seg = create_segmentation_model("resnet8", "bn", 11, 1)
    assert freeze_stages(seg, 2) == ["conv1", "bn1", "relu", "layer1"]
    assert not seg.encoder.conv1.weight.requires_grad
    assert not seg.encoder.layer1[0].conv1.weight.requires_grad
    assert seg.encoder.layer2[0].conv1.weight.requires_grad and seg.head[0].weight.requires_grad


def test_the_segmentation_score_is_torchmetrics_miou_and_refuses_nan():
    task = create_task("segmentation", 4)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 4, 6, 6, generator=g), torch.randint(0, 4, (2, 6, 6), generator=g))
               for _ in range(3)]  # fmt: skip
    reference = MulticlassJaccardIndex(4, average="macro")
    for out, y in batches:
        reference.update(out, y)
    assert task.score(lambda x: x, batches) == pytest.approx(float(reference.compute()))
    batches[1][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteOutputs, match="1 of 6 samples"):
        task.score(lambda x: x, batches)


def test_classification_scores_exactly_and_unknown_tasks_are_named():
    task = create_task("classification", 3)
    out = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    assert task.score(lambda x: x, [(out, torch.tensor([0, 1, 0]))]) == 2 / 3
    with pytest.raises(TaskConfigError, match="did you mean 'segmentation'"):
        create_task("segmentaton", 3)
