"""GradFlowCallback inside a real transformers.Trainer (CPU, a tiny randomly initialised BERT,
a few steps): the scalars in the Trainer's logs are the report's own numbers, a too large
learning rate is found (and fails the run with fail_on), no hook is left, and gradtool's own
failure never breaks training."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from trainer_support import global_hooks, library, module_hooks

from gradcheck_tool.engines.flow.findings import rule_for
from gradcheck_tool.engines.flow.findings._rule import Severity

transformers = library("transformers")
from gradcheck_tool.integrations.transformers import GradFlowCallback, GradFlowFailed  # noqa: E402

STEPS = 6


def _model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def _data() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (32, 8), generator=g)
    mask = torch.ones(8, dtype=torch.long)
    return [{"input_ids": i, "attention_mask": mask, "labels": i[0] % 2} for i in ids]


def _train(model, callback, tmp_path, lr=1e-3, max_steps=STEPS):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=lr,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_data(), callbacks=[callback]
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="transformers")
        warnings.filterwarnings("ignore", module="accelerate")
        trainer.train()
    return trainer


def test_a_healthy_run_logs_the_reports_numbers(tmp_path, capsys):
    before = global_hooks()
    model = _model()
    cb = GradFlowCallback(every=1, json=str(tmp_path / "flow.json"), tensorboard=tmp_path / "tb")
    trainer = _train(model, cb, tmp_path)
    assert global_hooks() == before and module_hooks(model) == 0
    report = cb.report
    assert report.steps == report.steps_seen == STEPS
    assert not [f for f in report.findings if rule_for(f.kind).severity is Severity.ERROR]
    out = capsys.readouterr().out
    assert "findings" in out  # the table's findings panel
    # the console's log lines (PrinterCallback, after ours) get the counts, not a line per layer
    assert "'gradtool/findings'" in out and "gradtool/grad_norm" not in out
    assert json.loads((tmp_path / "flow.json").read_text())["steps"] == STEPS
    history = {h.step: dict(h.rows) for h in report.history}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for entry in logged:
        step = entry["step"]
        # at a logging step: that step's gradients, and the update ratios of the step
        # before it (this step's optimizer step is read back at the next report)
        for key, row in history[step].items():
            if row.grad_norm is not None:
                assert entry[f"gradtool/grad_norm/{key}"] == row.grad_norm
        for key, row in history[step - 1].items():
            if row.update_ratio is not None:
                assert entry[f"gradtool/update_ratio/{key}"] == row.update_ratio
        assert entry["gradtool/findings"] >= 0
    # every recorded step in TensorBoard too, update ratios included
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    points = acc.Scalars("gradtool/update_ratio/classifier")
    assert [p.step for p in points] == list(range(1, STEPS + 1))
    assert [p.value for p in points] == pytest.approx(
        [history[s]["classifier"].update_ratio for s in range(1, STEPS + 1)], rel=1e-6
    )


def test_fail_on_stops_a_too_large_learning_rate(tmp_path, capsys):
    model = _model()
    cb = GradFlowCallback(every=1, fail_on=["update_too_large"], json=str(tmp_path / "f.json"))
    with pytest.raises(GradFlowFailed, match="update_too_large"):
        _train(model, cb, tmp_path, lr=1.0, max_steps=40)
    assert cb.report.failed_kinds == ("update_too_large",)
    assert cb.report.steps_seen < 40  # stopped at the logging step that first showed it
    assert json.loads((tmp_path / "f.json").read_text())["failed_kinds"] == ["update_too_large"]
    assert "update_too_large" in capsys.readouterr().out
    assert module_hooks(model) == 0


def test_gradtools_own_failure_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    from gradcheck_tool.engines.flow.monitor import Monitor

    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Monitor, "flow_report", broken)
    before = global_hooks()
    model = _model()
    cb = GradFlowCallback(every=1)
    with pytest.warns(RuntimeWarning) as record:
        trainer = _train(model, cb, tmp_path)
    messages = [str(w.message) for w in record]
    assert any("GradFlowCallback failed while making its report" in m for m in messages)
    # (its Monitor's exit tries once more for the last scalars, and says so)
    assert all("boom" in m for m in messages)
    assert trainer.state.global_step == STEPS
    assert cb.report is None
    assert global_hooks() == before and module_hooks(model) == 0


def test_bad_options_are_refused_before_training(tmp_path):
    from gradcheck_tool.errors import OptionError

    with pytest.raises(OptionError, match="unknown finding kind"):
        GradFlowCallback(fail_on="nan,exploded")
    with pytest.raises(OptionError, match="every"):
        GradFlowCallback(every=0)
    with pytest.raises(OptionError, match="does not exist"):
        GradFlowCallback(json=str(tmp_path / "missing" / "f.json"))
