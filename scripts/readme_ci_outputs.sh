#!/usr/bin/env bash
# The outputs the README's "In CI" section shows, as it shows them (80 columns, no colour),
# into OUT (default /tmp/gen): run from the repository root in the project's venv, then paste.
set -u
export COLUMNS=80 NO_COLOR=1
OUT=${1:-/tmp/gen}
mkdir -p "$OUT"
ROOT=$(pwd)
cd examples/ci && rm -rf reports
gradtool check > "$OUT/check.txt" 2>&1
rm -f "$OUT/sum.md"
GITHUB_STEP_SUMMARY="$OUT/sum.md" gradtool check --format github --junit reports/check.xml \
    > "$OUT/gh.txt" 2>&1
python read_junit.py reports/check.xml > "$OUT/junit.txt"
python -m pytest --gradtool -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
rm -rf reports
cd "$ROOT"
/usr/bin/time -f "wall %e s" gradtool check tests/stopping/fixtures/stalls.py:Sleeps \
    --timeout 5 --json "$OUT/stall.json" > "$OUT/timeout.txt" 2>&1
