"""gradtool on a CUDA GPU: `check --device cuda`, models that already live on the GPU, and
`flow`/`Monitor` on GPU models. Every test is skipped where CUDA is not available.

Independent references: `torch.autograd.gradcheck` run on the GPU in float64, the same
check/flow on the CPU, gradients read off `p.grad` in the user's own loop, and fresh
processes (CUDA not yet initialized, as in `gradtool check FILE --device cuda`) for the RNG.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import (
    BUGS,
    CORRECT,
    EVALUATION,
    FORWARD_MODE,
    REPO,
    SAMPLES,
    SECOND_ORDER,
    check_file,
    failing,
    run_cli,
    without_timing,
)
from models import (
    GuestNet,
    SeventyPercentDead,
    assert_same,
    batch,
    monitor_mlp,
    sigmoid_mlp,
    snapshot,
)
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import Monitor, check, flow
from gradcheck_tool.engines.flow import run_flow
from gradcheck_tool.loading import load_target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(report) -> bool:
    return report.device.startswith("cuda")


def same(a, b, rel: float = 1e-9) -> bool:
    """Equal, floats up to `rel` (a GPU kernel may round differently from run to run)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= rel * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    return a == b


def rng_states() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all()


def assert_rng_states(before: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    cpu, cuda = rng_states()
    assert torch.equal(cpu, before[0]), "the CPU RNG state changed"
    assert len(cuda) == len(before[1])
    for i, (now, then) in enumerate(zip(cuda, before[1])):
        assert torch.equal(now, then), f"the RNG state of cuda:{i} changed"


# --- fresh processes: CUDA is initialized by gradtool itself ----------------------------------

FRESH = textwrap.dedent(
    """
    import json, math, sys
    import torch
    from torch import nn
    import gradcheck_tool
    from gradcheck_tool.engines.flow import run_flow

    mode = sys.argv[1]
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x = torch.randn(4, 6)
    torch.manual_seed(123)  # CUDA is not initialized: torch queues this seed for its start
    facts = {"initialized_before": torch.cuda.is_initialized()}
    cpu_before = torch.get_rng_state()
    if mode == "check_cpu":
        report = gradcheck_tool.check(model, x)
        facts["initialized_after"] = torch.cuda.is_initialized()
    elif mode == "check_cuda":
        report = gradcheck_tool.check(model, x, device="cuda")
    else:
        first = run_flow(model, (x,), {}, device="cuda").to_dict()
        second = run_flow(model, (x,), {}, device="cuda").to_dict()
        facts["flow_same_twice"] = all(
            math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-9)
            for a, b in zip(first["layers"], second["layers"])
            if a["grad_norm"] is not None
        ) and len(first["layers"]) == len(second["layers"])
        facts["flow_device"] = first["device"]
        report = None
    if report is not None:
        facts.update(
            passed=report.passed,
            nondeterministic=report.nondeterministic,
            device=report.device,
            warnings=list(report.warnings),
        )
    facts["cpu_rng_kept"] = torch.equal(torch.get_rng_state(), cpu_before)
    facts["model_on_cpu"] = all(p.device.type == "cpu" for p in model.parameters())
    # the user's CUDA stream of random numbers is the one their seed gave
    got = torch.rand(5, device="cuda")
    torch.cuda.manual_seed(123)
    want = torch.rand(5, device="cuda")
    facts["cuda_rng_kept"] = torch.equal(got, want)
    print(json.dumps(facts))
    """
)


def fresh(tmp_path: Path, mode: str) -> dict:
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_check_device_cuda_from_a_fresh_process_fixes_dropout_and_restores_the_rng(tmp_path):
    facts = fresh(tmp_path, "check_cuda")
    assert facts["initialized_before"] is False
    assert facts["device"].startswith("cuda")
    assert facts["nondeterministic"] is False, facts["warnings"]
    assert facts["passed"] is True, facts
    assert facts["cpu_rng_kept"] and facts["model_on_cpu"]
    assert facts["cuda_rng_kept"], "the check changed the user's (queued) CUDA seed"


def test_a_cpu_check_leaves_the_lazily_seeded_cuda_rng_alone(tmp_path):
    facts = fresh(tmp_path, "check_cpu")
    assert facts["passed"] is True and facts["device"] == "cpu"
    assert facts["initialized_after"] is False  # a CPU check does not start CUDA
    assert facts["cpu_rng_kept"]
    assert facts["cuda_rng_kept"], "the check replaced the user's queued CUDA seed"


def test_flow_device_cuda_from_a_fresh_process_restores_the_rng(tmp_path):
    facts = fresh(tmp_path, "flow")
    assert facts["flow_device"].startswith("cuda")
    assert facts["flow_same_twice"]
    assert facts["cpu_rng_kept"] and facts["model_on_cpu"]
    assert facts["cuda_rng_kept"], "flow changed the user's (queued) CUDA seed"


def test_cli_device_cuda_exits_0_on_a_good_model_with_dropout():
    # a fresh process: the model is built on the CPU and CUDA starts inside the check
    result = run_cli("check", CORRECT / "dropout_mlp.py", "--device", "cuda", "--json", "-")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["nondeterministic"] is False
    assert data["device"].startswith("cuda")


def test_cli_device_cuda_exits_1_on_a_buggy_function():
    result = run_cli(
        "check", SAMPLES / "custom_activation_buggy.py", "--device", "cuda", "--json", "-"
    )
    assert result.code == 1, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["device"].startswith("cuda")
    assert [r["name"] for r in data["results"] if not r["passed"]] == ["x"]


# --- check: the sample models and seeded bugs on the GPU ------------------------------------

PASSING_SAMPLES = [
    "exercise_net.py",
    "sigmoid_neuron.py",
    "gate.py:gate",
    "custom_activation.py",
    "deep_sigmoid_mlp.py",
    "dead_relu_mlp.py",
    "small_cnn.py",
]


def torch_gradcheck_on_cuda(loaded) -> bool:
    """torch.autograd.gradcheck of the target's output, in float64 on the GPU."""
    inputs = loaded.example_inputs
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    xs = [t.detach().double().cuda().requires_grad_(t.is_floating_point()) for t in inputs]
    if loaded.kind == "module":
        model = loaded.obj
        names = [n for n, _ in model.named_parameters()]
        params = [p.detach().double().cuda().requires_grad_(True) for p in model.parameters()]
        buffers = {n: b.double().cuda() for n, b in model.named_buffers()}

        def f(*leaves):
            values = {**buffers, **dict(zip(names, leaves[len(xs) :]))}
            return torch.func.functional_call(model, values, tuple(leaves[: len(xs)]))

        # nondet_tol: some CUDA backwards (pooling, conv) accumulate with atomics, so two
        # backward passes differ in the last bits and gradcheck's reentrancy test needs room
        return torch.autograd.gradcheck(
            f, [*xs, *params], raise_exception=False, fast_mode=True, nondet_tol=1e-10
        )
    fn = loaded.obj.apply if loaded.kind == "function" else loaded.obj
    return torch.autograd.gradcheck(fn, xs, raise_exception=False, nondet_tol=1e-10)


@pytest.mark.parametrize("sample", PASSING_SAMPLES)
def test_sample_models_pass_on_cuda_as_torch_gradcheck_agrees(sample):
    report = check_file(SAMPLES / sample, device="cuda")
    assert on_gpu(report), report.device
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]
    assert not report.nondeterministic
    assert torch_gradcheck_on_cuda(load_target(str(SAMPLES / sample)))
    # the same tensors, coordinates and verdicts as on the CPU
    cpu = check_file(SAMPLES / sample)
    assert cpu.device == "cpu"
    assert [(r.name, r.checked) for r in report.results] == [
        (r.name, r.checked) for r in cpu.results
    ]


