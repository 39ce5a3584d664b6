"""The data of the reduced Lightning examples: scikit-learn's bundled 8x8 digits (no download) in MNIST's place.

``digits(train=...)`` stands in for ``torchvision.datasets.MNIST(root, train=..., transform=...)``: a map-style
dataset of ``(1x8x8 float image, label)`` pairs, normalised as the MNIST transform does (here with the digits' own
mean and std), with a fixed stratified 80/20 split.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset


def digits(train: bool = True) -> TensorDataset:
    images, labels = load_digits(return_X_y=True)
    images = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(labels, dtype=torch.long)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=labels.numpy())
    index = torch.tensor(train_idx if train else test_idx)
    return TensorDataset(images[index], labels[index])
