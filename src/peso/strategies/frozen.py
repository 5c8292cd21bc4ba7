"""The block-0 model, never updated: how much continual updates are worth."""

from typing import Any

import torch

from peso.settings import MethodSettings
from peso.strategies.base import AdapterStrategy, Block, register


@register
class Frozen(AdapterStrategy):
    name = "frozen"
    Settings = MethodSettings  # nothing trains: no continual schedule

    def run_block(self, model: torch.nn.Module, block: Block) -> Any:
        return None  # nothing trains: every block is evaluated with the block-0 model
