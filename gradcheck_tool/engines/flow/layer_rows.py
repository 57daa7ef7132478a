"""From one step's numbers, read back, to its rows: one per layer that owns parameters and one
per activation call, in forward order; and from measured steps to the report's history."""

from __future__ import annotations

import math

from ...results import LayerStats, RowSample, StepRecord
from . import step
from .model_map import ModelMap
from .nan_site import first_nan_site
from .recorder import ActCall
from .samples import ROOT, ZERO_GRADIENT, StepSample
from .step import PendingStep

NOT_RUN_ORDER = 10**9  # layers that never ran sort after every row that did


def resolve_step(p: PendingStep, mm: ModelMap) -> StepSample:
    """Host numbers of one step -> its rows (in forward order), NaN site and no-grad list."""
    values = p.values()
    loss = values[step.LOSS.name][0] if values[step.LOSS.name] else None
    weights = [math.sqrt(w) for w in values[step.WEIGHT_SQ.name]]  # squared norms on the device
    present = p.gradients_present()
    grad_norm, grad_max = _parameter_gradients(values, p.grads_present, present, len(mm.params))
    bwd_norms = [math.sqrt(n) for n in values[step.BACKWARD_SQ.name]]
    out_sq, out_numel = _output_signal(p, bwd_norms)
    rows, no_grad = _layer_rows(p, mm, present, weights, grad_norm, grad_max, out_sq, out_numel)
    rows.extend(_activation_rows(p.acts, _activation_counts(p, values)))
    rows.sort(key=lambda r: r.order)

    nan = first_nan_site(
        p,
        mm,
        loss,
        values[step.FORWARD_PROBES.name],
        values[step.BACKWARD_PROBES.name],
        grad_max,
        present,
        rows,
    )
    loss_grad = math.sqrt(out_sq[""]) if "" in out_sq else None
    return StepSample(p.step, loss, rows, nan, no_grad, loss_grad)


def parameter_grad_max(p: PendingStep, n_params: int) -> list[float | None]:
    """Per parameter: max |g| of the step's gradient (None: no gradient), once read back."""
    return _parameter_gradients(p.values(), p.grads_present, p.gradients_present(), n_params)[1]


def _parameter_gradients(
    values: dict[str, list[float]],
    slots: list[bool] | None,
    present: list[bool] | None,
    n_params: int,
) -> tuple[list[float | None], list[float | None]]:
    """Per parameter: its gradient's norm and max |g| (None: no gradient). `slots`: the
    parameters with numbers in the gradient segments; `present`: those with a gradient."""
    g2 = [math.sqrt(g) for g in values[step.GRAD_SQ.name]]
    lows, highs = values[step.GRAD_MIN.name], values[step.GRAD_MAX.name]
    # max |g| from the min and max; NaN anywhere makes it NaN
    ginf = [
        math.nan if math.isnan(lo) or math.isnan(hi) else max(-lo, hi)
        for lo, hi in zip(lows, highs)
    ]
    grad_norm: list[float | None] = [None] * n_params
    grad_max: list[float | None] = [None] * n_params
    if slots and present:
        j = 0
        for i, has in enumerate(slots):
            if has:
                if present[i]:
                    grad_norm[i], grad_max[i] = g2[j], ginf[j]
                j += 1
    return grad_norm, grad_max


def _output_signal(
    p: PendingStep, bwd_norms: list[float]
) -> tuple[dict[str, float], dict[str, int]]:
    """The gradient reaching each module's output ("the backward signal"), from the tensor
    hooks: its squared norm and its number of elements, by module name."""
    out_sq: dict[str, float] = {}
    out_numel: dict[str, int] = {}
    for at_event, norm in zip(p.bwd_norm_at, bwd_norms):
        index = p.bwd[at_event]
        for role in p.bwd_roles[index]:
            if role[0] == "out":
                out_sq[role[1]] = out_sq.get(role[1], 0.0) + norm * norm
                out_numel[role[1]] = out_numel.get(role[1], 0) + p.bwd_numel[index]
    return out_sq, out_numel


