"""Judging one tensor for one loss term from what was measured at its coordinates.

`TensorJudge.result()` runs the steps in order: non-finite values, the verdict (the
coordinates compared, and the random direction), a zero analytic gradient, the step-size
sweep (and the verdict again at a step that the sweep found better), and for a failure the
diagnosis (worst entries, a hint). Each step may propose a note; `choose_note` picks one.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ...checkables import Checkable
from ...results import SweepPoint, TensorResult, WorstEntry, rating_for
from .analytic import LazyEvidence
from .config import CheckOptions
from .evaluate import Evaluator
from .hints import bug_hint
from .numerics import (
    SWEEP_STEPS,
    UNRESOLVED_SWEEP,
    Comparison,
    Refine,
    band_scale,
    classify_sweep,
    compare,
    resolved_error,
    rounding_noise,
)
from .rows import Evaluations
from .sampling import Measured

WORST_SHOWN = 5
SWEEP_COORDS = 64  # coordinates re-evaluated at each step of a sweep


class Note(enum.IntEnum):
    """What a tensor's note may say, in precedence: the first candidate present is shown.
    (The first four never arise together: each needs a different verdict.)"""

    ZERO_GRADIENT = 1  # unused / no gradient (passed), or the gradient never reaches it
    INCONCLUSIVE = 2  # no step tried resolved the gradient above rounding noise
    RESOLVED_AT_STEP = 3  # judged at a larger step, where rounding noise is small enough
    PASSES_AT_STEP = 4  # failed at eps; passes at the step the sweep found
    KINKS = 5  # coordinates skipped as kinks
    SAMPLED = 6  # only a sample of the coordinates was checked


# Note [resolution]
# Finite differences see a gradient only above their rounding noise ≈ ε·S/h (losses.py). A
# comparison resolves the tolerance when that noise, over the gradient's size, is below it:
# `floor` = ‖noise‖ / (‖a‖ + ‖n‖) ≤ tol. An unresolved tensor is judged again at larger
# steps (noise shrinks as 1/h; truncation grows as h², which compare() refines), powers of
# ten up to LARGEST_STEP, until one resolves it: there it passes or fails (a fail only in the
# bug band, above 1e-3: a smaller mismatch at a large step may be truncation). Where no step
# resolves the tolerance, a step whose floor is below 1e-3 can still verify the gradient to
# that precision (a pass, "verified only to ≈…") or show a mismatch beyond its noise (a
# fail); with none, the tensor is *inconclusive*: neither verified nor refuted, never passed.
LARGEST_STEP = 1e-2
ANALYTIC_ULPS = 1024.0  # autograd's own rounding, in ulps of the largest gradient (engine)
ROUNDING_ULPS = 64.0  # ... in ulps of the loss's summands (TensorJudge.rounding_floor)


def choose_note(candidates: Mapping[Note, str], direction: str = "") -> str:
    """The note a tensor's result shows: the non-empty candidate of highest precedence, and
    after it ("; ") what the random direction says where it disagrees with coordinates that
    agree (`direction`, empty otherwise)."""
    first = next((candidates[kind] for kind in sorted(candidates) if candidates[kind]), "")
    return "; ".join(text for text in (first, direction) if text)


@dataclass(frozen=True)
class _Verdict:
    """Analytic vs numeric for one tensor at one step: the coordinates, and the direction."""

    comparison: Comparison
    direction_error: float | None  # None without a direction (every coordinate checked)
    rel_error: float
    passed: bool
    step: float
    floor: float  # the smallest relative error rounding noise lets it see (Note [resolution])
    raw: float  # ‖a − n‖ / (‖a‖ + ‖n‖), without the resolution in the denominator
    direction_num: float | None = None  # the numeric derivative along the direction

    def resolved(self, tol: float) -> bool:
        return self.floor <= tol


def _noise_like(seen: list[torch.Tensor]) -> bool:
    """Numeric gradients at steps 100× apart that shrink ≥30× per step, each pointing
    elsewhere (|cos| < 0.9): rounding noise, which a real gradient is not."""
    for small, large in zip(seen, seen[1:]):
        small_size, large_size = float(small.norm()), float(large.norm())
        if large_size * 30 > small_size:
            return False
        cos = float(small @ large) / (small_size * large_size) if large_size else 0.0
        if abs(cos) >= 0.9:
            return False
    return True


@dataclass(frozen=True)
class _Sweep:
    points: tuple[SweepPoint, ...] = ()
    verdict: str | None = None
    better_step: float | None = None  # a step at which the mismatch goes away


class TensorJudge:
    """The verdict for one checkable tensor and one loss term `k`, from its measured rows."""

    def __init__(
        self,
        c: Checkable,
        label: str,
        analytic: torch.Tensor | None,
        measured: Measured,
        k: int,
        *,
        f0: float,
        rounding: float,
        floor: float,
        options: CheckOptions,
        evaluator: Evaluator,
        evidence: LazyEvidence,
        batch_size: int | None,
        analytic_floor: float = 0.0,
        loss_scale: float = 0.0,
        not_reentrant: float | None = None,
    ) -> None:
        self.c, self.label, self.k = c, label, k
        self.not_reentrant = not_reentrant  # how much a second backward changed its gradient
        self.analytic_floor = analytic_floor  # autograd's rounding: below it, a gradient is 0
        # ... and the rounding of the loss itself: moving this tensor by its own size moves a
        # gradient below this by less than ROUNDING_ULPS ulps of the loss's summands. Only
        # in float64: at float32's precision a real gradient of a loss on a large offset
        # is that small (tests/fixtures/verdicts/float32_offset.py)
        size = float(c.value.abs().max()) if c.value.numel() else 0.0
        self.rounding_floor = 0.0
        if evaluator.problem.precision == torch.float64:
            ulp = torch.finfo(torch.float64).eps
            self.rounding_floor = ROUNDING_ULPS * ulp * loss_scale / max(size, 1.0)
        # rounding noise of f, at least the nondeterminism two evaluations at θ showed
        self.f0, self.rounding, self.options = f0, max(rounding, floor), options
        self.noise_floor = floor
        self.evaluator, self.evidence, self.batch_size = evaluator, evidence, batch_size
        self.h, self.tol = options.eps, options.tolerance
        self.shape = tuple(c.value.shape)
        self.numel = c.value.numel()
        self.coords = measured.coords
        self.m = measured.coords.numel()
        self.plus, self.minus = self._term(measured.plus), self._term(measured.minus)
        self.direction = measured.direction  # (d, loss at θ + h·d, at θ − h·d) or None
        self.unused = analytic is None
        self.a_flat = (
            torch.zeros(self.numel, dtype=torch.float64)
            if analytic is None
            else analytic.reshape(-1).double().cpu()
        )

    def result(self) -> TensorResult:
        """The steps in order; each may propose a note, and `choose_note` picks one."""
        failed = self.nonfinite_analytic() or self.nonfinite_numeric() or self.reentrancy()
        if failed is not None:
            return failed
        notes: dict[Note, str] = {}
        verdict = self.verdict(self.h, self.plus, self.minus, self.direction)
        reaches, inconclusive = True, False
        verified_to = None  # a pass to a precision coarser than the tolerance
        largest = float(self.a_flat.abs().max())
        if self.unused or largest <= self.analytic_floor:
            # none, zero, or only autograd's own rounding (a bias before train-mode
            # BatchNorm, whose true gradient is 0)
            verdict, notes[Note.ZERO_GRADIENT], reaches = self.zero_gradient(verdict, largest)
        elif not verdict.resolved(self.tol):
            size = float(verdict.comparison.a.norm())
            verdict, how = self.on_the_ladder(verdict)
            if largest <= self.rounding_floor and (
                how == "unresolved" or (not verdict.passed and self.flat(verdict))
            ):
                # a true zero gradient within resolution, which autograd computes as rounding
                # (e.g. corrcoef of two numbers, ±1 wherever it is defined): the loss moves
                # at no step, or never above its rounding
                how = "zero"
                notes[Note.ZERO_GRADIENT] = (
                    f"{self._zero_note(largest)}: the loss moves only by rounding at every "
                    f"step up to eps={LARGEST_STEP:g}"
                )
                verdict = dataclasses.replace(verdict, rel_error=0.0, passed=True)
            if how == "resolved":
                notes[Note.RESOLVED_AT_STEP] = (
                    f"judged at eps={verdict.step:g}: at eps={self.h:g} rounding noise hides "
                    f"a gradient this small (≈{size:.2g})"
                )
            elif how == "coarse":
                verified_to = verdict.floor
                notes[Note.RESOLVED_AT_STEP] = (
                    f"verified only to ≈{verdict.floor:.0e} (at eps={verdict.step:g}): for a "
                    f"gradient this small (≈{size:.2g}) rounding noise at smaller steps and "
                    "truncation at larger ones allow no better"
                )
            elif how == "unresolved":
                inconclusive = True
                notes[Note.INCONCLUSIVE] = (
                    f"inconclusive: finite differences can't resolve this gradient "
                    f"(≈{size:.2g}) above rounding noise at eps={self.h:g} to "
                    f"{LARGEST_STEP:g}: neither verified nor refuted"
                )
        sweep = _Sweep()
        if (self.options.sweep or not verdict.passed) and reaches and not inconclusive:
            sweep = self.sweep(verdict.comparison)
            if not verdict.passed and sweep.better_step is not None:
                # the mismatch may be the step's, not the gradient's: judge every checked
                # coordinate (and the direction) again at that step before saying so — the
                # sweep's best step, then the passing step nearest the default (a best error
                # far out can be noise that happened to cancel)
                for step in _passing_steps(sweep, self.tol, self.h)[:MORE_STEPS]:
                    again = self.verdict_at_step(step)
                    if again.passed and again.resolved(self.tol):
                        verdict = again
                        notes[Note.PASSES_AT_STEP] = f"passes at eps={step:g} ({sweep.verdict})"
                        break
        if not verdict.passed and sweep.verdict == UNRESOLVED_SWEEP:
            # a mismatch that no step of the sweep can see above rounding noise is noise
            # that our estimate of it missed (e.g. BatchNorm amplifying a large mean's
            # rounding): neither verified nor refuted
            inconclusive = True
            notes[Note.INCONCLUSIVE] = (
                f"inconclusive: the mismatch at eps={verdict.step:g} is below finite-"
                "difference resolution at every step of the sweep (rounding noise larger "
                "than estimated): neither verified nor refuted"
            )
        comp = verdict.comparison
        kinks = int(comp.kink.sum())
        if kinks:
            notes[Note.KINKS] = (
                f"{kinks} kink{'s' if kinks > 1 else ''} skipped (not differentiable there)"
            )
        if self.m < self.numel:
            notes[Note.SAMPLED] = (
                f"sampled {self.m} of {self.numel} coordinates + a random-direction check"
            )
        worst: tuple[WorstEntry, ...] = ()
        direction_note, hint = "", None
        if not verdict.passed and not inconclusive:
            worst = self.worst_entries(comp)
            direction_note = self.direction_disagrees(verdict)
            hint = self.hint(comp)
        return TensorResult(
            **self._identity(),
            rel_error=verdict.rel_error,
            rating=rating_for(
                verdict.rel_error, scale=band_scale(self.evaluator.problem.precision)
            ),
            passed=verdict.passed and not inconclusive,
            note=choose_note(notes, direction_note),
            worst=worst,
            kinks=kinks,
            hint=hint,
            direction_error=verdict.direction_error,
            sweep=sweep.points,
            sweep_verdict=sweep.verdict,
            inconclusive=inconclusive,
            complex=self.c.complex,
            judged_eps=verdict.step if verdict.step != self.h else None,
            verified_to=verified_to if verdict.passed else None,
            zero=Note.ZERO_GRADIENT in notes and verdict.passed,
        )

    def by_directions(
        self, directions: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[TensorResult | None, int]:
        """Note [directions]: a pass when every random direction agrees to the tolerance,
        resolved above rounding noise; else None (the tensor is measured again at a sample
        of coordinates). With the index of the direction that disagrees most."""
        d, dp, dm = directions
        along = d.reshape(d.shape[0], -1).double().cpu() @ self.a_flat
        fp, fm = self._term(dp), self._term(dm)
        num = (fp - fm) / (2 * self.h)
        errors = (along - num).abs() / (along.abs() + num.abs()).clamp_min(1e-300)
        worst = int(torch.nan_to_num(errors, nan=math.inf).argmax())
        largest = float(self.a_flat.abs().max()) if self.numel else 0.0
        verified_to = None
        clean = (
            self.not_reentrant is None
            and bool(torch.isfinite(self.a_flat).all())
            and bool(torch.isfinite(num).all())
        )
        if not clean:
            return None, worst
        zero = self.unused or largest <= self.analytic_floor
        if zero:
            # none, zero or only rounding, and the loss does not move along any direction
            # either: a zero gradient (Note [directions]); else the coordinates tell more
            comp = compare(along, fp, fm, self.f0, self.h, self.rounding, self.tol)
            if float(num.norm()) > comp.tiny * self.tol:
                return None, worst
            rel, note = 0.0, self._zero_note(largest)
        else:
            # each direction's check off its kink, at most once (compare() asks for the
            # kinks it can't excuse, the check below for all)
            off_kink = functools.cache(
                lambda j: self.evidence.direction_agrees_off_kink(
                    self.c, d[j] / d[j].norm(), self.k, self.h, self.rounding
                )
            )
            comp = self._directions_compared(d, along, fp, fm, self.h, self.rounding, off_kink)
            step = self.h
            tried = [(step, comp)]
            while comp.rel <= self.tol < _floor(comp) and step < LARGEST_STEP:
                # unresolved, nothing seen: a larger step, the power of ten at which the
                # noise (∝ 1/step) should resolve the tolerance (Note [resolution])
                jump = max(10.0, 10 ** math.ceil(math.log10(2 * _floor(comp) / self.tol)))
                larger = min(step * jump, LARGEST_STEP)
                if any(math.isclose(larger, s) for s, _ in tried):
                    break  # back from a step between: the one above was tried
                step = larger
                comp = self._directions_at(d, along, step, off_kink)
                tried.append((step, comp))
                if comp.rel > self.tol and jump > 10:  # truncation, perhaps: a step between
                    between = step / 10
                    tried.append((between, self._directions_at(d, along, between, off_kink)))
                    step, comp = min(tried, key=lambda sc: (sc[1].rel > self.tol, _floor(sc[1])))
            size = float(self.a_flat.norm())
            first = tried[0][1]
            if (
                not all(off_kink(j) for j in comp.kink.nonzero().reshape(-1).tolist())
                or first.rel > self.tol >= _floor(first)
                or any(
                    _floor(c) <= self.tol and _raw(c) > max(BUG_BAND, 10 * self.tol)
                    for _, c in tried
                )
            ):
                # a direction excused as crossing a kink without the backward checked off it
                # (for one coordinate, an analytic value between the one-sided derivatives
                # is a subgradient; a direction crosses every kink of the tensor at once,
                # and that gap can hide a wrong gradient), a mismatch resolved at the
                # default step, or one in the bug band at any step: for the coordinates (a
                # small resolved mismatch at a larger step may be truncation, as on the
                # coordinates' ladder)
                return None, worst
            if comp.rel <= self.tol and _floor(comp) <= self.tol:
                rel, note = comp.rel, ""
                if step != self.h:
                    note = (
                        f"judged at eps={step:g}: at eps={self.h:g} rounding noise hides a "
                        f"gradient this small (≈{size:.2g})"
                    )
            else:
                # as on the coordinates' ladder: agreement to a precision coarser than the
                # tolerance but fine enough to tell a bug
                seen = [(s, c) for s, c in tried if _floor(c) <= max(BUG_BAND, self.tol)]
                agree = [
                    (s, c)
                    for s, c in seen
                    if _raw(c) <= self.tol or self.tol < _floor(c) and _raw(c) <= 2 * _floor(c)
                ]
                # a mismatch in the bug band at any step is for the coordinates to judge
                if not agree or any(_raw(c) > BUG_BAND for _, c in seen):
                    return None, worst
                step, comp = min(agree, key=lambda sc: _floor(sc[1]))
                rel, verified_to = _raw(comp), _floor(comp)
                note = (
                    f"verified only to ≈{verified_to:.0e} (at eps={step:g}, along "
                    f"{d.shape[0]} random directions): for a gradient this small "
                    f"(≈{size:.2g}) rounding noise at smaller steps and truncation at "
                    "larger ones allow no better"
                )
            kinks = int(comp.kink.sum())
            if kinks:
                crossed = (
                    f"{kinks} of {d.shape[0]} random directions cross a kink (not "
                    "differentiable there): verified a small step away"
                )
                note = f"{note}; {crossed}" if note else crossed
        result = TensorResult(
            **{**self._identity(), "checked": 0},
            rel_error=rel,
            rating=rating_for(rel, scale=self._band_scale),
            passed=True,
            note=note,
            direction_error=rel,
            complex=self.c.complex,
            zero=zero,
            directions=int(d.shape[0]),
            kinks=0 if zero else int(comp.kink.sum()),  # directions that cross one
            judged_eps=None if zero or step == self.h else step,
            verified_to=verified_to,
        )
        return result, worst

    def _directions_compared(
        self,
        d: torch.Tensor,
        along: torch.Tensor,
        fp: torch.Tensor,
        fm: torch.Tensor,
        h: float,
        rounding: float,
        off_kink: Callable[[int], bool],
    ) -> Comparison:
        """a·d_j against the loss at θ ± h·d_j. Note [kinks], for directions: one that
        crosses a kink (ReLUs sitting exactly at 0 after a zero-initialised layer) counts
        where the backward agrees with finite differences a small step away
        (`off_kink(j)`, along the same direction as a unit one)."""
        return compare(
            along,
            fp,
            fm,
            self.f0,
            h,
            rounding,
            self.tol,
            refine=lambda local, step: self._terms_along(self._along(d[local], step)),
            verify=lambda local: torch.tensor([off_kink(j) for j in local.tolist()]),
        )

    def _directions_at(
        self, d: torch.Tensor, along: torch.Tensor, step: float, off_kink: Callable[[int], bool]
    ) -> Comparison:
        """The directions compared at another step, with that step's rounding noise."""
        at = self._along(d, step)
        fp, fm = self._terms_along(at)
        return self._directions_compared(d, along, fp, fm, step, self._rounding_of(at), off_kink)

    def _along(self, d: torch.Tensor, step: float) -> Evaluations:
        """The loss at θ ± step·d_j for each of the directions d (k, *shape)."""
        return self.evaluator.evaluate(self.c, torch.zeros(0, dtype=torch.long), step, d)

    def _terms_along(self, at: Evaluations) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss term k at θ + step·d_j and at θ − step·d_j."""
        return self._term(at.directions_plus), self._term(at.directions_minus)

    # --- the steps ----------------------------------------------------------------------

    def nonfinite_analytic(self) -> TensorResult | None:
        if torch.isfinite(self.a_flat).all():
            return None
        i = int((~torch.isfinite(self.a_flat)).nonzero()[0])
        where = list(_unravel(i, self.shape))
        return self._failed(f"NaN/Inf in the analytic gradient (first at index {where})")

    def reentrancy(self) -> TensorResult | None:
        """A backward that answers differently when run again on the same graph (what
        torch.autograd.gradcheck calls "not reentrant")."""
        if self.not_reentrant is None or self.k != 0:
            return None
        change = "" if math.isinf(self.not_reentrant) else f" by {self.not_reentrant:.2g}"
        return self._failed(
            f"not reentrant: a second backward through the same graph changes this gradient"
            f"{change} (relative): the backward changes what it saved (an in-place op on a "
            "saved tensor, or state kept between calls)"
        )

    def nonfinite_numeric(self) -> TensorResult | None:
        num_all = (self.plus - self.minus) / (2 * self.h)
        if torch.isfinite(num_all).all():
            return None
        j = int((~torch.isfinite(num_all)).nonzero()[0])
        idx = list(_unravel(int(self.coords[j]), self.shape))
        return self._failed(f"NaN/Inf in the loss when {self.c.name}{idx} is moved by ±{self.h:g}")

    def verdict(
        self,
        h: float,
        fp: torch.Tensor,
        fm: torch.Tensor,
        direction: tuple | None,
        rounding: float | None = None,
    ) -> _Verdict:
        """The coordinates compared at step h (Note [kinks]), and the random direction, with
        the rounding noise of f in these evaluations (default: the measured rows')."""
        rounding = self.rounding if rounding is None else rounding
        comp = compare(
            self.a_flat[self.coords],
            fp,
            fm,
            self.f0,
            h,
            rounding,
            self.tol,
            refine=self.refine,
            verify=self.verify,
        )
        floors = [self._floor(comp, fp, fm, h)]
        dir_comp = self.direction_comparison(direction, h, rounding)
        dir_rel = dir_num = None
        comps = [comp]
        if dir_comp is not None:
            dir_num = float(dir_comp.num[0])
            dir_rel = dir_comp.rel if math.isfinite(float(dir_comp.num[0])) else math.inf
            comps.append(dir_comp)
            floors.append(self._floor(dir_comp, direction[1][self.k], direction[2][self.k], h))
        rel = max(comp.rel, dir_rel or 0.0)
        raw = max(_raw(c) for c in comps)
        return _Verdict(comp, dir_rel, rel, rel <= self.tol, h, max(floors), raw, dir_num)

    def _floor(self, comp: Comparison, fp: torch.Tensor, fm: torch.Tensor, h: float) -> float:
        """Note [resolution]. A loss that did not move at all at a small step saw nothing: the
        step may be below what the outputs can represent (y + h·y' == y), which is not
        evidence of a zero gradient; at the largest step it is (the function is flat)."""
        if h < LARGEST_STEP and bool(((fp == self.f0) & (fm == self.f0)).all()):
            return math.inf if float(comp.a.abs().max()) > 0 else 0.0
        return _floor(comp)

    def verdict_at_step(self, step: float) -> _Verdict:
        """The verdict with every checked coordinate and the direction evaluated at `step`."""
        d = self.direction[0] if self.direction is not None else None
        at = self.evaluator.evaluate(self.c, self.coords, step, d)
        direction = None if d is None else (d, at.direction_plus, at.direction_minus)
        rounding = self._rounding_of(at)
        return self.verdict(step, self._term(at.plus), self._term(at.minus), direction, rounding)

    def _rounding_of(self, at: Evaluations) -> float:
        """The rounding noise of f in these evaluations: a few ulps of the largest scale their
        rows moved (losses.py), of the loss itself, and at least the nondeterminism seen."""
        scales = [at.plus[:, -1], at.minus[:, -1]]
        if at.directions_plus is not None:
            scales += [at.directions_plus[:, -1], at.directions_minus[:, -1]]
        moved = float(torch.cat([t.reshape(-1) for t in scales]).abs().max())
        size = max(moved, abs(self.f0), 1e-300)
        return max(rounding_noise(self.evaluator.problem.precision, size), self.noise_floor)

    def flat(self, verdict: _Verdict) -> bool:
        """The loss does not move at all (bitwise, every coordinate and the direction) at
        the verdict's step. With an analytic gradient below the rounding of the loss's
        summands (`rounding_floor`), a zero gradient autograd computes as rounding, not a
        piecewise-constant forward with a made-up backward (whose gradient is not tiny)."""
        return bool((verdict.comparison.num == 0).all()) and verdict.direction_num in (None, 0.0)

    def zero_gradient(self, verdict: _Verdict, largest: float) -> tuple[_Verdict, str, bool]:
        """An analytic gradient that is None or zero everywhere: a pass where the loss does
        not move either, else a gradient that never reaches the tensor (no step size
        explains that). Returns the verdict, the note, and whether the gradient reaches."""
        note = self._zero_note(largest)
        if self.quiet(verdict):
            return dataclasses.replace(verdict, rel_error=0.0, passed=True), note, True
        # what finite differences see may be rounding noise above our estimate of it (e.g.
        # BatchNorm dividing a zero-variance batch by √eps): noise shrinks in proportion as
        # the step grows and points anywhere, a gradient that autograd misses stays (its
        # difference quotient converges) and keeps its direction. Quiet at a larger step, or
        # shrinking ≥30× at each of two 100× larger steps in unrelated directions, is noise.
        seen = [verdict.comparison.num]
        for step in (100 * self.h, 10_000 * self.h):
            if step > LARGEST_STEP * (1 + 1e-9):
                break
            larger = self.verdict_at_step(step)
            seen.append(larger.comparison.num)
            if self.quiet(larger) or (len(seen) == 3 and _noise_like(seen)):
                note += f" (the loss moves only by rounding noise: it shrinks at eps={step:g})"
                return dataclasses.replace(verdict, rel_error=0.0, passed=True), note, True
        got = (
            "none" if self.unused else "zero" if largest == 0 else f"only rounding, ≈{largest:.1g}"
        )
        note = self.evaluator.problem.missing_note.format(got=got)
        failed = dataclasses.replace(verdict, rel_error=max(verdict.rel_error, 1.0), passed=False)
        return failed, note, False

    def _zero_note(self, largest: float) -> str:
        if largest > 0:
            return f"zero gradient: autograd gives only rounding (≈{largest:.1g})"
        return "unused: the loss does not depend on this tensor" if self.unused else "no gradient"

    def quiet(self, verdict: _Verdict) -> bool:
        """The numeric gradient is within rounding noise, along the direction too."""
        comp = verdict.comparison
        loud = float(comp.judged.norm()) > comp.tiny * self.tol
        return not loud and not (verdict.direction_error or 0.0) > self.tol

    def on_the_ladder(self, verdict: _Verdict) -> tuple[_Verdict, str]:
        """Note [resolution]: an unresolved tensor judged at larger steps, powers of ten up to
        LARGEST_STEP, until one resolves the tolerance. Returns the verdict and how it was
        reached: "resolved" (pass or fail at that step; a fail in the bug band, above 1e-3);
        "coarse" (a pass to a precision between the tolerance and 1e-3, where rounding at
        small steps and truncation at large ones meet); or "unresolved" (inconclusive)."""
        tried = [verdict]
        step = 10 * self.h
        while step <= LARGEST_STEP * (1 + 1e-9):
            now = self.verdict_at_step(step)
            tried.append(now)
            if now.resolved(self.tol):
                if now.passed or now.raw > max(BUG_BAND, 10 * self.tol):
                    return now, "resolved"
                break  # a small mismatch here may be truncation: larger steps add more
            step *= 10
        # coarser than the tolerance, but fine enough to tell a bug (float32: nothing coarser)
        coarse = [v for v in tried if v.floor <= max(BUG_BAND, self.tol)]
        agreeing = [v for v in coarse if v.raw <= max(self.tol, 2 * v.floor)]
        if agreeing:
            best = min(agreeing, key=lambda v: v.floor)
            return dataclasses.replace(best, passed=True, rel_error=best.raw), "coarse"
        failing = [v for v in coarse if v.raw > max(self.tol, 2 * v.floor)]
        if failing:  # resolved well enough to see a mismatch beyond its noise
            return min(failing, key=lambda v: v.floor), "failed"
        return tried[-1], "unresolved"

    def sweep(self, comp: Comparison) -> _Sweep:
        """Relative error at several step sizes, on (up to SWEEP_COORDS of) the coordinates
        that disagree most and the same random direction. Steps where the gradient is below
        the finite-difference resolution are recorded as NaN: they can neither pass nor fail
        anything."""
        worst_first = torch.argsort((comp.a - comp.judged).abs(), descending=True)[:SWEEP_COORDS]
        coords, kinks = self.coords[worst_first], comp.kink[worst_first]
        a = self.a_flat[coords]
        d = self.direction[0] if self.direction is not None else None
        points = []
        for step in SWEEP_STEPS:
            at = self.evaluator.evaluate(self.c, coords, step, d)
            fp, fm = self._term(at.plus), self._term(at.minus)
            comp = compare(a, fp, fm, self.f0, step, self.rounding, self.tol, kinks=kinks)
            pairs = [(comp.a, comp.judged, comp.tiny)]
            if d is not None:
                # a·d in the default dtype, which is the check dtype (float32 rounds it)
                along = torch.tensor([self._along_direction()])
                dcomp = self._compare_direction(
                    along, at.direction_plus, at.direction_minus, step, self.rounding
                )
                pairs.append((dcomp.a, dcomp.judged, dcomp.tiny))
            errors = [e for e in (resolved_error(*pair) for pair in pairs) if e is not None]
            points.append(SweepPoint(step, max(errors) if errors else math.nan))
        verdict, better_step = classify_sweep(points, self.tol, self.options.eps)
        return _Sweep(tuple(points), verdict, better_step)

    def worst_entries(self, comp: Comparison) -> tuple[WorstEntry, ...]:
        err = (comp.a - comp.judged).abs()
        order = torch.argsort(err, descending=True)[:WORST_SHOWN]
        return tuple(
            WorstEntry(
                _unravel(int(self.coords[j]), self.shape), float(comp.a[j]), float(comp.num[j])
            )
            for j in order.tolist()
            if err[j] > 0
        )

    def direction_disagrees(self, verdict: _Verdict) -> str:
        """What to add to the note when the coordinates agree but the direction does not."""
        dir_rel = verdict.direction_error
        if dir_rel is not None and dir_rel > self.tol and verdict.comparison.rel <= self.tol:
            return (
                f"the sampled coordinates agree but a random-direction check does not "
                f"(rel. error {dir_rel:.2g}): the error is in coordinates not sampled; "
                "run with --full"
            )
        return ""

    def hint(self, comp: Comparison) -> str | None:
        smooth = ~comp.kink  # kinks say nothing about the kind of mistake
        return bug_hint(
            comp.a[smooth],
            comp.num[smooth],
            self.coords[smooth],
            self.shape,
            full=self.m == self.numel and not comp.kink.any(),
            noise=comp.noise,
            batch_size=self.batch_size,
            upstream_ignored=self.k == 0 and self.evidence.upstream_ignored(self.c.name),
            tolerance=self.tol,
        )

    # --- evaluating more, for compare() -------------------------------------------------

    def refine(self, local: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss at θ ± step·e_i for some of the checked coordinates (by position)."""
        at = self.evaluator.evaluate(self.c, self.coords[local], step)
        return self._term(at.plus), self._term(at.minus)

    def verify(self, local: torch.Tensor) -> torch.Tensor:
        """Whether the backward is right a small step away from these kinks."""
        coords = self.coords[local]
        return self.evidence.agrees_off_kink(self.c, coords, self.k, self.h, self.rounding)

    def direction_comparison(
        self, direction: tuple | None, h: float, rounding: float
    ) -> Comparison | None:
        """The derivative along a random unit direction d: a·d against the numeric one."""
        if direction is None:
            return None
        d, dp, dm = direction

        def refine(_local: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
            at = self.evaluator.evaluate(self.c, torch.zeros(0, dtype=torch.long), step, d)
            return self._one_term(at.direction_plus), self._one_term(at.direction_minus)

        def verify(_local: torch.Tensor) -> torch.Tensor:
            agrees = self.evidence.direction_agrees_off_kink(
                self.c, d, self.k, self.h, self.rounding
            )
            return torch.tensor([agrees])

        along = torch.tensor([self._along_direction()], dtype=torch.float64)
        return self._compare_direction(along, dp, dm, h, rounding, refine=refine, verify=verify)

    # --- small helpers ------------------------------------------------------------------

    def _compare_direction(
        self,
        along: torch.Tensor,
        dp: torch.Tensor,
        dm: torch.Tensor,
        h: float,
        rounding: float,
        refine: Refine | None = None,
        verify: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Comparison:
        """a·d (`along`) against the loss at θ ± h·d (`dp`, `dm`: every term)."""
        dp, dm = self._one_term(dp), self._one_term(dm)
        return compare(along, dp, dm, self.f0, h, rounding, self.tol, refine=refine, verify=verify)

    def _along_direction(self) -> float:
        """a·d: the analytic derivative along the random direction."""
        return float(self.a_flat @ self.direction[0].reshape(-1).double().cpu())

    def _term(self, rows: torch.Tensor) -> torch.Tensor:
        """Loss term k of each row (m, K), as float64 on the CPU."""
        return rows[:, self.k].double().cpu()

    def _one_term(self, terms: torch.Tensor) -> torch.Tensor:
        """Loss term k of one point (K,), as a float64 tensor of one value on the CPU."""
        return terms[self.k : self.k + 1].double().cpu()

    @property
    def _band_scale(self) -> float:
        """The tutorial's bands, stretched for a check at float32's precision."""
        return band_scale(self.evaluator.problem.precision)

    def _identity(self) -> dict:
        return dict(
            name=self.label, kind=self.c.kind, shape=self.shape, numel=self.numel, checked=self.m
        )

    def _failed(self, note: str) -> TensorResult:
        return TensorResult(
            **self._identity(), rel_error=math.inf, rating="bug", passed=False, note=note
        )


MORE_STEPS = 2  # steps of a sweep at which a failing tensor is judged again, at most
BUG_BAND = 1e-3  # the tutorial: a relative error above it is a bug


def _raw(comp: Comparison) -> float:
    """‖a − n‖ / (‖a‖ + ‖n‖), kinks excused: the error without the resolution floor."""
    size = float(comp.a.norm()) + float(comp.judged.norm())
    diff = float((comp.a - comp.judged).norm())
    return diff / size if size else (0.0 if not diff else math.inf)


def _passing_steps(sweep: _Sweep, tol: float, default: float) -> list[float]:
    """The sweep's better step first, then the other steps it passed at, nearest the
    default first."""
    others = sorted(
        (p.eps for p in sweep.points if p.rel_error <= tol and p.eps != sweep.better_step),
        key=lambda h: (abs(math.log10(h / default)), -h),
    )
    return [sweep.better_step, *others]


def _floor(comp: Comparison) -> float:
    """The smallest relative error rounding noise lets this comparison see: the noise of its
    m coordinates, √m·noise, over the signal (Note [resolution])."""
    size = float(comp.a.norm()) + float(comp.judged.norm())
    return math.sqrt(comp.a.numel()) * comp.noise / size if size else math.inf


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))
