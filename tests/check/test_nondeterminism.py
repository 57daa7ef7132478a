"""Randomness in the forward or the loss: torch's global RNG is replayed for every evaluation, so
dropout and a random loss_fn pass; a private generator makes the forward nondeterministic,
which is reported as such and not judged a bug.
"""

from __future__ import annotations

from conftest import (
    RANDOMNESS,
    check_cli,
    invoke_cli,
    spec,
)


def test_private_generator_is_reported_as_nondeterministic_not_as_a_bug(tmp_path):
    run = check_cli(tmp_path, spec(RANDOMNESS / "private_generator.py", "PrivateDropout"))
    assert run.code != 0  # not verified ...
    report = run.report
    assert report["nondeterministic"] is True
    assert report["noise"] > 0
    warnings = " ".join(report["warnings"])
    assert "nondeterministic" in warnings and "generator" in warnings
    assert f"{report['noise']:.3g}" in warnings  # the noise, against the FD signal
    assert "finite-difference units" in warnings
    for r in report["results"]:  # ... but not judged a gradient bug either
        assert r["rating"] != "bug" and r["hint"] is None and not r["worst"]
        assert "nondeterministic" in r["note"]
    assert "NOT JUDGED" in run.output
    assert "gradient(s) wrong" not in run.output


def test_the_same_dropout_from_the_global_rng_passes(tmp_path):
    run = check_cli(tmp_path, spec(RANDOMNESS / "private_generator.py", "GlobalDropout"))
    assert run.code == 0, run.output
    assert run.report["nondeterministic"] is False
    assert not any("nondetermin" in w for w in run.report["warnings"])
    assert all(r["rating"] == "excellent" for r in run.report["results"])


# --- a loss_fn drawing from torch's global RNG sees the same state every evaluation ----------


def test_random_loss_fn_on_a_correct_model_passes():
    result = invoke_cli("check", RANDOMNESS / "random_loss.py")
    assert result.code == 0, result.output
    assert "PASS" in result.stdout
