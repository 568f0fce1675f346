"""A character-level transformer language model on Python's own standard-library source code.

What autolr sees of it is only a task factory, ``make``: a model that computes its own loss, dict
batches (``{"input_ids", "labels"}``) from its own ``DataLoader`` and ``collate_fn``, and the two
hooks that turn a batch into a loss (training) and into metrics (validation).

    autolr tune examples/char_lm/study.yaml

``AUTOLR_EXAMPLE_QUICK=1`` shrinks the text to a few thousand characters (the tests use it).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import autolr

# Modules whose source text is the corpus: shipped with every Python, nothing downloaded.
SOURCES = ("json.decoder", "json.encoder", "json.scanner", "textwrap", "string", "functools", "collections")
QUICK = os.environ.get("AUTOLR_EXAMPLE_QUICK") == "1"


def corpus(max_chars: int) -> str:
    text = "\n".join(inspect.getsource(importlib.import_module(name)) for name in SOURCES)
    return text.encode("ascii", "replace").decode("ascii")[:max_chars]  # a small, fixed alphabet


class Windows(Dataset):
    """Non-overlapping windows of ``block_size + 1`` character ids: inputs and next-character labels."""

    def __init__(self, ids: torch.Tensor, block_size: int) -> None:
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block_size

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.block_size
        return self.ids[start : start + self.block_size + 1]


def collate(windows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Windows -> the dict batch the model's ``forward(input_ids, labels)`` takes."""
    batch = torch.stack(windows)
    return {"input_ids": batch[:, :-1], "labels": batch[:, 1:]}


@dataclasses.dataclass
class LMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class CharTransformer(nn.Module):
    """Token and position embeddings, a causal pre-norm transformer encoder, a linear head."""

    def __init__(self, vocab_size: int, *, block_size: int, d_model: int, n_heads: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(block_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)  # nested tensors: inference only
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(block_size), persistent=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> LMOutput:
        t = input_ids.shape[1]
        x = self.token(input_ids) + self.position(torch.arange(t, device=input_ids.device))
        x = self.blocks(x, mask=self.causal[:t, :t], is_causal=True)  # each position sees only the past
        logits = self.head(self.norm(x))
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return LMOutput(logits, loss)


def validation_step(model: CharTransformer, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(**batch)
    accuracy = (out.logits.argmax(-1) == batch["labels"]).float().mean()  # next-character accuracy
    return {"loss": out.loss, "accuracy": accuracy}


def make(
    *, block_size: int = 64, d_model: int = 64, n_heads: int = 4, n_layers: int = 2, dropout: float = 0.0, batch_size: int = 32, max_chars: int = 120_000
) -> autolr.Task:
    """The task autolr tunes: called as ``make(**task_args)`` once per trial, after seeding."""
    text = corpus(4_000 if QUICK else max_chars)
    alphabet = sorted(set(text))
    ids = torch.tensor([alphabet.index(c) for c in text])
    split = int(0.9 * len(ids))
    train = DataLoader(Windows(ids[:split], block_size), batch_size=batch_size, shuffle=True, collate_fn=collate)
    val = DataLoader(Windows(ids[split:], block_size), batch_size=batch_size, collate_fn=collate)
    model = CharTransformer(len(alphabet), block_size=block_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers, dropout=dropout)
    return autolr.Task(
        model=model,
        train_data=train,
        val_data=val,
        training_step=lambda model, batch: model(**batch).loss,
        validation_step=validation_step,
    )
