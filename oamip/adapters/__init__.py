"""The torch adapter: the only place that imports torch (training helpers aside).

It reads networks out of ``nn.Module`` objects, runs them with scores applied, and writes masks
or physically smaller models back.
"""

from oamip.adapters.chain import read_chain
from oamip.adapters.extract import Extracted, extract
from oamip.adapters.masks import apply_masks, remove_pruned, scored_logits
from oamip.adapters.serialize import load_model, save_model

__all__ = [
    "Extracted",
    "apply_masks",
    "extract",
    "load_model",
    "read_chain",
    "remove_pruned",
    "save_model",
    "scored_logits",
]
