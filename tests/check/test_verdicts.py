"""Verdicts on code nobody here wrote: every case a user met where a wrong gradient passed, a
correct model failed, or a tensor went unchecked. Each against an independent reference
(torch.autograd.gradcheck, or the model's known correctness) where one exists."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, check_file, failing, message_of

from gradcheck_tool import check
from gradcheck_tool.loading import load_target

VERDICTS = FIXTURES / "verdicts"


def spec(file: str, name: str | None = None) -> str:
    return f"{VERDICTS / file}:{name}" if name else str(VERDICTS / file)


def fixture_module(file: str):
    """A fixture file imported as a module (for helpers that are not a target)."""
    import importlib.util

    found = importlib.util.spec_from_file_location(f"_verdicts_{file[:-3]}", VERDICTS / file)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def statuses(report) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def gradcheck_passes(fn, inputs) -> bool:
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    return torch.autograd.gradcheck(fn, leaves, raise_exception=False)


# --- a wrong gradient must not pass -----------------------------------------------------------


def test_a_wrong_backward_on_a_complex_weight_fails_and_its_twin_passes():
    bad = check_file(spec("complex_tensors.py", "ComplexLayerBuggy"))
    assert "weight" in failing(bad)
    assert bad.result("weight").complex and bad.result("weight").shape == (4, 2)
    good = check_file(spec("complex_tensors.py", "ComplexLayer"))
    assert good.passed, [(r.name, r.note) for r in good.results]


@pytest.mark.parametrize("name, ok", [("Rotate", True), ("RotateBuggy", False)])
def test_complex_inputs_are_checked_as_gradcheck_checks_them(name, ok):
    loaded = load_target(spec("complex_tensors.py", name))
    z, w = fixture_module("complex_tensors.py").complex_inputs()
    report = check(loaded.obj, (z, w))
    assert {r.name for r in report.results} == {"z", "w"}
    assert all(r.complex for r in report.results)
    assert report.passed is ok
    assert gradcheck_passes(loaded.obj.apply, (z, w)) is ok


def test_a_tiny_step_cannot_pass_a_sign_flipped_backward():
    report = check_file(FIXTURES / "hints" / "hint_patterns.py:SignFlipped", eps=1e-15)
    assert not report.passed
    assert all(r.status in ("fail", "inconclusive") for r in report.results if r.name == "x")


def test_large_unrelated_outputs_do_not_hide_a_factor_two_bug():
    report = check_file(spec("big_unrelated_output.py"))
    assert {"small.weight", "small.bias"} <= failing(report), [
        (r.name, r.status, r.note) for r in report.results
    ]


def test_layers_in_a_plain_list_are_checked_and_named():
    bad = check_file(spec("hidden_tensors.py", "ListOfLayers"))
    assert {"blocks[0].weight", "blocks[1].weight"} <= failing(bad)
    assert any("blocks[0]" in w for w in bad.warnings)
    good = check_file(spec("hidden_tensors.py", "ListOfLayersOk"))
    assert good.passed and "blocks[1].bias" in statuses(good)


def test_a_buffer_that_requires_grad_is_checked():
    bad = check_file(spec("hidden_tensors.py", "GradBuffer"))
    assert "scale" in failing(bad) and bad.result("scale").kind == "buffer"
    assert check_file(spec("hidden_tensors.py", "GradBufferOk")).passed


def test_a_tensor_attribute_that_requires_grad_is_named_as_unchecked():
    report = check_file(spec("hidden_tensors.py", "PlainAttribute"))
    assert [u.name for u in report.unchecked] == ["offset"]
    assert "nn.Parameter" in report.unchecked[0].reason
    assert report.to_dict()["unchecked"][0]["name"] == "offset"


def test_a_backward_that_changes_what_it_saved_is_not_reentrant():
    loaded = load_target(spec("not_reentrant.py", "ScaleInPlace"))
    report = check(loaded.obj, loaded.example_inputs)
    assert "x" in failing(report) and "not reentrant" in message_of(report.result("x"))
    assert not gradcheck_passes_quietly(loaded.obj.apply, loaded.example_inputs)
    twin = load_target(spec("not_reentrant.py", "Scale"))
    assert check(twin.obj, twin.example_inputs).passed


def gradcheck_passes_quietly(fn, inputs) -> bool:
    try:
        return gradcheck_passes(fn, [t.double() for t in inputs])
    except Exception:  # noqa: BLE001 - gradcheck raises 'not reentrant' even when told not to
        return False


def test_a_gradient_cut_before_a_steep_saturating_function_never_reaches():
    # its difference quotient shrinks ≥30× per 100× step like rounding noise does, but keeps
    # its direction: not noise
    report = check_file(spec("steep_detached.py", "SteepDetached"))
    assert "shift" in failing(report), [(r.name, r.status, r.note) for r in report.results]
    assert "never reaches" in message_of(report.result("shift"))


# --- a correct model must pass ---------------------------------------------------------------


@pytest.mark.parametrize(
    "file",
    [
        "transformer_padding_eval.py",  # eval mode + padding mask: no fused inference path
        "reentrant_checkpoint.py",  # checkpoint(use_reentrant=True) refuses autograd.grad
        "zero_init_residual.py",  # ReLUs exactly at 0 after a zero-initialised BN scale
        "zero_before_batchnorm.py",  # a bias whose gradient is 0 up to BatchNorm's rounding
        "batchnorm_amplified_rounding.py",  # ... whose rounding is amplified (MobileNetV3)
    ],
)
def test_correct_models_users_met_pass(file):
    report = check_file(spec(file))
    assert report.passed, [(r.name, r.status, r.note) for r in report.results if not r.passed]


def test_rounding_that_no_step_resolves_is_never_called_a_bug():
    report = check_file(spec("batchnorm_amplified_rounding.py", "Ill"))
    found = {r.name: r.status for r in report.results}
    assert set(found.values()) <= {"pass", "inconclusive"}, found
    assert found["net.1.bias"] == "inconclusive"  # it was "bug" before


@pytest.mark.parametrize("shape", [(2,), (3, 2)])
def test_a_true_zero_gradient_that_autograd_computes_as_rounding_passes(shape):
    # corrcoef's entries are ±1 (or constant) wherever defined: autograd's gradient is
    # rounding (~1e-16), and the loss moves at no step by more than its rounding
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    report = check(torch.corrcoef, x)
    assert report.passed, [(r.name, r.status, r.note) for r in report.results]
    assert report.results[0].zero and "rounding" in report.results[0].note
    assert gradcheck_passes(torch.corrcoef, (x,))


def test_a_padded_transformer_in_eval_mode_leaves_the_fast_path_setting_as_found():
    before = torch.backends.mha.get_fastpath_enabled()
    check_file(spec("transformer_padding_eval.py"), samples=2)
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_float32_idioms_inside_a_float64_check_are_kept_at_float64_and_said():
    report = check_file(spec("lower_precision_idioms.py", "TinyAttention"))
    assert report.passed, [(r.name, r.status, r.note) for r in report.results]
    assert report.lower_precision and any("softmax" in p for p in report.lower_precision)
    assert any("kept in float64" in w for w in report.warnings)
    assert report.tolerance == 1e-5  # the float64 verdict: nothing remains in float32


def test_a_bug_behind_float32_idioms_still_fails():
    report = check_file(spec("lower_precision_idioms.py", "TinyAttentionBuggy"))
    assert {"qkv.weight", "out.weight"} <= failing(report)


def test_non_differentiable_outputs_are_left_out_as_gradcheck_does():
    loaded = load_target(spec("nondifferentiable_outputs.py", "layer_norm_with_stats"))
    report = check(loaded.obj, loaded.example_inputs)
    assert report.passed, [(r.name, r.note) for r in report.results]
    assert report.left_out_outputs == ("output[1]", "output[2]")
    assert gradcheck_passes(
        lambda *a: loaded.obj(*a)[0], [t.double() for t in loaded.example_inputs]
    )


def test_only_inputs_marked_requires_grad_are_checked_and_the_rest_named():
    loaded = load_target(spec("labels_and_masks.py"))
    report = check(loaded.obj, loaded.example_inputs)
    assert report.passed and [r.name for r in report.results] == ["probs"]
    assert {u.name for u in report.unchecked} == {"labels", "mask"}
    assert all("requires_grad" in u.reason for u in report.unchecked)


def test_skip_and_wrt_leave_tensors_out_by_name_and_say_so():
    loaded = load_target(spec("hidden_tensors.py", "ListOfLayersOk"))
    skipped = check(loaded.obj, loaded.example_inputs, skip=["blocks*", "input:x"])
    assert not {r.name for r in skipped.results} & {"blocks[0].weight", "input:x"}
    assert "blocks[1].bias" in {u.name for u in skipped.unchecked}
    only = check(loaded.obj, loaded.example_inputs, wrt=["head.weight"])
    assert [r.name for r in only.results] == ["head.weight"]


def test_skip_naming_nothing_is_an_option_error():
    from gradcheck_tool.errors import OptionError

    loaded = load_target(spec("hidden_tensors.py", "ListOfLayersOk"))
    with pytest.raises(OptionError, match="names no checked tensor: 'nope'"):
        check(loaded.obj, loaded.example_inputs, skip=["nope"])


@pytest.mark.parametrize(
    "inputs, reason",
    [
        ((torch.empty(0), torch.ones(3)), "empty"),
        ((torch.ones(3).to_sparse(), torch.ones(3)), "sparse"),
    ],
)
def test_empty_and_sparse_inputs_are_named_not_crashed_on(inputs, reason):
    report = check(lambda a, b: (a.sum() + b.sin()) if a.is_sparse else a.sum() + b.sin(), inputs)
    assert [r.name for r in report.results] == ["b"] and report.passed
    assert reason in report.unchecked[0].reason


# --- an unresolved gradient is inconclusive, never a pass -------------------------------------


def test_a_float32_check_that_resolves_nothing_does_not_pass_a_seeded_bug():
    report = check_file(spec("float32_offset.py"), dtype="float32")
    assert not report.passed
    assert {r.status for r in report.results} <= {"fail", "inconclusive"}
    assert check_file(spec("float32_offset.py")).failures  # in float64 the bug is seen


def test_a_gradient_below_rounding_at_every_step_is_inconclusive_and_counted():
    def tiny_slope(x):  # 1e10 has an ulp of 2e-6: a slope of 1e-3 is lost below it
        return 1e10 + 1e-3 * x

    report = check(tiny_slope, torch.randn(4, generator=torch.Generator().manual_seed(0)))
    result = report.result("x")
    assert result.status == "inconclusive" and not result.passed and not report.passed
    assert "neither verified nor refuted" in result.note
    data = report.to_dict()
    assert data["counts"] == {"pass": 0, "fail": 0, "inconclusive": 1, "not judged": 0}
    assert report.failures == () and report.inconclusive == (result,)
