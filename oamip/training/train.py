"""Training, fine-tuning and evaluation of the torch models that get pruned.

Training uses Adam on the cross-entropy loss, one seed for initial shuffling and every random
draw, and a tqdm progress bar. Fine-tuning keeps pruned units at exactly zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oamip import checks
from oamip.adapters.structure import row_groups
from oamip.errors import InvalidInputError
from oamip.progress import Listener, Task, listener_for
from oamip.training.inference import model_device, resolve_device

if TYPE_CHECKING:
    from oamip.training.data import Dataset

DEFAULT_LR = 1e-3
DEFAULT_BATCH_SIZE = 64

# A parameter and the indices of its pruned rows.
_PrunedRows = tuple[torch.Tensor, torch.Tensor]


def train(
    model: nn.Module,
    dataset: Dataset,
    epochs: int = 10,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | Listener = True,
    shift: int = 0,
    cosine: bool = False,
) -> nn.Module:
    """Train ``model`` in place on the training split; returns it on ``device``, in eval mode.

    ``shift > 0`` augments image batches by random translations of up to ``shift`` pixels;
    ``cosine`` decays the learning rate to 0 over the run (one cosine half-period).
    """
    return _fit(
        model,
        dataset,
        epochs,
        lr,
        batch_size,
        seed,
        device,
        progress,
        "train",
        None,
        shift,
        cosine=cosine,
    )


def train_penalised(
    model: nn.Module,
    dataset: Dataset,
    penalty: Callable[[], torch.Tensor],
    epochs: int,
    lr: float,
    seed: int = 0,
    progress: bool | Listener = True,
    desc: str = "train+penalty",
) -> float:
    """Adam on cross-entropy plus ``penalty()``, ``lr`` cosine-decayed to 0; returns seconds.

    The model trains on its own device and ends in eval mode. The decay lets groups that the
    penalty pulls to zero settle there instead of oscillating at the step size.
    """
    start = time.perf_counter()
    device = model_device(model)
    _fit(
        model,
        dataset,
        epochs,
        lr,
        DEFAULT_BATCH_SIZE,
        seed,
        device,
        progress,
        desc,
        None,
        penalty=penalty,
        cosine=True,
    )
    return time.perf_counter() - start


def finetune(
    model: nn.Module,
    dataset: Dataset,
    masks: dict[str, np.ndarray],
    epochs: int = 1,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | Listener = True,
) -> nn.Module:
    """Train ``model`` in place while the units that ``masks`` prune (False) stay exactly zero.

    After every optimiser step the pruned rows of the layer's weight and bias, and of a BatchNorm
    directly following the layer, are set back to zero, so pruned units output exactly 0.
    """
    model.to(resolve_device(device))
    rows = _pruned_rows(model, masks)
    _zero_rows(rows)
    after_step = partial(_zero_rows, rows)
    return _fit(
        model, dataset, epochs, lr, batch_size, seed, device, progress, "finetune", after_step
    )


def _fit(
    model: nn.Module,
    dataset: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | torch.device,
    progress: bool | Listener,
    desc: str,
    after_step: Callable[[], None] | None,
    shift: int = 0,
    penalty: Callable[[], torch.Tensor] | None = None,
    cosine: bool = False,
) -> nn.Module:
    _check_settings(epochs, lr, batch_size)
    target = resolve_device(device)
    model.to(target)
    x = torch.as_tensor(dataset.x_train, device=target)
    y = torch.as_tensor(dataset.y_train, device=target)
    steps = epochs * math.ceil(len(x) / batch_size)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if cosine else None
        )
        model.train()
        with Task(listener_for(progress), desc, steps, "batch") as task:
            for _ in range(epochs):
                for batch in torch.randperm(len(x), generator=order).split(batch_size):
                    batch = batch.to(target)
                    optimizer.zero_grad()
                    inputs = _translate(x[batch], shift, order) if shift else x[batch]
                    loss = F.cross_entropy(model(inputs), y[batch])
                    if penalty is not None:
                        loss = loss + penalty()
                    loss.backward()
                    optimizer.step()
                    if schedule is not None:
                        schedule.step()
                    if after_step is not None:
                        after_step()
                    if task.listener is not None:
                        task.advance(detail=f"loss={loss.item():.4f}")
    model.eval()
    return model


def _translate(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """The batch rolled by one random (dy, dx) in ``[-shift, shift]`` (images only)."""
    if images.dim() != 4:
        raise InvalidInputError("shift augmentation needs image inputs (N, C, H, W)")
    dy, dx = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
    return torch.roll(images, (dy, dx), (2, 3))


def _check_settings(epochs: int, lr: float, batch_size: int) -> None:
    checks.whole("epochs", epochs, 0)
    checks.real("the learning rate", lr, 0.0, open_low=True)
    checks.whole("the batch size", batch_size, 1)


def _pruned_rows(model: nn.Module, masks: dict[str, np.ndarray]) -> list[_PrunedRows]:
    """For every masked unit layer: its weight, bias and following BatchNorm's scale and shift,
    with the pruned rows."""
    by_name = {unit.name: unit for unit in row_groups(model)}
    rows = []
    for name, keep in masks.items():
        unit = by_name.get(name)
        if unit is None:
            raise InvalidInputError(
                f"the masks name '{name}', which is not a unit layer of the model (a Linear or "
                f"Conv2d followed by an activation); its unit layers: {list(by_name)}; use masks "
                "computed for this model"
            )
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (unit.size,):
            raise InvalidInputError(
                f"the mask of '{name}' has shape {keep.shape} but the layer has {unit.size} "
                "units; use masks computed for this model"
            )
        pruned = torch.as_tensor(np.flatnonzero(~keep), device=unit.params[0].device)
        rows += [(param, pruned) for param in unit.params]
    return rows


@torch.no_grad()
def _zero_rows(rows: list[_PrunedRows]) -> None:
    for param, pruned in rows:
        param.index_fill_(0, pruned, 0.0)
