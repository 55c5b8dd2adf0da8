"""W&B failures end in one line with the fix (issue 35, item 5): online without a key is
refused before anything is made; a W&B error starting the run (no network, a refused project)
is one `error:` line, not W&B's traceback."""

import pytest
from conftest import tiny_fit_args

from smallbatch.run.cell import lightning_main
from smallbatch.run.wandb_logger import WandbLogger, WandbSetupError


def _no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))


def test_online_without_a_key_is_refused_before_the_run_folder_exists(
    fashion_dir, tmp_path, monkeypatch
):
    _no_key(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "online")
    run = tmp_path / "run"
    args = tiny_fit_args(fashion_dir, run)
    args = args[: args.index("--trainer.logger")] + args[args.index("--trainer.logger") + 2 :]
    with pytest.raises(WandbSetupError) as exc:
        lightning_main(args)  # the quickstart config's WandbLogger, online
    message = str(exc.value)
    assert message.startswith("W&B is set to log online (WANDB_MODE=online) but no API key")
    assert "`wandb login`" in message and "WANDB_MODE=offline" in message and "\n" not in message
    assert not run.exists()


def test_a_wandb_error_starting_the_run_is_one_line_with_the_fix(tmp_path, monkeypatch):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.CommError("Failed to get resume status: context deadline exceeded")

    monkeypatch.setattr(wandb, "init", refuse)
    monkeypatch.setattr(wandb, "run", None)
    logger = WandbLogger(project="p", save_dir=str(tmp_path))
    with pytest.raises(WandbSetupError) as exc:
        _ = logger.experiment
    assert str(exc.value) == (
        "W&B could not start the run: Failed to get resume status: context deadline exceeded; "
        "run `wandb login` (or set WANDB_API_KEY), or log offline with WANDB_MODE=offline "
        "(upload later with `wandb sync`)"
    )
