"""LightGCN fine-tuned block by block: PISA's `LGN` backbone with its `finetune` schedule, no LLM.

What it is (He et al. 2020, as in github.com/hsyoo32/pisa, src/models/general/LGN.py and
src/helpers/Runner_PISA.py): one embedding row per user and per item, propagated `layers` times over the
symmetrically normalised user-item graph D^-1/2 A D^-1/2 and averaged over layers 0..L; a user's score for
an item is the dot product of the averaged rows. Trained with BPR (`negatives` uniform negatives per
positive, the loss averaged over them) and Adam with weight decay `l2`. Block 0 trains on its training
interactions; each later block fine-tunes the previous weights on that block's training interactions only,
over the graph of that block's interactions (PISA's `incre` data), with a fresh Adam per block (PISA builds
a new model and optimizer per snapshot).

Where it differs from the repository:
- fixed epochs (`graph.epochs`, default 20, for block 0; `graph.continual_epochs`, default 15, after)
  instead of up to 500 with early stopping on validation recall (`fit_block` sees training interactions
  only), and, to fit those few epochs on a CPU, batches of 4096 at lr 1e-2 (the repository: 1024 at 1e-3);
- negatives are drawn from the items known so far (`Catalogue.known[t]`), without excluding the user's own
  items (PISA draws from every item of the whole data set, future ones included, excluding the user's
  items of all time);
- a repeated (user, item) pair is one edge (PISA's csr_matrix adds duplicates up to weight 2);
- rows grow: a user gets a row when first seen, an item's row is (re)drawn N(0, 0.01) when the item first
  becomes known (PISA allocates every row up front with the same N(0, 0.01) init);
- ranking is over all known items, consumed ones included (the protocol of every `peso` method);
- propagation multiplies by the (symmetric) graph with scipy's CSR product inside a small autograd
  function, about twice as fast on one CPU thread as torch's sparse matmul (same numbers).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn

from peso.data.samples import BlockSamples
from peso.progress import check_finite, note
from peso.settings import MethodSettings
from peso.strategies.base import Catalogue, StandaloneMethod, State, register, top_groups

INIT_STD = 0.01  # PISA's init_weights: every embedding N(0, 0.01)


class LightGCNSettings(MethodSettings):
    """Defaults as in the PISA repository (github.com/hsyoo32/pisa: README, _tester.py, argparse defaults)
    except the epochs, batch size and learning rate, which are sized for CPU runs."""

    dim: int = Field(64, ge=1, description="embedding size")
    layers: int = Field(2, ge=0, description="LightGCN propagation layers")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate (the repository: 1e-3 at batch 1024)")
    l2: float = Field(1e-5, ge=0, description="Adam weight decay")
    batch_size: int = Field(4096, ge=1, description="interactions per step (the repository: 1024; CPU speed)")
    negatives: int = Field(4, ge=1, description="BPR negatives per positive")
    epochs: int = Field(
        20, ge=1, description="epochs of block 0 (the repository: up to 500, early-stopped on validation)"
    )
    continual_epochs: int = Field(
        15, ge=1, description="epochs of each later block and of PISA's forward model (the repo: <= 500)"
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="stop after this many epochs without a lower validation BPR loss (each user's validation "
        "target against fixed negatives), the best epoch restored; null: every epoch (as before)",
    )


def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the bipartite graph (users first, then items), float32 CSR.

    Isolated nodes get degree 0 and an empty row, as in PISA (d^-1/2 of 0 set to 0)."""
    pairs = np.unique(np.stack([users, items], axis=1), axis=0) if len(users) else np.zeros((0, 2), np.int64)
    rows = np.concatenate([pairs[:, 0], n_users + pairs[:, 1]])
    cols = np.concatenate([n_users + pairs[:, 1], pairs[:, 0]])
    n = n_users + n_items
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv = np.zeros(n)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    return sp.csr_matrix(((inv[rows] * inv[cols]).astype(np.float32), (rows, cols)), shape=(n, n))


