"""Data stage: interaction blocks from files -> per-block protocol samples."""

from peso.data.blocks import Block, BlockSet
from peso.data.load import read_blocks
from peso.data.samples import BlockSamples, build_samples

__all__ = ["Block", "BlockSet", "BlockSamples", "build_samples", "read_blocks"]
