"""The CUDA path: the peak from torch.cuda.max_memory_allocated (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcheck_tool.engines.memory import PEAK_CUDA, run_memory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_peak_and_held_allocation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    x = torch.randn(64, 256)
    report = run_memory(model, (x,), {}, device="cuda", apply_checkpoint=True, checkpoint=["1"])
    assert report.peak_source == PEAK_CUDA
    # the step's peak holds at least the parameters, their gradients and what was saved
    assert report.peak_bytes >= report.param_bytes_total + report.saved_bytes_total
    # memory_allocated over the forward: at least what the forward left alive (the
    # allocator rounds blocks up)
    assert report.held_cuda_bytes >= report.held_bytes > 0
    assert report.checkpoint is not None and report.checkpoint.check_passed
