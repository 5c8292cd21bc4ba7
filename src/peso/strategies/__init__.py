"""Strategies: PESO and the baselines, one short class each, in a registry keyed by name."""

from peso.strategies import (  # noqa: F401  (registers them)
    cumulative,
    frozen,
    lightgcn,
    peso,
    pisa,
    piw,
    popular,
    proximal,
    retrain,
    sasrec,
    single,
)
from peso.strategies.base import REGISTRY, AdapterStrategy, Method, StandaloneMethod, create

__all__ = ["REGISTRY", "AdapterStrategy", "Method", "StandaloneMethod", "create"]
