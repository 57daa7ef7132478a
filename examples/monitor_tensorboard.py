"""The Monitor writing TensorBoard scalars from your own loop: per recorded step, each layer's
gradient norm and update/weight ratio, each activation's dead (or saturated) fraction, and the
number of findings. Run it, then `tensorboard --logdir runs`:

    pip install 'gradtool[tensorboard]'
    python examples/monitor_tensorboard.py
"""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn import functional as F

import gradcheck_tool

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))

with gradcheck_tool.Monitor(model, every=10, tensorboard="runs/gradtool") as mon:
    for step in range(100):
        batch = torch.randint(0, 256, (32,))
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
        if (step + 1) % 50 == 0:
            mon.flow_report()  # where your loop logs: the steps so far reach TensorBoard now

# what TensorBoard will show, read back from the event file
events = EventAccumulator("runs/gradtool")
events.Reload()
for tag in events.Tags()["scalars"]:
    points = events.Scalars(tag)
    print(f"{tag:<34} {len(points):>2} points, step {points[-1].step:>2}: {points[-1].value:.3g}")
