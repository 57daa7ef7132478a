"""Correct models pass: random layers, train-mode BatchNorm, token ids, dict I/O, named loss
terms, sparse gradients, and more."""

from __future__ import annotations

import pytest
from conftest import (
    CORRECT,
    assert_all_pass,
    check_file,
    failing,
    message_of,
)

from gradcheck_tool.loading import load_target

TRAIN_MODE = ["dropout_mlp", "batchnorm_train", "transformer_dropout"]


SIMPLE = [*TRAIN_MODE, "float32_model", "softmax_output", "conv_pool_gelu"]


@pytest.mark.parametrize("name", SIMPLE)
def test_correct_model_passes(name):
    report = check_file(CORRECT / f"{name}.py")
    assert_all_pass(report)
    loaded = load_target(str(CORRECT / f"{name}.py"))
    params = {n for n, p in loaded.obj.named_parameters() if p.requires_grad}
    assert {r.name for r in report.results if r.kind == "parameter"} == params
    assert any(r.kind == "input" for r in report.results)
    if name in TRAIN_MODE:  # dropout / batch statistics, and they pass in train mode
        assert loaded.obj.training
        assert all("no gradient" not in r.note for r in report.results)


def test_softmax_output_gradients_are_not_zero():
    # `.sum()` of a softmax is constant, so a sum-loss checker would see zero gradients.
    report = check_file(CORRECT / "softmax_output.py")
    assert_all_pass(report)
    for r in report.results:
        assert "no gradient" not in r.note and "unused" not in r.note


def test_lstm_over_token_ids_checks_parameters_only():
    report = check_file(CORRECT / "lstm_tokens.py")
    assert_all_pass(report)
    assert not [r for r in report.results if r.kind == "input"]  # ids are never perturbed
    names = {r.name for r in report.results}
    assert {"embed.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"} <= names


def test_dict_inputs_and_outputs_with_non_tensor_values():
    report = check_file(CORRECT / "dict_io.py")
    assert_all_pass(report)
    inputs = {r.name for r in report.results if r.kind == "input"}
    assert inputs == {"input:features"}  # the bool mask and the float pass through unchecked
    assert {"encoder.weight", "encoder.bias", "head.weight", "head.bias"} <= {
        r.name for r in report.results
    }


def test_unused_parameter_passes_with_note():
    report = check_file(CORRECT / "unused_param.py")
    assert report.passed
    unused = report.result("unused")
    assert unused.passed and "unused" in unused.note
    assert "never reach" not in message_of(unused)
    for r in report.results:
        if r.name != "unused":
            assert "unused" not in r.note


def test_named_loss_terms_each_term_and_the_sum_are_checked():
    report = check_file(CORRECT / "named_loss_terms.py")
    assert_all_pass(report)
    names = {r.name for r in report.results}
    for tensor in ("hidden.weight", "hidden.bias", "out.weight", "out.bias", "input:x"):
        assert {tensor, f"{tensor} [mse]", f"{tensor} [activity]"} <= names


def test_named_loss_terms_only_the_buggy_term_and_the_sum_fail():
    report = check_file(CORRECT / "named_loss_terms_buggy.py")
    assert not report.passed
    tensors = ("hidden.weight", "hidden.bias", "out.weight", "out.bias", "input:x")
    assert failing(report) == {t for t in tensors} | {f"{t} [penalty]" for t in tensors}
    assert all(report.result(f"{t} [mse]").passed for t in tensors)


def test_loss_term_named_total_gives_unique_result_names():
    report = check_file(CORRECT / "total_term.py")
    names = [r.name for r in report.results]
    assert len(names) == len(set(names)), names
    assert len(names) == 9, names  # 3 tensors × (the sum, "total", "l2")
    assert report.passed


# --- sparse gradients ------------------------------------------------------------------------


def test_sparse_embedding_passes():
    report = check_file(CORRECT / "sparse_embedding.py")
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]
    assert report.result("e.weight").checked > 0
