"""The model and data a subcommand runs on, read from ``--model``, ``--arch`` and ``--data``."""

from __future__ import annotations

import argparse

from torch import nn

from oamip.pipelines.inputs import read_model
from oamip.training.data import Dataset, load_data


def read_inputs(args: argparse.Namespace) -> tuple[Dataset, nn.Module | None]:
    """The data set of ``--data`` and the model of ``--model`` (None: train one)."""
    dataset = load_data(args.data)
    model = read_model(args.model, args.arch, dataset) if args.model else None
    return dataset, model
