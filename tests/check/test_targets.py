"""What a target resolves to: the module inside torch.compile, DataParallel,
DistributedDataParallel and functools.partial is checked (and the report says so); a target
that would run the user's own module is refused; modules without an __init__ of their own
load; meta tensors and a raising __getattr__ are exit 2. Every accepted or refused target
leaves the user's module exactly as found."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import FIXTURES, TARGETS, assert_user_error, flat, invoke_cli, spec
from models import assert_same, snapshot
from torch import nn

from gradcheck_tool import check
from gradcheck_tool.errors import GradtoolError, InputError, UserCodeError
from gradcheck_tool.loading import load_target

WRAPPED = FIXTURES / "wrapped"  # user-like files whose target is wrapped or reaches a module
REACHES = WRAPPED / "reaches_a_module.py"
OUTSIDE = "from outside its arguments"
WOULD_CHANGE = "its parameters would not be checked, and running it would change your model"


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return torch.tanh(self.bn(self.fc(x))) * scale


PARAMETERS = {"fc.weight", "fc.bias", "bn.weight", "bn.bias"}


def user_model() -> tuple[nn.Module, torch.Tensor]:
    """A model as a user has it mid-training: train mode, a gradient from the last step,
    running statistics that moved; in float64 so that nothing needs converting."""
    torch.manual_seed(0)
    model = BatchNormNet().double().train()
    x = torch.randn(6, 3, dtype=torch.float64)
    model(x).sum().backward()
    return model, x


def checked_names(report) -> set[str]:
    return {r.name for r in report.results}


# --- wrappers: checked through the module inside ------------------------------------------------


def test_compiled_model_is_checked_through_the_original_module():
    model, x = user_model()
    before = snapshot(model)
    compiled = torch.compile(model)  # built, never run: the check must not run it either
    report = check(compiled, x)
    assert report.passed
    assert checked_names(report) == PARAMETERS | {"input:x"}  # no `_orig_mod.` prefix
    assert any("torch.compile (._orig_mod)" in w for w in report.warnings), report.warnings
    assert_same(before, snapshot(model))


def test_compiled_function_is_checked_as_written():
    def f(x):
        return x.sin() * x

    report = check(torch.compile(f), torch.randn(3, dtype=torch.float64))
    assert report.passed and checked_names(report) == {"x"}
    assert any("function inside torch.compile" in w for w in report.warnings)


def test_model_compiled_in_place_is_checked_eagerly_and_says_so():
    model, x = user_model()
    model.compile()
    before = snapshot(model)
    report = check(model, x)
    assert report.passed and checked_names(report) == PARAMETERS | {"input:x"}
    assert any(".compile()" in w for w in report.warnings), report.warnings
    assert_same(before, snapshot(model))


def test_data_parallel_is_checked_through_its_module_where_it_lives():
    model, x = user_model()
    before = snapshot(model)
    report = check(nn.DataParallel(model), x)
    assert report.passed and checked_names(report) == PARAMETERS | {"input:x"}
    assert "checked the module inside DataParallel (.module)" in report.warnings[0]
    assert report.device == str(next(model.parameters()).device)
    assert_same(before, snapshot(model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_data_parallel_on_the_gpu_is_checked_on_its_first_gpu():
    model, x = user_model()
    model = model.cuda()
    before = snapshot(model)
    report = check(nn.DataParallel(model), x)  # inputs on the CPU, as DataParallel accepts
    assert report.passed and report.device == "cuda:0"
    assert_same(before, snapshot(model))


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)
def test_distributed_data_parallel_is_checked_through_its_module(tmp_path):
    import torch.distributed as dist

    # a one-process group, destroyed however the test ends: nothing global is left behind
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1
    )
    try:
        model, x = user_model()
        before = snapshot(model)
        report = check(nn.parallel.DistributedDataParallel(model), x)
    finally:
        dist.destroy_process_group()
    assert report.passed and checked_names(report) == PARAMETERS | {"input:x"}
    assert any("DistributedDataParallel (.module)" in w for w in report.warnings)
    assert_same(before, snapshot(model))


def test_a_subclass_with_its_own_forward_is_not_taken_apart():
    class Doubling(nn.DataParallel):
        def forward(self, *inputs, **kwargs):
            return 2 * self.module(*inputs, **kwargs)

    model, x = user_model()
    with pytest.raises(GradtoolError):  # checked as given: torch's stateless call refuses DP
        check(Doubling(model), x)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("compiled_model.py", "torch.compile (._orig_mod)"),
        ("data_parallel.py", "DataParallel (.module)"),
    ],
)
def test_cli_checks_a_wrapped_model_and_says_so(name, words):
    result = invoke_cli("check", WRAPPED / name)
    assert result.code == 0, result.output
    assert words in flat(result.output)
    assert "_orig_mod.fc" not in result.output and "module.fc" not in result.output


def test_weights_saved_from_a_plain_or_a_wrapped_model_load_into_the_module_inside(tmp_path):
    torch.manual_seed(3)
    saved = BatchNormNet()
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(saved.state_dict(), plain)
    torch.save(torch.compile(saved).state_dict(), wrapped)  # keys begin with `_orig_mod.`
    for path in (plain, wrapped):
        loaded = load_target(str(WRAPPED / "compiled_model.py"), weights=str(path))
        assert torch.equal(loaded.obj._orig_mod.fc.weight, saved.fc.weight)


# --- functools.partial, bound methods --------------------------------------------------------


def test_partial_of_a_model_is_the_model():
    model, x = user_model()
    before = snapshot(model)
    report = check(functools.partial(model), x)
    assert report.passed and checked_names(report) == PARAMETERS | {"input:x"}
    assert any("inside functools.partial" in w for w in report.warnings)
    assert_same(before, snapshot(model))  # not run: num_batches_tracked, running stats, grads


def test_partial_binding_arguments_passes_them_as_inputs():
    model, x = user_model()
    before = snapshot(model)
    report = check(functools.partial(model, scale=3.0), x)
    assert report.passed and checked_names(report) == PARAMETERS | {"input:x"}
    assert any("(scale) are passed as inputs" in w for w in report.warnings), report.warnings
    assert_same(before, snapshot(model))


def test_partial_of_a_compiled_bound_forward_is_the_model():
    model, x = user_model()
    report = check(functools.partial(torch.compile(model).forward), x)
    assert checked_names(report) == PARAMETERS | {"input:x"}


def test_partial_of_a_plain_function_is_unchanged():
    w = torch.randn(3, dtype=torch.float64)
    report = check(functools.partial(lambda x, w: (x * w).sin(), w=w), torch.randn(3).double())
    assert report.passed and checked_names(report) == {"x"} and not report.warnings


def test_other_method_of_a_module_is_refused():
    model, x = user_model()
    before = snapshot(model)
    with pytest.raises(InputError, match="BatchNormNet.extra_repr"):
        check(model.extra_repr, x)
    assert_same(before, snapshot(model))


# --- targets that would run the user's own module: refused ---------------------------------------


class Predictor:
    def __init__(self, model: nn.Module) -> None:
        self.pipeline = {"model": model}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline["model"](x)


def refused_targets(model: nn.Module) -> dict:
    """Functions and objects that would call `model` (the user's) instead of a copy."""

    def apply(m, x):
        return m(x)

    def with_default(x, m=model):
        return m(x)

    layers = [model]

    return {
        "closure": (lambda x: model(x), "the variable `model` it closes over"),
        "closure over a list": (lambda x: layers[0](x), "the variable `layers` it closes over[0]"),
        "callable object": (Predictor(model), ".pipeline['model']"),
        "bound method of an object": (Predictor(model).__call__, "its self.pipeline['model']"),
        "default argument": (with_default, "the default of `m`"),
        "partial binding the module": (
            functools.partial(apply, model),
            "argument 0 bound by functools.partial",
        ),
    }


@pytest.mark.parametrize("case", sorted(refused_targets(nn.Linear(1, 1))))
def test_target_reaching_a_module_is_refused_and_leaves_it_as_found(case):
    model, x = user_model()
    before = snapshot(model)
    target, where = refused_targets(model)[case]
    with pytest.raises(InputError) as raised:
        check(target, x)
    message = str(raised.value)
    assert "BatchNormNet" in message and OUTSIDE in message and WOULD_CHANGE in message, message
    if where is not None:
        assert where in message, message
    assert_same(before, snapshot(model))


def test_module_among_the_inputs_is_refused():
    model, x = user_model()
    before = snapshot(model)
    with pytest.raises(
        InputError, match=r"the inputs hold the module BatchNormNet \(inputs\[0\]\)"
    ):
        check(lambda m, x: m(x), (model, x))
    assert_same(before, snapshot(model))


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("predict", "the global `net`"),
        ("predict_via_helper", "the global `_helper`: the global `net`"),
        ("predict_with_default", "the default of `model`"),
        ("predictor", ".model"),
        ("UsesGlobal", "the global `net`"),
    ],
)
def test_file_target_using_a_global_module_is_refused(name, where):
    loaded = load_target(spec(REACHES, name))
    user_net = _global_net(loaded)
    before = snapshot(user_net)
    with pytest.raises(InputError) as raised:
        check(loaded.obj, loaded.example_inputs)
    message = str(raised.value)
    assert f"uses the module Net {OUTSIDE} ({where})" in message, message
    assert_same(before, snapshot(user_net))