def torch_reference_failures_on_cuda(fn: type, inputs: tuple) -> set[str]:
    """Which inputs torch.autograd.gradcheck (float64, on the GPU, one input at a time)
    rejects."""
    names = list(inspect.signature(fn.forward).parameters)[1:]  # skip ctx
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    bad = set()
    for i, name in enumerate(names):
        xs = [t.detach().double().cuda().requires_grad_(j == i) for j, t in enumerate(inputs)]
        if not torch.autograd.gradcheck(fn.apply, xs, raise_exception=False):
            bad.add(name)
    return bad


@pytest.mark.parametrize(
    "bug, wrong, hint",
    [
        ("bias_averaged", {"bias"}, "batch reduction"),
        ("weight_transposed", {"weight"}, "transposed"),
        ("sign_flipped", {"x"}, "sign"),
    ],
)
def test_seeded_bug_fails_exactly_the_buggy_tensor_on_cuda(bug, wrong, hint):
    spec = f"{BUGS / (bug + '.py')}:Buggy"
    report = check_file(spec, device="cuda")
    assert on_gpu(report)
    assert not report.passed and failing(report) == wrong
    for name in wrong:
        result = report.result(name)
        assert result.rating == "bug" and result.worst
        assert hint in (result.hint or "").lower(), result.hint
    loaded = load_target(spec)
    assert torch_reference_failures_on_cuda(loaded.obj, loaded.example_inputs) == wrong
    assert check_file(f"{BUGS / (bug + '.py')}:Correct", device="cuda").passed