class _Propagate(torch.autograd.Function):
    """graph @ x for a symmetric sparse graph: the backward is graph @ grad again. scipy's CSR product is
    about twice as fast as torch's sparse one on one CPU thread, and this skips torch's transpose."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, graph: sp.csr_matrix) -> torch.Tensor:  # noqa: ANN001
        ctx.graph = graph
        return torch.from_numpy(graph @ x.detach().numpy())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return torch.from_numpy(ctx.graph @ grad.contiguous().numpy()), None


class LightGCN(nn.Module):
    """User and item rows plus layer-averaged propagation; rows can be added as users appear."""

    def __init__(self, n_users: int, n_items: int, dim: int, layers: int, gen: torch.Generator) -> None:
        super().__init__()
        self.layers, self.gen = layers, gen
        self.user = nn.Parameter(torch.randn(n_users, dim, generator=gen) * INIT_STD)
        self.item = nn.Parameter(torch.randn(n_items, dim, generator=gen) * INIT_STD)

    def add_users(self, n: int) -> None:
        """Append n freshly initialised user rows (an optimizer must be rebuilt afterwards)."""
        new = torch.randn(n, self.user.shape[1], generator=self.gen) * INIT_STD
        self.user = nn.Parameter(torch.cat([self.user.detach(), new]))

    def reset_items(self, items: np.ndarray) -> None:
        """Redraw the rows of items that just became known (their rows join the model now)."""
        with torch.no_grad():
            self.item[torch.as_tensor(items, dtype=torch.long)] = (
                torch.randn(len(items), self.item.shape[1], generator=self.gen) * INIT_STD
            )

    def forward(self, graph: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) embeddings: the mean of layers 0..L of propagation over `graph`."""
        x = torch.cat([self.user, self.item])
        total = x
        for _ in range(self.layers):
            x = _Propagate.apply(x, graph)
            total = total + x
        out = total / (self.layers + 1)
        return out[: len(self.user)], out[len(self.user) :]


