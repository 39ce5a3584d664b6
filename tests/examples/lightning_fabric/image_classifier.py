"""Lightning's ``examples/fabric/image_classifier/train_fabric.py``, reduced to run in seconds on a CPU.

Changes from Lightning's script: the import (``lightning.fabric`` -> ``fabric_lite``); the data (scikit-learn's 8x8
digits from ``digits_data.py`` instead of downloading MNIST with torchvision, so ``fc1`` takes 64*2*2 inputs instead
of 9216); fewer default epochs. The training code is the example's: ``Fabric()`` configured by ``fabric run``'s
flags, ``seed_everything``, ``rank_zero_first``, ``setup_dataloaders``, ``setup``, ``backward``, Adadelta with
StepLR, torchmetrics' Accuracy and the test loss summed with ``all_gather``.

Run: ``fabric run --accelerator cpu --devices 2 image_classifier.py --epochs 3``
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from digits_data import digits  # instead of torchvision's MNIST
from torch.optim.lr_scheduler import StepLR
from torchmetrics.classification import Accuracy

from fabric_lite import Fabric, seed_everything  # the one rename: was `from lightning.fabric import ...`


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 2 * 2, 128)  # 8x8 digits: 6x6 after conv1, 4x4 after conv2, 2x2 after pooling
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def run(hparams):
    # The accelerator, strategy, devices etc. come from the command line (`fabric run --help`).
    fabric = Fabric()

    seed_everything(hparams.seed)  # instead of torch.manual_seed(...)

    # Rank 0 first (where the example downloads MNIST), then everyone loads the data.
    with fabric.rank_zero_first(local=False):
        train_dataset = digits(train=True)
        test_dataset = digits(train=False)

    train_loader = torch.utils.data.DataLoader(train_dataset, batch_size=hparams.batch_size)
    test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=hparams.batch_size)
    train_loader, test_loader = fabric.setup_dataloaders(train_loader, test_loader)

    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=hparams.lr)
    model, optimizer = fabric.setup(model, optimizer)
    scheduler = StepLR(optimizer, step_size=1, gamma=hparams.gamma)

    test_acc = Accuracy(task="multiclass", num_classes=10).to(fabric.device)

    for epoch in range(1, hparams.epochs + 1):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            fabric.backward(loss)  # instead of loss.backward()
            optimizer.step()
            if (batch_idx == 0) or ((batch_idx + 1) % hparams.log_interval == 0):
                print(
                    f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}"
                    f" ({100.0 * batch_idx / len(train_loader):.0f}%)]\tLoss: {loss.item():.6f}"
                )
                if hparams.dry_run:
                    break
        scheduler.step()

        model.eval()
        test_loss = 0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()
                test_acc(output, target)
                if hparams.dry_run:
                    break

        # all_gather aggregates the value across processes
        test_loss = fabric.all_gather(test_loss).sum() / len(test_loader.dataset)

        print(f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: ({100 * test_acc.compute():.0f}%)\n")
        test_acc.reset()

        if hparams.dry_run:
            break

    if hparams.save_model:
        fabric.save(model.state_dict(), "mnist_cnn.pt")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fabric MNIST Example (digits)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N")
    parser.add_argument("--epochs", type=int, default=3, metavar="N")
    parser.add_argument("--lr", type=float, default=1.0, metavar="LR")
    parser.add_argument("--gamma", type=float, default=0.7, metavar="M")
    parser.add_argument("--dry-run", action="store_true", default=False)
    parser.add_argument("--seed", type=int, default=1, metavar="S")
    parser.add_argument("--log-interval", type=int, default=10, metavar="N")
    parser.add_argument("--save-model", action="store_true", default=False)
    hparams = parser.parse_args()

    run(hparams)
