"""Tokenization stage: items -> semantic-ID tokens, and the prefix trie of valid items."""

from peso.tokenize.items import ItemIndex
from peso.tokenize.trie import Trie

__all__ = ["ItemIndex", "Trie"]
