"""Regression tests for the bugs of the `check` review (/tmp/review_check.md), one block per item.

Most run the CLI in-process (typer's CliRunner: same exit codes and streams, no interpreter
start-up); a fresh process is used only where the process is the point (peak memory).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading

import pytest
import torch
from conftest import (
    CHECKED_TENSORS,
    CLI_FILES,
    CORRECT,
    EVALUATION,
    RANDOMNESS,
    REPO,
    SWEEP,
    TARGETS,
    CliResult,
    check_file,
    failing,
    message_of,
)
from torch import nn
from typer.testing import CliRunner

from gradcheck_tool import check
from gradcheck_tool.cli import app
from gradcheck_tool.errors import GradtoolError, InputError
from gradcheck_tool.loading import load_target

SIBLINGS = TARGETS / "sibling_at_call_time"


def cli(*args: str | os.PathLike) -> CliResult:
    """`gradtool ARGS` in this process: the exit code, stdout and stderr apart."""
    env = {"COLUMNS": "400", "NO_COLOR": "1", "FORCE_COLOR": None}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_user_error(result: CliResult, *words: str) -> None:
    """Exit 2 (the user's file or arguments), the words in the message, no crash."""
    assert result.code == 2, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    for word in words:
        assert word in flat(result.output), result.output


# --- 1. the step-size sweep must not pass a bug beyond the first 64 coordinates -------------


def test_sweep_does_not_pass_a_bug_after_coordinate_64():
    report = check_file(f"{SWEEP / 'sweep_bug_after_64.py'}:SteepExp")
    (x,) = report.results
    assert x.checked == 128
    assert not x.passed and not report.passed, x
    assert x.rating == "bug"
    assert re.search(r"100\D{1,3}127", x.hint or ""), x.hint  # names entries 100–127


def test_sweep_bug_after_coordinate_64_fails_the_cli():
    result = cli("check", f"{SWEEP / 'sweep_bug_after_64.py'}:SteepExp")
    assert result.code == 1, result.output
    assert "FAIL" in result.stdout


# --- 2. complex outputs are checked on both parts -------------------------------------------


@pytest.mark.parametrize(
    ("name", "wrong"),
    [("M", {"im.weight", "im.bias", "input:x"}), ("ImagDouble", {"x"})],
)
def test_sign_flip_on_the_imaginary_path_fails(name, wrong):
    report = check_file(f"{CHECKED_TENSORS / 'complex_outputs.py'}:{name}")
    assert failing(report) == wrong, [(r.name, r.passed, r.note) for r in report.results]


@pytest.mark.parametrize("name", ["MOk", "ImagDoubleOk"])
def test_correct_complex_output_passes(name):
    report = check_file(f"{CHECKED_TENSORS / 'complex_outputs.py'}:{name}")
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]
    for result in report.results:
        assert "no gradient" not in message_of(result), result  # the imaginary part counts


def test_complex_model_with_imaginary_bug_fails_the_cli():
    result = cli("check", f"{CHECKED_TENSORS / 'complex_outputs.py'}:M")
    assert result.code == 1, result.output


# --- 3. sys.exit in the user's code is exit 2, never 0 or 1 ---------------------------------

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
    result = cli("check", path)
    assert_user_error(result, "sys.exit")
    assert "PASS" not in result.output


# --- 4. a loss_fn drawing from torch's global RNG sees the same state every evaluation -------


def test_random_loss_fn_on_a_correct_model_passes():
    result = cli("check", RANDOMNESS / "random_loss.py")
    assert result.code == 0, result.output
    assert "PASS" in result.stdout


# --- 5. --json - keeps the user's prints off stdout -----------------------------------------


def test_json_to_stdout_holds_only_json_when_user_code_prints():
    result = cli("check", CLI_FILES / "prints.py", "--json", "-")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)  # stdout is the JSON and nothing else
    assert data["passed"] is True
    assert "hello from import" not in result.stdout and "forward called" not in result.stdout
    assert "hello from import" in result.stderr and "forward called" in result.stderr


# --- 6. --json into a missing folder: exit 2, before any work -------------------------------


