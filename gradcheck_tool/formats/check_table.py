"""The check report as a table: one row per tensor, the worst entries of failures, sweeps and
the verdict line. Pure functions of the result dataclasses; user strings go in as `Text`,
never as markup."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import CheckReport, TensorResult
from ..stopping import STOPPED_BY
from ._runs import number

RATING_STYLE = {
    "excellent": "green",
    "acceptable": "green",
    "suspicious": "yellow",
    "bug": "bold red",
    "n/a": "dim",
}


# a relative error as every format writes it (nan, inf, 1.23e-05; "-" for none)
format_error = number


RESULT_STYLE = {
    "pass": ("pass", "green"),
    "fail": ("FAIL", "bold red"),
    "inconclusive": ("inconclusive", "yellow"),
    "not judged": ("not judged", "yellow"),
}


def _shape(result: TensorResult) -> str:
    shape = result.shape[:-1] if result.complex else result.shape  # (..., 2): (re, im)
    text = "×".join(str(s) for s in shape) if shape else "scalar"
    return f"{text} complex" if result.complex else text


def _checked(result: TensorResult) -> str:
    """Coordinates compared, of how many; or the random directions alone (Note [directions])."""
    if result.directions and not result.checked:
        return f"{result.directions} dirs"
    return f"{result.checked}/{result.numel}"


def check_table(report: CheckReport) -> Table:
    show_kinks = any(r.kinks for r in report.results)
    show_note = any(r.note or r.hint for r in report.results)
    table = Table(pad_edge=False)
    table.add_column("tensor", overflow="fold")
    table.add_column("shape")
    table.add_column("checked", justify="right")
    table.add_column("rel. error", justify="right")
    table.add_column("rating")
    if show_kinks:
        table.add_column("kinks", justify="right")
    table.add_column("result")
    if show_note:
        table.add_column("note", overflow="fold", max_width=64)
    for r in report.results:
        style = RATING_STYLE.get(r.rating, "")
        # user-derived strings go in as Text: a name like "w [penalty]" is not rich markup
        row: list = [
            Text(r.name),
            _shape(r),
            _checked(r),
            Text(format_error(r.rel_error), style=style),
            Text(r.rating, style=style),
        ]
        if show_kinks:
            row.append(str(r.kinks) if r.kinks else "")
        row.append(Text(*RESULT_STYLE[r.status]))
        if show_note:
            note = Text(r.note)
            if r.hint:
                note.append(("; " if r.note else "") + "hint: " + r.hint, style="bold")
            row.append(note)
        table.add_row(*row)
    return table


def verdict_line(report: CheckReport) -> Text:
    n = len(report.results)
    failures = report.failures
    if report.interrupted:
        by = STOPPED_BY.get(report.interrupted, report.interrupted)
        if not n:
            return Text(f"INTERRUPTED: no tensor checked before {by}", style="bold yellow")
        return Text(f"INTERRUPTED: partial report, {n} result(s) before {by}", style="bold yellow")
    if report.nondeterministic:
        return Text(
            "NOT JUDGED: the forward is nondeterministic (see the warning above)",
            style="bold yellow",
        )
    unresolved = report.inconclusive
    if failures:
        also = f"; {len(unresolved)} inconclusive" if unresolved else ""
        return Text(
            f"FAIL: {len(failures)} of {n} gradient(s) wrong: {_names(failures)}{also}",
            style="bold red",
        )
    if unresolved:
        rest = "; the rest pass" if len(unresolved) < n else ""
        return Text(
            f"INCONCLUSIVE: {len(unresolved)} of {n} gradient(s) could not be resolved by "
            f"finite differences (neither verified nor refuted): {_names(unresolved)}{rest}",
            style="bold yellow",
        )
    worst = max((r.rel_error for r in report.results), default=0.0)
    kinks = sum(r.kinks for r in report.results)
    how = [
        f"{count} {what}"
        for count, what in (
            (sum(r.zero for r in report.results), "zero"),
            (
                sum(r.judged_eps is not None and r.verified_to is None for r in report.results),
                "at a larger step",
            ),
            (
                sum(r.verified_to is not None for r in report.results),
                "only to a coarser precision (see notes)",
            ),
        )
        if count
    ]
    extra = (f", {kinks} kink(s) skipped" if kinks else "") + (f"; {', '.join(how)}" if how else "")
    return Text(
        f"PASS: all {n} gradient(s) verified against finite differences (worst relative "
        f"error {format_error(worst)}, tolerance {report.tolerance:g}{extra})",
        style="bold green",
    )


def _names(results: tuple[TensorResult, ...]) -> str:
    return ", ".join(r.name for r in results[:6]) + (" …" if len(results) > 6 else "")


def worst_table(result: TensorResult) -> Table:
    table = Table(
        title=Text(f"worst entries of {result.name}"), title_justify="left", pad_edge=False
    )
    for col in ("index", "analytic", "numeric", "abs. error"):
        table.add_column(col, justify="right")
    for w in result.worst:
        table.add_row(
            str(list(w.index)), f"{w.analytic:.6g}", f"{w.numeric:.6g}", f"{w.abs_error:.3g}"
        )
    return table


def sweep_line(result: TensorResult) -> Text:
    steps = "  ".join(
        f"{p.eps:.0e}: {'—' if math.isnan(p.rel_error) else format_error(p.rel_error)}"
        for p in result.sweep
    )
    return Text(f"step-size sweep of {result.name}: {steps}\n  → {result.sweep_verdict}")


def render_check(report: CheckReport, console: Console) -> None:
    console.print(Text(f"target: {report.target}  (found by: {report.found_by})"))
    where = "" if report.device == "cpu" else f" on {report.device}"
    console.print(
        f"checked in {report.dtype}{where}, eps={report.eps:g}, tolerance={report.tolerance:g}, "
        f"{report.evaluation} evaluation, {report.seconds:.2f}s"
    )
    if report.default_dtype:
        console.print(
            Text(f"torch's default dtype was {report.default_dtype} while your code ran", "dim")
        )
    if report.fallback_reason:
        console.print(Text(f"evaluated one point at a time: {report.fallback_reason}", style="dim"))
    for w in report.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    along = max((r.directions for r in report.results), default=0)
    if along:
        console.print(
            Text(
                f"larger tensors checked along {along} random directions each (every entry "
                "at once); coordinates sampled where they disagree",
                style="dim",
            )
        )
    console.print(check_table(report))
    for r in report.results:
        if r.sweep:
            console.print(sweep_line(r))
    for r in report.failures:
        if r.worst:
            console.print(worst_table(r))
    for u in report.unchecked:
        console.print(Text(f"not checked: {u.name} ({u.kind}): {u.reason}", style="dim"))
    if report.left_out_outputs:
        outputs = ", ".join(report.left_out_outputs)
        console.print(
            Text(
                f"left out of the loss: {outputs} (autograd marks them non-differentiable, "
                "as torch.autograd.gradcheck leaves them out)",
                style="dim",
            )
        )
    console.print(verdict_line(report))
