"""Loading a user's file: every target kind, how it was found, sibling imports, inputs,
checkpoints; sys.path and sys.modules left as they were."""

from __future__ import annotations

import inspect
import pickle
import sys

import pytest
import torch
from conftest import BAD, CORRECT, FIXTURES, SAMPLES, TARGETS, PicklePayload, check_file, invoke_cli

from gradcheck_tool import check
from gradcheck_tool.errors import CheckpointError, InputError, LoadError
from gradcheck_tool.loading import inputs_from_shapes, load_target
from gradcheck_tool.prepare import resolve_inputs

# spec (relative to fixtures) -> (kind, resolved name, words in found_by, result names)
TARGET_KINDS = {
    "targets/module_instance.py": (
        "module",
        "model",
        "`model`",
        ["layer.weight", "layer.bias", "input:x"],
    ),
    "targets/module_subclass.py": (
        "module",
        "OnlyNet",
        "only nn.Module subclass",
        ["layer.weight", "layer.bias", "input:x"],
    ),
    "targets/factory_function.py:make_net": (
        "module",
        "make_net",
        "make_net",
        ["0.weight", "0.bias", "2.weight", "2.bias", "input:input"],  # Sequential.forward(input)
    ),
    "targets/build_model.py": (
        "module",
        "build_model",
        "build_model()",
        ["layer.weight", "layer.bias", "input:x"],
    ),
    "targets/function_subclass.py": (
        "function",
        "ScaledTanh",
        "only autograd.Function subclass",
        ["x", "weight"],
    ),
    "targets/plain_function.py:affine_tanh": (
        "callable",
        "affine_tanh",
        "affine_tanh",
        ["x", "w", "b"],
    ),
    "bad/ambiguous.py:NetA": ("module", "NetA", "NetA", ["layer.weight", "layer.bias", "input:x"]),
    "targets/sibling/model_with_helper.py": (
        "module",
        "build_model",
        "build_model()",
        ["0.weight", "0.bias", "1.scale", "input:input"],
    ),
}


def spec_of(relative: str) -> str:
    path, _, name = relative.partition(":")
    return f"{FIXTURES / path}:{name}" if name else str(FIXTURES / path)


@pytest.mark.parametrize("relative", sorted(TARGET_KINDS))
def test_every_target_kind_is_found_and_checked(relative):
    kind, name, how, results = TARGET_KINDS[relative]
    loaded = load_target(spec_of(relative))
    assert loaded.kind == kind
    assert loaded.name == name
    assert how in loaded.found_by
    assert loaded.path.name == relative.split(":")[0].rsplit("/", 1)[-1]
    if kind == "module":
        assert isinstance(loaded.obj, torch.nn.Module)
    elif kind == "function":
        assert inspect.isclass(loaded.obj) and issubclass(loaded.obj, torch.autograd.Function)
    else:
        assert callable(loaded.obj) and not isinstance(loaded.obj, torch.nn.Module)
    report = check_file(spec_of(relative))
    assert report.passed
    assert [r.name for r in report.results] == results


def test_name_given_is_reported_as_such():
    loaded = load_target(spec_of("bad/ambiguous.py:NetB"))
    assert "given" in loaded.found_by.lower()
    assert loaded.obj.layer.out_features == 3


def test_discovery_order_build_model_then_model_then_the_only_subclass():
    # build_model.py has build_model() (width 7), `model` (width 3) and a subclass (width 2)
    assert load_target(str(TARGETS / "build_model.py")).obj.layer.out_features == 7
    # module_instance.py has `model` (width 5) and a subclass (default width 3)
    assert load_target(str(TARGETS / "module_instance.py")).obj.layer.out_features == 5


def test_imported_classes_are_not_candidates():
    # module_subclass.py imports nn.Linear and nn.Tanh; only OnlyNet is defined there.
    loaded = load_target(str(TARGETS / "module_subclass.py"))
    assert type(loaded.obj).__name__ == "OnlyNet"


def test_main_block_of_the_users_file_does_not_run():
    load_target(str(TARGETS / "module_subclass.py"))  # its __main__ block raises


def test_sibling_import_works():
    loaded = load_target(str(TARGETS / "sibling" / "model_with_helper.py"))
    assert type(loaded.obj[1]).__name__ == "ScaledTanhLayer"


def test_example_inputs_kinds():
    tensor = load_target(str(TARGETS / "module_instance.py")).example_inputs
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 4)
    variable = load_target(str(TARGETS / "module_subclass.py")).example_inputs
    assert isinstance(variable, tuple) and variable[0].shape == (3, 4)
    keywords = load_target(str(CORRECT / "dict_io.py")).example_inputs
    assert set(keywords) == {"features", "mask", "temperature"}


def test_loss_fn_is_picked_up_when_present():
    assert callable(load_target(str(SAMPLES / "exercise_net.py")).loss_fn)
    assert load_target(str(TARGETS / "module_instance.py")).loss_fn is None


# --- no side effects on sys.path / sys.modules -------------------------------------------

LOADABLE = [spec_of(r) for r in sorted(TARGET_KINDS)]
FAILING_TO_LOAD = [str(BAD / "import_error.py"), str(BAD / "no_target.py")]


