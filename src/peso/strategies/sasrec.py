"""SASRec (Kang & McAuley, ICDM 2018), the standard non-LLM next-item reference, under the LLM's protocol.

Model: item-ID embeddings (scaled by sqrt(hidden)) + learned positional embeddings, causal self-attention
blocks (pre-norm `torch.nn.TransformerEncoderLayer`, point-wise feed-forward of width `hidden`), a final
layer norm; the score of item i is the dot product of the last hidden state with item i's (shared) input
embedding; full softmax cross-entropy over the items.

Training data = exactly the LLM's: each training target of the block with its window `s.window(u, p)`
(the last `data.history` items before it), right-aligned and left-padded. The loss is on the *target only*
(the last position), not on every position of the window: windows of consecutive targets overlap, so the
every-position loss would count an item once per window containing it (up to `history` times) and would
train on earlier blocks' items as targets, which blurs "fine-tune on block t". Every target is counted once
and sees the same history as the LLM. Best epoch = lowest validation loss (each user's validation target),
with early stopping after `patience` epochs without improvement.

New items: the embedding has a row for every catalogue item from the start, but the softmax of training and
validation at block position t runs over the items known at t only (`catalogue.known[t]`), and ranking too
(`top_groups`). A row is thus untouched (not even pushed down as a negative) until its item appears: a
later block's item is as new to the model as to a real system that adds the row when the item arrives.

- `sasrec-finetune`: block 0 from scratch, then each block continues from the previous block's weights on
  that block's samples only (a fresh Adam per block, `continual_epochs`).
- `sasrec-retrain`: at every block, re-initialise and train on blocks 0..t's samples (`epochs`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from peso.data.samples import BlockSamples
from peso.progress import bar, check_finite, note
from peso.settings import MethodSettings
from peso.strategies.base import Catalogue, RunContext, StandaloneMethod, State, register, top_groups


class SasrecSettings(MethodSettings):
    """SASRec (Kang & McAuley 2018), the non-LLM next-item reference (`sasrec-finetune`, `sasrec-retrain`)."""

    hidden: int = Field(64, ge=8, description="item / position embedding size")
    layers: int = Field(2, ge=1, description="self-attention blocks")
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    # few epochs: the full softmax over every item dominates the cost on CPU (~3 ms a target for 39k items)
    epochs: int = Field(2, ge=1, description="most epochs of block 0 (and of every retraining)")
    continual_epochs: int = Field(1, ge=1, description="most epochs of a fine-tuned block 1..")
    patience: int = Field(2, ge=1, description="stop after this many epochs without a lower validation loss")
    batch_size: int = Field(128, ge=1, description="training targets per step (128: the SASRec paper)")
    max_len: int | None = Field(
        None, ge=1, description="positions read: the window's last max_len items (default: data.history)"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> SasrecSettings:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class SASRec(nn.Module):
    """Item rows are shifted by one: row 0 is padding, item i is row i + 1."""

    def __init__(
        self, n_items: int, hidden: int, layers: int, heads: int, dropout: float, max_len: int
    ) -> None:
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.items = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.positions = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.xavier_normal_(self.items.weight)
        nn.init.xavier_normal_(self.positions.weight)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden_states(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) item rows (0 = padding, left) -> (B, L, hidden), position i reading items <= i only."""
        b, n = seq.shape
        pad = seq == 0
        x = self.items(seq) * math.sqrt(self.hidden) + self.positions.weight[-n:]  # positions end-aligned
        x = self.dropout(x) * ~pad[..., None]
        # causal, and no query attends a padding key except itself (a padding query has nothing else: no NaN)
        eye = torch.eye(n, dtype=torch.bool)
        blocked = torch.ones(n, n, dtype=torch.bool).triu(1) | (pad[:, None, :] & ~eye)
        h = self.encoder(x, mask=blocked.repeat_interleave(self.heads, dim=0))
        return self.norm(h)

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, n_items): every position's next-item scores, hidden state . item embedding."""
        return self.hidden_states(seq) @ self.items.weight[1:].T

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, n_items): the next item after each window (its last position)."""
        return self.hidden_states(seq)[:, -1] @ self.items.weight[1:].T


def windows(s: BlockSamples, pairs: list[tuple[int, int]], max_len: int) -> torch.Tensor:
    """(len(pairs), max_len) item rows of each (user, target position)'s window, right-aligned, 0-padded."""
    out = np.zeros((len(pairs), max_len), dtype=np.int64)
    for r, (u, p) in enumerate(pairs):
        w = s.window(u, p)[-max_len:]
        if len(w):
            out[r, -len(w) :] = w + 1
    return torch.from_numpy(out)