# --- a model that already lives on the GPU ----------------------------------------------------


def make_guest() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = GuestNet().cuda().train()
    model.head.eval()
    x = torch.randn(4, 5, device="cuda")
    return model, x


def test_model_on_cuda_is_checked_there_and_left_as_found():
    model, x = make_guest()
    model(x).sum().backward()  # the user's own .grad must survive
    x_before = x.clone()
    torch.manual_seed(321)
    torch.cuda.manual_seed_all(654)
    torch.rand(3, device="cuda")  # a CUDA generator that has moved on from its seed
    before = snapshot(model)
    assert before["grads"]["layer.weight"] is not None
    rng = rng_states()

    report = check(model, x)  # no device: where the model lives

    assert on_gpu(report), report.device
    assert report.passed and not report.nondeterministic, report.warnings
    assert_same(before, snapshot(model))
    assert_rng_states(rng)
    assert torch.equal(x, x_before) and x.device.type == "cuda" and x.grad is None
    names = {r.name for r in report.results}
    assert "frozen.weight" not in names and {"layer.weight", "norm.weight", "input:x"} <= names
    # the same tensors and coordinates as a check of the same model on the CPU
    cpu_model = GuestNet()
    cpu_model.load_state_dict(model.state_dict())
    cpu_model.train()
    cpu_model.head.eval()
    cpu = check(cpu_model, x.cpu())
    assert cpu.passed and cpu.device == "cpu"
    assert [(r.name, r.checked) for r in report.results] == [
        (r.name, r.checked) for r in cpu.results
    ]


def test_same_cuda_model_twice_gives_the_same_report():
    model, x = make_guest()
    first, second = without_timing(check(model, x)), without_timing(check(model, x))
    assert same(first, second), (first, second)


def test_device_cuda_checks_a_copy_and_leaves_the_cpu_model_on_the_cpu():
    torch.manual_seed(0)
    model = GuestNet().train()
    x = torch.randn(4, 5)
    before = snapshot(model)
    rng = rng_states()
    report = check(model, x, device="cuda")
    assert on_gpu(report) and report.passed, report.failures
    assert_same(before, snapshot(model))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert_rng_states(rng)


@pytest.mark.parametrize("where", ["model_on_cuda", "device_option"])
def test_dropout_on_cuda_is_judged_not_nondeterministic(where):
    loaded = load_target(str(CORRECT / "dropout_mlp.py"))
    model, x = loaded.obj, loaded.example_inputs
    if where == "model_on_cuda":
        report = check(model.cuda(), x.cuda())
    else:
        report = check(model, x, device="cuda")
    assert on_gpu(report)
    assert not report.nondeterministic, report.warnings
    assert report.passed, report.failures
    assert all(r.rating != "n/a" for r in report.results)


def test_dropout_that_ignores_the_global_rng_is_still_called_nondeterministic():
    """The other side: fixing the RNG must not hide a forward that really varies."""

    class PrivateNoise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.gen = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.gen is None:
                self.gen = torch.Generator(device=x.device).manual_seed(1)
            noise = torch.rand(x.shape, generator=self.gen, device=x.device, dtype=x.dtype)
            return self.fc(x * (noise > 0.5))

    torch.manual_seed(0)
    report = check(PrivateNoise().cuda(), torch.randn(6, 4, device="cuda"))
    assert report.nondeterministic and not report.passed


# --- batched (vmap) and serial evaluation on the GPU ------------------------------------------


def test_mlp_on_cuda_is_evaluated_batched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).cuda()
    report = check(model, torch.randn(5, 8, device="cuda"))
    assert on_gpu(report) and report.passed
    assert report.evaluation == "batched" and report.fallback_reason is None
    serial = check(model, torch.randn(5, 8, device="cuda"), batched=False)
    assert serial.evaluation == "serial" and serial.passed


@pytest.mark.parametrize("name, why", [("NanGuard", ".item()"), ("Branchy", "control flow")])
def test_model_vmap_cannot_run_falls_back_to_serial_on_cuda(name, why):
    report = check_file(f"{EVALUATION / 'serial_fallback.py'}:{name}", device="cuda")
    assert on_gpu(report)
    assert report.evaluation == "serial"
    assert report.fallback_reason and "vmap" in report.fallback_reason
    assert why in report.fallback_reason
    assert report.passed, report.failures


