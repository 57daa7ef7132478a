"""A LightningModule trained with Adam at lr 0.1, a hundred times the usual 1e-3. Its
training_step calls the encoder and the head, never the module itself; the callback records
every 5th batch all the same, logs gradtool/... scalars through the trainer's logger, and
prints what it found when training ends. Run it:

    pip install 'gradtool[lightning]'
    python examples/lightning_gradflow.py
"""

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from gradcheck_tool.integrations.lightning import GradFlowCallback


class Classifier(L.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.head(self.encoder(x)), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


torch.manual_seed(0)
x, y = torch.randn(2048, 20), torch.randint(0, 5, (2048,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)

trainer = L.Trainer(
    max_epochs=1,
    callbacks=[GradFlowCallback(every=5, json="gradflow.json")],
    logger=L.pytorch.loggers.CSVLogger("logs"),
    enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(Classifier(lr=0.1), loader)