def test_json_into_a_missing_folder_is_exit_2_before_the_check(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = cli("check", CLI_FILES / "prints.py", "--json", missing / "r.json")
    assert_user_error(result, str(missing))
    assert "hello from import" not in result.output  # the user's file was never imported
    assert not missing.exists()


# --- 7. --device ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "mps"])
def test_unsupported_device_is_exit_2(device):
    result = cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--device", device)
    assert_user_error(result, "--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_exit_2():
    result = cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--device", "cuda")
    assert_user_error(result, "not available")


# --- 8. malformed checkpoints and bad numbers -----------------------------------------------


def test_checkpoint_with_list_values_is_exit_2_naming_the_keys(tmp_path):
    weights = tmp_path / "ck_list.pt"
    state = {"l.weight": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "l.bias": torch.zeros(2)}
    torch.save({"state_dict": state}, weights)
    result = cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--weights", weights)
    assert_user_error(result, "l.weight")


def test_seed_beyond_64_bits_is_exit_2():
    result = cli("check", RANDOMNESS / "random_loss.py", "--seed", str(2**64))
    assert_user_error(result, "--seed")


def test_seed_beyond_64_bits_with_input_shape_is_exit_2():
    result = cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--seed", str(2**64))
    assert_user_error(result, "--seed")


@pytest.mark.parametrize("budget", ["-5", "0", "nan"])
def test_bad_budget_is_exit_2(budget):
    result = cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--budget", budget)
    assert_user_error(result, "--budget")


@pytest.mark.parametrize("shape", ["2,x", "2x3x", "2,,3"])
def test_malformed_input_shape_is_exit_2(shape):
    result = cli("check", CLI_FILES / "plain.py", "--input-shape", shape)
    assert_user_error(result, "bad --input-shape")


# --- 9. sparse gradients ----------------------------------------------------------------------


def test_sparse_embedding_passes():
    report = check_file(CORRECT / "sparse_embedding.py")
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]
    assert report.result("e.weight").checked > 0


# --- 10. nothing to check is an error, not a pass --------------------------------------------


def test_nothing_to_check_is_exit_2():
    result = cli("check", CHECKED_TENSORS / "frozen.py")
    assert_user_error(result, "nothing to check")
    assert "PASS" not in result.output


def test_nothing_to_check_raises_in_the_api():
    with pytest.raises(InputError, match="nothing to check"):
        check_file(CHECKED_TENSORS / "frozen.py")


# --- 11. sibling imports at call time; sys.path and sys.modules restored -------------------


@pytest.mark.parametrize("file", ["import_in_build_model.py", "import_in_forward.py"])
def test_sibling_import_at_call_time_works_from_another_cwd(tmp_path, monkeypatch, file):
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    assert "_regr_sibling_layers" not in sys.modules
    result = cli("check", SIBLINGS / file)
    assert result.code == 0, result.output
    assert sys.path == path_before
    assert "_regr_sibling_layers" not in sys.modules


def test_load_and_check_leave_sys_path_and_modules_as_before():
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    loaded = load_target(str(SIBLINGS / "import_in_build_model.py"))
    assert type(loaded.obj).__name__ == "Block"  # build_model() could import its sibling
    report = check(loaded.obj, loaded.example_inputs)
    assert report.passed
    assert sys.path == path_before
    new = set(sys.modules) - modules_before
    assert "_regr_sibling_layers" not in new
    assert not [m for m in new if m.startswith("_gradtool_user")], new


# --- 12. nested inputs ------------------------------------------------------------------------


def test_dict_input_is_converted_and_checked():
    report = check_file(f"{CHECKED_TENSORS / 'nested_inputs.py'}:M")
    names = [r.name for r in report.results]
    assert "input:batch['x']" in names and "input:batch['w']" in names, names
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]


def test_bug_on_a_nested_input_is_caught():
    report = check_file(f"{CHECKED_TENSORS / 'nested_inputs.py'}:Buggy")
    assert failing(report) == {"input:batch['x']"}


# --- 13. a loss term named "total" -----------------------------------------------------------


def test_loss_term_named_total_gives_unique_result_names():
    report = check_file(CORRECT / "total_term.py")
    names = [r.name for r in report.results]
    assert len(names) == len(set(names)), names
    assert len(names) == 9, names  # 3 tensors × (the sum, "total", "l2")
    assert report.passed


# --- 14. a forward writing into its input in place -------------------------------------------


