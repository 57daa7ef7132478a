"""Exit 2 when the user's file cannot be used: one screen naming the file and the culprit, no
traceback (--debug shows it), stdout kept clean for --json -.
"""

from __future__ import annotations

import pytest
from conftest import (
    BAD,
    CLI_FILES,
    TARGETS,
    assert_no_traceback,
    assert_user_error,
    flat,
    invoke_cli,
    run_cli,
)


def write_syntax_error(tmp_path):
    path = tmp_path / "syntax_error.py"
    path.write_text("import torch\n\n\ndef build_model(:\n    return None\n")
    return path


BAD_TARGETS = {
    "missing file": (lambda tmp: [tmp / "nowhere" / "model.py"], ["model.py", "not found"]),
    "syntax error": (lambda tmp: [write_syntax_error(tmp)], ["syntax_error.py:4"]),
    "import error": (
        lambda tmp: [BAD / "import_error.py"],
        ["import_error.py", "No module named 'gradtool_fixture_no_such_package'"],
    ),
    "import error hiding its cause": (
        lambda tmp: [BAD / "lazy_import_error.py"],
        [
            "Could not import module 'BertModel'",
            "caused by RuntimeError: operator torchvision::nms",
        ],
    ),
    "no target": (lambda tmp: [BAD / "no_target.py"], ["no_target.py", "no_target.py:NAME"]),
    "ambiguous": (
        lambda tmp: [BAD / "ambiguous.py"],
        ["NetA", "NetB", "ambiguous.py:NetA", "ambiguous.py:NetB"],
    ),
    "unknown name": (
        lambda tmp: [f"{TARGETS / 'module_instance.py'}:Nope"],
        ["Nope", "module_instance.py"],
    ),
    "forward raises": (
        lambda tmp: [BAD / "forward_raises.py"],
        ["fixture forward is broken on purpose (code 4711)", "ValueError"],
    ),
    "output is a string": (lambda tmp: [BAD / "returns_string.py"], ["str"]),
    "no inputs": (lambda tmp: [BAD / "no_inputs.py"], ["example_inputs", "--input-shape"]),
    "bad input shape": (
        lambda tmp: [BAD / "no_inputs.py", "--input-shape", "two,4"],
        ["two,4"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_unusable_target_exits_2_with_a_message_and_no_traceback(case, tmp_path):
    make_args, words = BAD_TARGETS[case]
    result = run_cli("check", *make_args(tmp_path))
    assert result.code == 2, result.output
    for word in words:
        assert word in flat(result.output), (word, result.output)
    assert_no_traceback(result)
    assert result.output.count("\n") < 25  # one screen, not a dump


def test_debug_shows_the_traceback():
    result = run_cli("check", BAD / "forward_raises.py", "--debug")
    assert "Traceback" in result.output
    assert "fixture forward is broken on purpose (code 4711)" in flat(result.output)


def test_error_with_json_stdout_keeps_stdout_clean():
    result = run_cli("check", BAD / "ambiguous.py", "--json", "-")
    assert result.code == 2
    assert result.stdout.strip() == ""
    assert "NetA" in result.stderr


# --- sys.exit in the user's code is exit 2, never 0 or 1 -------------------------------------


EXIT_TEMPLATE = """\
import sys

import torch
from torch import nn

{at_import}


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(3, 2)

    def forward(self, x):
        {in_forward}
        return self.l(x)


def build_model():
    {in_build_model}
    return M()


def example_inputs():
    {in_example_inputs}
    return torch.randn(2, 3)


def loss_fn(out, x):
    {in_loss_fn}
    return out.pow(2).sum()
"""


EXIT_PLACES = ("at_import", "in_build_model", "in_example_inputs", "in_forward", "in_loss_fn")


@pytest.mark.parametrize("call", ["sys.exit(0)", 'raise SystemExit("x")'])
@pytest.mark.parametrize("place", EXIT_PLACES)
def test_sys_exit_in_user_code_is_exit_2(tmp_path, place, call):
    code = EXIT_TEMPLATE.format(**{p: call if p == place else "pass" for p in EXIT_PLACES})
    path = tmp_path / f"exits_{place}.py"
    path.write_text(code)
    result = invoke_cli("check", path)
    assert_user_error(result, "sys.exit")
    assert "PASS" not in result.output


# --- messages that name the right culprit ----------------------------------------------------


def test_loss_fn_with_the_wrong_arity_blames_loss_fn():
    result = invoke_cli("check", CLI_FILES / "loss_wrong_arity.py")
    assert_user_error(result, "loss_fn raised")
    assert "forward raised" not in result.output


def test_float32_constant_in_forward_hints_at_float64():
    result = invoke_cli("check", CLI_FILES / "float32_constant.py")
    assert_user_error(result, "float64", "--dtype float32")


@pytest.mark.parametrize("name", ["M.sub", "M.forward", "M "])
def test_dotted_name_must_be_top_level(name):
    result = invoke_cli("check", f"{CLI_FILES / 'plain.py'}:{name}", "--input-shape", "2,3")
    assert_user_error(result, "NAME must be a top-level name")


def test_a_reader_that_closed_the_pipe_is_not_blamed_on_the_users_code():
    """`gradtool check m.py | head`: rich ends the process with SystemExit(1) from its
    `on_broken_pipe` when stdout's reader is gone; that is not the user's sys.exit()."""
    from gradcheck_tool.cli import user_errors

    def on_broken_pipe():  # the name rich's Console gives the method that exits
        raise SystemExit(1)

    with pytest.raises(SystemExit) as raised, user_errors(debug=False):
        on_broken_pipe()
    assert raised.value.code == 1