@pytest.mark.parametrize("spec", LOADABLE + FAILING_TO_LOAD)
def test_sys_path_and_sys_modules_unchanged(spec):
    def attempt():
        try:
            load_target(spec)
        except LoadError:
            pass

    attempt()  # warm-up: torch may import its own submodules lazily the first time
    path_before = list(sys.path)
    modules_before = dict(sys.modules)
    attempt()
    assert sys.path == path_before
    assert set(sys.modules) == set(modules_before)
    assert all(sys.modules[k] is v for k, v in modules_before.items())


def test_sibling_helper_does_not_stay_imported():
    load_target(str(TARGETS / "sibling" / "model_with_helper.py"))
    assert "gt_fixture_sibling_layers" not in sys.modules
    assert not any("model_with_helper" in name for name in sys.modules)
    # and loading again still finds it
    load_target(str(TARGETS / "sibling" / "model_with_helper.py"))


def test_syntax_error_restores_sys_path(tmp_path):
    bad = tmp_path / "syntax_error.py"
    bad.write_text("import torch\n\ndef build_model(:\n    pass\n")
    before = list(sys.path)
    with pytest.raises(LoadError) as info:
        load_target(str(bad))
    assert sys.path == before
    assert "syntax_error.py:3" in str(info.value)


# --- bad targets through the API ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, words",
    [
        (str(BAD / "does_not_exist.py"), ["does_not_exist.py"]),
        (str(BAD / "import_error.py"), ["gradtool_fixture_no_such_package", "import_error.py"]),
        (str(BAD / "no_target.py"), ["no_target.py", ":NAME"]),
        (str(BAD / "ambiguous.py"), ["NetA", "NetB", "ambiguous.py:NetA", "ambiguous.py:NetB"]),
        (f"{TARGETS / 'module_instance.py'}:Nope", ["Nope", "module_instance.py"]),
        (str(TARGETS / "factory_function.py"), ["factory_function.py"]),  # functions not picked
    ],
)
def test_bad_targets_raise_load_error_with_a_useful_message(spec, words):
    with pytest.raises(LoadError) as info:
        load_target(spec)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_missing_inputs_message_shows_both_ways():
    loaded = load_target(str(BAD / "no_inputs.py"))
    with pytest.raises(InputError) as info:
        resolve_inputs(loaded, None, "float32")
    assert "example_inputs" in str(info.value) and "--input-shape" in str(info.value)
    args, kwargs = resolve_inputs(loaded, ["2,4"], "float32")
    assert args[0].shape == (2, 4) and kwargs == {}


def test_inputs_from_shapes_are_seeded_and_typed():
    first = inputs_from_shapes(["8,16", "3"], "float64")
    second = inputs_from_shapes(["8,16", "3"], "float64")
    assert [t.shape for t in first] == [(8, 16), (3,)]
    assert all(t.dtype == torch.float64 for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert inputs_from_shapes(["4"], "int64")[0].dtype == torch.int64
    with pytest.raises(InputError):
        inputs_from_shapes(["eight,16"])


# --- checkpoints ----------------------------------------------------------------------------

NET = str(FIXTURES / "checkpoint_net.py")


def trained_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(42)
    shapes = {"layer.weight": (4, 3), "layer.bias": (4,), "head.weight": (2, 4), "head.bias": (2,)}
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_good_checkpoint_is_loaded(tmp_path, wrap):
    state = trained_state()
    path = tmp_path / "ckpt.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    loaded = load_target(NET, weights=str(path))
    for key, value in loaded.obj.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert check_file(NET).passed


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s.pop("head.bias"), ["missing", "head.bias"]),
        (lambda s: s.update({"extra.weight": torch.zeros(2)}), ["unexpected", "extra.weight"]),
        (lambda s: s.update({"layer.weight": torch.zeros(3, 4)}), ["layer.weight", "(3, 4)"]),
    ],
)
def test_mismatched_checkpoint_names_the_keys(tmp_path, edit, words):
    state = trained_state()
    edit(state)
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_target(NET, weights=str(path))
    for word in words:
        assert word in str(info.value)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError) as info:
        load_target(NET, weights=str(path))
    assert "notes.pt" in str(info.value)
    with pytest.raises(CheckpointError):
        load_target(NET, weights=str(tmp_path / "missing.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError):
        load_target(NET, weights=str(tmp_path / "list.pt"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, writer):
    # The payload is live: a plain unpickle would create its marker.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(PicklePayload(str(control))))
    assert control.exists()

    marker = tmp_path / "pwned-marker"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": PicklePayload(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(CheckpointError) as info:
        load_target(NET, weights=str(path))
    assert not marker.exists()
    assert "evil.pt" in str(info.value)


# --- a *args function is a target, not a factory ---------------------------------------------


def test_star_args_function_is_checked_with_input_shapes():
    result = invoke_cli(
        "check", f"{TARGETS / 'star_args.py'}:f", "--input-shape", "2,3", "--input-shape", "3"
    )
    assert result.code == 0, result.output
    assert "xs[0]" in result.stdout and "xs[1]" in result.stdout


# --- sibling imports at call time; sys.path and sys.modules restored -------------------------

SIBLINGS = TARGETS / "sibling_at_call_time"


@pytest.mark.parametrize("file", ["import_in_build_model.py", "import_in_forward.py"])
def test_sibling_import_at_call_time_works_from_another_cwd(tmp_path, monkeypatch, file):
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    assert "_regr_sibling_layers" not in sys.modules
    result = invoke_cli("check", SIBLINGS / file)
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
