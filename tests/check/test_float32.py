"""--dtype float32: a much weaker check that still passes correct models (with a warning) and
fails clear bugs with the right hint.
"""

from __future__ import annotations

import pytest
from conftest import (
    HINT_PATTERNS,
    HINTS,
    RANDOMNESS,
    check_cli,
    spec,
)


@pytest.mark.parametrize(
    "target", [f"{HINTS}:Correct", spec(RANDOMNESS / "private_generator.py", "GlobalDropout")]
)
def test_float32_check_passes_a_correct_model_with_a_warning(tmp_path, target):
    run = check_cli(tmp_path, target, "--dtype", "float32")
    assert run.code == 0, run.output
    assert run.report["dtype"] == "float32"
    assert run.report["eps"] == pytest.approx(1e-3) and run.report["tolerance"] == 1e-2
    assert any("float32" in w and "weaker" in w for w in run.report["warnings"])
    assert "much weaker" in " ".join(run.output.split())


@pytest.mark.parametrize("pattern", ["SignFlipped", "FactorHalf", "WeightTransposed"])
def test_float32_check_still_fails_a_clear_bug(tmp_path, pattern):
    tensor, words = HINT_PATTERNS[pattern]
    run = check_cli(tmp_path, f"{HINTS}:{pattern}", "--dtype", "float32")
    assert run.code == 1, run.output
    assert [r["name"] for r in run.report["results"] if not r["passed"]] == [tensor]
    assert run.result(tensor)["hint"].startswith(words[0])