def test_seeded_bug_in_a_model_vmap_cannot_run_still_fails_on_cuda():
    report = check_file(f"{EVALUATION / 'serial_fallback.py'}:BuggyNanGuard", device="cuda")
    assert on_gpu(report) and report.evaluation == "serial"
    assert failing(report) == {"fc1.weight", "fc1.bias", "input:x"}
    assert report.result("fc2.weight").passed and report.result("fc2.bias").passed


class ScaledWeightGrad(torch.autograd.Function):
    """y = x·Wᵀ with a backward that returns 1.5× the weight gradient (a seeded bug)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.T

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        return grad_output @ weight, 1.5 * (grad_output.T @ x)


class BigBuggy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(64, 256)
        self.weight = nn.Parameter(torch.randn(128, 256) / 16)
        self.out = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(ScaledWeightGrad.apply(torch.tanh(self.inp(x)), self.weight)))


def test_sampled_check_of_a_larger_model_on_cuda_finds_the_bug_in_the_sampled_tensor():
    model = BigBuggy().cuda()  # 50k parameters: sampled coordinates + a random direction
    x = torch.randn(8, 64, device="cuda")
    report = check(model, x)
    assert on_gpu(report)
    w = report.result("weight")
    assert w.checked < w.numel and w.direction_error is not None
    assert failing(report) == {"weight"}
    assert w.hint and "constant factor" in w.hint and "1.5" in w.hint, w.hint


# --- second order, forward mode and float32 on the GPU ----------------------------------------


@pytest.mark.parametrize("name, ok", [("Correct", True), ("Detached", False)])
def test_second_order_on_cuda(name, ok):
    report = check_file(
        f"{SECOND_ORDER / 'double_backward.py'}:{name}", device="cuda", second_order=True
    )
    assert on_gpu(report)
    assert report.passed is ok
    first = [r for r in report.results if "(2nd order)" not in r.name]
    assert first and all(r.passed for r in first)  # the first derivatives are right in both


@pytest.mark.parametrize("name, ok", [("Correct", True), ("WrongJvp", False)])
def test_forward_mode_on_cuda(name, ok):
    report = check_file(
        f"{FORWARD_MODE / 'forward_mode.py'}:{name}", device="cuda", forward_mode=True
    )
    assert on_gpu(report) and report.passed is ok


def tf32_settings() -> tuple:
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


def test_float32_check_on_cuda_is_not_spoiled_by_tf32_and_restores_the_settings():
    """TF32 rounds float32 operands to 10 mantissa bits: finite differences at eps=1e-3
    would see only noise. The check turns it off while it runs and restores it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.Tanh(),
        nn.Linear(16, 3),
    ).cuda()  # fmt: skip
    x = torch.randn(2, 2, 8, 8, device="cuda")
    previous = tf32_settings()
    try:
        torch.set_float32_matmul_precision("high")  # the user allows TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # and TF32 convolutions (cuDNN's default)
        before = tf32_settings()
        report = check(model, x, dtype="float32")
        assert tf32_settings() == before
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]
    assert on_gpu(report) and report.dtype == "float32"
    assert report.passed, [(r.name, r.rel_error) for r in report.results]


# --- flow and Monitor on the GPU ----------------------------------------------------------------


class LogOfNegatives(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.log(self.fc1(x)))


def assert_same_rows(gpu, cpu, rel: float = 1e-3) -> None:
    assert [r.name for r in gpu.layers] == [r.name for r in cpu.layers]
    for g, c in zip(gpu.layers, cpu.layers):
        for field in ("grad_norm", "weight_norm", "max_abs_grad"):
            a, b = getattr(g, field, None), getattr(c, field, None)
            if a is None or b is None:
                assert a is None and b is None, (g.name, field, a, b)
            else:
                assert a == pytest.approx(b, rel=rel, abs=1e-30), (g.name, field)
        assert g.dead_fraction == c.dead_fraction, g.name  # whole units: no rounding
        if g.saturated_fraction is None or c.saturated_fraction is None:
            assert g.saturated_fraction is c.saturated_fraction, g.name
        else:  # single outputs may sit on the saturation margin
            assert g.saturated_fraction == pytest.approx(c.saturated_fraction, abs=0.01), g.name


