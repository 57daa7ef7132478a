"""What a target resolves to: modules without an __init__ of their own load."""

from __future__ import annotations

import pytest
from conftest import TARGETS, assert_user_error, invoke_cli, spec

from gradcheck_tool import check
from gradcheck_tool.loading import load_target

# --- modules without an __init__ of their own --------------------------------------------------


def test_module_without_its_own_init_loads_and_is_checked():
    loaded = load_target(str(TARGETS / "no_init.py"))
    assert type(loaded.obj).__name__ == "SoftSign"
    assert "constructed SoftSign()" in loaded.found_by
    result = invoke_cli("check", TARGETS / "no_init.py")
    assert result.code == 0, result.output


@pytest.mark.parametrize("name", ["Stack", "Residual"])
def test_constructor_of_only_star_args_and_defaults_needs_nothing(name):
    loaded = load_target(spec(TARGETS / "star_init.py", name))
    assert type(loaded.obj).__name__ == name
    assert check(loaded.obj, loaded.example_inputs).passed


def test_constructor_with_a_required_keyword_is_named():
    result = invoke_cli("check", spec(TARGETS / "star_init.py", "Sized"))
    assert_user_error(result, "constructor needs arguments (width)", "build_model()")
