"""Options are validated once, named as the API names them; the CLI names its flag."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from gradcheck_tool import check
from gradcheck_tool.cli import app
from gradcheck_tool.errors import OptionError
from gradcheck_tool.options import (
    CheckDtype,
    Optimizer,
    at_least,
    choice,
    flag_for,
    positive,
    valid_seed,
)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "1e-5", True])
def test_positive_refuses_and_names_the_option(value):
    with pytest.raises(OptionError) as err:
        positive("tolerance", value)
    assert err.value.option == "tolerance"
    assert str(err.value).startswith("tolerance must be a positive number")


def test_valid_values_pass_through():
    assert positive("eps", 1e-6) == 1e-6
    assert at_least("samples", 3, 1) == 3
    assert valid_seed(2**63 - 1) == 2**63 - 1
    assert choice(CheckDtype, "dtype", "Float32") is CheckDtype.FLOAT32
    assert choice(CheckDtype, "dtype", torch.float64) is CheckDtype.FLOAT64
    assert choice(Optimizer, "optimizer", Optimizer.ADAM) is Optimizer.ADAM


@pytest.mark.parametrize(
    "call", [lambda: at_least("samples", 0, 1), lambda: valid_seed(2**64), lambda: valid_seed(-1)]
)
def test_integers_out_of_range_are_refused(call):
    with pytest.raises(OptionError):
        call()


def test_a_closed_set_lists_its_members():
    with pytest.raises(OptionError, match="optimizer must be sgd or adam, not rmsprop"):
        choice(Optimizer, "optimizer", "rmsprop")


def test_flags_are_the_option_names_with_dashes():
    assert flag_for("tolerance") == "--tolerance"
    assert flag_for("second_order") == "--second-order"


def test_aliases_and_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    assert choice(CheckDtype, "dtype", "double") is CheckDtype.FLOAT64
    assert choice(CheckDtype, "dtype", torch.float) is CheckDtype.FLOAT32
    assert positive("tolerance", np.float32(1e-4)) == pytest.approx(1e-4)
    assert at_least("samples", np.int64(4), 1) == 4
    assert valid_seed(np.int64(7)) == 7
    with pytest.raises(OptionError, match="seed must be an integer, not 1.5"):
        valid_seed(1.5)


def test_the_api_speaks_in_api_terms():
    with pytest.raises(OptionError, match=r"^tolerance must be a positive number, not 0"):
        check(torch.nn.Linear(2, 1), torch.ones(1, 2), tolerance=0)
    with pytest.raises(OptionError, match=r"^device must be cpu or cuda\[:N\], not 'gpu'"):
        check(torch.nn.Linear(2, 1), torch.ones(1, 2), device="gpu")


def test_the_cli_speaks_in_flags(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import torch\nmodel = torch.nn.Linear(2, 1)\n")
    result = CliRunner().invoke(
        app, ["check", str(model), "--input-shape", "1,2", "--samples", "0"]
    )
    assert result.exit_code == 2
    assert "--samples must be an integer of at least 1, not 0" in result.output
