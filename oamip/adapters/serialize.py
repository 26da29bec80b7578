"""Save and load pruned models without pickling code.

A model is stored as the list of its layers (type and constructor arguments) plus its state
dict; ``load_model`` rebuilds the ``nn.Sequential`` with ``torch.load(weights_only=True)``, so a
file can never run code when loaded. A residual network (one whose forward adds tensors) also
stores its operations (:func:`oamip.adapters.residual.forward_ops`) and loads as an
``fx.GraphModule`` running them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from oamip.adapters.chain import ACTIVATION_ARGS
from oamip.adapters.masks import remove_pruned
from oamip.adapters.onnx_io import is_onnx, read_onnx, write_onnx
from oamip.adapters.residual import GraphOp, forward_ops, graph_module
from oamip.adapters.structure import Structure
from oamip.errors import InvalidInputError
from oamip.files import atomic_path, nearest_existing, plain

FORMAT = "oamip.sequential"
GRAPH_FORMAT = "oamip.graph"
MODEL_FORMATS = (FORMAT, GRAPH_FORMAT)
"""The formats of a complete model written by :func:`save_model` (a chain, a residual graph)."""
VERSION = 1
_WRITE_ONE = "give a file written by oamip.save_model or torch.save(model.state_dict(), path)"

_LAYER_ARGS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    **ACTIVATION_ARGS,
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AdaptiveMaxPool2d: ("output_size",),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Dropout: ("p",),
    nn.Dropout1d: ("p",),
    nn.Dropout2d: ("p",),
}
_BY_NAME = {cls.__name__: cls for cls in _LAYER_ARGS}


def _spec(module: nn.Module) -> dict:
    cls = type(module)
    args = {name: plain(getattr(module, name)) for name in _LAYER_ARGS[cls]}
    if cls in (nn.Linear, nn.Conv2d):
        args["bias"] = module.bias is not None
    return {"type": cls.__name__, "args": args}


def save_model(
    model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None
) -> Path:
    """Write ``model`` (a chain or residual graph of supported layers) to ``path`` atomically;
    returns the path. A path ending in ``.onnx`` gets an ONNX file (``oamip[onnx]``) taking
    inputs of ``input_shape`` per sample (read from a first Linear layer when not given).

    The file is written under a temporary name in the same folder and renamed into place, so a
    failed save leaves no partial file."""
    path = _as_path(path)
    _check_target(path)
    try:
        if is_onnx(path):
            _write_onnx_atomically(model, path, input_shape)
        else:
            payload = (
                _graph_payload(model) if Structure.of(model).residual else _chain_payload(model)
            )
            _write_atomically(payload, path)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot save the model to '{path}': {exc.strerror or exc}; give a file path in a "
            "folder you can write to"
        ) from exc
    return path


def _write_onnx_atomically(model: nn.Module, path: Path, input_shape) -> None:
    if input_shape is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)), None)
        if not isinstance(first, nn.Linear):
            raise InvalidInputError(
                f"writing '{path}' as ONNX needs the shape of one input, e.g. "
                "save_model(model, path, input_shape=(3, 32, 32))"
            )
        input_shape = (first.in_features,)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write_onnx(model, tmp, tuple(input_shape))


def _chain_payload(model: nn.Module) -> dict:
    sequential = remove_pruned(model, {})
    layers = [(name, _spec(module)) for name, module in sequential.named_children()]
    state = {k: v.detach().cpu() for k, v in sequential.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "layers": layers, "state_dict": state}


def _graph_payload(model: nn.Module) -> dict:
    """Layers stored as ``layer0``, ``layer1``, ... (their module paths in ``names``, in the same
    order), operations naming layers by module path."""
    layers, ops, output = forward_ops(model)
    state = {
        f"layer{index}.{key}": value.detach().cpu()
        for index, module in enumerate(layers.values())
        for key, value in module.state_dict().items()
    }
    return {
        "format": GRAPH_FORMAT,
        "version": VERSION,
        "layers": [(f"layer{i}", _spec(module)) for i, module in enumerate(layers.values())],
        "names": list(layers),
        "ops": [[op.kind, op.layer, list(op.inputs)] for op in ops],
        "output": output,
        "state_dict": state,
    }


def _check_target(path: Path) -> None:
    """Refuse a folder as the file, or a file where a parent folder should be, before writing."""
    if path.is_dir():
        raise InvalidInputError(
            f"cannot save the model to '{path}': it is a folder; give a file path such as "
            f"'{path / 'model.pt'}'"
        )
    blocker = nearest_existing(path.parent)
    if not blocker.is_dir():
        raise InvalidInputError(
            f"cannot save the model to '{path}': '{blocker}' is a file, not a folder; "
            "choose another path"
        )


def _write_atomically(payload: dict, path: Path) -> None:
    """Save ``payload`` to ``path`` all or nothing (:func:`oamip.files.atomic_path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _as_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(
            f"a model file path must be a str or os.PathLike, got {type(path).__name__}; "
            "give the file's path, e.g. 'pruned.pt'"
        )
    return Path(path)


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by :func:`save_model` (CPU, eval mode).

    Only plain data and tensors are unpickled (``weights_only=True``) and layers are built from
    the supported types by name, so a file can never run code; a malformed file is refused.
    The layers are first built on the meta device and their shapes compared with the tensors
    the file holds, so a file that declares large layers without their weights allocates
    nothing. Floating-point weights are read as float32 (the layers' dtype). A residual network
    comes back as an ``fx.GraphModule`` whose layers have their original module paths. An
    ``.onnx`` file is rebuilt from its operators (:func:`oamip.adapters.onnx_io.read_onnx`)."""
    path = _as_path(path)
    if is_onnx(path):
        return read_onnx(path)
    payload = read_payload(path)
    graph = isinstance(payload, dict) and payload.get("format") == GRAPH_FORMAT
    _check_header(payload, path, GRAPH_FORMAT if graph else FORMAT)
    with torch.device("meta"):
        model = nn.Sequential()
        for entry in payload["layers"]:
            _add_layer(model, entry, path)
    problem = tensor_problem(payload["state_dict"])
    if problem:
        raise _weights_unfit(path, problem)
    _check_fit(model.state_dict(), payload["state_dict"], path)
    model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())
        raise _malformed(path, f"its weights do not fit its layers: {detail}") from exc
    return (_graph_module(model, payload, path) if graph else model).eval()


def _graph_module(stored: nn.Sequential, payload: dict, path: Path) -> nn.Module:
    """The saved operations run over the ``stored`` layers under their saved module paths; a
    malformed list of names or operations is refused."""
    try:
        names = payload["names"]
        if (
            not isinstance(names, list)
            or len(names) != len(stored)
            or len(set(names)) != len(names)
        ):
            raise InvalidInputError("its layer names do not match its layers one to one")
        ops = [GraphOp(kind, layer, tuple(inputs)) for kind, layer, inputs in payload["ops"]]
        return graph_module(dict(zip(names, stored)), ops, payload["output"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(path, f"its operations cannot be run: {exc}") from exc


def tensor_problem(state: dict) -> str | None:
    """What is wrong with a loaded state dict, or None: keys must be names and values tensors
    backed by data in the file. Crafted tensors may declare large shapes over a few stored
    bytes (zero strides, or many tensors over one storage), which a copy would allocate in full.
    """
    stored: dict[int, int] = {}
    needed = 0
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"entry {key!r:.40} is not a named tensor"
        if value.is_meta:
            return f"tensor {key!r:.40} holds no values (meta device)"
        storage = value.untyped_storage()
        stored[storage.data_ptr()] = storage.nbytes()
        needed += value.numel() * value.element_size()
    if needed > sum(stored.values()):
        return (
            f"its tensors declare {needed} bytes of values but the file stores only "
            f"{sum(stored.values())}"
        )
    return None


def _check_fit(expected: dict, given: dict, path: Path) -> None:
    """The names, shapes and kinds (floating point or integer) of the layers' tensors match
    the file's, compared before any layer holds memory."""
    missing, unexpected = expected.keys() - given.keys(), given.keys() - expected.keys()
    if missing or unexpected:
        what = f"missing {sorted(missing)}" if missing else f"unexpected {sorted(unexpected)}"
        raise _weights_unfit(path, f"{what:.200}")
    for key, tensor in expected.items():
        value = given[key]
        if value.shape != tensor.shape:
            raise _weights_unfit(
                path,
                f"the layers declare {key} of shape {tuple(tensor.shape)}, the file holds "
                f"{tuple(value.shape)}",
            )
        if value.is_floating_point() != tensor.is_floating_point():
            raise _weights_unfit(path, f"{key} holds {value.dtype} values, not {tensor.dtype}")


def _weights_unfit(path: Path, detail: str) -> InvalidInputError:
    return _malformed(path, f"its weights do not fit its layers: {detail}")


def read_payload(path: Path):
    """The unpickled file at ``path``, plain data and tensors only (``weights_only``): a model
    written by :func:`save_model` or a state dict written by ``torch.save``."""
    if path.is_dir():
        raise InvalidInputError(f"'{path}' is a folder, not a model file; {_WRITE_ONE}")
    if not path.is_file():
        raise InvalidInputError(f"model file '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInputError(
            f"cannot read '{path}' as a model file ({type(exc).__name__}); {_WRITE_ONE}"
        ) from exc


def _check_header(payload, path: Path, fmt: str = FORMAT) -> None:
    """The format tag, a version this code reads, and the two parts a model file holds."""
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InvalidInputError(f"'{path}' was not written by oamip.save_model")
    version = payload.get("version")
    if type(version) is not int or version < 1:
        raise _malformed(path, f"its format version {version!r} is not a positive integer")
    if version > VERSION:
        raise InvalidInputError(
            f"'{path}' was written by a newer oamip (file format version {version}; this oamip "
            f"reads version {VERSION}); upgrade oamip to load it"
        )
    if not isinstance(payload.get("layers"), (list, tuple)):
        raise _malformed(path, "it has no list of layers")
    if not isinstance(payload.get("state_dict"), dict):
        raise _malformed(path, "it has no state dict")


def _add_layer(model: nn.Sequential, entry, path: Path) -> None:
    """Build one saved ``(name, {"type", "args"})`` entry from the supported layer types."""
    try:
        name, spec = entry
        kind, args = spec["type"], spec["args"]
    except (TypeError, ValueError, KeyError) as exc:
        raise _malformed(
            path, f"a layer entry is not (name, {{type, args}}): {entry!r:.80}"
        ) from exc
    cls = _BY_NAME.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise _malformed(path, f"it names an unknown layer type {kind!r}")
    try:
        model.add_module(name, cls(**args))
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise _malformed(path, f"layer {name!r} ({kind}) cannot be rebuilt: {exc}") from exc


def _malformed(path: Path, what: str) -> InvalidInputError:
    return InvalidInputError(
        f"'{path}' is not a valid oamip model file: {what}; was it written by oamip.save_model?"
    )
