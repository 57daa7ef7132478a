"""Benchmark: gradtool check against torch.autograd.gradcheck(fast_mode=True) on real library
models (issue #11), whole process against whole process, side by side in one run.

    python benchmarks/bench_real_models.py              # every model, one seeded bug each
    python benchmarks/bench_real_models.py --only timm_resnet18,hf_gpt2 --bugs 2

Models (benchmarks/models/real/): timm resnet18, mobilenetv3_small_050, convnext_atto,
vit_tiny at 32×32 images; Hugging Face BERT, GPT-2, Llama, T5 from tiny configs with random
weights and their own loss. Needs `timm` and `transformers` (pip install -c <(echo
torch==<your torch>) timm transformers); a model whose library is missing is skipped.

For each model: wall time and peak memory (max RSS) of `python -m gradcheck_tool check FILE`
and of `benchmarks/gradcheck_real.py FILE` (gradcheck(fast_mode=True) over every parameter
and floating input of the same function, written as a user would), their verdicts, and for
each seeded bug (a 0.9× backward in one activation module, spread over the model) whether
each tool detects it and localises it: gradtool's failing tensors against the tensors whose
gradient the bug changes (computed with autograd, with and without the bug), gradcheck's
named input likewise. Goals (issue #11): gradtool ≤ 60 s and ≤ 3× gradcheck per model, peak
memory < 2 GB, every seeded bug detected and localised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REAL = HERE / "models" / "real"
PY = sys.executable
MODELS = (
    "timm_resnet18",
    "timm_mobilenetv3",
    "timm_convnext_atto",
    "timm_vit_tiny",
    "hf_bert",
    "hf_gpt2",
    "hf_llama",
    "hf_t5",
)


Run = tuple[float, float, "int | None", str]


def run(cmd: list[str], timeout: float, env: dict[str, str]) -> Run:
    """(wall seconds, peak RSS in MB, exit code or None on timeout, stdout) of one process."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                wall, code = time.perf_counter() - started, os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, _, usage = os.wait4(proc.pid, 0)
                wall, code = timeout, None
                break
            time.sleep(0.02)
        out.seek(0)
        return wall, usage.ru_maxrss / 1024, code, out.read().decode(errors="replace")