def _global_net(loaded) -> nn.Module:
    """The `net` of the loaded reaches_a_module.py (each load is a fresh module)."""
    obj = loaded.obj
    if isinstance(obj, functools.partial):
        return obj.func
    if isinstance(obj, nn.Module):
        return type(obj).forward.__globals__["net"]
    if hasattr(obj, "__globals__"):
        return obj.__globals__["net"]
    return obj.model


def test_file_partial_of_the_model_is_checked_and_the_global_left_as_found():
    loaded = load_target(spec(REACHES, "partial_forward"))
    user_net = _global_net(loaded)
    before = snapshot(user_net)
    report = check(loaded.obj, loaded.example_inputs)
    assert report.passed and checked_names(report) == PARAMETERS | {"input:x"}
    assert_same(before, snapshot(user_net))


def test_global_module_without_state_may_be_used():
    loaded = load_target(spec(REACHES, "stateless"))
    report = check(loaded.obj, loaded.example_inputs)
    assert report.passed and checked_names(report) == {"x"}


def test_cli_refuses_a_function_using_a_global_module():
    result = invoke_cli("check", spec(REACHES, "predict"))
    assert_user_error(result, "the function uses the module Net", WOULD_CHANGE, "as the target")


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


# --- meta tensors and a __getattr__ that raises -------------------------------------------------


