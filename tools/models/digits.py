"""The embedded default: a small ResNet trained on scikit-learn's handwritten digits (8x8).

Training takes seconds on 2 cores; the weights are cached (keyed by the recipe) so later runs
load them. A cache file that cannot be read is reported with its path and rebuilt."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from lcpaq.ir.fileio import atomic_torch_save, cache_dir
from lcpaq.tools.models.resnet import ResNet, resnet_digits


@dataclass(frozen=True)
class DigitsRecipe:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    version: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(seed: int = 0) -> DigitsData:
    """1797 images, split 80/20 stratified; pixels scaled to [0, 1] and standardised."""
    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
    mean, std = x_tr.mean(), x_tr.std()
    prep = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1)  # noqa: E731
    return DigitsData(prep(x_tr), torch.from_numpy(y_tr).long(), prep(x_te), torch.from_numpy(y_te).long())


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def train(data: DigitsData, recipe: DigitsRecipe, progress: bool = False) -> ResNet:
    torch.manual_seed(recipe.seed)
    model = resnet_digits()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay, nesterov=True)
    steps = recipe.epochs * ((len(data.x_train) + recipe.batch_size - 1) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for _ in tqdm(range(recipe.epochs), desc="train resnet-digits", disable=not progress, leave=False):
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def trained_model(recipe: DigitsRecipe = DigitsRecipe(), progress: bool = False) -> ResNet:
    """The trained default model, from the cache when there is a readable entry."""
    path = cache_dir() / f"resnet-digits-{recipe.key()}.pt"
    model = resnet_digits()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception as exc:  # a truncated or foreign file: say so, then rebuild it
            warnings.warn(f"cached weights {path} are unreadable ({type(exc).__name__}); retraining", stacklevel=2)
    model = train(load_data(recipe.seed), recipe, progress)
    atomic_torch_save(path, model.state_dict())
    return model
