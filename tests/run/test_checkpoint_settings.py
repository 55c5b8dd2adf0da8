"""A checkpoint never overrides the norm you asked for (issue 35, item 2): fit --ckpt_path with
other model settings than the checkpoint's is refused, naming both, unless
--ckpt_settings checkpoint says the checkpoint's are meant."""

import re

import pytest
from conftest import tiny_fit_args

from smallbatch.results import read_result
from smallbatch.run.cell import CheckpointSettingsError, lightning_main


@pytest.mark.slow
def test_resuming_with_another_norm_is_refused_and_the_flag_resumes_as_trained(
    fashion_dir, tmp_path, capsys
):
    first = tmp_path / "bn"
    lightning_main(tiny_fit_args(fashion_dir, first))
    ckpt = str(first / "checkpoints" / "last.ckpt")
    more = ["--trainer.max_epochs", "2", "--ckpt_path", ckpt]
    refused = tmp_path / "gn"
    with pytest.raises(CheckpointSettingsError) as exc:
        lightning_main(tiny_fit_args(fashion_dir, refused, "--model.norm", "gn", *more))
    message = str(exc.value)
    assert "(model.norm: command line gn, checkpoint bn)" in message and "\n" not in message
    assert "--ckpt_settings checkpoint" in message
    assert not refused.exists()  # nothing left behind
    same = tmp_path / "resumed"  # the same settings: a plain resume
    lightning_main(tiny_fit_args(fashion_dir, same, *more))
    assert read_result(same)["status"] == "finished" and read_result(same)["epochs"] == 2
    meant = tmp_path / "meant"
    flags = ["--model.norm", "gn", "--ckpt_settings", "checkpoint", *more]
    lightning_main(tiny_fit_args(fashion_dir, meant, *flags))
    result = read_result(meant)
    assert result["norm"] == "bn" and result["status"] == "finished"
    assert "resuming" in capsys.readouterr().err
    # a batch-free norm's norm_batch (dropped before the fit, so absent from its checkpoint)
    # asked for again is the same setting, not a refusal
    gn = ["--model.norm", "gn", "--model.norm_batch", "4"]
    lightning_main(tiny_fit_args(fashion_dir, tmp_path / "gn1", *gn))
    again = [
        "--trainer.max_epochs",
        "2",
        "--ckpt_path",
        str(tmp_path / "gn1/checkpoints/last.ckpt"),
    ]
    lightning_main(tiny_fit_args(fashion_dir, tmp_path / "gn2", *gn, *again))
    assert read_result(tmp_path / "gn2")["epochs"] == 2


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--name", "n" * 300, "--name is 300 characters long; at most 100"),
        ("--name", "a/b", "--name 'a/b' may use letters, digits and . _ + = - only"),
        ("--group", "my group", "--group 'my group' may use letters"),
    ],
)
def test_a_bad_run_name_is_refused_before_anything_is_made(
    fashion_dir, tmp_path, flag, value, message
):
    from smallbatch.errors import UserError

    run = tmp_path / "run"
    with pytest.raises(UserError, match="^" + re.escape(message)):
        lightning_main(tiny_fit_args(fashion_dir, run, flag, value))
    assert not run.exists()
