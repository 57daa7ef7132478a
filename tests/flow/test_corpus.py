"""The pathology corpus (tests/fixtures/flow_corpus/): each broken training set-up gets its
expected first finding, each healthy control none. See the corpus README for a case's form."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "flow_corpus"
CASES = sorted(p for p in CORPUS.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"flow_corpus_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(report) -> str:
    return "\n".join(f"  {f.kind} {f.layer}: {f.message}" for f in report.findings) or "  none"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_corpus_case_gets_its_expected_first_finding(path: Path) -> None:
    case = _load(path)
    report = case.run()
    if case.EXPECTED is None:
        assert report.findings == (), f"healthy control got findings:\n{_summary(report)}"
    else:
        assert report.findings, f"expected {case.EXPECTED}, got no finding"
        assert report.findings[0].kind == case.EXPECTED, _summary(report)


def test_the_corpus_has_what_the_issue_asks_for() -> None:
    expected = [_load(p).EXPECTED for p in CASES]
    assert sum(e is not None for e in expected) >= 12
    assert sum(e is None for e in expected) >= 8


# Healthy controls trained for 10 steps with flow's defaults (SGD, lr 0.01), where a
# multi-step false alarm showed: timm's zero-initialised residual branches (not_learning,
# update_too_small) and flow's projection loss, which has no minimum (update_too_large,
# exploding once the weights have grown).
TRAINED = ["healthy_resnet_bn", "healthy_timm_resnet18", "healthy_llama"]


@pytest.mark.parametrize("name", TRAINED)
def test_healthy_controls_stay_clean_over_ten_steps(name: str) -> None:
    case = _load(CORPUS / f"{name}.py")
    one_step = case.flow

    def ten_steps(*args, **kwargs):
        return one_step(*args, **{**kwargs, "steps": kwargs.get("steps", 10)})

    case.flow = ten_steps
    report = case.run()
    assert report.steps == 10
    assert report.findings == (), f"healthy control got findings:\n{_summary(report)}"
