"""A training loop with the commonest bug there is: it never calls `opt.zero_grad()`, so each
step's gradient is added to all the previous ones. The loss still falls for a while, which is
why nobody notices. Run it:

    python examples/monitor_forgot_zero_grad.py

and the Monitor names the bug (`grad_not_zeroed`), with the steps and parameters it saw.
"""

import torch
from torch import nn
from torch.nn import functional as F

import gradcheck_tool

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))

with gradcheck_tool.Monitor(model, every=5) as mon:
    for _ in range(50):
        batch = torch.randint(0, 256, (32,))
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()  # the bug: no opt.zero_grad() before this
        opt.step()

mon.print_report()
