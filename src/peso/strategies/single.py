"""Single evolving LoRA: inherit the last block's adapter and fine-tune on the new block (PESO with lambda 0)."""

from peso.strategies.base import AdapterStrategy, register


@register
class Single(AdapterStrategy):
    name = "single"
