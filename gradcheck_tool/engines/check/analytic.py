"""What autograd says: the analytic gradients (backward, or jvp for --forward-mode), and
evidence about a backward computed only when some tensor needs it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._guest import describe_exception
from ...checkables import Checkable
from ...errors import UserCodeError
from ...prepare import CheckProblem
from .config import CheckOptions
from .evaluate import Evaluator, forward_error


@dataclass
class Analytic:
    """Autograd's gradients per loss term, or the error the backward raised; and the
    tensors whose gradient changed when the same backward ran again (not reentrant), with
    the largest relative change."""

    grads: list[dict[str, torch.Tensor | None]]
    error: str | None = None
    not_reentrant: dict[str, float] = field(default_factory=dict)


# Differences a second backward may show without being wrong: none on the CPU; on a GPU,
# kernels that accumulate with atomics round in another order (≈1e-16 relative)
REENTRANT_SLACK = 1e-9


def analytic_gradients(
    problem: CheckProblem,
    values: dict[str, torch.Tensor] | None = None,
    scale: float = 1.0,
    reentrancy: bool = False,
) -> tuple[torch.Tensor, Analytic]:
    """Autograd's gradient of each loss term (times `scale`) at `values` (default θ). With
    `reentrancy`, the first term's backward runs twice on the same graph, as
    torch.autograd.gradcheck does: a backward that changes what it saved answers
    differently the second time."""
    names = [c.name for c in problem.checkables]
    start = values or {c.name: c.value for c in problem.checkables}
    leaves = {n: start[n].detach().clone().requires_grad_(True) for n in names}
    # substituted through the backward too: checkpointing re-runs the forward in it
    with torch.enable_grad(), problem.substituted(leaves):
        try:
            terms = problem.terms(leaves)
        except (UserCodeError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:
            raise forward_error(exc) from exc
        result = Analytic([])
        if not torch.isfinite(terms.detach()).all():
            return terms.detach(), result
        inputs = [leaves[n] for n in names]
        try:
            for k in range(len(problem.term_names)):
                if not terms[k].requires_grad:
                    result.grads.append(dict.fromkeys(names))
                    continue
                # scale the output rather than pass grad_outputs: autograd then needs no
                # shape check, whose import (sympy) costs seconds
                term = terms[k] if scale == 1.0 else terms[k] * scale
                grads = _backward(term, inputs)
                result.grads.append({n: _dense(g) for n, g in zip(names, grads)})
                if reentrancy and k == 0:
                    again = [_dense(g) for g in _backward(term, inputs)]
                    result.not_reentrant = _changed(names, result.grads[0], again)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            result.error = describe_exception(exc, None)
    return terms.detach(), result


def forward_mode_derivatives(problem: CheckProblem) -> tuple[torch.Tensor, Analytic]:
    """Derivatives of each loss term along every coordinate by forward-mode AD (jvp)."""
    import torch.autograd.forward_ad as fwad

    names = [c.name for c in problem.checkables]
    with torch.no_grad():
        try:
            terms = problem.terms({c.name: c.value for c in problem.checkables})
        except (UserCodeError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:
            raise forward_error(exc) from exc
    result = Analytic([dict.fromkeys(names) for _ in problem.term_names])
    if not torch.isfinite(terms).all():
        return terms, result
    try:
        for c in problem.checkables:
            columns = []
            for i in range(c.value.numel()):
                tangent_in = torch.zeros_like(c.value).reshape(-1)
                tangent_in[i] = 1.0
                with fwad.dual_level(), torch.no_grad():
                    values = {n.name: n.value for n in problem.checkables}
                    values[c.name] = fwad.make_dual(c.value, tangent_in.view(c.value.shape))
                    tangent = fwad.unpack_dual(problem.terms(values)).tangent
                columns.append(torch.zeros_like(terms) if tangent is None else tangent.detach())
            stacked = torch.stack(columns)  # (numel, K)
            for k in range(len(problem.term_names)):
                result.grads[k][c.name] = stacked[:, k].reshape(c.value.shape)
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:
        result.error = describe_exception(exc, None)
    return terms, result


def _backward(term: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """d term / d inputs, the graph kept for the next term. Reentrant activation
    checkpointing (`checkpoint(..., use_reentrant=True)`) refuses torch.autograd.grad; it
    takes .backward(), which accumulates into our fresh leaves' .grad, read and cleared here."""
    try:
        return torch.autograd.grad(term, inputs, retain_graph=True, allow_unused=True)
    except RuntimeError as exc:
        if "use_reentrant=True" not in str(exc):
            raise
    for leaf in inputs:
        leaf.grad = None
    term.backward(retain_graph=True)
    grads = tuple(leaf.grad for leaf in inputs)
    for leaf in inputs:
        leaf.grad = None
    return grads


def _changed(
    names: list[str],
    first: dict[str, torch.Tensor | None],
    again: list[torch.Tensor | None],
) -> dict[str, float]:
    """Tensors whose gradient differs between two backwards of the same graph, with the
    largest difference relative to the gradient's size."""
    out = {}
    for n, g2 in zip(names, again):
        g1 = first[n]
        if g1 is None or g2 is None:
            if (g1 is None) != (g2 is None):
                out[n] = float("inf")
            continue
        size = float(g1.abs().max()) if g1.numel() else 0.0
        diff = float((g1 - g2).abs().max()) if g1.numel() else 0.0
        if diff > REENTRANT_SLACK * size or diff != diff:
            out[n] = diff / size if size else float("inf")
    return out


