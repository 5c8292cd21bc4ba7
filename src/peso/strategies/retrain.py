"""Full retraining: at block t, train from the block-0 starting point on every block's training targets
0..t, with block 0's learning rate and epochs and block 0's trainable parameters. The expensive reference
a continual method should approach."""

from typing import Any

import torch

from peso.pack import concat
from peso.settings import MethodSettings
from peso.strategies.base import AdapterStrategy, Block, register


@register
class Retrain(AdapterStrategy):
    name = "retrain"
    Settings = MethodSettings  # block 0's schedule at every block, not a continual one

    def run_block(self, model: torch.nn.Module, block: Block) -> Any:
        block.params.restore("init")
        with block.params.training("block0"):  # what block 0 trains (every weight of `tiny`)
            data = concat([*block.earlier(), block.data.current])
            return block.train(model, data, block.valid, continual=False)
