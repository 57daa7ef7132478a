"""The one place a tensor's note is decided: its candidates' precedence."""

from __future__ import annotations

import pytest

from gradcheck_tool.engines.check.judge import Note, choose_note

ZERO = "no gradient"
UNRESOLVED = "inconclusive: finite differences can't resolve this gradient (≈1e-12) ..."
RESOLVED = "judged at eps=0.0001: at eps=1e-06 rounding noise hides a gradient this small"
STEP = "passes at eps=1e-07 (truncation error: ...)"
KINKS = "2 kinks skipped (not differentiable there)"
SAMPLED = "sampled 16 of 4096 coordinates + a random-direction check"
DIRECTION = "the sampled coordinates agree but a random-direction check does not (...)"


def test_precedence_order():
    assert sorted(Note) == [
        Note.ZERO_GRADIENT,
        Note.INCONCLUSIVE,
        Note.RESOLVED_AT_STEP,
        Note.PASSES_AT_STEP,
        Note.KINKS,
        Note.SAMPLED,
    ]


def test_no_candidate_no_note():
    assert choose_note({}) == ""
    assert choose_note({Note.KINKS: ""}) == ""


@pytest.mark.parametrize(
    ("candidates", "shown"),
    [
        ({Note.SAMPLED: SAMPLED}, SAMPLED),
        ({Note.SAMPLED: SAMPLED, Note.KINKS: KINKS}, KINKS),
        ({Note.SAMPLED: SAMPLED, Note.KINKS: KINKS, Note.PASSES_AT_STEP: STEP}, STEP),
        ({Note.SAMPLED: SAMPLED, Note.KINKS: KINKS, Note.RESOLVED_AT_STEP: RESOLVED}, RESOLVED),
        ({Note.SAMPLED: SAMPLED, Note.INCONCLUSIVE: UNRESOLVED}, UNRESOLVED),
        ({Note.SAMPLED: SAMPLED, Note.KINKS: KINKS, Note.ZERO_GRADIENT: ZERO}, ZERO),
        ({Note.ZERO_GRADIENT: "", Note.SAMPLED: SAMPLED}, SAMPLED),  # empty: not a note
    ],
)
def test_the_candidate_of_highest_precedence_is_shown(candidates, shown):
    assert choose_note(candidates) == shown
    assert choose_note(dict(reversed(candidates.items()))) == shown  # whatever the order found


def test_a_disagreeing_direction_is_added_to_the_note():
    assert choose_note({Note.SAMPLED: SAMPLED}, DIRECTION) == f"{SAMPLED}; {DIRECTION}"
    assert choose_note({Note.KINKS: KINKS, Note.SAMPLED: SAMPLED}, DIRECTION) == (
        f"{KINKS}; {DIRECTION}"
    )
    assert choose_note({}, DIRECTION) == DIRECTION
