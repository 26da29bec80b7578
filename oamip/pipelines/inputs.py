"""What the pipelines take in: data sets, models (given, loaded from a file, or trained) and the
checks that refuse a model or data set before any work; and how a model is described to people
(architecture, layer labels, parameter counts)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oamip import checks
from oamip.adapters import extract, load_model, read_chain
from oamip.adapters.onnx_io import is_onnx
from oamip.adapters.serialize import MODEL_FORMATS, read_payload, tensor_problem
from oamip.adapters.structure import Structure
from oamip.errors import InvalidInputError
from oamip.training.data import DATA_SPECS, Dataset, fit_advice, load_data
from oamip.training.inference import eval_mode, evaluate, model_device, resolve_device
from oamip.training.models import (
    ARCHITECTURES,
    VGG_CONVS_PER_STAGE,
    VGG_HIDDEN,
    VGG_WIDTHS,
    build,
    describe_resnet,
    mlp,
)


def dataset_of(data: Dataset | str) -> Dataset:
    """``data`` itself, or the data set its spec names; anything else is refused."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_data(data)
    raise InvalidInputError(
        f"data must be an oamip Dataset or a spec ({DATA_SPECS}), got {type(data).__name__}"
    )


def check_fits(model: nn.Module, dataset: Dataset, name: str = "the model") -> None:
    """Refuse a model that is no module, does not take the data's inputs, or gives fewer logits
    than the data has classes: checked on one sample, in eval mode, the model left as it was."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"{name} must be a torch.nn.Module (or None to train one), got "
            f"{type(model).__name__}; load a saved model with oamip.load_model(path)"
        )
    sample = torch.as_tensor(
        dataset.x_train[:1], device=model_device(model), dtype=float_dtype(model)
    )
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(sample)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"{name} does not take inputs from '{dataset.name}': "
            f"{fit_advice(model, dataset)} (PyTorch: {str(exc).splitlines()[0]})"
        ) from exc
    if logits.dim() != 2 or logits.shape[1] < dataset.num_classes:
        raise InvalidInputError(
            f"{name} gives outputs of shape {tuple(logits.shape[1:])} but "
            f"'{dataset.name}' has {dataset.num_classes} classes; its last layer must give "
            f"one logit per class ({dataset.num_classes})"
        )


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 if it has none)."""
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return dtypes[0] if dtypes else torch.float32


def check_classes(dataset: Dataset, samples_per_class: int) -> None:
    """Every class ``0..K-1`` needs ``samples_per_class`` training samples for the MIP batch."""
    counts = np.bincount(dataset.y_train, minlength=dataset.num_classes)[: dataset.num_classes]
    absent = np.flatnonzero(counts == 0).tolist()
    if absent:
        classes = f"class {absent[0]} has" if len(absent) == 1 else f"classes {absent} have"
        raise InvalidInputError(
            f"{classes} no training samples in '{dataset.name}'; labels must number the classes "
            f"0..{dataset.num_classes - 1}, each with training samples (renumber labels 1..K as "
            "0..K-1)"
        )
    few = np.flatnonzero(counts < samples_per_class).tolist()
    if few:
        raise InvalidInputError(
            f"class {few[0]} of '{dataset.name}' has {counts[few[0]]} training samples, fewer "
            f"than the {samples_per_class} samples per class asked for; ask for fewer"
        )


def check_model(model: nn.Module, dataset: Dataset) -> None:
    """Refuse, before any work, a model that does not fit the data or that the MIP cannot
    encode (an unsupported layer); reading the network from one sample is cheap."""
    check_fits(model, dataset)
    extract(model, dataset.x_train[:1])


def dense_copy(model: nn.Module, device: str) -> nn.Module:
    """A float32 copy of ``model`` on ``device``, in eval mode: the one copy every pipeline
    works on, so the caller's model is never modified."""
    dense = copy.deepcopy(model).to(resolve_device(device))
    return (dense.float() if float_dtype(dense) != torch.float32 else dense).eval()


def read_model(path: str | Path, arch: str | None, dataset: Dataset) -> nn.Module:
    """A model from ``path``: a file of :func:`oamip.save_model` or an ONNX file (``arch``
    None), or a state dict plus ``arch``.

    For ``arch="mlp"`` the hidden widths are read from the state dict's shapes. The model must
    take ``dataset``'s inputs and give at least one logit per class.
    """
    path = Path(path).expanduser()
    if arch is not None:
        checks.choice("architecture", arch, ARCHITECTURES)
    payload = None if is_onnx(path) else read_payload(path)
    if is_onnx(path) or (isinstance(payload, dict) and payload.get("format") in MODEL_FORMATS):
        if arch is not None:
            raise InvalidInputError(
                f"'{path}' is a complete model (ONNX or written by oamip.save_model), so an "
                f"architecture ('{arch}', --arch) does not apply: it is for state dicts only; "
                "drop it"
            )
        model = load_model(path)
    else:
        model = _from_state_dict(path, _state_dict(path, payload), arch, dataset)
    check_fits(model, dataset, f"the model in '{path}'")
    return model