def gradtool(path: Path, timeout: float, env: dict[str, str]) -> tuple[Run, tuple]:
    """`gradtool check FILE` as a process, and what its JSON report says (gradtool_failing)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [PY, "-m", "gradcheck_tool", "check", str(path), "--json", str(report)]
        done = run(cmd, timeout, env)
        return done, gradtool_failing(report) if report.exists() else (set(), 0, 0)


def gradtool_failing(path: Path) -> tuple[set[str], int, int]:
    """Failing tensors, tensors checked along directions alone, and all tensors."""
    results = json.loads(path.read_text())["results"]
    failing = {r["name"] for r in results if r["status"] != "pass"}
    along = sum(1 for r in results if r.get("directions") and not r["checked"])
    return failing, along, len(results)


def library_of(model: str) -> str:
    return "timm" if model.startswith("timm") else "transformers"


def available(library: str) -> bool:
    probe = (
        f"import sys; sys.path.insert(0, {str(REAL)!r}); import _lib; _lib.import_vision(); "
        f"import {library}"
    )
    return subprocess.run([PY, "-c", probe], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated models (default: all)")
    parser.add_argument("--bugs", type=int, default=1, help="seeded bugs per model")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    args = parser.parse_args()
    only = [m for m in args.only.split(",") if m] or list(MODELS)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("GRADTOOL_BENCH_BUG", None)

    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    rows, bug_rows = [], []
    for model in only:
        path = REAL / f"{model}.py"
        if not available(library_of(model)):
            print(f"{model}: skipped ({library_of(model)} is not installed)")
            continue
        gc = run([PY, str(HERE / "gradcheck_real.py"), str(path)], args.timeout, env)
        gt, (failing, along, tensors) = gradtool(path, args.timeout, env)
        rows.append((model, tensors, along, gc, gt, failing))
        print(_speed_row(*rows[-1]), flush=True)
        n_act = _activation_count(path, env)
        for b in range(args.bugs):
            which = str((n_act * (2 * b + 1)) // (2 * args.bugs))
            bug_env = {**env, "GRADTOOL_BENCH_BUG": which}
            truth = subprocess.run(
                [PY, str(HERE / "seeded_affected.py"), str(path), which],
                capture_output=True,
                text=True,
                env=env,
            )
            info = json.loads(truth.stdout.strip().splitlines()[-1])
            affected, changed = set(info["affected"]), set(info["changed"])
            gcb = run([PY, str(HERE / "gradcheck_real.py"), str(path)], args.timeout, bug_env)
            gtb, (bad, _, _) = gradtool(path, args.timeout, bug_env)
            bug_rows.append((model, info["where"], affected, changed, gcb, gtb, bad))
            print(_bug_row(*bug_rows[-1]), flush=True)
    print()
    print(_speed_table(rows))
    print()
    print(_bug_table(bug_rows))


def _activation_count(path: Path, env: dict[str, str]) -> int:
    code = (
        "import sys, importlib.util; sys.path.insert(0, sys.argv[2]); import _lib; "
        "s = importlib.util.spec_from_file_location('m', sys.argv[1]); "
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
        "print(len(_lib.activations(m.build_model())))"
    )
    done = subprocess.run(
        [PY, "-c", code, str(path), str(REAL)], capture_output=True, text=True, env=env
    )
    return int(done.stdout.strip().splitlines()[-1])


def _verdict(code: int | None, stdout: str = "") -> str:
    if code is None:
        return "timeout"
    try:
        line = json.loads(stdout.strip().splitlines()[-1])
        if line.get("error"):
            return "error"
    except (ValueError, IndexError):
        pass
    return {0: "pass", 1: "FAIL"}.get(code, f"exit {code}")


def _speed_row(model, tensors, along, gc, gt, failing) -> str:
    ratio = gt[0] / gc[0] if gc[0] else float("nan")
    return (
        f"{model:<20} {tensors:>4} {along:>5}  {gc[0]:7.1f} s {gc[1]:6.0f} MB "
        f"{_verdict(gc[2], gc[3]):>7}  {gt[0]:7.1f} s {gt[1]:6.0f} MB {_verdict(gt[2]):>7} "
        f"{ratio:5.1f}×"
    )


def _speed_table(rows) -> str:
    head = (
        f"{'model':<20} {'tens':>4} {'dirs':>5}  {'gradcheck(fast_mode=True)':>26}  "
        f"{'gradtool check':>26} {'ratio':>6}"
    )
    return "\n".join([head, *(_speed_row(*r) for r in rows)])


def _bug_row(model, where, affected, changed, gcb, gtb, bad) -> str:
    gc_line = json.loads(gcb[3].strip().splitlines()[-1]) if gcb[3].strip() else {}
    gc_found = gcb[2] == 1 and not gc_line.get("error")
    gc_where = gc_line.get("failing")
    gc_loc = f"names {'an upstream' if gc_where in changed else 'another'} tensor"
    gt_found = gtb[2] == 1 and bool(bad)
    inside, outside = len(bad & affected), len(bad - changed)
    return (
        f"{model:<20} {str(where)[:34]:<34} {len(affected):>4}  "
        f"gradcheck {'detects' if gc_found else 'misses '} ({gc_loc if gc_found else '-'}; "
        f"{gcb[0]:.0f} s)  gradtool {'detects' if gt_found else 'misses '} "
        f"({inside}/{len(affected)} fail, {outside} not upstream; {gtb[0]:.0f} s)"
    )


def _bug_table(rows) -> str:
    head = (
        f"{'model':<20} {'seeded 0.9x backward in':<34} {'aff.':>4}  verdicts (aff.: tensors "
        "whose gradient it changes by > 0.1%)"
    )
    return "\n".join([head, *(_bug_row(*r) for r in rows)])


if __name__ == "__main__":
    main()
