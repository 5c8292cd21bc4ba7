"""LSAT (Shi et al., "Preliminary Study on Incremental Learning for LLM-based Recommender Systems", arXiv
2312.15599): a long-term LoRA that keeps learning from every block, and a short-term LoRA trained afresh on
each new block alone, combined by task-arithmetic fusion: y = W x + s x A_long^T B_long^T + s x A_short^T
B_short^T.

Per block t: (1) the long-term adapter continues from its state after block t-1 and fine-tunes on block t
(as `single` does); (2) the short-term adapter starts from PEFT's initialisation (A kaiming-uniform, B zero)
and trains on block t with the long-term one out of the model; (3) both are summed for evaluation. The
long-term adapter rides along as a frozen term of each LoRA layer (the cumulative methods' `PastAdapters`),
so decoding folds both into the weights.

Where it differs from the paper: only the fusion by task arithmetic (the paper also ensembles the two
models' predictions); the long-term adapter fine-tunes on each new block rather than retraining on all
past data, which the paper found close and which keeps a block's cost at twice a `single` block.
"""

from __future__ import annotations

from typing import Any

import torch

from peso.settings import MethodSettings
from peso.strategies.base import AdapterStrategy, Block, RunContext, State, register
from peso.strategies.cumulative import PastAdapters, lora_modules


@register
class Lsat(AdapterStrategy):
    name = "lsat"

    def __init__(self, settings: MethodSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.long: dict[str, PastAdapters] = {}

    def _attach(self, model: torch.nn.Module) -> None:
        if not self.long:
            self.long = {n: PastAdapters(layer, magnitudes=False) for n, layer in lora_modules(model).items()}

    def run_block(self, model: torch.nn.Module, block: Block) -> Any:
        self._attach(model)
        layers = lora_modules(model)
        with torch.no_grad():  # (1) the long-term adapter back in the LoRA slot, out of the frozen term
            for n, layer in layers.items():
                past = self.long[n]
                if len(past.A):
                    layer.lora_A["default"].weight.copy_(past.A[0])
                    layer.lora_B["default"].weight.copy_(past.B[0])
                past.A, past.B = past.A[:0], past.B[:0]
        long = block.train(model, block.data.current, block.valid, continual=True)
        for n, layer in layers.items():  # (2) frozen as the long-term term; a fresh short-term adapter
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            self.long[n].push(a, b, normalise=False, keep_latest=True)
            self.long[n].folded = True  # out of the model while the short-term adapter trains alone
            layer.reset_lora_parameters("default", True)
        try:
            report = block.train(model, block.data.current, block.valid, continual=True)
        finally:
            for past in self.long.values():
                past.folded = False  # (3) fused: both adapters in the model
        report.seconds += long.seconds  # the block's cost: both trainings
        report.targets += long.targets
        if block.valid_loss is not None:  # the rule that picks schedules must see the fused model, not a half
            report.deployed_valid_loss = block.valid_loss(model)
        return report

    def export(self, model: torch.nn.Module, out_dir) -> int:
        from safetensors.torch import save_file

        from peso.strategies.base import save_adapter

        nbytes = save_adapter(model, out_dir)  # the short-term adapter, in PEFT's format
        path = out_dir / "long_term_adapter.safetensors"
        save_file({k: v for n, p in self.long.items() for k, v in p.tensors(n).items()}, str(path))
        return nbytes + path.stat().st_size

    def state(self, model: torch.nn.Module) -> State:
        return State({k: v for n, p in self.long.items() for k, v in p.tensors(n).items()})

    def load_state(self, model: torch.nn.Module, state: State) -> None:
        self._attach(model)
        for n, past in self.long.items():
            past.load(state.tensors, n)

    def teardown(self, model: torch.nn.Module) -> None:
        layers = lora_modules(model)
        for n, past in self.long.items():
            past.remove(layers[n])
        self.long = {}
