"""Losses on the logits, one class each plus one registration.

A loss adds one epigraph variable ``t_k`` per sample that the objective minimises, so ``t_k``
equals the sample's loss at an optimum. An *exact* loss (hinge) is encoded by linear rows; a
smooth one (cross-entropy) by tangent planes from below, which the solve loop adds at the
solutions it finds until every sample's loss is approximated to its tolerance
(docs/mathematics.md §4). ``values`` is always the exact loss: objectives are reported with it.

A new loss is a subclass of :class:`Loss` (a frozen dataclass whose fields are its parameters)
decorated with :func:`register_loss`; it is then selectable by name everywhere (``loss=``,
``--loss``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression
from scipy.special import logsumexp, softmax

from oamip import checks
from oamip.errors import InvalidInputError
from oamip.formulations.blocks import RowBlock, VarTable

LOSSES: dict[str, type[Loss]] = {}
"""Registered losses by name (see :func:`register_loss`)."""


@dataclass(frozen=True)
class LossSite:
    """Where a loss lives in an importance model: the epigraph variables ``t`` (one per
    sample), the logit variables (samples x classes) and the labels."""

    model: pyo.ConcreteModel
    table: VarTable
    t: np.ndarray
    logit_ids: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Loss(abc.ABC):
    """A per-sample loss ``loss(z_k, y_k) >= 0`` on the logits."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    """True: ``encode`` represents the loss exactly. False: ``encode`` gives an under-estimate
    that ``add_cuts`` refines at given logits (the solve loop calls it)."""
    reference: ClassVar[bool] = False
    """False: the loss compares the logits with the labels. True: with the dense network's
    logits on the same samples, which ``values`` then receives in place of the labels."""

    @abc.abstractmethod
    def values(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The exact loss of every sample (``labels``: the dense logits for a reference
        loss)."""

    def targets(self, labels: np.ndarray, trained: np.ndarray) -> np.ndarray:
        """What ``values`` compares the logits with: ``labels``, or for a reference loss the
        dense network's logits ``trained``."""
        return trained if self.reference else labels

    @abc.abstractmethod
    def encode(self, site: LossSite, rows: RowBlock, trained: np.ndarray) -> None:
        """Add the rows (or first cuts) that bound ``t`` from below; ``trained`` are the dense
        network's logits on the batch."""

    def add_cuts(self, site: LossSite, points: np.ndarray, samples: np.ndarray) -> None:
        """Refine the under-estimate at logits ``points[k]`` for each ``k`` in ``samples``."""
        raise NotImplementedError(f"the {self.name} loss is exact and takes no cuts")

    def rows_per_sample(self, classes: int) -> int:
        """How many rows ``encode`` adds per sample, for size estimates (at most; the default,
        two per class, covers the built-in losses)."""
        return 2 * classes

    def __str__(self) -> str:
        changed = [f for f in fields(self) if getattr(self, f.name) != f.default]
        if not changed:
            return self.name
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in changed)
        return f"{self.name}({args})"


def register_loss(cls: type[Loss]) -> type[Loss]:
    """Make a loss class selectable by ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise InvalidInputError(f"loss class {cls.__name__} has no name")
    LOSSES[cls.name] = cls
    return cls


def loss_names() -> list[str]:
    """The names of every registered loss."""
    return sorted(LOSSES)


def get_loss(spec: str | Loss) -> Loss:
    """The loss named ``spec`` with its default parameters, or ``spec`` itself if a Loss."""
    if isinstance(spec, Loss):
        return spec
    checks.choice("loss", spec, loss_names())
    return LOSSES[spec]()


@register_loss
@dataclass(frozen=True)
class Hinge(Loss):
    """Multi-class hinge ``max(0, margin + max_{j != y} z_j - z_y)``: exact rows."""

    name: ClassVar[str] = "hinge"
    margin: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "margin", checks.real("margin", self.margin, 0.0))

    def values(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        rows = np.arange(len(labels))
        true = logits[rows, labels]
        others = logits.copy()
        others[rows, labels] = -np.inf
        return np.maximum(0.0, self.margin + others.max(axis=1) - true)

    def rows_per_sample(self, classes: int) -> int:
        return classes - 1

    def encode(self, site: LossSite, rows: RowBlock, trained: np.ndarray) -> None:
        """``t_k >= margin + z_kj - z_ky`` for every wrong class ``j`` (and ``t_k >= 0``)."""
        labels, logit_ids = site.labels, site.logit_ids
        classes = logit_ids.shape[1]
        k, j = np.nonzero(np.arange(classes)[None, :] != labels[:, None])
        r = rows.new_rows(np.full(len(k), self.margin), np.inf)
        rows.terms(r, site.t[k], 1.0)
        rows.terms(r, logit_ids[k, j], -1.0)
        rows.terms(r, logit_ids[k, labels[k]], 1.0)


@register_loss
@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Cross-entropy ``logsumexp(z) - z_y``, under-estimated by tangent planes of
    ``logsumexp``; the first cuts are at the trained logits and at zero."""

    name: ClassVar[str] = "ce"
    exact: ClassVar[bool] = False

    def values(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels]

    def rows_per_sample(self, classes: int) -> int:
        return 2

    def encode(self, site: LossSite, rows: RowBlock, trained: np.ndarray) -> None:
        every = np.arange(len(site.labels))
        self.add_cuts(site, trained, every)
        self.add_cuts(site, np.zeros_like(trained), every)

    def add_cuts(self, site: LossSite, points: np.ndarray, samples: np.ndarray) -> None:
        """``t_k >= p . z_k + logsumexp(z0) - p . z0 - z_ky`` with ``p = softmax(z0)``."""
        model = site.model
        if not hasattr(model, "ce_cuts"):
            model.ce_cuts = pyo.ConstraintList()
        for k in np.asarray(samples).tolist():
            z0 = points[k]
            p = softmax(z0)
            coefs = -p
            coefs[site.labels[k]] += 1.0
            rhs = float(logsumexp(z0) - p @ z0)
            ids = [site.t[k], *site.logit_ids[k].tolist()]
            expr = LinearExpression(
                constant=0.0,
                linear_coefs=[1.0, *coefs.tolist()],
                linear_vars=[site.table.variables[i] for i in ids],
            )
            model.ce_cuts.add(expr >= rhs)


@register_loss
@dataclass(frozen=True)
class Fidelity(Loss):
    """How far the logits move from the dense network's, ``max_j |z_j - zbar_j|``: exact rows.

    It ignores the labels: it asks a mask to keep every logit of the batch near the dense
    network's, so the predictions on nearby samples stay too, where a label loss is flat as long
    as a sample stays correct, however close to flipping it gets."""

    name: ClassVar[str] = "fidelity"
    reference: ClassVar[bool] = True

    def values(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(logits) - np.asarray(labels)).max(axis=1)

    def encode(self, site: LossSite, rows: RowBlock, trained: np.ndarray) -> None:
        """``t_k >= z_kj - zbar_kj`` and ``t_k >= zbar_kj - z_kj`` for every class ``j``."""
        k, j = (index.ravel() for index in np.indices(site.logit_ids.shape))
        target = np.asarray(trained, dtype=float)[k, j]
        for sign in (1.0, -1.0):
            r = rows.new_rows(-sign * target, np.inf)
            rows.terms(r, site.t[k], 1.0)
            rows.terms(r, site.logit_ids[k, j], -sign)
