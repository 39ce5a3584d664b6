"""Lightning's own example modules, in reduced form, run under fabric_lite.trainer with only the import changed.

Each module below is written as Lightning's repository and docs write it (README autoencoder, the basic GAN
example, the manual-optimization BoringModel with ``opt.step(closure)``, the LR warm-up ``optimizer_step``
override), shrunk to small synthetic tensors. The one line that differs from a Lightning script is the import:

    # from lightning.pytorch import LightningModule, Trainer      <- the only difference
    from fabric_lite.trainer import LightningModule, Trainer

Each test collects the per-step losses inside the module and checks them against a raw PyTorch loop that does the
same steps from the same seed (torch.allclose at a tight tolerance), plus the final weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# from lightning.pytorch import LightningModule, Trainer  # the only difference from a Lightning script
from fabric_lite.trainer import LightningModule, Trainer

TIGHT = dict(rtol=1e-6, atol=1e-7)


def _trainer(tmp_path: Any, **kwargs: Any) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, default_root_dir=str(tmp_path), **kwargs)


def _images(n: int = 32, side: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, side, side, generator=g), torch.randint(0, 10, (n,), generator=g))


def _assert_same(trainer_losses: list[torch.Tensor], raw_losses: list[torch.Tensor], model: nn.Module, raw: nn.Module) -> None:
    assert len(trainer_losses) == len(raw_losses) > 0
    assert torch.allclose(torch.stack(trainer_losses), torch.stack(raw_losses), **TIGHT), (trainer_losses, raw_losses)
    for (name, a), b in zip(model.state_dict().items(), raw.state_dict().values()):
        assert torch.allclose(a, b, **TIGHT), name


# ---------------------------------------------------------------------------------------------- 1. README autoencoder
class LitAutoEncoder(LightningModule):
    def __init__(self, side: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(side * side, 16), nn.ReLU(), nn.Linear(16, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, side * side))
        self.losses: list[torch.Tensor] = []

    def forward(self, x):
        return self.encoder(x)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        self.losses.append(loss.detach().clone())
        return loss

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        loss = F.mse_loss(self.decoder(self.encoder(x)), x)
        self.log("val_loss", loss)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_readme_autoencoder_matches_a_raw_loop(tmp_path):
    torch.manual_seed(0)
    model = LitAutoEncoder()
    torch.manual_seed(0)
    raw = LitAutoEncoder()
    train, val = DataLoader(_images(32), batch_size=8), DataLoader(_images(16, seed=1), batch_size=8)

    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, train, val)

    optimizer = torch.optim.Adam(raw.parameters(), lr=1e-3)
    raw_losses = []
    for _ in range(2):
        for x, _y in train:
            x = x.view(x.size(0), -1)
            loss = F.mse_loss(raw.decoder(raw.encoder(x)), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            raw_losses.append(loss.detach())
    _assert_same(model.losses, raw_losses, model, raw)
    assert trainer.global_step == 8 and "val_loss" in trainer.callback_metrics


# ---------------------------------------------------------------------------------------------- 2. basic GAN example
class Generator(nn.Module):
    def __init__(self, latent_dim: int, img_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.img_shape = img_shape
        self.model = nn.Sequential(nn.Linear(latent_dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, int(torch.tensor(img_shape).prod())),
                                   nn.Tanh())

    def forward(self, z):
        return self.model(z).view(z.size(0), *self.img_shape)


class Discriminator(nn.Module):
    def __init__(self, img_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(int(torch.tensor(img_shape).prod()), 16), nn.LeakyReLU(0.2), nn.Linear(16, 1),
                                   nn.Sigmoid())

    def forward(self, img):
        return self.model(img.view(img.size(0), -1))


class GAN(LightningModule):
    def __init__(self, channels: int = 1, width: int = 8, height: int = 8, latent_dim: int = 4, lr: float = 0.0002,
                 b1: float = 0.5, b2: float = 0.999, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        data_shape = (channels, width, height)
        self.generator = Generator(latent_dim=self.hparams.latent_dim, img_shape=data_shape)
        self.discriminator = Discriminator(img_shape=data_shape)
        self.losses: list[torch.Tensor] = []

    def forward(self, z):
        return self.generator(z)

    def adversarial_loss(self, y_hat, y):
        return F.binary_cross_entropy(y_hat, y)

    def training_step(self, batch):  # no batch_idx, as in Lightning's GAN example
        imgs, _ = batch
        optimizer_g, optimizer_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.hparams.latent_dim)
        z = z.type_as(imgs)

        # train generator
        self.toggle_optimizer(optimizer_g)
        self.generated_imgs = self(z)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        g_loss = self.adversarial_loss(self.discriminator(self(z)), valid)
        self.log("g_loss", g_loss, prog_bar=True)
        self.manual_backward(g_loss)
        optimizer_g.step()
        optimizer_g.zero_grad()
        self.untoggle_optimizer(optimizer_g)

        # train discriminator
        self.toggle_optimizer(optimizer_d)
        real_loss = self.adversarial_loss(self.discriminator(imgs), valid)
        fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
        fake_loss = self.adversarial_loss(self.discriminator(self(z).detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        self.log("d_loss", d_loss, prog_bar=True)
        self.manual_backward(d_loss)
        optimizer_d.step()
        optimizer_d.zero_grad()
        self.untoggle_optimizer(optimizer_d)
        self.losses += [g_loss.detach(), d_loss.detach()]

    def configure_optimizers(self):
        lr, b1, b2 = self.hparams.lr, self.hparams.b1, self.hparams.b2
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(b1, b2))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(b1, b2))
        return [opt_g, opt_d], []


def test_gan_example_with_manual_optimization_matches_a_raw_loop(tmp_path):
    torch.manual_seed(0)
    model = GAN(lr=0.01)
    torch.manual_seed(0)
    raw = GAN(lr=0.01)
    data = DataLoader(_images(24), batch_size=8)

    trainer = _trainer(tmp_path, max_epochs=2)
    torch.manual_seed(1)
    trainer.fit(model, data)

    opt_g = torch.optim.Adam(raw.generator.parameters(), lr=0.01, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(raw.discriminator.parameters(), lr=0.01, betas=(0.5, 0.999))
    torch.manual_seed(1)
    raw_losses = []
    for _ in range(2):
        for imgs, _y in data:
            z = torch.randn(imgs.shape[0], 4)
            valid, fake = torch.ones(imgs.size(0), 1), torch.zeros(imgs.size(0), 1)
            raw.discriminator.requires_grad_(False)
            raw.generator(z)
            g_loss = F.binary_cross_entropy(raw.discriminator(raw.generator(z)), valid)
            g_loss.backward()
            opt_g.step()
            opt_g.zero_grad()
            raw.discriminator.requires_grad_(True)
            raw.generator.requires_grad_(False)
            d_loss = (F.binary_cross_entropy(raw.discriminator(imgs), valid)
                      + F.binary_cross_entropy(raw.discriminator(raw.generator(z).detach()), fake)) / 2
            d_loss.backward()
            opt_d.step()
            opt_d.zero_grad()
            raw.generator.requires_grad_(True)
            raw_losses += [g_loss.detach(), d_loss.detach()]
    _assert_same(model.losses, raw_losses, model, raw)
    assert trainer.global_step == 12  # two optimizer steps per batch, counted as Lightning counts them
    assert all(p.requires_grad for p in model.parameters())  # untoggled


# ---------------------------------------------------------------------------------------------- 3. manual BoringModel
class RandomDataset(torch.utils.data.Dataset):
    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size, generator=torch.Generator().manual_seed(2))

    def __getitem__(self, index):
        return self.data[index]

    def __len__(self):
        return self.len


class ManualOptimBoringModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(32, 2)
        self.losses: list[torch.Tensor] = []

    def forward(self, x):
        return self.layer(x)

    def loss(self, preds, labels=None):
        if labels is None:
            labels = torch.ones_like(preds)
        return F.mse_loss(preds, labels)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()

        def closure():
            loss = self.loss(self(batch))
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
            self.losses.append(loss.detach())
            return loss

        opt.step(closure=closure)

    def on_train_epoch_end(self):
        self.lr_schedulers().step()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def test_manual_optimization_boring_model_with_a_closure_matches_a_raw_loop(tmp_path):
    torch.manual_seed(0)
    model = ManualOptimBoringModel()
    torch.manual_seed(0)
    raw = ManualOptimBoringModel()
    data = DataLoader(RandomDataset(32, 32), batch_size=4)

    trainer = _trainer(tmp_path, max_epochs=3, limit_train_batches=5)
    trainer.fit(model, data)

    optimizer = torch.optim.SGD(raw.layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    raw_losses = []
    for _ in range(3):
        for index, batch in enumerate(data):
            if index == 5:
                break

            def closure(batch=batch):
                loss = F.mse_loss(raw.layer(batch), torch.ones(batch.size(0), 2))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(raw.layer.parameters(), 0.5)
                raw_losses.append(loss.detach())
                return loss

            optimizer.step(closure)
        scheduler.step()
    _assert_same(model.losses, raw_losses, model, raw)
    assert trainer.global_step == 15 and model.optimizers().param_groups[0]["lr"] == 0.1 * 0.5 ** 3


# ---------------------------------------------------------------------------------------------- 4. LR warm-up override
class WarmUpModel(LightningModule):
    def __init__(self, learning_rate: float = 0.1, warmup_steps: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(32, 2)
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.layer(batch), torch.ones(batch.size(0), 2))
        self.losses.append(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate, momentum=0.9)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        # update params
        optimizer.step(closure=optimizer_closure)

        # manually warm up lr without a scheduler
        if self.trainer.global_step < self.hparams.warmup_steps:
            lr_scale = min(1.0, float(self.trainer.global_step + 1) / self.hparams.warmup_steps)
            for pg in optimizer.param_groups:
                pg["lr"] = lr_scale * self.hparams.learning_rate


def test_lr_warm_up_optimizer_step_override_with_accumulation_matches_a_raw_loop(tmp_path):
    torch.manual_seed(0)
    model = WarmUpModel()
    torch.manual_seed(0)
    raw = WarmUpModel()
    data = DataLoader(RandomDataset(32, 36), batch_size=4)  # 9 batches: windows of 2, the last one of 1

    trainer = _trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(model, data)

    optimizer = torch.optim.SGD(raw.parameters(), lr=0.1, momentum=0.9)
    raw_losses, step = [], 0
    for _ in range(2):
        for index, batch in enumerate(data):
            loss = F.mse_loss(raw.layer(batch), torch.ones(batch.size(0), 2))
            (loss / 2).backward()  # Lightning divides the loss by accumulate_grad_batches
            raw_losses.append(loss.detach())
            if (index + 1) % 2 == 0 or index + 1 == len(data):
                optimizer.step()
                if step < 4:
                    for pg in optimizer.param_groups:
                        pg["lr"] = min(1.0, float(step + 1) / 4) * 0.1
                step += 1
                optimizer.zero_grad()
    _assert_same(model.losses, raw_losses, model, raw)
    assert trainer.global_step == step == 10
