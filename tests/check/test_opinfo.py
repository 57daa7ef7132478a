"""gradtool against torch.autograd.gradcheck on PyTorch's OpInfo database (issue #10).

`tests/opinfo_harness.py` runs both checkers on every differentiable float64 OpInfo sample of
at most 400 elements. The slow tests hold gradtool to no false alarm (gradtool fails where
gradcheck passes), no crash, and at least as many seeded-bug detections as gradcheck (in
total, and sample by sample); the whole of op_db (about 13,600 samples, and the seeded bugs
on those both pass) takes about a quarter of an hour on two cores:

    pytest -m slow tests/check/test_opinfo.py

GRADTOOL_OPINFO_OPS=name,... and GRADTOOL_OPINFO_LIMIT=N (samples per op) narrow the slow run.
The fast tests check the harness itself on a few ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import opinfo_harness
import pytest
import torch

pytest.importorskip("expecttest")  # torch.testing._internal (op_db) imports it

SHOWN = 40  # disagreements listed in a failure message


@pytest.fixture(scope="module")
def opinfo_run() -> Iterator[opinfo_harness.HarnessRun]:
    ops = os.environ.get("GRADTOOL_OPINFO_OPS")
    limit = os.environ.get("GRADTOOL_OPINFO_LIMIT")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        yield opinfo_harness.run(
            ops.split(",") if ops else None, limit=int(limit) if limit else None, bugs=True
        )
    finally:
        torch.set_num_threads(threads)


def _listed(records: list[opinfo_harness.SampleRecord]) -> str:
    lines = [f"{r.label}: {opinfo_harness.disagreement_reason(r)}" for r in records[:SHOWN]]
    if len(records) > SHOWN:
        lines.append(f"... and {len(records) - SHOWN} more (python tests/opinfo_harness.py)")
    return "\n".join(lines)


@pytest.mark.slow
def test_no_false_alarms(opinfo_run: opinfo_harness.HarnessRun) -> None:
    """Where gradcheck passes a sample, gradtool passes it too."""
    alarms = opinfo_run.false_alarms
    count = len(alarms)  # a number in the assertion: pytest would print every record
    assert count == 0, f"{count} false alarms:\n{_listed(alarms)}"


@pytest.mark.slow
def test_no_crashes(opinfo_run: opinfo_harness.HarnessRun) -> None:
    """gradtool raises nothing but GradtoolError, on the samples and on their seeded bugs."""
    groups = opinfo_harness.crash_groups(opinfo_run)
    summary = "\n".join(
        f"{len(where)} × {cause} (e.g. {where[0][0]})" for cause, where in groups.items()
    )
    count = len(opinfo_run.crashes)
    assert count == 0, f"{count} samples crash gradtool:\n{summary}"


def _missed(run: opinfo_harness.HarnessRun, kind: str) -> list[opinfo_harness.SampleRecord]:
    """Samples whose seeded bug `kind` gradcheck detects and gradtool does not."""
    return [
        r
        for r in run.records
        if kind in r.bugs
        and r.bugs[kind]["gradcheck"].verdict == opinfo_harness.FAIL
        and r.bugs[kind]["gradtool"].verdict != opinfo_harness.FAIL
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", opinfo_harness.BUG_KINDS)
def test_seeded_bugs_detected_as_often_as_gradcheck(
    opinfo_run: opinfo_harness.HarnessRun, kind: str
) -> None:
    counts = opinfo_run.bug_counts(kind)
    assert counts["samples"] > 0
    missed = ", ".join(r.label for r in _missed(opinfo_run, kind)[:SHOWN])
    assert counts["gradtool"] >= counts["gradcheck"], (
        f"{kind} bug: gradtool detects {counts['gradtool']}, gradcheck {counts['gradcheck']}; "
        f"gradtool misses: {missed}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", opinfo_harness.BUG_KINDS)
def test_every_seeded_bug_gradcheck_detects_gradtool_detects(
    opinfo_run: opinfo_harness.HarnessRun, kind: str
) -> None:
    """Per sample, not in total: gradtool's extra detections must not hide a miss."""
    missed = _missed(opinfo_run, kind)
    listed = "\n".join(
        f"{r.label}: gradtool {r.bugs[kind]['gradtool'].verdict} "
        f"{r.bugs[kind]['gradtool'].message.strip()[:200]}"
        for r in missed[:SHOWN]
    )
    count = len(missed)
    assert count == 0, f"{kind} bug: gradtool misses {count}:\n{listed}"


# --- the harness itself (fast) ----------------------------------------------------------


def _first_sample(name: str, index: int = 0):
    (op,) = [
        op for op in opinfo_harness.selected_ops([name]) if opinfo_harness.full_name(op) == name
    ]
    sample = opinfo_harness.samples_of(op)[index]
    return op, sample


def test_function_of_sample_calls_the_op_on_the_tensors_given() -> None:
    """The function takes the differentiable tensors (a TensorList's too) in gradcheck's
    order and puts them back where the sample had them."""
    op, sample = _first_sample("cat")
    inputs = opinfo_harness.differentiable_tensors(sample)
    assert len(inputs) == len(sample.input) >= 2
    fn = opinfo_harness.function_of_sample(op, sample)
    moved = tuple(t.detach() + 1 for t in inputs)
    expected = torch.cat([t.detach() + 1 for t in sample.input], **sample.kwargs)
    torch.testing.assert_close(fn(*moved), expected)


def test_seeded_bug_keeps_the_forward_and_breaks_the_backward() -> None:
    op, sample = _first_sample("mul")
    inputs = opinfo_harness.differentiable_tensors(sample)
    fn = opinfo_harness.function_of_sample(op, sample)
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    true = torch.autograd.grad(fn(*leaves).sum(), leaves)
    for kind, factors in (("scaled", [0.9] * len(inputs)), ("flipped", [-1.0, 1.0])):
        bugged = opinfo_harness.SeededBug(fn, inputs, kind)
        torch.testing.assert_close(bugged(*leaves), fn(*leaves), rtol=0, atol=0)
        got = torch.autograd.grad(bugged(*leaves).sum(), leaves)
        for g, t, factor in zip(got, true, factors):
            torch.testing.assert_close(g, factor * t)
        assert bugged.visible(inputs)


def test_harness_run_compares_both_checkers_and_runs_the_bugs() -> None:
    """sin: gradcheck and gradtool both pass the op and both catch each seeded bug."""
    run = opinfo_harness.run(["sin"], limit=1, bugs=True)
    (record,) = run.records
    assert record.agreement == opinfo_harness.BOTH_PASS
    for kind in opinfo_harness.BUG_KINDS:
        verdicts = {name: outcome.verdict for name, outcome in record.bugs[kind].items()}
        assert verdicts == {"gradcheck": "fail", "gradtool": "fail"}, kind
    assert "both pass" in opinfo_harness.summary(run)


def test_op_db_leaves_the_process_as_found() -> None:
    """Importing op_db freezes torch.backends' flags and OpInfo seeds the global RNG for
    each sample: the harness undoes both, for the tests that run after it."""
    rng = torch.get_rng_state()
    (op,) = opinfo_harness.selected_ops(["sin"])
    opinfo_harness.samples_of(op)
    assert not torch.backends.flags_frozen()
    assert torch.equal(torch.get_rng_state(), rng)