def _layer_rows(
    p: PendingStep,
    mm: ModelMap,
    present: list[bool] | None,
    weights: list[float],
    grad_norm: list[float | None],
    grad_max: list[float | None],
    out_sq: dict[str, float],
    out_numel: dict[str, int],
) -> tuple[list[LayerStats], list[tuple[str, list[str], str]]]:
    """One row per layer, and the trainable parameters that got no (or a zero) gradient."""
    rows: list[LayerStats] = []
    no_grad: list[tuple[str, list[str], str]] = []
    by_layer: dict[int, list[int]] = {}
    for i, li in enumerate(mm.param_layer):
        by_layer.setdefault(li, []).append(i)
    for layer in mm.layers:
        idx = by_layer[layer.index]
        trainable = [i for i in idx if mm.params[i].requires_grad]
        with_grad = [i for i in idx if grad_norm[i] is not None]
        ran = layer.index in p.layer_order
        order = p.layer_order.get(layer.index, NOT_RUN_ORDER + layer.index)
        calls = p.layer_calls.get(layer.index, 0)
        gn = math.sqrt(sum(grad_norm[i] ** 2 for i in with_grad)) if with_grad else None
        if gn is not None and any(not math.isfinite(grad_norm[i]) for i in with_grad):
            bad = [grad_norm[i] for i in with_grad if not math.isfinite(grad_norm[i])]
            gn = math.nan if any(math.isnan(b) for b in bad) else math.inf
        gm = max((grad_max[i] for i in with_grad), default=None) if with_grad else None
        if with_grad and any(math.isnan(grad_max[i]) for i in with_grad):
            gm = math.nan
        known_weights = [weights[i] for i in idx if weights[i] is not None]
        wn = math.sqrt(sum(w * w for w in known_weights)) if known_weights else None
        notes = []
        if not ran:
            notes.append("not called in forward")
        elif calls > 1:
            notes.append(f"called {calls}× in forward; gradients summed over the calls")
        if not trainable:
            notes.append("frozen")
        rows.append(
            LayerStats(
                name=layer.name,
                type=mm.type_names[id(layer.module)],
                kind="layer",
                key=layer.name or ROOT,
                order=order,
                calls=calls,
                params=tuple(mm.param_names[i] for i in idx),
                numel=sum(mm.param_numel[i] for i in idx),
                grad_norm=gn,
                weight_norm=wn,
                max_abs_grad=gm,
                output_grad_norm=(math.sqrt(out_sq[layer.name]) if layer.name in out_sq else None),
                output_numel=out_numel.get(layer.name),
                frozen=not trainable,
                note="; ".join(notes),
            )
        )
        if present is not None:
            missing = [mm.param_names[i] for i in trainable if grad_norm[i] is None]
            zero = [mm.param_names[i] for i in trainable if grad_norm[i] == 0.0]
            if missing:
                why = "its module never ran in forward" if not ran else "not reached by backward"
                no_grad.append((layer.name, missing, why))
            if zero:
                no_grad.append((layer.name, zero, ZERO_GRADIENT))
    return rows, no_grad


def _activation_counts(p: PendingStep, values: dict[str, list[float]]) -> list[tuple[int, int]]:
    """Per field of each activation call, in order: (count, out of how many). A distributed
    step has per-unit masks (combined across ranks, then counted here) and saturated counts
    with their totals; a single process's are counts of its own `units`/`numel`."""
    if not p.distributed:
        counts = [round(c) for c in values[step.ACTIVATION_COUNTS.name]]
        out, k = [], 0
        for a in p.acts:
            for f in a.fields:
                out.append((counts[k], a.numel if f == "saturated" else a.units))
                k += 1
        return out
    masks, saturation = values[step.UNIT_MASKS.name], values[step.SATURATION_COUNTS.name]
    out, j, k = [], 0, 0
    for a in p.acts:
        for f in a.fields:
            if f == "saturated":
                out.append((round(saturation[k]), round(saturation[k + 1])))
                k += 2
                continue
            fired = round(sum(masks[j : j + a.units]))  # units that fired / were ever ≥ 0
            j += a.units
            out.append((fired if f == "alive" else a.units - fired, a.units))
    return out


def _activation_rows(acts: list[ActCall], counts: list[tuple[int, int]]) -> list[LayerStats]:
    """One row per activation call; a base key seen more than once is one row per call,
    numbered. `counts`: (count, out of) for each call's `fields`, in order."""
    totals: dict[str, int] = {}
    for a in acts:
        totals[a.base_key] = totals.get(a.base_key, 0) + 1
    seen_calls: dict[str, int] = {}
    rows: list[LayerStats] = []
    k = 0
    for a in acts:
        call = seen_calls[a.base_key] = seen_calls.get(a.base_key, 0) + 1
        n = totals[a.base_key]
        frac: dict[str, float | None] = {"dead": None, "inactive": None, "saturated": None}
        for f in a.fields:
            count, total = counts[k]
            if f == "alive":
                frac["dead"] = (a.units - count) / a.units
            else:
                frac[f] = count / total if total else 0.0
            k += 1
        rows.append(
            LayerStats(
                name=a.name,
                type=a.type,
                kind="activation",
                key=a.base_key if n == 1 else f"{a.base_key}#{call}",
                order=a.order,
                calls=n,
                call=call,
                via=a.via,
                units=a.units,
                unit=a.unit,
                dead_fraction=frac["dead"],
                inactive_fraction=frac["inactive"],
                saturated_fraction=frac["saturated"],
            )
        )
    return rows


def history(samples: list[StepSample]) -> tuple[StepRecord, ...]:
    """Every measured step's loss and rows, for the report's history and trend."""
    return tuple(
        StepRecord(
            s.step,
            s.loss,
            tuple(
                (
                    r.key,
                    RowSample(
                        r.grad_norm,
                        r.weight_norm,
                        r.max_abs_grad,
                        r.dead_fraction,
                        r.inactive_fraction,
                        r.saturated_fraction,
                        r.update_ratio,
                    ),
                )
                for r in s.rows
            ),
        )
        for s in samples
    )
