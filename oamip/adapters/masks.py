"""Write scores and masks back to PyTorch models (the removal side of pruning).

``apply_masks`` keeps the architecture and makes pruned units output exactly 0; ``remove_pruned``
rebuilds the network as an ``nn.Sequential`` with the pruned units physically gone.
``scored_logits`` runs a model with docs/mathematics.md (1) applied, to check the solver's logits.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from oamip.adapters.chain import Step, read_chain
from oamip.adapters.extract import Extracted
from oamip.adapters.removal import remove_residual_pruned
from oamip.adapters.structure import Masks, Structure
from oamip.errors import UnsupportedLayerError


def scored_logits(
    extracted: Extracted,
    x: np.ndarray,
    scores: dict[str, np.ndarray],
    big_m: dict[int, np.ndarray],
) -> np.ndarray:
    """Logits of the float64 reference model with each scored unit's ReLU argument lowered by
    ``(1 - s) M`` (docs/mathematics.md (1)), or, before an activation that is nonzero below 0,
    soft-thresholded by it (§4.11); ``big_m`` maps network layer indices to M.

    A score array is either one value per unit or one row per sample (``(N, units)``), so many
    score vectors can be evaluated in one batched forward pass."""
    ref = extracted.reference
    modules = dict(ref.named_modules())
    handles = []
    for name in extracted.units:
        for layer, target in extracted.shift_targets(name):
            shift = (1.0 - np.asarray(scores[name], dtype=float)) * big_m[layer]
            two_sided = extracted.network.layers[layer].activation.two_sided
            hook = _shift_hook(torch.from_numpy(shift), two_sided)
            handles.append(modules[target].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = ref(torch.as_tensor(np.asarray(x), dtype=torch.float64))
    finally:
        for handle in handles:
            handle.remove()
    return out.numpy()


def _shift_hook(shift: torch.Tensor, two_sided: bool):
    """``a - t`` (``t = (1 - s) M``), or the soft threshold ``a - clip(a, -t, t)``, which a
    two-sided activation needs and which equals ``a - t`` wherever ``a >= -t``."""

    def hook(_module, _inputs, output):
        t = shift.reshape(*shift.shape, *([1] * (output.dim() - 2)))
        return output - (torch.clamp(output, -t, t) if two_sided else t)

    return hook


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``model`` in which every pruned unit outputs exactly 0: its incoming weights,
    its bias and the scale and shift of a BatchNorm right after it are zeroed. A residual
    network's masks are keyed by its units (:func:`oamip.adapters.residual.residual_units`),
    and every producer and BatchNorm of a unit is zeroed alike."""
    structure = Structure.of(model)
    clean = structure.check_masks(masks)
    pruned = copy.deepcopy(model)
    for unit in structure.units:
        if unit.name not in clean:
            continue
        off = torch.from_numpy(~clean[unit.name])
        with torch.no_grad():
            for param in unit.row_parameters(pruned):
                param[off.to(param.device)] = 0.0
    return pruned


def remove_pruned(model: nn.Module, masks: Masks) -> nn.Module:
    """A new ``nn.Sequential`` equal to ``model`` with the pruned units physically removed.

    Module names are kept (dots become underscores); function calls such as ``F.relu`` become
    modules. The next layer loses the matching inputs, so the function computed is unchanged
    for the kept units (and pruned units contributed exactly 0). A residual network keeps its
    class instead (:func:`oamip.adapters.removal.remove_residual_pruned`).
    """
    structure = Structure.of(model)
    if structure.residual:
        return remove_residual_pruned(model, masks)
    masks = structure.check_masks(masks, allow_empty=False)
    steps = read_chain(model)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    keep_in: np.ndarray | None = None
    keep_out: np.ndarray | None = None
    for step in steps:
        key = step.name.replace(".", "_")
        if step.kind in ("linear", "conv"):
            keep_out = masks.get(step.name)
            layers[key] = _slice_affine(step.module, keep_in, keep_out)
            keep_in = keep_out
        elif step.kind == "bn":
            layers[key] = _slice_batchnorm(step.module, keep_out)
        elif step.kind == "flatten":
            layers[key] = nn.Flatten()
            keep_in = _flatten_keep(keep_in, steps, step)
        else:
            layers[key] = copy.deepcopy(step.module)
    return nn.Sequential(layers)


def _flatten_keep(keep_in, steps: list[Step], step: Step):
    """After a flatten, each kept channel keeps all its positions (C order)."""
    if keep_in is None:
        return None
    following = steps[steps.index(step) + 1 :]
    nxt = next((s for s in following if s.kind in ("linear", "conv")), None)
    if nxt is None or not isinstance(nxt.module, nn.Linear):
        raise UnsupportedLayerError(f"flatten '{step.name}' must be followed by a Linear layer")
    area, rest = divmod(nxt.module.in_features, len(keep_in))
    if rest:
        raise UnsupportedLayerError(
            f"cannot tell which inputs of '{nxt.name}' belong to which channel before it"
        )
    return np.repeat(keep_in, area)


def _slice_affine(module: nn.Module, keep_in, keep_out) -> nn.Module:
    weight = module.weight.detach()
    bias = module.bias.detach() if module.bias is not None else None
    if keep_out is not None:
        rows = torch.from_numpy(np.flatnonzero(keep_out)).to(weight.device)
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if keep_in is not None:
        cols = torch.from_numpy(np.flatnonzero(keep_in)).to(weight.device)
        weight = weight[:, cols]
    empty = {"bias": bias is not None, "device": "meta", "dtype": weight.dtype}
    if isinstance(module, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], **empty)
    else:
        geometry = (module.kernel_size, module.stride, module.padding, module.dilation)
        new = nn.Conv2d(weight.shape[1], weight.shape[0], *geometry, **empty)
    new = new.to_empty(device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _slice_batchnorm(module: nn.Module, keep) -> nn.Module:
    new = copy.deepcopy(module)
    if keep is None:
        return new
    idx = torch.from_numpy(np.flatnonzero(keep))
    new.num_features = len(idx)
    with torch.no_grad():
        for attr in ("weight", "bias"):
            param = getattr(module, attr)
            if param is not None:
                setattr(new, attr, nn.Parameter(param.detach()[idx.to(param.device)].clone()))
        for attr in ("running_mean", "running_var"):
            buf = getattr(module, attr)
            if buf is not None:
                setattr(new, attr, buf[idx.to(buf.device)].clone())
    return new
