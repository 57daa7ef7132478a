"""Snapshot what gradtool says about every sample model and test fixture, to compare two
versions of the code: a refactoring must leave every report as it was.

    python scripts/report_snapshot.py OUT_DIR            # write one JSON file per run
    python scripts/report_snapshot.py --compare A B      # list the runs that differ

Run it from the checkout's root, with that checkout's package importable (an editable
install of another checkout takes precedence over PYTHONPATH): for the code before a change,
a `git worktree` of the older commit with its own venv.

Each run goes through the command line in-process (typer's CliRunner) and records the exit
code, the printed text and the JSON report, with timings removed (they differ run to run).
Files with several targets are run once per target; torch's global RNG is seeded before
each run. (A model of 4,096-20,000 parameters is checked in full or sampled depending on how
long one forward takes: on a loaded machine such a report can change between runs.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path.cwd()  # run from the checkout whose files are the targets
FOLDERS = ("sample_models", "tests/fixtures")
# flag sets for the files written to exercise them (everything else: the defaults)
EXTRA = {
    "double_backward": [["--second-order"]],
    "double_backward_model": [["--second-order"]],
    "forward_mode": [["--forward-mode"]],
    "step_size": [["--sweep"], ["--eps", "1e-9"]],
    "hint_patterns": [["--dtype", "float32"]],
    "relu_at_zero": [["--serial"]],
}
TIMING = re.compile(r"\d+\.\d+s\b")
# Python warnings name the file and line they were raised at
WARNING_AT = re.compile(r"^\S+\.py:\d+: (\w+Warning)", re.M)


def targets() -> list[tuple[str, str]]:
    """(run id, TARGET) for every file; a file with several candidates once per candidate."""
    from gradcheck_tool.loading import LoadError, load_target

    out = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            try:
                load_target(rel)
                out.append((rel, rel))
            except LoadError as exc:
                names = re.findall(r":(\w+)", exc.hint or "") if "several" in str(exc) else []
                out.extend((f"{rel}:{n}", f"{rel}:{n}") for n in names) or out.append((rel, rel))
            except Exception:  # noqa: BLE001 - a broken fixture is recorded by its run
                out.append((rel, rel))
    return out


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def run(args: list[str]) -> dict:
    import random

    import torch
    from typer.testing import CliRunner

    from gradcheck_tool.cli import app

    # models built from the global RNG get the same weights whatever ran before
    torch.manual_seed(0)
    random.seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        result = CliRunner().invoke(
            app, [*args, "--json", str(report)], env={"COLUMNS": "100", "NO_COLOR": "1"}
        )
        data = json.loads(report.read_text()) if report.exists() else None
    text = WARNING_AT.sub(r"<file>: \1", TIMING.sub("<t>", result.output))
    return {"args": args, "exit_code": result.exit_code, "output": text, "json": strip(data)}


def snapshot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for run_id, target in targets():
        stem = Path(target.split(":")[0]).stem
        runs = [["check", target]]
        runs += [["check", target, *flags] for flags in EXTRA.get(stem, [])]
        if "fixtures/bad" not in target:
            runs += [["flow", target], ["flow", target, "--steps", "3", "--optimizer", "adam"]]
        for args in runs:
            name = re.sub(r"[^\w.-]+", "_", " ".join([run_id, *args[2:], args[0]]))
            (out / f"{name}.json").write_text(json.dumps(run(args), indent=1, sort_keys=True))
            print(name, flush=True)


def compare(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.glob("*.json")} | {p.name for p in b.glob("*.json")})
    differ = 0
    for name in names:
        left, right = a / name, b / name
        if not (left.exists() and right.exists()):
            print(f"only in {'B' if right.exists() else 'A'}: {name}")
            differ += 1
        elif json.loads(left.read_text()) != json.loads(right.read_text()):
            print(f"differs: {name}")
            differ += 1
    print(f"{len(names)} runs, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--compare", action="store_true")
    ns = parser.parse_args()
    sys.exit(compare(*ns.dirs) if ns.compare else snapshot(ns.dirs[0]))
