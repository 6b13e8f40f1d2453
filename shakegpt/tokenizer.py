"""Characters to integers and back, with the vocabulary taken from the corpus itself."""

from __future__ import annotations

from collections.abc import Sequence

from shakegpt.errors import ShakeGPTError


def shortened(text: str, limit: int = 80) -> str:
    """A listing cut to about limit characters for a one-line message (a vocabulary can hold 70,000)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} characters more)"


class CharTokenizer:
    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        if len(self.stoi) != len(self.chars) or any(len(ch) != 1 for ch in self.chars):
            raise ShakeGPTError("a vocabulary must be distinct single characters")

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def vocab(self) -> str:
        """The vocabulary as one string, the form checkpoints carry it in."""
        return "".join(self.chars)

    @property
    def default_prompt(self) -> str:
        """What sampling starts from unless told: a newline, as the classic script, where the corpus has one,
        else the vocabulary's first character (a one-line corpus, most non-Western texts)."""
        return "\n" if "\n" in self.stoi else self.chars[0]

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ShakeGPTError(
                f"characters not in the model's vocabulary: {shortened(', '.join(map(repr, unknown)))} "
                f"(the vocabulary holds {self.vocab_size:,} characters: {shortened(repr(self.vocab))})"
            )
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)
