"""Contrastive + PIW: LightGCN fine-tuned with contrastive distillation from the previous model, user terms
weighted by a learned personalised importance weight. PISA's main baseline.

As in github.com/hsyoo32/pisa (src/models/Contrastive.py `loss` and `generate_weight`,
src/models/general/Contrastive_LGN.py, src/helpers/Runner_cons.py with a `finetune-piw` method), for each
block t >= 1, from the previous weights, train BPR + beta * (user + user_neigh + item + item_neigh):
- user: InfoNCE between the previous and the current embedding of the batch's old users (those with
  interactions in earlier blocks), weighted per user;
- user_neigh: the previous model's embeddings of each old user's items of earlier blocks against the
  current user embedding, with the user's weight;
- item / item_neigh: the same, unweighted, for the batch's positive items that occur in earlier blocks,
  against the previous embeddings of the item and of its earlier users;
- the weight (PIW): at every epoch, k-means (`clusters`) of the current item embeddings; per cluster k a
  learned D x D matrix W_k (N(0, 1) init); S_u = (softmax_k(c_k W_k u_prev) - softmax_k(c_k W_k u))^2;
  weight = softplus(MLP(S_u)), MLP = Linear(K, hidden) - ReLU - Linear(hidden, 1), N(0, 0.01) init.
  W and the MLP are created at block 1, trained jointly with the embeddings by the same loss (so nothing
  stops them from shrinking the weights: that is how the repository trains them) and carried to later
  blocks.
The previous model propagates over block t's graph; its output is computed once per block.

Where it differs: those of `lightgcn` and `pisa` (fixed epochs, negatives among known items, grown rows,
k-means over known items, neighbourhoods from earlier blocks' training interactions).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from peso.data.samples import BlockSamples
from peso.strategies.base import Catalogue, State, register
from peso.strategies.pisa import ContinualGraph, ContinualGraphSettings, info_nce

INIT_STD = 0.01


class ImportanceWeight(nn.Module):
    """PIW: a user's weight from how its cluster affinities moved between the previous and current model."""

    def __init__(self, clusters: int, dim: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(clusters, dim, dim, generator=gen))
        self.mlp = nn.Sequential(nn.Linear(clusters, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in self.mlp.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)

    def forward(self, current: torch.Tensor, previous: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """(n,) weights, softplus(MLP((softmax_k(c_k W_k u_prev) - softmax_k(c_k W_k u))^2))."""
        k = len(centroids)
        proj = torch.einsum("kd,kde->ke", centroids, self.W[:k])  # c_k W_k
        shift = (F.softmax(previous @ proj.T, dim=1) - F.softmax(current @ proj.T, dim=1)).pow(2)
        if k < self.W.shape[0]:  # fewer points than clusters (tiny data): pad the MLP's input
            shift = F.pad(shift, (0, self.W.shape[0] - k))
        return F.softplus(self.mlp(shift)).squeeze(1)


class PiwSettings(ContinualGraphSettings):
    weight: float = Field(0.1, ge=0, description="weight of the distillation terms")
    hidden: int = Field(50, ge=1, description="hidden units of the weighting MLP")


@register
class ContrastivePiw(ContinualGraph):
    name = "contrastive-piw"
    Settings = PiwSettings

    def start(self, seed: int, catalogue: Catalogue) -> None:
        super().start(seed, catalogue)
        self.piw: ImportanceWeight | None = None

    def setup_block(self, t: int, users: np.ndarray, items: np.ndarray) -> None:
        super().setup_block(t, users, items)
        if t > 0 and self.piw is None:
            g = self.settings
            self.piw = ImportanceWeight(g.clusters, g.dim, g.hidden, self.gen)

    def state(self) -> State:
        state = super().state()
        if self.piw is not None:  # carried from block to block
            state.tensors.update({f"piw.{k}": v.contiguous() for k, v in self.piw.state_dict().items()})
        return state

    def load_state(self, state: State, blocks: list[BlockSamples]) -> None:
        super().load_state(state, blocks)
        piw = {k.removeprefix("piw."): v for k, v in state.tensors.items() if k.startswith("piw.")}
        if piw:
            g = self.settings
            self.piw = ImportanceWeight(g.clusters, g.dim, g.hidden, torch.Generator())
            self.piw.load_state_dict(piw)

    def trainable(self) -> list[nn.Parameter]:
        """Embeddings plus, from block 1, the PIW module (one Adam over both, as the repository)."""
        extra = list(self.piw.parameters()) if self.piw is not None else []
        return [*self.model.parameters(), *extra]

    def extra_loss(
        self, t: int, users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor | None:
        if t == 0:
            return None
        old = self.old(u)
        pos_old = pos.unique()
        pos_old = pos_old[torch.as_tensor(self.item_hist.has(pos_old.numpy()))]
        if len(old) == 0 or len(pos_old) == 0:  # as the repository: no term without both
            return None
        g, (prev_u, prev_i) = self.settings, self.prev
        tau, now = g.temperature, users[old]
        w = self.piw(now, prev_u[old], self.centroids)
        loss = info_nce(prev_u[old], now, weights=w, tau=tau)
        neigh, owner = self.user_hist.gather(old.numpy())
        owner_t = torch.as_tensor(owner)
        loss = loss + info_nce(prev_i[torch.as_tensor(neigh)], now, owner_t, w[owner_t], tau)
        loss = loss + info_nce(prev_i[pos_old], items[pos_old], tau=tau)
        neigh, owner = self.item_hist.gather(pos_old.numpy())
        loss = loss + info_nce(
            prev_u[torch.as_tensor(neigh)], items[pos_old], torch.as_tensor(owner), tau=tau
        )
        return g.weight * loss
