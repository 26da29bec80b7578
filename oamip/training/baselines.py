"""Importance criteria to compare the MIP's scores with: random, magnitude, SNIP, Taylor.

Each criterion returns a scores dict like the MIP's (layer name -> one value per unit, higher means
more important) for the scored layers: every Linear and Conv2d but the last one, in module order.
None of them changes the model: gradients are taken with respect to detached copies of the
parameters, and the train/eval mode is restored. :func:`masks_like` turns scores into masks that
prune as many units per layer as the MIP's masks do, the paper's comparison protocol.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from oamip.errors import InvalidInputError
from oamip.training.train import eval_mode, model_device

Scores = dict[str, np.ndarray]
Masks = dict[str, np.ndarray]


def scored_layers(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """Every Linear and Conv2d layer except the last one (the output layer), in module order."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[:-1]


def random_scores(model: nn.Module, seed: int = 0) -> Scores:
    """Uniform random scores in [0, 1), the same for the same seed."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(layer.weight.shape[0]) for name, layer in scored_layers(model)}


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> Scores:
    """The L2 norm of each unit's incoming weights and bias."""
    return {name: _to_numpy(_unit_norms(layer)) for name, layer in scored_layers(model)}


def snip_scores(
    model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> Scores:
    """SNIP connection sensitivity ``|w * dL/dw|`` summed over each unit's weights and bias.

    ``L`` is the mean cross-entropy on ``(x, y)``, computed in eval mode.
    """
    layers = scored_layers(model)
    params = _detached_params(model)
    with eval_mode(model):
        logits = functional_call(model, params, (_inputs(model, x),))
    loss = F.cross_entropy(logits, _labels(model, y))
    scores = {}
    for name, layer in layers:
        keys = [f"{name}.weight"] + ([f"{name}.bias"] if layer.bias is not None else [])
        grads = torch.autograd.grad(loss, [params[k] for k in keys], retain_graph=True)
        saliency = sum(
            _per_unit_sum((params[k] * g).abs()) for k, g in zip(keys, grads, strict=True)
        )
        scores[name] = _to_numpy(saliency)
    return scores


def taylor_scores(
    model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> Scores:
    """First-order Taylor importance: ``|sum over positions of a * dL/da|``, averaged over samples.

    ``a`` is the layer's output for one sample and ``L`` that sample's cross-entropy, so the sum is
    the first-order estimate of the loss change when the unit is switched off (eval mode).
    """
    layers = scored_layers(model)
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, layer in layers
    ]
    try:
        with eval_mode(model):
            logits = functional_call(model, _detached_params(model), (_inputs(model, x),))
    finally:
        for hook in hooks:
            hook.remove()
    loss = F.cross_entropy(logits, _labels(model, y), reduction="sum")
    grads = torch.autograd.grad(loss, [outputs[name] for name, _ in layers])
    return {name: _taylor(outputs[name], g) for (name, _), g in zip(layers, grads, strict=True)}


def masks_like(scores: Scores, reference_masks: Masks) -> Masks:
    """Masks that prune, in every layer of ``reference_masks``, as many units as it does.

    The units pruned are the lowest scorers (ties broken by unit order); True means keep.
    """
    masks = {}
    for name, reference in reference_masks.items():
        reference = np.asarray(reference, dtype=bool)
        if name not in scores:
            raise InvalidInputError(
                f"the scores have no layer '{name}' that the reference masks prune; compute both "
                "on the same model"
            )
        layer_scores = np.asarray(scores[name])
        if layer_scores.shape != reference.shape:
            raise InvalidInputError(
                f"layer '{name}' has {layer_scores.shape} scores but a mask of shape "
                f"{reference.shape}; compute both on the same model"
            )
        keep = np.ones(reference.shape, dtype=bool)
        keep[np.argsort(layer_scores, kind="stable")[: int((~reference).sum())]] = False
        masks[name] = keep
    return masks


def _taylor(output: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    per_sample = (output * grad).reshape(output.shape[0], output.shape[1], -1).sum(2)
    return _to_numpy(per_sample.abs().mean(0))


def _unit_norms(layer: nn.Linear | nn.Conv2d) -> torch.Tensor:
    squares = _per_unit_sum(layer.weight.square())
    if layer.bias is not None:
        squares = squares + layer.bias.square()
    return squares.sqrt()


def _per_unit_sum(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).sum(1)


def _detached_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().requires_grad_() for name, p in model.named_parameters()}


def _inputs(model: nn.Module, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).to(model_device(model))


def _labels(model: nn.Module, y: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(y, dtype=torch.long).to(model_device(model))


def _to_numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().double().numpy()
