"""Full retraining: at block t, train from the block-0 starting point on every block's training targets
0..t, with block 0's learning rate and epochs. The expensive reference a continual method should approach.
The runner does the work (`retrains`): no hooks are needed."""

from peso.strategies.base import AdapterStrategy, register


@register
class Retrain(AdapterStrategy):
    name = "retrain"
    retrains = True
