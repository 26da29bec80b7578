"""Running a trained model: its device, eval mode, predictions and accuracy. Below training and
data in the house, so that choosing a batch by the model's predictions needs no training code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from oamip.errors import InvalidInputError

EVAL_BATCH_SIZE = 1024


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; a clear error for anything but a usable CPU or GPU."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device '{device}'; use cpu or cuda") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"unsupported device '{device}'; use cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device '{device}' was requested but torch sees no CUDA GPU (no GPU, or a CPU-only "
            "torch build); use --device cpu"
        )
    return resolved


@torch.no_grad()
def logits(model: nn.Module, x: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The outputs of every input, computed in eval mode on the model's own device."""
    device = model_device(model)
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with eval_mode(model):
        outputs = [model(chunk.to(device)).cpu() for chunk in inputs.split(batch_size)]
    return torch.cat(outputs).numpy()


def predict(model: nn.Module, x: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The predicted class of every input, computed in eval mode on the model's own device."""
    return logits(model, x, batch_size).argmax(1)


def margins(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each input's margin: its label's output less the largest other output (negative where
    the input is misclassified)."""
    out = logits(model, x)
    rows = np.arange(len(out))
    label = out[rows, np.asarray(y)]
    out[rows, np.asarray(y)] = -np.inf
    return label - out.max(1)


def correct(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per input, whether the model classifies it correctly (booleans)."""
    return predict(model, x) == np.asarray(y)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: str | torch.device | None = None
) -> float:
    """The fraction of inputs classified correctly; ``device`` (if given) moves the model there."""
    if device is not None:
        model.to(resolve_device(device))
    return float(np.mean(correct(model, x, y)))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with every submodule in eval mode, then give each its own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
