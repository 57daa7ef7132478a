"""saturation: most outputs of a bounded activation (sigmoid, tanh, ...) sit within the margin
of an asymptote, where almost no gradient passes, at the last step measured."""

from __future__ import annotations

from collections.abc import Iterator

from ._rule import Detection, Evidence, FindingRule, Severity, percent

FIX = (
    "Keep pre-activations in the linear range: Xavier initialization, "
    "normalization (BatchNorm/LayerNorm) before the activation, scaled inputs — or a "
    "ReLU-family activation in hidden layers."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    last, th = ev.last, ev.thresholds
    for r in last.rows:
        fraction = r.saturated_fraction
        if r.kind == "activation" and fraction is not None and fraction > th.saturated_fraction:
            yield Detection(
                r.name,
                f"{percent(fraction)} of the outputs of {r.display_name} "
                f"({r.type}) sit within {th.saturation_margin:.0%} of an asymptote, where "
                f"almost no gradient passes{ev.at(last)}{ev.was(r.key, 'saturated_fraction')}",
                key=r.key,
                value=fraction,
                step=last.step,
                evidence=(("saturated fraction", fraction), ("margin", th.saturation_margin)),
                threshold=th.saturated_fraction,
            )


RULE = FindingRule("saturation", Severity.WARNING, {"": FIX}, detect)
