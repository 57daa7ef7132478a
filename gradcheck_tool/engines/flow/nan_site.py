"""The first non-finite value of a step: where it appeared (forward, loss, backward or the
inputs) and how to say it, from the finite probes read back in the order they were made."""

from __future__ import annotations

import math

from ...results import LayerStats
from .model_map import ModelMap
from .samples import ROOT, NanSite, label
from .step import PendingStep


def first_nan_site(
    p: PendingStep,
    mm: ModelMap,
    loss: float | None,
    fwd_flags: list[float],
    bwd_flags: list[float],
    grad_max: list[float | None],
    present: list[bool] | None,
    rows: list[LayerStats],
) -> NanSite | None:
    """The first place a non-finite value appears: forward, then loss, then backward."""
    site = _forward_site(p, fwd_flags)
    if site is not None:
        return site
    if loss is not None and not math.isfinite(loss):
        return NanSite(
            "loss", "(loss)", f"the loss is {loss} although every module's output is finite"
        )
    site = _backward_site(p, bwd_flags)
    if site is not None or present is None:
        return site
    return _parameter_site(mm, grad_max, rows)


def _forward_site(p: PendingStep, fwd_flags: list[float]) -> NanSite | None:
    """The first forward probe that is not finite: a module's output, or its input."""
    for event, probe in zip(p.fwd, fwd_flags):
        if math.isfinite(probe):
            continue
        if event.where == "output":
            return NanSite(
                "forward",
                event.name,
                f"{label(event.name)} produced non-finite values (NaN/Inf) in its forward "
                "output from finite inputs",
            )
        if event.is_root or event.parent is None:
            return NanSite(
                "inputs",
                "(inputs)",
                "the model's inputs already contain non-finite values (NaN/Inf)",
            )
        return NanSite(
            "forward",
            event.parent,
            f"{label(event.parent)} made non-finite values (NaN/Inf) in its own forward code "
            f"before passing them to {label(event.name)}",
        )
    return None


def _backward_site(p: PendingStep, bwd_flags: list[float]) -> NanSite | None:
    """The first gradient, in the order the backward made them, that is not finite."""
    for index, probe in zip(p.bwd, bwd_flags):
        if math.isfinite(probe):
            continue
        roles = p.bwd_roles[index]
        ins = [r for r in roles if r[0] == "in"]
        if ins:
            name = max(ins, key=lambda r: r[3])[1]
            return NanSite(
                "backward",
                name,
                f"the backward of {label(name)} turned a finite gradient at its output into a "
                "non-finite one (NaN/Inf) at its input",
            )
        outs = [r for r in roles if r[0] == "out"]
        deepest = max(outs, key=lambda r: r[3])
        if deepest[1] == "" or all(r[1] == "" for r in outs):
            return NanSite(
                "loss",
                "(loss)",
                "the loss's gradient with respect to the model output is non-finite",
            )
        parent = deepest[2] if deepest[2] is not None else ""
        return NanSite(
            "backward",
            parent,
            f"the gradient reaching the output of {label(deepest[1])} is already non-finite: "
            f"code after it in {label(parent)}'s forward made it",
        )
    return None


def _parameter_site(
    mm: ModelMap, grad_max: list[float | None], rows: list[LayerStats]
) -> NanSite | None:
    """Finite everywhere along the activations, yet a parameter's gradient is not."""
    layer_rows = {r.key: r for r in rows if r.kind == "layer"}
    bad = [i for i, g in enumerate(grad_max) if g is not None and not math.isfinite(g)]
    if not bad:
        return None

    # backward visits layers in reverse forward order: the latest layer is first
    def order(i: int) -> int:
        name = mm.layers[mm.param_layer[i]].name or ROOT
        return layer_rows[name].order if name in layer_rows else 0

    i = max(bad, key=order)
    layer = mm.layers[mm.param_layer[i]].name
    return NanSite(
        "backward", layer, f"the gradient of parameter {mm.param_names[i]} is non-finite"
    )
