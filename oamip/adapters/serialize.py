"""Save and load pruned models without pickling code.

A model is stored as the list of its layers (type and constructor arguments) plus its state
dict; ``load_model`` rebuilds the ``nn.Sequential`` with ``torch.load(weights_only=True)``, so a
file can never run code when loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from oamip.adapters.masks import remove_pruned
from oamip.errors import InvalidInputError

FORMAT = "oamip.sequential"
VERSION = 1

_LAYER_ARGS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.ReLU: (),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Dropout: ("p",),
    nn.Dropout1d: ("p",),
    nn.Dropout2d: ("p",),
}
_BY_NAME = {cls.__name__: cls for cls in _LAYER_ARGS}


def _spec(module: nn.Module) -> dict:
    cls = type(module)
    args = {name: _plain(getattr(module, name)) for name in _LAYER_ARGS[cls]}
    if cls in (nn.Linear, nn.Conv2d):
        args["bias"] = module.bias is not None
    return {"type": cls.__name__, "args": args}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (a chain of supported layers) to ``path`` atomically; returns the path."""
    sequential = remove_pruned(model, {})
    layers = [(name, _spec(module)) for name, module in sequential.named_children()]
    state = {k: v.detach().cpu() for k, v in sequential.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "layers": layers, "state_dict": state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    """The process's file-creation mask (mkstemp creates files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_model(path: str | os.PathLike) -> nn.Sequential:
    """Rebuild a model written by :func:`save_model` (CPU, eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"model file '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInputError(
            f"'{path}' is not a readable model file ({type(exc).__name__}); "
            "save models with oamip.save_model"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InvalidInputError(f"'{path}' was not written by oamip.save_model")
    model = nn.Sequential()
    for name, spec in payload["layers"]:
        cls = _BY_NAME.get(spec["type"])
        if cls is None:
            raise InvalidInputError(f"'{path}' names an unknown layer type {spec['type']}")
        model.add_module(name, cls(**spec["args"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InvalidInputError(
            f"'{path}' holds weights that do not fit its layers: {exc}"
        ) from exc
    return model.eval()
