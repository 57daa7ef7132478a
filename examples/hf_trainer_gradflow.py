"""A tiny randomly initialised BERT fine-tuned by the Hugging Face Trainer, with gradtool's
callback recording every 2nd step: the gradtool/... scalars join the Trainer's logs at its
logging steps, and the report is written when training ends. Run it:

    pip install 'gradtool[transformers]'
    python examples/hf_trainer_gradflow.py
"""

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from gradcheck_tool.integrations.transformers import GradFlowCallback

torch.manual_seed(0)
config = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
    num_labels=2,
)
model = BertForSequenceClassification(config)
ids = torch.randint(0, 64, (256, 12))
data = [{"input_ids": i, "labels": int(i[0] < 32)} for i in ids]  # label: the first token

args = TrainingArguments(
    output_dir="hf-out",
    max_steps=40,
    per_device_train_batch_size=16,
    learning_rate=1e-3,
    logging_steps=10,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
)
flow = GradFlowCallback(every=2, json="gradflow.json", print_report=False)
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[flow])
trainer.train()

for entry in trainer.state.log_history:
    if "loss" in entry:
        print(
            f"step {entry['step']:>2}: loss {entry['loss']:.3f}, "
            f"classifier grad norm {entry['gradtool/grad_norm/classifier']:.2e}, "
            f"update/weight {entry['gradtool/update_ratio/classifier']:.2e}, "
            f"findings {entry['gradtool/findings']:.0f}"
        )
report = flow.report
print(f"{report.steps} of {report.steps_seen} steps recorded; findings: {list(report.kinds)}")
