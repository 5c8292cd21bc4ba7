"""Strategies: PESO and the baselines, one short class each with its own settings, in a registry keyed by
name."""

from peso.strategies import (  # noqa: F401  (registers them)
    cumulative,
    frozen,
    lightgcn,
    lsat,
    peso,
    pisa,
    piw,
    popular,
    proximal,
    retrain,
    sasrec,
    single,
)
from peso.strategies.base import (
    REGISTRY,
    AdapterStrategy,
    Block,
    BlockData,
    Method,
    RunContext,
    StandaloneMethod,
    State,
    create,
    method_settings,
)

__all__ = [
    "REGISTRY",
    "AdapterStrategy",
    "Block",
    "BlockData",
    "Method",
    "RunContext",
    "StandaloneMethod",
    "State",
    "create",
    "method_settings",
]
