#!/usr/bin/env bash
# The outputs and images the README's "What backprop costs and where it flows" section shows,
# as it shows them (80 columns, no colour): text into OUT (default /tmp/gen15), images into
# docs/images/. Run from the repository root in the project's venv (Graphviz's dot and
# Debian's chromium + chromium-driver for the images; selenium from the test extra), then paste.
set -u
export COLUMNS=80 NO_COLOR=1
OUT=${1:-/tmp/gen15}
mkdir -p "$OUT" docs/images
run() {  # run NAME COMMAND...: "$ COMMAND", its output and its exit code into OUT/NAME.txt
    local name=$1; shift
    { echo "\$ $*"; "$@" 2>&1; local rc=$?; echo "\$ echo \$?"; echo $rc; } > "$OUT/$name.txt"
}
run memory_attention gradtool memory sample_models/attention_block.py --apply-checkpoint \
    --plot docs/images/memory_attention_block.png
run memory_cnn gradtool memory sample_models/wide_cnn.py --apply-checkpoint
run memory_t12 gradtool memory sample_models/transformer12.py --apply-checkpoint
run memory_side gradtool memory tests/fixtures/memory/side_effect_block.py --apply-checkpoint \
    --checkpoint block
run memory_shared gradtool memory tests/fixtures/memory/wrong_grad.py --apply-checkpoint \
    --checkpoint block
run memory_badname gradtool memory sample_models/transformer12.py --apply-checkpoint \
    --checkpoint encoder.layers.0-13
run graph_detached gradtool graph sample_models/detached_branch.py --dot "$OUT/detached.dot" \
    --png docs/images/graph_detached_branch.png --html "$OUT/detached.html"
run graph_t12 gradtool graph sample_models/transformer12.py \
    --png docs/images/graph_transformer12.png --html "$OUT/transformer12.html"
run graph_flow gradtool graph sample_models/dead_relu_mlp.py --flow --png "$OUT/dead.png"
gradtool graph sample_models/detached_branch.py --flow --html "$OUT/detached_flow.html" \
    > /dev/null 2>&1
mkdir -p "$OUT/nodot"
run graph_nodot env PATH="$OUT/nodot:$(dirname "$(command -v python)")" \
    gradtool graph sample_models/detached_branch.py --svg "$OUT/x.svg"
# the pages as headless Chromium draws them (the same driver as tests/graph/test_html_page.py)
python - "$OUT" <<'PY'
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

out = Path(sys.argv[1])
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    for page, image in (("detached_flow.html", "graph_html_detached_flow.png"),
                        ("transformer12.html", "graph_html_transformer12.png")):
        driver.get((out / page).resolve().as_uri())
        driver.implicitly_wait(2)
        driver.find_element("css selector", "svg")
        driver.save_screenshot(str(Path("docs/images") / image))
finally:
    driver.quit()
PY
sed -i "s#$OUT/#/tmp/#g" "$OUT"/*.txt
