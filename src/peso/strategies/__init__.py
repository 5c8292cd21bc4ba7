"""Strategies: PESO and the baselines, one short class each, in a registry keyed by name."""

from peso.strategies import cumulative, frozen, peso, popular, proximal, retrain, single  # noqa: F401  (registers them)
from peso.strategies.base import REGISTRY, AdapterStrategy, Method, StandaloneMethod, create

__all__ = ["REGISTRY", "AdapterStrategy", "Method", "StandaloneMethod", "create"]
