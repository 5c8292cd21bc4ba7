"""RQ-VAE (TIGER / LC-Rec style): an MLP autoencoder whose latent is quantised by residual codebooks.

Loss = reconstruction MSE + per level ||sg[r] - e||^2 + beta ||r - sg[e]||^2, straight-through gradients,
codebooks initialised by k-means on the first latents (avoids dead codes). Same interface as
`ResidualKMeans`: `fit(x, levels, codes, seed)` on the base block's items, then `encode(x)` for any item.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from peso.progress import bar
from peso.tokenize.rkmeans import ResidualKMeans


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(
        self,
        dim: int,
        levels: int,
        codes: int,
        latent: int = 32,
        hidden: tuple[int, ...] = (512, 256, 128),
        beta: float = 0.25,
    ) -> None:
        super().__init__()
        self.encoder = _mlp([dim, *hidden, latent])
        self.decoder = _mlp([latent, *reversed(hidden), dim])
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(codes, latent) * 0.1) for _ in range(levels)]
        )
        self.beta = beta

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantised latent (straight-through), codes (n, levels), codebook + commitment loss."""
        residual, quantized, loss, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for book in self.codebooks:
            idx = torch.cdist(residual, book).argmin(1)
            e = book[idx]
            loss = (
                loss
                + ((residual.detach() - e) ** 2).mean()
                + self.beta * ((residual - e.detach()) ** 2).mean()
            )
            quantized = quantized + e
            residual = residual - e.detach()
            codes.append(idx)
        return z + (quantized - z).detach(), torch.stack(codes, 1), loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zq, _, qloss = self.quantize(self.encoder(x))
        recon = ((self.decoder(zq) - x) ** 2).mean()
        return recon + qloss, recon

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        levels: int = 3,
        codes: int = 256,
        seed: int = 0,
        epochs: int = 300,
        lr: float = 1e-3,
        batch_size: int = 1024,
    ) -> RQVAE:
        torch.manual_seed(seed)
        data = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        model = cls(data.shape[1], levels, codes)
        with torch.no_grad():  # k-means initialisation of every level on the untrained latents
            init = ResidualKMeans.fit(model.encoder(data).numpy(), levels, codes, seed)
            for book, centers in zip(model.codebooks, init.codebooks, strict=True):
                book[: len(centers)] = torch.as_tensor(centers, dtype=torch.float32)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        model.history = []
        for _ in bar(range(epochs), "RQ-VAE"):
            perm = torch.randperm(len(data), generator=gen)
            total = 0.0
            for start in range(0, len(data), batch_size):
                loss, recon = model(data[perm[start : start + batch_size]])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += recon.item() * min(batch_size, len(data) - start)
            model.history.append(total / len(data))
        return model.eval()

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> np.ndarray:
        _, codes, _ = self.quantize(self.encoder(torch.as_tensor(np.asarray(x), dtype=torch.float32)))
        return codes.numpy().astype(np.int64)