def targets(s: BlockSamples, pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([s.target(u, p) for u, p in pairs], dtype=torch.long)


def masked_ce(logits: torch.Tensor, target: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the known items only (unknown columns -inf)."""
    return F.cross_entropy(logits.masked_fill(unknown, -torch.inf), target)


class _Sasrec(StandaloneMethod):
    Settings = SasrecSettings
    retrains = False

    def __init__(self, settings: SasrecSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.max_len = settings.max_len or context.history

    def start(self, seed: int, catalogue: Catalogue) -> None:
        super().start(seed, catalogue)
        self.model: SASRec | None = None
        self.past: list[BlockSamples] = []  # retraining reads every block so far

    def _new_model(self, t: int) -> SASRec:
        torch.manual_seed(self.seed * 1000 + t)
        st = self.settings
        return SASRec(self.catalogue.n_items, st.hidden, st.layers, st.heads, st.dropout, self.max_len)

    def fit_block(self, t: int, s: BlockSamples) -> float | None:
        start = time.perf_counter()
        self.past.append(s)
        if self.retrains or self.model is None:
            self.model = self._new_model(t)
        blocks = self.past if self.retrains else [s]
        x = torch.cat([windows(b, b.examples("train"), self.max_len) for b in blocks])
        y = torch.cat([targets(b, b.examples("train")) for b in blocks])
        valid = s.examples("valid")
        vx, vy = windows(s, valid, self.max_len), targets(s, valid)
        st = self.settings
        epochs = st.continual_epochs if t > 0 and not self.retrains else st.epochs
        self.best_epoch, self.trained_targets = self._train(t, x, y, vx, vy, epochs)
        return time.perf_counter() - start

    def _unknown(self, t: int) -> torch.Tensor:
        unknown = torch.ones(self.catalogue.n_items, dtype=torch.bool)
        unknown[torch.as_tensor(self.catalogue.known[t])] = False
        return unknown

    def _train(
        self, t: int, x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor, epochs: int
    ) -> tuple[int, int]:
        """Adam on the target cross-entropy; keeps the epoch of lowest validation loss. Returns (best
        epoch, targets per epoch)."""
        model, st, unknown = self.model, self.settings, self._unknown(t)
        torch.manual_seed(self.seed * 1000 + t)  # dropout
        order = torch.Generator().manual_seed(self.seed * 1000 + t)  # batches
        opt = torch.optim.Adam(model.parameters(), lr=st.lr)
        best, best_epoch, best_state, waited = math.inf, 0, None, 0
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(len(y), generator=order)
            where = f"seed {self.seed} method {self.name} block {t}"
            for step, idx in enumerate(bar(perm.split(st.batch_size), f"{where} epoch {epoch}/{epochs}")):
                loss = masked_ce(model(x[idx]), y[idx], unknown)
                check_finite(loss.item(), "the loss", where, epoch, step + 1, f"lower sasrec.lr ({st.lr:g})")
                opt.zero_grad()
                loss.backward()
                opt.step()
            v = self.loss(vx, vy, unknown)
            check_finite(v, "the validation loss", where, epoch, step + 1, f"lower sasrec.lr ({st.lr:g})")
            note(f"{where} epoch {epoch}/{epochs}: valid loss {v:.4f}")
            if v < best:
                best, best_epoch, waited = v, epoch, 0
                best_state = {k: p.detach().clone() for k, p in model.state_dict().items()}
            else:
                waited += 1
                if waited >= st.patience:
                    break
        if best_state is not None:  # None only if every validation loss was NaN: keep the last weights
            model.load_state_dict(best_state)
        return best_epoch, len(y)

    @torch.no_grad()
    def loss(self, x: torch.Tensor, y: torch.Tensor, unknown: torch.Tensor) -> float:
        """Mean cross-entropy of the targets (eval mode)."""
        self.model.eval()
        total = sum(
            masked_ce(self.model(xb), yb, unknown).item() * len(yb)
            for xb, yb in zip(x.split(1024), y.split(1024), strict=True)
        )
        return total / max(len(y), 1)

    def state(self) -> State:
        return State({k: v.contiguous() for k, v in self.model.state_dict().items()})

    def load_state(self, state: State, blocks: list[BlockSamples]) -> None:
        self.past = list(blocks)
        self.model = self._new_model(len(blocks) - 1)
        self.model.load_state_dict(state.tensors)

    @torch.no_grad()
    def rank(self, t: int, s: BlockSamples, k: int) -> np.ndarray:
        self.model.eval()
        x = windows(s, s.examples("test"), self.max_len)
        return np.concatenate([top_groups(self.model(xb), self.catalogue, t, k) for xb in x.split(512)])


@register
class SasrecFinetune(_Sasrec):
    name = "sasrec-finetune"


@register
class SasrecRetrain(_Sasrec):
    name = "sasrec-retrain"
    retrains = True
