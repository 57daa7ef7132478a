#!/usr/bin/env bash
# The outputs the README's "Distributed training, trainers and TensorBoard" section shows, as
# it shows them (80 columns, no colour), into OUT (default /tmp/gen14): run from the
# repository root in a venv with the test extra (Lightning, transformers, tensorboard), then
# paste. The overhead figures come from `python benchmarks/bench_monitor_ddp.py` (its own
# results file in benchmarks/results/).
set -u
export COLUMNS=80 NO_COLOR=1
OUT=${1:-/tmp/gen14}
mkdir -p "$OUT"
run() {  # run NAME COMMAND...: "$ COMMAND" and its output into OUT/NAME.txt
    local name=$1; shift
    { echo "\$ $*"; "$@" 2>&1; } > "$OUT/$name.txt"
}
run torchrun_ddp python -m torch.distributed.run --nproc_per_node 2 \
    examples/torchrun_monitor.py ddp
run torchrun_fsdp2 python -m torch.distributed.run --nproc_per_node 2 \
    examples/torchrun_monitor.py fsdp
run one_process python examples/torchrun_monitor.py single
{ echo '$ diff <(gradtool flow sample_models/dead_relu_mlp.py --nproc 2) <(gradtool flow sample_models/dead_relu_mlp.py)'
  diff <(gradtool flow sample_models/dead_relu_mlp.py --nproc 2 2>&1) \
       <(gradtool flow sample_models/dead_relu_mlp.py 2>&1)
  echo '$ gradtool flow sample_models/dead_relu_mlp.py --nproc 3'
  gradtool flow sample_models/dead_relu_mlp.py --nproc 3 2>&1; } > "$OUT/nproc.txt"
run lightning python examples/lightning_gradflow.py
run hf python examples/hf_trainer_gradflow.py
run tensorboard python examples/monitor_tensorboard.py
