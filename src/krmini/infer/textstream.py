"""Token ids → printable text pieces: no broken characters, and stop strings cut cleanly."""

from __future__ import annotations

from krmini.tokenizer import KoTokenizer


class TextStream:
    """Turn token ids into text pieces, holding back bytes of a character that is not complete yet.

    A Hangul syllable is 3 UTF-8 bytes; with byte fallback a rare one arrives as three byte tokens.
    Decoding them one by one would print U+FFFD, so pending ids are kept until they decode cleanly.
    Special tokens (`<|bos|>`, role tokens, …) are markup, never text: they decode to nothing.

    Pieces are decoded after the previous piece and cut off its text: a SentencePiece-style decoder
    (Mistral's) strips the leading space of whatever it decodes, so "▁word" alone would lose the
    space between words. `context` (the prompt's last token) plays that part for the first piece.
    Our own decoder gives the same text either way.
    """

    def __init__(self, tokenizer: KoTokenizer, context: list[int] | tuple[int, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []
        self.previous: list[int] = list(context)  # the ids of the last piece returned

    def _decode(self) -> str:
        decode = self.tokenizer.decode
        before = decode(self.previous, skip_special_tokens=True) if self.previous else ""
        text = decode(self.previous + self.pending, skip_special_tokens=True)
        return text[len(before):] if text.startswith(before) else decode(self.pending, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self._decode()
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.previous, self.pending = self.pending, []
        return text

    def flush(self) -> str:
        text = self._decode() if self.pending else ""
        self.previous, self.pending = self.pending, []
        return text


class StopStrings:
    """Find stop strings in streamed text, holding back a tail that could still become one.

    `feed(piece)` returns (text safe to emit now, stopped). Once stopped, the text before the stop
    string has been emitted and the stop string itself never is.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text
