"""PLACEHOLDER until the stopping helper's module is merged."""

from __future__ import annotations

import contextlib


class _State:
    reason = None


@contextlib.contextmanager
def bounded(timeout):
    yield _State()
