"""Opt-in torch.compile of the backbone: same results as eager, clear refusals, CLI and bench."""

import functools
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_fit_args

import smallbatch.analysis.bench as bench
import smallbatch.run.module as module
from smallbatch.models import compile_backbone, create_model
from smallbatch.norms import NormConfigError, builtin_norms
from smallbatch.results import read_result
from smallbatch.run.cell import lightning_main

# dynamo + AOT autograd without C++ code generation: seconds, and no compiler needed
fast_compile = functools.partial(compile_backbone, backend="aot_eager")


def _grads_and_output(model, x, y):
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same_step(eager, compiled):
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss_e, grads_e = _grads_and_output(eager, x, y)
    loss_c, grads_c = _grads_and_output(compiled, x, y)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for g_c, g_e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)
    for (name, b_e), b_c in zip(eager.named_buffers(), compiled.buffers(), strict=True):
        torch.testing.assert_close(b_c, b_e, rtol=1e-5, atol=1e-6, msg=name)  # running stats


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_compiled_backbone_gives_eager_losses_gradients_and_buffers(norm):
    torch.manual_seed(0)
    eager = create_model("resnet8", norm)
    compiled = create_model("resnet8", norm)
    compiled.load_state_dict(eager.state_dict())
    fast_compile(compiled, "default")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names unchanged
    _assert_same_step(eager, compiled)


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler"
)
def test_inductor_compiled_bn_backbone_matches_eager():
    torch.manual_seed(0)
    eager = create_model("resnet8", "bn")
    compiled = create_model("resnet8", "bn")
    compiled.load_state_dict(eager.state_dict())
    compile_backbone(compiled, "default")  # the real path: inductor, C++ code on CPU
    _assert_same_step(eager, compiled)


@pytest.mark.parametrize("norm", builtin_norms(compile_safe=False))
def test_compile_refuses_norms_with_python_side_state(norm):
    model = create_model("resnet8", norm)
    with pytest.raises(NormConfigError, match="Python-side state.*compile_safe = False.*layer1"):
        compile_backbone(model, "default")


def test_compile_mode_must_be_known():
    with pytest.raises(NormConfigError, match="'fast' is not one of default, reduce-overhead"):
        compile_backbone(create_model("resnet8", "bn"), "fast")


@pytest.mark.slow
def test_fit_with_compile_mode(fashion_dir, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(
        module, "compile_backbone", lambda m, mode: compiled.append(mode) or fast_compile(m, mode)
    )
    run = tmp_path / "run"
    lightning_main(tiny_fit_args(fashion_dir, run, "--model.compile_mode", "reduce-overhead"))
    assert compiled == ["reduce-overhead"] and read_result(run)["status"] == "finished"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    eager = module.SmallBatchModule(**{**hparams, "compile_mode": None})
    eager.load_state_dict(ckpt["state_dict"])  # strict: the same names as an eager model


@pytest.mark.slow
def test_bench_times_compiled_variants_next_to_eager(monkeypatch):
    monkeypatch.setattr(bench, "compile_backbone", fast_compile)
    results = bench.bench_config(
        "resnet20", 1, ["bn", "cbn"], torch.device("cpu"), steps=1, warmup=1, rounds=1,
        window=2, compile_mode="default",
    )  # fmt: skip
    by_norm = {m.norm: m for m in results}
    assert set(by_norm) == {"bn", "cbn", "bn+compiled"}  # CBN keeps Python-side state: eager
    compiled = by_norm["bn+compiled"]
    assert compiled.grad_diff_to_eager < 1e-4 and compiled.first_step_s > 0
    expected = compiled.train_step_ms / by_norm["bn"].train_step_ms
    assert compiled.ratio_to_eager == pytest.approx(expected)
    checks = bench.check_targets(results, gpu=True)
    assert [c["check"] for c in checks] == ["bn+compiled / bn train step"]
    assert bench.check_targets(results, gpu=False) == []