def test_flow_on_a_cuda_model_matches_the_cpu_and_flags_vanishing():
    x = batch(64, 32)
    cpu = flow(sigmoid_mlp(), x)
    model = sigmoid_mlp().cuda()
    gpu = flow(model, x.cuda())
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    assert_same_rows(gpu, cpu)
    (finding,) = gpu.findings_of("vanishing")
    assert finding.layer == "0"
    assert gpu.kinds == cpu.kinds
    assert next(model.parameters()).device.type == "cuda"
    assert all(p.grad is None for p in model.parameters())


def test_flow_on_cuda_finds_dead_relus_and_the_first_nan():
    dead = flow(SeventyPercentDead().cuda(), batch(32, 16).cuda())
    assert "dead_relu" in dead.kinds
    assert_same_rows(dead, flow(SeventyPercentDead(), batch(32, 16)))
    nan = flow(LogOfNegatives().cuda(), batch(8, 8).cuda())
    (finding,) = nan.findings_of("nan")
    assert finding.where == "forward"


def test_flow_moves_cpu_inputs_to_a_cuda_model_and_device_option_moves_a_cpu_model():
    model = sigmoid_mlp(depth=3).cuda()
    report = flow(model, batch(8, 32))  # inputs made on the CPU, as example_inputs() often are
    assert report.device.startswith("cuda")
    cpu_model = sigmoid_mlp(depth=3)
    moved = run_flow(cpu_model, (batch(8, 32),), {}, device="cuda")
    assert moved.device.startswith("cuda")
    assert all(p.device.type == "cpu" for p in cpu_model.parameters())
    assert_same_rows(moved, report)


def test_flow_with_dropout_on_cuda_is_reproducible_and_leaves_the_rng_as_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4)).cuda()
    x = batch(16, 8).cuda()
    torch.rand(2, device="cuda")
    rng = rng_states()
    first = flow(model, x, steps=3, optimizer="adam")
    assert_rng_states(rng)
    second = flow(model, x, steps=3, optimizer="adam")
    assert same(without_timing(first), without_timing(second))
    assert first.row("3").grad_norm > 0


def train(model: nn.Module, steps: int, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
    return grads


def test_monitor_on_a_cuda_model_records_the_loops_own_gradients_and_matches_the_cpu():
    x, y = batch(32, 16), torch.arange(32) % 4
    reports, loops = {}, {}
    for device in ("cpu", "cuda"):
        model = monitor_mlp().to(device)
        with Monitor(model, every=2) as mon:
            loops[device] = train(model, 6, x.to(device), y.to(device))
        reports[device] = mon.report()
    gpu, cpu = reports["cuda"], reports["cpu"]
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu"
    assert [h["step"] for h in gpu["history"]] == [1, 3, 5]
    for h_gpu, h_cpu in zip(gpu["history"], cpu["history"]):
        g = loops["cuda"][h_gpu["step"] - 1]
        expected = torch.sqrt(g["2.weight"].pow(2).sum() + g["2.bias"].pow(2).sum()).item()
        assert h_gpu["rows"]["2"]["grad_norm"] == pytest.approx(expected, rel=1e-5)
        for name, row in h_gpu["rows"].items():
            other = h_cpu["rows"][name]
            if row.get("grad_norm") is not None:
                assert row["grad_norm"] == pytest.approx(other["grad_norm"], rel=1e-3), name
            assert row.get("dead_fraction") == other.get("dead_fraction"), name
    assert {f["kind"] for f in gpu["findings"]} == {f["kind"] for f in cpu["findings"]}


def test_monitor_adds_no_gpu_synchronization_to_the_loop():
    """Recorded steps keep their numbers on the device: the monitored loop makes no more
    synchronizing CUDA calls than the plain loop (torch's sync debug mode counts them)."""
    x, y = batch(32, 16).cuda(), (torch.arange(32) % 4).cuda()

    def syncs(monitored: bool) -> int:
        model = monitor_mlp().cuda()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                if monitored:
                    with Monitor(model, every=1):
                        train(model, 4, x, y)
                else:
                    train(model, 4, x, y)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(False)  # first calls in a process may synchronize once (lazy initialization)
    plain = syncs(False)
    assert syncs(True) <= plain


def test_monitor_on_cuda_finds_dead_relus_and_a_nan():
    model = SeventyPercentDead().cuda()
    with Monitor(model) as mon:
        F.cross_entropy(
            model(batch(32, 16).cuda()), torch.zeros(32, dtype=torch.long).cuda()
        ).backward()
    assert "dead_relu" in {f["kind"] for f in mon.report()["findings"]}
    model = LogOfNegatives().cuda()
    with Monitor(model, every=1) as mon:
        model(batch(8, 8).cuda()).sum().backward()
    assert "nan" in {f["kind"] for f in mon.report()["findings"]}
