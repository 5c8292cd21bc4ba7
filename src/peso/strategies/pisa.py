"""PISA (Yoo et al., SIGIR 2025): LightGCN + BPR with personalised stability and plasticity terms.

As in github.com/hsyoo32/pisa (src/models/PISA.py `loss`, src/helpers/Runner_PISA.py, src/main.py with
`finetune-plasticity-stability-userneigh`), for each block t >= 1:
1. forward model: the previous weights plainly fine-tuned on block t (BPR only), then frozen;
2. from the previous weights again, train BPR + alpha * (plast + plast_neigh + stab + stab_neigh), where
   per batch, over the batch's users that already existed ("old" users):
   - shift: at every epoch, k-means (`clusters`) of the current model's item embeddings; a user's
     distribution over clusters is softmax_k(c_k . u) for the current and for the previous user embedding
     (both against the current centroids, as the repository does); w = sigmoid(JS - mean JS);
   - plasticity (weights w, kept for the top ratio L of users, 0 elsewhere): InfoNCE pulling the current
     user embedding toward the forward model's, and toward the forward model's embeddings of the user's
     block-t items (every batch user; users new in block t weigh 0.5);
   - stability (weights 1 - w, top ratio L of those, i.e. the least-shifted users): InfoNCE toward the
     previous model's user embedding and its embeddings of the user's items of earlier blocks;
   - InfoNCE = -log softmax of cosine / `temperature` against the other anchors of the batch, weighted
     per anchor, averaged; the weights are not detached (gradients flow through them, as in the repo).
The previous and forward models propagate over block t's graph (deep copies of the current model); their
outputs are constant, so they are computed once per block.

Where it differs: those of `lightgcn` (fixed epochs, negatives among known items, grown rows); k-means over
the items known at t (the repository clusters every item row, unseen ones included); the forward and the
PISA stage each get a fresh Adam (the repository reuses the forward stage's optimizer state); "old" users
are those with training interactions in earlier blocks (the repository: any earlier interaction).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from peso.strategies.base import register
from peso.strategies.lightgcn import LightGCNFinetune, LightGCNSettings

EPS = 1e-10  # PISA's DEFAULT_EPS inside the logs of the JS divergence


class Neighbours:
    """key -> sorted distinct values (a user's items or an item's users), gathered in batches."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, n_keys: int) -> None:
        pairs = (
            np.unique(np.stack([keys, values], axis=1), axis=0) if len(keys) else np.zeros((0, 2), np.int64)
        )
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=n_keys))])
        self.values = pairs[:, 1]

    def has(self, keys: np.ndarray) -> np.ndarray:
        """Whether each key has any neighbour (keys past the table have none)."""
        keys = np.asarray(keys)
        inside = keys < len(self.indptr) - 1
        out = np.zeros(len(keys), dtype=bool)
        out[inside] = self.indptr[keys[inside] + 1] > self.indptr[keys[inside]]
        return out

    def gather(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(neighbours, position in `keys` of their owner), all neighbours of all keys concatenated."""
        keys = np.asarray(keys)
        keys = keys[keys < len(self.indptr) - 1]  # callers pass keys that `has` neighbours
        starts, lens = self.indptr[keys], self.indptr[keys + 1] - self.indptr[keys]
        owner = np.repeat(np.arange(len(keys)), lens)
        offset = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return self.values[np.repeat(starts, lens) + offset], owner


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator, tol: float = 1e-4) -> torch.Tensor:
    """(k, dim) centroids by Lloyd's algorithm from k random points; an empty cluster is re-seeded with a
    random point (as PISA's `kmeans`)."""
    k = min(k, len(x))
    c = x[torch.randperm(len(x), generator=gen)[:k]]
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        new = torch.zeros_like(c).index_add_(0, assign, x) / counts.clamp(min=1)[:, None].to(x.dtype)
        empty = counts == 0
        if empty.any():
            new[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=gen)]
        moved = (new - c).norm(dim=1)
        c = new
        if bool((moved < tol).all()):
            break
    return c


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise Jensen-Shannon divergence (natural log) of two (n, K) distributions."""
    m = 0.5 * (p + q)
    kl = lambda a: (a * ((a + EPS).log() - (m + EPS).log())).sum(1)  # noqa: E731
    return 0.5 * (kl(p) + kl(q))


def shift_weights(current: torch.Tensor, previous: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per user sigmoid(JS - mean JS) of the user's cluster distributions softmax_k(c_k . u) under the
    current and the previous embedding: > 0.5 for users whose preferences shifted more than average."""
    js = js_divergence(F.softmax(previous @ centroids.T, dim=1), F.softmax(current @ centroids.T, dim=1))
    return torch.sigmoid(js - js.mean())


def select(weights: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(plasticity, stability) weights: w kept where above its (1 - ratio) quantile (the most-shifted
    users), 1 - w kept where above its own (1 - ratio) quantile (the least-shifted); 0 elsewhere."""
    zero = torch.zeros((), dtype=weights.dtype)
    stable = 1 - weights
    plastic = torch.where(weights > torch.quantile(weights, 1 - ratio), weights, zero)
    stable = torch.where(stable > torch.quantile(stable, 1 - ratio), stable, zero)
    return plastic, stable


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    owner: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    tau: float = 0.5,
) -> torch.Tensor:
    """mean_i w_i * -log(exp(cos(a_i, z_i)/tau) / sum_j exp(cos(a_i, z_j)/tau)), j over the batch.

    The repository's pairs repeat a user once per neighbour (z_j = positive[owner[j]]); the sum over j is
    computed per distinct positive times its count, which is the same number without an N x N matrix."""
    if owner is None:
        owner = torch.arange(len(anchor))
    a, z = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    logits = a @ z.T / tau  # (N, G)
    counts = torch.bincount(owner, minlength=len(positive)).to(logits.dtype)
    denom = torch.logsumexp(logits + counts.log(), dim=1)  # log sum_j exp(.), duplicates counted
    loss = denom - logits.gather(1, owner[:, None]).squeeze(1)
    return (loss * weights).mean() if weights is not None else loss.mean()


class ContinualGraphSettings(LightGCNSettings):
    clusters: int = Field(20, ge=1, description="k-means clusters of item embeddings")
    kmeans_iters: int = Field(100, ge=1, description="most Lloyd iterations of each k-means")
    temperature: float = Field(0.5, gt=0, description="InfoNCE temperature tau")


class PisaSettings(ContinualGraphSettings):
    alpha: float = Field(0.5, ge=0, description="alpha, weight of the plasticity/stability terms")
    ratio: float = Field(0.2, gt=0, le=1, description="L, top/bottom share of users selected")


class ContinualGraph(LightGCNFinetune):
    """Shared by PISA and Contrastive+PIW: the previous model's frozen embeddings, the history
    neighbourhoods and per-epoch k-means of the current item embeddings."""

    def setup_block(self, t: int, users: np.ndarray, items: np.ndarray) -> None:
        if t == 0:
            return
        n_users = len(self.rows)
        self.prev = self.snapshot()
        self.user_hist = Neighbours(*self.hist, n_users)  # old user -> items of earlier blocks
        self.item_hist = Neighbours(self.hist[1], self.hist[0], self.catalogue.n_items)  # item -> old users
        self.user_now = Neighbours(users, items, n_users)  # user -> items of this block

    def before_epoch(self, t: int) -> None:
        if t > 0:
            g = self.settings
            with torch.no_grad():
                _, items = self.model(self.graph)
                points = items[torch.as_tensor(self.catalogue.known[t])]
                self.centroids = kmeans(points, g.clusters, g.kmeans_iters, self.gen)

    def old(self, u: torch.Tensor) -> torch.Tensor:
        """The batch's distinct users with training interactions in earlier blocks."""
        users = u.unique()
        return users[torch.as_tensor(self.user_hist.has(users.numpy()))]


@register
class Pisa(ContinualGraph):
    name = "pisa"
    Settings = PisaSettings

    def setup_block(self, t: int, users: np.ndarray, items: np.ndarray) -> None:
        super().setup_block(t, users, items)
        self.stage = "forward"
        if t == 0:
            return
        start = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.train(t, users, items, self.settings.continual_epochs)  # plain fine-tuning: the forward model
        self.forward_emb = self.snapshot()
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(start[n])
        self.stage = "pisa"

    def before_epoch(self, t: int) -> None:
        if self.stage == "pisa":
            super().before_epoch(t)

    def extra_loss(
        self, t: int, users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor | None:
        if t == 0 or self.stage != "pisa":
            return None
        old = self.old(u)
        if len(old) == 0 or not self.item_hist.has(pos.unique().numpy()).any():  # as the repository
            return None
        g, (prev_u, prev_i), (fwd_u, fwd_i) = self.settings, self.prev, self.forward_emb
        tau = g.temperature
        now = users[old]
        plastic, stable = select(shift_weights(now, prev_u[old], self.centroids), g.ratio)
        loss = info_nce(fwd_u[old], now, weights=plastic, tau=tau)
        loss = loss + info_nce(prev_u[old], now, weights=stable, tau=tau)
        # plasticity on neighbours: every batch user's block-t items under the forward model
        batch = u.unique()
        neigh, owner = self.user_now.gather(batch.numpy())
        if len(neigh):
            w = torch.full((len(batch),), 0.5)
            w = w.index_put((torch.searchsorted(batch, old),), plastic)  # batch and old are sorted
            owner_t = torch.as_tensor(owner)
            loss = loss + info_nce(fwd_i[torch.as_tensor(neigh)], users[batch], owner_t, w[owner_t], tau)
        # stability on neighbours: old users' items of earlier blocks under the previous model
        neigh, owner = self.user_hist.gather(old.numpy())
        owner_t = torch.as_tensor(owner)
        loss = loss + info_nce(prev_i[torch.as_tensor(neigh)], now, owner_t, stable[owner_t], tau)
        return g.alpha * loss