def bpr_loss(
    users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """PISA's BPR: -log sigmoid(pos - neg), mean over a positive's negatives, then over the batch."""
    uv = users[u]
    diff = (uv * items[pos]).sum(-1, keepdim=True) - torch.einsum("bd,bnd->bn", uv, items[neg])
    return -torch.nn.functional.logsigmoid(diff).mean()


@register
class LightGCNFinetune(StandaloneMethod):
    """LightGCN + BPR, fine-tuned on each block's interactions. PISA and Contrastive+PIW extend it through
    `setup_block` (frozen reference models), `before_epoch` (k-means) and `extra_loss`."""

    name = "lightgcn-finetune"
    Settings = LightGCNSettings

    def start(self, seed: int, catalogue: Catalogue) -> None:
        super().start(seed, catalogue)
        g = self.settings
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: dict[str, int] = {}  # user id -> embedding row
        self.model = LightGCN(0, catalogue.n_items, g.dim, g.layers, self.gen)
        self.known = np.zeros(catalogue.n_items, dtype=bool)  # items with a live row
        # training pairs of the earlier blocks (PISA's `hist` data of the previous snapshot)
        self.hist = (np.zeros(0, np.int64), np.zeros(0, np.int64))

    # ---- data -----------------------------------------------------------------------------------------
    def interactions(self, t: int, s: BlockSamples) -> tuple[np.ndarray, np.ndarray]:
        """This block's training pairs as (user rows, items); adds rows for new users and new items."""
        if t > 0:  # last block's pairs join the history
            self.hist = tuple(np.concatenate(p) for p in zip(self.hist, self.pairs, strict=True))
        new_users = [u for u in s.users if u not in self.rows]
        for u in new_users:
            self.rows[u] = len(self.rows)
        if new_users:
            self.model.add_users(len(new_users))
        fresh = self.catalogue.known[t][~self.known[self.catalogue.known[t]]]
        self.model.reset_items(fresh)
        self.known[fresh] = True
        users, items = [], []
        for u in range(len(s)):
            pos = list(s.train_positions(u))
            users.append(np.full(len(pos), self.rows[s.users[u]], dtype=np.int64))
            items.append(s.sequences[u][pos])
        self.pairs = (np.concatenate(users), np.concatenate(items))
        return self.pairs

    # ---- hooks for the continual variants ------------------------------------------------------------
    def setup_block(self, t: int, users: np.ndarray, items: np.ndarray) -> None:
        """After rows and graph are ready, before training block t."""

    def before_epoch(self, t: int) -> None:
        """At the start of every epoch of block t."""

    def extra_loss(
        self, t: int, users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to BPR for a batch (u, pos) given the propagated embeddings; None: nothing."""
        return None

    # ---- training ------------------------------------------------------------------------------------
    def fit_block(self, t: int, s: BlockSamples) -> float | None:
        start = time.perf_counter()
        users, items = self.prepare_block(t, s)
        g = self.settings
        self.train(t, users, items, g.epochs if t == 0 else g.continual_epochs)
        self.trained_targets = len(users)
        return time.perf_counter() - start

    def prepare_block(self, t: int, s: BlockSamples) -> tuple[np.ndarray, np.ndarray]:
        """Rows, this block's graph and the variant's set-up; returns the training pairs."""
        users, items = self.interactions(t, s)
        valid = s.examples("valid")
        self.valid_pairs = (
            torch.as_tensor([self.rows[s.users[u]] for u, _ in valid], dtype=torch.long),
            torch.as_tensor([s.target(u, p) for u, p in valid], dtype=torch.long),
        )
        self.graph = normalized_adjacency(users, items, len(self.rows), self.catalogue.n_items)
        self.setup_block(t, users, items)
        return users, items

    def train(self, t: int, users: np.ndarray, items: np.ndarray, epochs: int) -> float:
        """Adam over `epochs` shuffled passes; returns the mean loss of the last epoch."""
        g = self.settings
        opt = torch.optim.Adam(self.trainable(), lr=g.lr, weight_decay=g.l2)
        u_all, i_all = torch.as_tensor(users), torch.as_tensor(items)
        last = float("nan")
        best: tuple[float, int, dict | None] = (float("inf"), 0, None)
        where, fix = f"seed {self.seed} method {self.name} block {t}", f"lower graph.lr ({g.lr:g})"
        for epoch in range(1, epochs + 1):
            self.before_epoch(t)
            losses = []
            for b in torch.randperm(len(u_all), generator=self.gen).split(g.batch_size):
                loss = self.loss(t, u_all[b], i_all[b], self.negatives(t, len(b)))
                check_finite(loss.item(), "the loss", where, epoch, len(losses) + 1, fix)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            last = float(np.mean(losses)) if losses else last
            note(f"{where} epoch {epoch}/{epochs}: train loss {last:.4f}")
            if g.patience is not None:
                v = self.valid_loss(t)
                if v < best[0]:
                    best = (v, epoch, {k: p.detach().clone() for k, p in self._trained().items()})
                elif epoch - best[1] >= g.patience:
                    note(
                        f"{where}: stopped after epoch {epoch}, {g.patience} without a lower validation loss"
                    )
                    break
        if g.patience is not None and best[2] is not None:
            with torch.no_grad():
                for k, p in self._trained().items():
                    p.copy_(best[2][k])
            self.best_epoch = best[1]
        return last

    def _trained(self) -> dict[str, torch.Tensor]:
        return {str(i): p for i, p in enumerate(self.trainable())}

    @torch.no_grad()
    def valid_loss(self, t: int) -> float:
        """BPR of each validation target against negatives fixed per block (the same at every epoch)."""
        u, pos = self.valid_pairs
        known = torch.as_tensor(self.catalogue.known[t])
        gen = torch.Generator().manual_seed(self.seed * 1000 + t)
        neg = known[torch.randint(len(known), (len(u), self.settings.negatives), generator=gen)]
        users, items = self.model(self.graph)
        return float(bpr_loss(users, items, u, pos, neg))

    def trainable(self) -> list[nn.Parameter]:
        """What Adam updates (and decays by `l2`): the embeddings."""
        return list(self.model.parameters())

    def negatives(self, t: int, n: int) -> torch.Tensor:
        """(n, negatives) items drawn uniformly from those known at t."""
        known = torch.as_tensor(self.catalogue.known[t])
        return known[torch.randint(len(known), (n, self.settings.negatives), generator=self.gen)]

    def loss(self, t: int, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """BPR plus the variant's extra term for one batch."""
        users, items = self.model(self.graph)
        loss = bpr_loss(users, items, u, pos, neg)
        extra = self.extra_loss(t, users, items, u, pos)
        return loss if extra is None else loss + extra

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current weights' propagated (user, item) embeddings over this block's graph, frozen.

        PISA's prev_model / forward_model are frozen copies propagated over the current block's graph, so
        their outputs are constant during the block: computed once here instead of at every batch."""
        with torch.no_grad():
            users, items = self.model(self.graph)
        return users.clone(), items.clone()

    def state(self) -> State:
        tensors = {
            "user": self.model.user.detach(),
            "item": self.model.item.detach(),
            "known": torch.from_numpy(self.known),
            "hist_users": torch.from_numpy(self.hist[0]),
            "hist_items": torch.from_numpy(self.hist[1]),
            "pair_users": torch.from_numpy(self.pairs[0]),
            "pair_items": torch.from_numpy(self.pairs[1]),
            "generator": self.gen.get_state(),
        }
        return State({k: v.contiguous() for k, v in tensors.items()}, {"users": list(self.rows)})

    def load_state(self, state: State, blocks: list[BlockSamples]) -> None:
        t = state.tensors
        self.rows = {u: k for k, u in enumerate(state.meta["users"])}
        self.model.user = nn.Parameter(t["user"].clone())
        with torch.no_grad():
            self.model.item.copy_(t["item"])
        self.known = t["known"].numpy().copy()
        self.hist = (t["hist_users"].numpy().copy(), t["hist_items"].numpy().copy())
        self.pairs = (t["pair_users"].numpy().copy(), t["pair_items"].numpy().copy())
        self.gen.set_state(t["generator"])
        self.graph = normalized_adjacency(*self.pairs, len(self.rows), self.catalogue.n_items)

    def rank(self, t: int, s: BlockSamples, k: int) -> np.ndarray:
        with torch.no_grad():
            users, items = self.model(self.graph)
            rows = torch.as_tensor([self.rows[u] for u in s.users], dtype=torch.long)
            chunks = [top_groups(users[r] @ items.T, self.catalogue, t, k) for r in rows.split(512)]
        return np.concatenate(chunks)