def _reference_gradcheck(model: nn.Module, x: torch.Tensor) -> bool:
    """torch.autograd.gradcheck over the input and the parameters, in float64."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, ps)), (x.clone(),))

    x = x.detach().double().requires_grad_(True)
    return torch.autograd.gradcheck(fn, (x, *params), raise_exception=False)


@pytest.mark.parametrize(("name", "correct"), [("M", True), ("Buggy", False)])
def test_inplace_write_to_the_input_is_checked_like_torch_gradcheck(name, correct):
    loaded = load_target(f"{CHECKED_TENSORS / 'inplace_input.py'}:{name}")
    x = loaded.example_inputs
    x_before = x.clone()
    report = check(loaded.obj, x)
    assert torch.equal(x, x_before)  # the user's input is left as found
    assert _reference_gradcheck(loaded.obj, x) is correct
    assert report.passed is correct, [(r.name, r.rel_error, r.note) for r in report.results]
    assert {r.name for r in report.results} == {"l.weight", "l.bias", "input:x"}
    if not correct:
        assert "input:x" in failing(report)


# --- 15. bound forward and closures over a module ---------------------------------------------


class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def _bn_model_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _WithBatchNorm().double().train(), torch.randn(5, 3, dtype=torch.float64)


def test_bound_forward_checks_the_modules_parameters():
    model, x = _bn_model_and_input()
    stats = copy.deepcopy(model.bn.state_dict())
    report = check(model.forward, x)
    names = {r.name for r in report.results}
    assert {"fc.weight", "fc.bias", "bn.weight", "bn.bias"} <= names, names
    assert report.passed
    for key, value in model.bn.state_dict().items():
        assert torch.equal(value, stats[key]), key


def test_closure_over_a_module_is_refused_and_leaves_it_untouched():
    model, x = _bn_model_and_input()
    stats = copy.deepcopy(model.bn.state_dict())
    with pytest.raises(GradtoolError):
        check(lambda x: model(x), x)
    for key, value in model.bn.state_dict().items():
        assert torch.equal(value, stats[key]), key  # running stats, num_batches_tracked


# --- 16. a *args function is a target, not a factory ------------------------------------------


def test_star_args_function_is_checked_with_input_shapes():
    result = cli(
        "check", f"{TARGETS / 'star_args.py'}:f", "--input-shape", "2,3", "--input-shape", "3"
    )
    assert result.code == 0, result.output
    assert "xs[0]" in result.stdout and "xs[1]" in result.stdout


# --- 17–19. messages that name the right culprit ---------------------------------------------


def test_loss_fn_with_the_wrong_arity_blames_loss_fn():
    result = cli("check", CLI_FILES / "loss_wrong_arity.py")
    assert_user_error(result, "loss_fn raised")
    assert "forward raised" not in result.output


def test_float32_constant_in_forward_hints_at_float64():
    result = cli("check", CLI_FILES / "float32_constant.py")
    assert_user_error(result, "float64", "--dtype float32")


@pytest.mark.parametrize("name", ["M.sub", "M.forward", "M "])
def test_dotted_name_must_be_top_level(name):
    result = cli("check", f"{CLI_FILES / 'plain.py'}:{name}", "--input-shape", "2,3")
    assert_user_error(result, "NAME must be a top-level name")


# --- 20. batched evaluation stays within its memory budget ------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_batched_check_of_a_small_cnn_peaks_well_under_2_gb(tmp_path):
    """Before the fix, 514 perturbed copies of a 32-element tensor went through the CNN in
    one vmap call: 4-9 GB. Measured in a fresh process: the child's own peak RSS."""
    import resource

    limit = 4 * 2**30  # a regression fails here instead of taking the machine's memory

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = dict(os.environ, COLUMNS="400")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = (tmp_path / "out.txt").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradcheck_tool", "check", str(EVALUATION / "small_cnn.py")],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=cap_memory,
    )
    timer = threading.Timer(60, proc.kill)  # a few seconds when batching is budgeted
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    output = out.read()
    out.close()
    assert proc.returncode != -9, f"killed after 60 s\n{output}"
    assert proc.returncode == 0, output
    assert "batched evaluation" in output  # the path under test, not the serial fallback
    peak_gb = usage.ru_maxrss * 1024 / 1e9
    assert peak_gb < 1.5, f"peak RSS {peak_gb:.2f} GB"