def describe_arch(model: nn.Module) -> str:
    """``"mlp"``, ``"lenet5"``, ``"vgg"`` or ``"custom"``, from the model's affine layers in
    forward order; a residual network by :func:`describe_resnet`."""
    if Structure.of(model).residual:
        return describe_resnet(model)
    affine = [step.module for step in read_chain(model) if step.kind in ("linear", "conv")]
    widths = [m.weight.shape[0] for m in affine]
    if all(isinstance(m, nn.Linear) for m in affine):
        return "mlp"
    if [type(m) for m in affine[:2]] == [nn.Conv2d] * 2 and widths[:-1] == [6, 16, 120, 84]:
        return "lenet5"
    vgg_widths = [w for w in VGG_WIDTHS for _ in range(VGG_CONVS_PER_STAGE)] + [VGG_HIDDEN]
    if widths[:-1] == vgg_widths and all(isinstance(m, nn.Conv2d) for m in affine[:-3]):
        return "vgg"
    return "custom"


def layer_labels(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Unit name -> what the unit is, for people: ``fc1 Linear 784->300``, ``conv2 Conv2d
    6->16 5x5`` for the scored layers ``names`` of a chain in forward order (Linear and Conv2d
    layers numbered apart); the module path for a residual network, with ``group of N`` for a
    coupled group (``stage2.0.conv2 group of 2 Conv2d ->32``)."""
    structure = Structure.of(model)
    if structure.residual:
        return _residual_labels(model, structure, names)
    counts = {"fc": 0, "conv": 0}
    labels = {}
    for name in names:
        module = model.get_submodule(name)
        kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
        counts[kind] += 1
        labels[name] = f"{kind}{counts[kind]} {_layer_shape(module)}"
    return labels


def _residual_labels(model: nn.Module, structure: Structure, names: list[str]) -> dict[str, str]:
    groups = {unit.name: unit for unit in structure.row_groups(model)}
    labels = {}
    for name in names:
        unit = groups[name]
        if unit.kind == "group":
            layer = type(unit.producers[0]).__name__
            labels[name] = f"{name} group of {len(unit.producers)} {layer} ->{unit.size}"
        else:
            depthwise = [_layer_shape(p) for p in unit.producers[1:]]
            labels[name] = " + ".join([f"{name} {_layer_shape(unit.producers[0])}", *depthwise])
    return labels


def _layer_shape(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kernel = "x".join(str(k) for k in module.kernel_size)
        groups = f" groups={module.groups}" if module.groups > 1 else ""
        return f"Conv2d {module.in_channels}->{module.out_channels} {kernel}{groups}"
    return f"Linear {module.in_features}->{module.out_features}"


def count_params(model: nn.Module) -> int:
    """The number of parameter values of ``model``."""
    return sum(p.numel() for p in model.parameters())


def test_accuracy(model: nn.Module | None, dataset: Dataset) -> float | None:
    """``model``'s accuracy on ``dataset``'s test split (None for no model)."""
    return None if model is None else evaluate(model, dataset.x_test, dataset.y_test)


def _state_dict(path: Path, payload) -> dict[str, torch.Tensor]:
    if not isinstance(payload, dict) or not payload:
        raise InvalidInputError(
            f"'{path}' holds no state dict; save models with oamip.save_model or "
            "torch.save(model.state_dict(), path)"
        )
    problem = tensor_problem(payload)
    if problem:
        raise InvalidInputError(
            f"'{path}' holds a dict that is not a state dict of tensors: {problem}"
        )
    return payload


def _from_state_dict(
    path: Path, state: dict[str, torch.Tensor], arch: str | None, dataset: Dataset
) -> nn.Module:
    if arch is None:
        raise InvalidInputError(
            f"'{path}' holds a state dict; say which architecture it belongs to with "
            f"--arch {'|'.join(ARCHITECTURES)}"
        )
    model = _mlp_for(path, state, dataset) if arch == "mlp" else build(arch, dataset)
    _load_in_order(model, state, path, arch)
    return model.eval()


def _mlp_for(path: Path, state: dict[str, torch.Tensor], dataset: Dataset) -> nn.Sequential:
    """The MLP whose widths the state dict's weight matrices give."""
    weights = [v for v in state.values() if v.dim() == 2]
    if not weights or any(v.dim() > 2 for v in state.values()):
        raise InvalidInputError(
            f"'{path}' does not fit --arch mlp: an MLP's state dict holds only weight matrices "
            "and bias vectors"
        )
    hidden = [w.shape[0] for w in weights[:-1]]
    return mlp(weights[0].shape[1], hidden, weights[-1].shape[0])


def _load_in_order(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load ``state`` into ``model`` by position: names may differ, shapes must match."""
    target = model.state_dict()
    given = list(state.values())
    if len(given) != len(target):
        raise InvalidInputError(
            f"'{path}' does not fit --arch {arch}: it holds {len(given)} tensors, the "
            f"architecture for this data needs {len(target)}"
        )
    for (name, expected), value in zip(target.items(), given, strict=True):
        if value.shape != expected.shape:
            raise InvalidInputError(
                f"'{path}' does not fit --arch {arch}: tensor {name} has shape "
                f"{tuple(value.shape)}, the architecture for this data needs "
                f"{tuple(expected.shape)}"
            )
    model.load_state_dict(dict(zip(target, given, strict=True)))
