"""The block-0 model, never updated: how much continual updates are worth."""

from peso.strategies.base import AdapterStrategy, register


@register
class Frozen(AdapterStrategy):
    name = "frozen"
    trains = False