def test_meta_model_is_exit_2_naming_the_tensor():
    result = invoke_cli("check", WRAPPED / "meta_model.py")
    assert_user_error(result, "0.weight of Sequential", "meta device", "to_empty")


def test_meta_input_is_refused_naming_it():
    model, _ = user_model()
    with pytest.raises(InputError, match=r"the input inputs\[0\] is on the meta device") as raised:
        check(model, torch.empty(6, 3, device="meta"))
    assert "torch.randn(6, 3)" in str(raised.value)
    with pytest.raises(InputError, match=r"the input x\['a'\] is on the meta device"):
        check(lambda x: x["a"].sin(), {"x": {"a": torch.empty(2, device="meta")}})


def test_getattr_raising_is_exit_2_with_its_cause():
    result = invoke_cli("check", WRAPPED / "raising_getattr.py")
    assert_user_error(
        result,
        "ConfigNet.__getattr__('__deepcopy__') raised KeyError",
        "raising_getattr.py:",
        "AttributeError",
    )


def test_getattr_raising_on_a_callable_object_is_a_user_error():
    class Proxy:
        def __getattr__(self, name):
            raise RuntimeError(f"no {name} here")

        def __call__(self, x):
            return x.sin()

    with pytest.raises(UserCodeError, match="Proxy.__getattr__"):
        check(Proxy(), torch.randn(3, dtype=torch.float64))
