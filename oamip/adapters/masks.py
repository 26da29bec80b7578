"""Write scores and masks back to PyTorch models (the removal side of pruning).

``apply_masks`` keeps the architecture and makes pruned units output exactly 0; ``remove_pruned``
rebuilds the network as an ``nn.Sequential`` with the pruned units physically gone.
``scored_logits`` runs a model with docs/mathematics.md (1) applied, to check the solver's logits.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from oamip.adapters.chain import Step, chain_units, has_additions, read_chain
from oamip.adapters.extract import Extracted
from oamip.errors import InvalidInputError, UnsupportedLayerError

Masks = Mapping[str, np.ndarray | torch.Tensor]
_FROM_SCORES = "from a ScoreResult use res.masks(threshold)"


def scored_logits(
    extracted: Extracted,
    x: np.ndarray,
    scores: dict[str, np.ndarray],
    big_m: dict[int, np.ndarray],
) -> np.ndarray:
    """Logits of the float64 reference model with each scored unit's ReLU argument lowered by
    ``(1 - s) M`` (docs/mathematics.md (1)); ``big_m`` maps network layer indices to M.

    A score array is either one value per unit or one row per sample (``(N, units)``), so many
    score vectors can be evaluated in one batched forward pass."""
    ref = extracted.reference
    modules = dict(ref.named_modules())
    handles = []
    for name in extracted.units:
        for layer, target in extracted.shift_targets(name):
            shift = (1.0 - np.asarray(scores[name], dtype=float)) * big_m[layer]
            hook = _shift_hook(torch.from_numpy(shift))
            handles.append(modules[target].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = ref(torch.as_tensor(np.asarray(x), dtype=torch.float64))
    finally:
        for handle in handles:
            handle.remove()
    return out.numpy()


def _shift_hook(shift: torch.Tensor):
    def hook(_module, _inputs, output):
        return output - shift.reshape(*shift.shape, *([1] * (output.dim() - 2)))

    return hook


def check_masks(masks: Masks, steps: list[Step]) -> dict[str, np.ndarray]:
    """Masks as bool arrays keyed by scored module names, with types and sizes checked."""
    if not isinstance(masks, Mapping):
        raise InvalidInputError(
            f"masks must be a dict {{layer name: boolean keep-mask}}, got {type(masks).__name__}; "
            f"{_FROM_SCORES}"
        )
    scored = {unit.name: unit for unit in chain_units(steps)}
    clean = {}
    for name, mask in masks.items():
        if name not in scored:
            raise InvalidInputError(
                f"mask for '{name}', which is not a scored layer; scored layers: {list(scored)}"
            )
        mask = as_bool_mask(name, mask)
        size = scored[name].size
        if mask.shape != (size,):
            raise InvalidInputError(
                f"mask for '{name}' has shape {mask.shape}; the layer has {size} units"
            )
        clean[name] = mask
    return clean


def as_bool_mask(name: str, mask) -> np.ndarray:
    """A new bool array from a bool mask or one of only 0s and 1s; anything else (scores, NaN,
    strings) is refused rather than read as "keep if non-zero"."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    numeric = mask.dtype.kind in "biuf"
    if not numeric or not np.isin(mask, (0, 1)).all():
        what = "values other than 0 and 1" if numeric else f"dtype {mask.dtype}"
        raise InvalidInputError(
            f"mask for '{name}' is not boolean ({what}); masks must be boolean keep-masks "
            f"(True = keep); {_FROM_SCORES}"
        )
    return mask.astype(bool)


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``model`` in which every pruned unit outputs exactly 0: its incoming weights,
    its bias and the scale and shift of a BatchNorm right after it are zeroed. A residual
    network's masks are keyed by its units (:func:`oamip.adapters.residual.residual_units`)."""
    if has_additions(model):  # residual.py imports this module, hence the late import
        from oamip.adapters.residual import apply_residual_masks

        return apply_residual_masks(model, masks)
    pruned = copy.deepcopy(model)
    steps = read_chain(pruned)
    masks = check_masks(masks, steps)
    for unit in chain_units(steps):
        if unit.name not in masks:
            continue
        off = torch.from_numpy(~masks[unit.name])
        with torch.no_grad():
            for param in unit.row_parameters():
                param[off.to(param.device)] = 0.0
    return pruned


def remove_pruned(model: nn.Module, masks: Masks) -> nn.Module:
    """A new ``nn.Sequential`` equal to ``model`` with the pruned units physically removed.

    Module names are kept (dots become underscores); function calls such as ``F.relu`` become
    modules. The next layer loses the matching inputs, so the function computed is unchanged
    for the kept units (and pruned units contributed exactly 0). A residual network keeps its
    class instead (:func:`oamip.adapters.removal.remove_residual_pruned`).
    """
    if has_additions(model):  # removal.py imports this module, hence the late import
        from oamip.adapters.removal import remove_residual_pruned

        return remove_residual_pruned(model, masks)
    steps = read_chain(model)
    masks = check_masks(masks, steps)
    for name, mask in masks.items():
        if not mask.any():
            raise InvalidInputError(
                f"the mask of '{name}' removes every unit; keep at least one unit per layer"
            )
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