def _dense(g: torch.Tensor | None) -> torch.Tensor | None:
    """Autograd's gradient, detached and strided (nn.Embedding(sparse=True) gives sparse)."""
    if g is None:
        return None
    g = g.detach()
    return g.to_dense() if g.layout != torch.strided else g


class LazyEvidence:
    """Evidence computed only when some tensor needs it: whether a backward ignores its
    upstream gradient (for hints), and the backward judged away from a kink."""

    def __init__(
        self,
        problem: CheckProblem,
        analytic: Analytic,
        options: CheckOptions,
        forward_mode: bool = False,
    ) -> None:
        self.forward_mode = forward_mode
        self.problem = problem
        self.analytic = analytic
        self.options = options
        self._upstream: set[str] | None = None
        self._off: tuple[dict[str, torch.Tensor], Analytic, Evaluator] | None = None

    def upstream_ignored(self, name: str) -> bool:
        """A correct backward is linear in the upstream gradient: doubling it doubles every
        gradient. A tensor whose gradient stays put lies behind a backward that ignores it."""
        if self._upstream is None:
            self._upstream = set()
            # only a backward has an upstream gradient to ignore (not a jvp, not L₂)
            if not self.problem.needs_grad and not self.forward_mode:
                _, doubled = analytic_gradients(self.problem, scale=2.0)
                for n, g2 in (doubled.grads[0] if doubled.grads else {}).items():
                    g1 = self.analytic.grads[0][n]
                    if (
                        g1 is not None
                        and g2 is not None
                        and g1.abs().max() > 0
                        and torch.allclose(g1, g2, rtol=1e-9, atol=0.0)
                    ):
                        self._upstream.add(n)
        return name in self._upstream

    def agrees_off_kink(
        self, c: Checkable, coords: torch.Tensor, k: int, h: float, rounding: float
    ) -> torch.Tensor:
        """At a kink any subgradient is right (Note [kinks] in `compare`), so judge the
        backward a small step away, where the function is smooth: θ' = θ + δ with
        |δ| ≈ 1e-3 ≫ h. True where the analytic and numeric derivatives agree there."""
        moved, grads, evaluator = self._off_kink()
        if grads.error or not grads.grads or grads.grads[k][c.name] is None:
            return torch.zeros(coords.numel(), dtype=torch.bool)
        a = grads.grads[k][c.name].reshape(-1).double().cpu()[coords]
        shifted = Checkable(c.name, c.kind, c.slot, moved[c.name], c.complex)
        at = evaluator.evaluate(shifted, coords, h)
        num = (at.plus[:, k] - at.minus[:, k]).double().cpu() / (2 * h)
        return self._agree(a, num, rounding / h)

    def direction_agrees_off_kink(
        self, c: Checkable, d: torch.Tensor, k: int, h: float, rounding: float
    ) -> bool:
        """The same for the derivative along a direction d: a random direction moves every
        coordinate, so it meets every kink of the tensor at once (ReLU inputs sitting exactly
        at 0 after a zero-initialised layer are common in real models)."""
        moved, grads, evaluator = self._off_kink()
        if grads.error or not grads.grads or grads.grads[k][c.name] is None:
            return False
        along = grads.grads[k][c.name].reshape(-1).double().cpu() @ d.reshape(-1).double().cpu()
        shifted = Checkable(c.name, c.kind, c.slot, moved[c.name], c.complex)
        # the shifted point may sit near other kinks, which ±h·d crosses: their share of the
        # difference shrinks with the step, a wrong backward's does not
        for step in (h, h / 4):
            at = evaluator.evaluate(shifted, torch.zeros(0, dtype=torch.long), step, d)
            num = (at.direction_plus[k] - at.direction_minus[k]).double().cpu() / (2 * step)
            if bool(self._agree(along.reshape(1), num.reshape(1), rounding / step).all()):
                return True
        return False

    def _agree(self, a: torch.Tensor, num: torch.Tensor, noise: float) -> torch.Tensor:
        tol = self.options.tolerance
        return (a - num).abs() <= 10 * tol * (a.abs() + num.abs()) + 10 * noise

    def _off_kink(self) -> tuple[dict[str, torch.Tensor], Analytic, Evaluator]:
        """θ' = θ + δ (seeded), autograd's gradients there, and an evaluator around it."""
        if self._off is None:
            gen = torch.Generator().manual_seed(self.options.seed + 65_537)
            h = self.options.eps
            moved = {}
            for ch in self.problem.checkables:
                v = ch.value
                noise = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v)
                # far enough that ±h no longer straddles the kink, near enough to stay local
                size = 1000 * h + 1e-3 * (v.abs() + v.abs().mean())
                moved[ch.name] = v + noise * size
            _, grads = analytic_gradients(self.problem, moved)
            evaluator = Evaluator(
                self.problem,
                self.options,
                base=moved,
                needs_grad=self.problem.needs_grad,
            )
            with evaluator.grad_mode():
                evaluator.f0 = self.problem.terms(moved).detach()
            self._off = (moved, grads, evaluator)
        return self._off
