"""Byte-level tokenizer: a token is one byte of the UTF-8 encoding (vocabulary 256, no specials)."""

from __future__ import annotations

from collections.abc import Iterable

from spikelm.errors import SpikelmError


class ByteTokenizer:
    """``encode``: str -> UTF-8 bytes as ints in [0, 256); ``decode``: the inverse.

    ``decode`` replaces byte sequences that are not valid UTF-8 (e.g. a multi-byte character cut
    by a generation limit) with U+FFFD instead of failing.
    """

    vocab_size: int = 256

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the byte values ``ids``; raises SpikelmError for ids outside [0, 256)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise SpikelmError(f"token id {bad[0]} is outside the byte vocabulary [0, 256)")
        return bytes(ids).decode("utf-8", errors="replace")
