"""Ctrl-C during a check: a partial report and exit 130 from the CLI, Interrupted carrying the
partial report from the API, and the user's state restored.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    INTERRUPT,
    check_cli,
    spec,
)

from gradcheck_tool import check
from gradcheck_tool.engines.check import Interrupted
from gradcheck_tool.loading import load_target


def test_ctrl_c_in_the_cli_gives_a_partial_report_and_exit_130(tmp_path):
    run = check_cli(tmp_path, spec(INTERRUPT / "interrupt_midway.py"))
    assert run.code == 130, run.output
    assert "INTERRUPTED: partial report, 2 result(s) before Ctrl-C" in run.output
    report = run.report  # the JSON is still written
    assert report["interrupted"] == "interrupt" and report["passed"] is False
    # the parameters were finished before Ctrl-C came, while input:x was being perturbed
    assert [r["name"] for r in report["results"]] == ["fc.weight", "fc.bias"]
    assert all(r["passed"] for r in report["results"])
    assert run.table_cell("fc.bias", "result") == "pass"


def test_ctrl_c_through_the_api_raises_interrupted_with_the_partial_report():
    loaded = load_target(spec(INTERRUPT / "interrupt_midway.py"))
    dtype_before = torch.get_default_dtype()
    rng_before = torch.get_rng_state()
    with pytest.raises(Interrupted) as stop:
        check(loaded.obj, loaded.example_inputs)
    report = stop.value.report
    assert report.interrupted == "interrupt" and not report.passed
    assert [r.name for r in report.results] == ["fc.weight", "fc.bias"]  # not input:x
    assert all(r.passed for r in report.results)
    assert torch.get_default_dtype() == dtype_before  # the user's state is restored
    assert torch.equal(torch.get_rng_state(), rng_before)
