"""The Trainer on a CUDA GPU against lightning.pytorch itself: the same modules, the import swapped, the same losses.

Run on a machine with a GPU and ``lightning`` installed (the lent GPU machine has both):

    python scripts/check_trainer_cuda.py [--out results.json]

For each module (Lightning's autoencoder, the GAN with manual optimisation and ``training_step(self, batch)``, an
LR warm-up ``optimizer_step`` override with gradient accumulation) and each precision (32-true, bf16-mixed, 16-mixed
with a GradScaler) it fits the module once with ``lightning.pytorch.Trainer`` and once with
``fabric_lite.trainer.Trainer`` from the same seed and prints the largest difference of the per-step losses. It also
fits with ``profiler="pytorch"`` (the trace must hold CUDA kernels) and logs a torchmetrics Accuracy on the GPU.
Exits non-zero when a comparison is outside its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

STEPS_DATA = 512  # 16 batches of 32


def make_modules(L: SimpleNamespace) -> dict[str, type]:
    """The three modules, written as Lightning users write them, on framework ``L`` (its LightningModule)."""

    class AutoEncoder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
            self.decoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64))
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            x, _ = batch
            loss = nn.functional.mse_loss(self.decoder(self.encoder(x)), x)
            self.losses.append(loss.item())
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class GAN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.generator = nn.Sequential(nn.Linear(16, 64), nn.Tanh())
            self.discriminator = nn.Sequential(nn.Linear(64, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
            self.losses: list[float] = []

        def training_step(self, batch):  # no batch_idx, as in Lightning's GAN example
            x, _ = batch
            opt_g, opt_d = self.optimizers()
            z = torch.randn(x.shape[0], 16, device=self.device, generator=None)
            ones = torch.ones(x.shape[0], 1, device=self.device)
            self.toggle_optimizer(opt_g)
            g_loss = nn.functional.binary_cross_entropy_with_logits(self.discriminator(self.generator(z)), ones)
            self.manual_backward(g_loss)
            opt_g.step()
            opt_g.zero_grad()
            self.untoggle_optimizer(opt_g)
            self.toggle_optimizer(opt_d)
            real = nn.functional.binary_cross_entropy_with_logits(self.discriminator(x), ones)
            fake = nn.functional.binary_cross_entropy_with_logits(self.discriminator(self.generator(z).detach()), 0 * ones)
            d_loss = (real + fake) / 2
            self.manual_backward(d_loss)
            opt_d.step()
            opt_d.zero_grad()
            self.untoggle_optimizer(opt_d)
            self.losses += [g_loss.item(), d_loss.item()]

        def configure_optimizers(self):
            return [torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
                    torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))], []

    class WarmUp(AutoEncoder):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            optimizer.step(closure=optimizer_closure)
            if self.trainer.global_step < 5:  # Lightning's documented LR warm-up recipe
                scale = min(1.0, float(self.trainer.global_step + 1) / 5)
                for group in optimizer.param_groups:
                    group["lr"] = scale * 0.1

    return {"autoencoder": AutoEncoder, "gan": GAN, "warmup": WarmUp}


def data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS_DATA, 64, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=32)


def fit(framework: str, name: str, precision: str, root: str) -> list[float]:
    if framework == "lightning":
        import lightning.pytorch as L
    else:
        import fabric_lite.trainer as L  # the only difference: the import
    module_cls = make_modules(L)[name]
    torch.manual_seed(1)
    torch.cuda.manual_seed_all(1)
    model = module_cls()
    trainer = L.Trainer(accelerator="cuda", devices=1, precision=precision, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root, accumulate_grad_batches=2 if name == "warmup" else 1)
    trainer.fit(model, data())
    return model.losses


def profiler_and_metrics(root: str) -> dict[str, object]:
    import torchmetrics

    import fabric_lite.trainer as L
    from fabric_lite.trainer.profilers import PyTorchProfiler

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(64, 2)
            self.accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro")

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.accuracy(self.net(x).argmax(1), y)
            self.log("val_acc", self.accuracy)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    model = Classifier()
    trainer = L.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root, profiler=PyTorchProfiler(dirpath=root, filename="prof"))
    trainer.fit(model, data(), data())
    traces = sorted(Path(root).rglob("*.pt.trace.json"))
    events = json.loads(traces[-1].read_text())["traceEvents"] if traces else []
    kernels = sum(1 for e in events if e.get("cat") == "kernel")
    # the same accuracy computed by hand over the whole validation set
    with torch.no_grad():
        x, y = data().dataset.tensors
        expected = (model.net.float().cpu()(x).argmax(1) == y).float().mean().item()
    return {"trace_files": len(traces), "cuda_kernel_events": kernels, "val_acc": float(trainer.callback_metrics["val_acc"]),
            "val_acc_by_hand": expected, "metric_device": str(model.accuracy.device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import lightning

    results: dict[str, object] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                  "lightning": lightning.__version__, "fits": []}
    tolerance = {"32-true": 1e-5, "bf16-mixed": 2e-2, "16-mixed": 5e-3}
    failed = False
    with tempfile.TemporaryDirectory() as root:
        for name in ("autoencoder", "gan", "warmup"):
            for precision in ("32-true", "bf16-mixed", "16-mixed"):
                start = time.perf_counter()
                ours = fit("fabric_lite", name, precision, root)
                theirs = fit("lightning", name, precision, root)
                diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, theirs)) if ours and theirs else float("nan")
                ok = len(ours) == len(theirs) > 0 and diff <= tolerance[precision]
                failed |= not ok
                row = {"module": name, "precision": precision, "steps": len(ours), "max_rel_diff": diff,
                       "first_loss": ours[0], "last_loss": ours[-1], "ok": ok, "seconds": round(time.perf_counter() - start, 2)}
                results["fits"].append(row)  # type: ignore[union-attr]
                print(json.dumps(row), flush=True)
        extra = profiler_and_metrics(root)
        results["profiler_and_metrics"] = extra
        print(json.dumps(extra), flush=True)
        failed |= not (extra["trace_files"] and extra["cuda_kernel_events"] > 0)
        failed |= abs(extra["val_acc"] - extra["val_acc_by_hand"]) > 0.02
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print("FAILED" if failed else "ALL OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
