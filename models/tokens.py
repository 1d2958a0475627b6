"""Caption tokens, each caption tokenized once.

open_clip's BPE tokenizer runs in Python (text clean-up, a regex, a merge loop per word): about 36 µs a
caption, a fifth of what embedding a tiny model's pair costs on a CPU. Web captions repeat (stock-photo
titles, "image", product names), and a training run tokenizes every caption once an epoch, so both the
training codecs and the embed step keep each caption's row. A row depends on its caption alone (open_clip's
tokenizers pad or truncate each caption to the context length on its own), so the rows, and every float
computed from them, are those of tokenizing the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class TokenCache:
    """Token rows of captions seen before, up to ``max_entries`` (then it starts again, empty).

    Safe to share between threads (the embed step prepares batches in several on an accelerator): a call
    reads the rows it needs into its own dict before it stacks them, so another thread emptying the cache
    meanwhile only costs a second tokenization.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], max_entries: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._cache: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        """Forget every row (a benchmark starts each timed run as a run over new captions would)."""
        self._cache.clear()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        rows = {text: self._cache.get(text) for text in texts}
        missing = [text for text, row in rows.items() if row is None]
        if missing:
            if len(self._cache) + len(missing) > self.max_entries:
                self._cache.clear()
            for text, row in zip(missing, self.tokenizer(missing), strict=True):
                rows[text] = self._cache[text] = row
        return torch.stack([rows[text] for text in texts])  # type: ignore[misc]
