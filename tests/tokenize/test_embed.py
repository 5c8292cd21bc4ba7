import numpy as np

from peso.tokenize.embed import Collaborative, text_embeddings


def test_any_hf_causal_lm_folder_mean_pools_into_unit_vectors(local_checkpoint):
    emb = text_embeddings(["The user has items", "Can you predict", "item"], local_checkpoint, batch_size=2)
    assert emb.shape == (3, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])


def test_collaborative_fold_in_reproduces_fitted_items():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 20, 400)
    model = Collaborative(users, items, 30, 20, dim=19, seed=0)
    # with the full rank kept, folding the base interactions back in gives the fitted factors
    folded = model.fold_in(users, items, 20)
    assert np.allclose(folded, model.item_factors, atol=1e-6)


def test_collaborative_fold_in_of_users_reproduces_fitted_users():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 15, 300), rng.integers(0, 25, 300)
    model = Collaborative(users, items, 15, 25, dim=14, seed=0)  # full rank: min(15, 25) - 1
    folded = model.fold_in_users(model.item_factors, users, items, 15)
    assert np.allclose(folded, model.user_factors, atol=1e-6)
