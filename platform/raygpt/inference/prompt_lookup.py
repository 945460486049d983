"""Prompt lookup: speculated tokens copied from earlier in the request's own text.

A code completion repeats its input: identifiers, whole lines of a file it is asked to
edit. When the last n tokens of a request (prompt and completion so far) occurred before,
what followed them then is a good guess for what follows now, and costs no model at all
(Saxena 2023, vLLM's n-gram speculation). The longest matching n wins; among equal n, the
most recent occurrence.
"""

from __future__ import annotations


class PromptLookup:
    """One request's n-gram index: for each n-gram (n in min_n..max_n) of its tokens, where
    the token after its latest occurrence sits. Appending a token updates it in O(max_n)."""

    def __init__(self, tokens: list[int], min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min <= max, got {min_n}..{max_n}")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it
        self._pending: dict[tuple[int, ...], int] = {}  # the current suffixes, indexed next
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        # The suffixes that ended before this token now have a follower: index them. The
        # newest suffixes wait one token, so a lookup never matches the text's own tail.
        self._after.update(self._pending)
        self.tokens.append(token)
        end = len(self.tokens)
        self._pending = {
            tuple(self.tokens[end - n :]): end for n in range(self.min_n, min(self.max_n, end) + 1)
        }

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest earlier match of the current suffix."""
        end = len(self.tokens)
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            start = self._after.get(tuple(self.tokens[end - n :]))
            if start is not None:
                return self.tokens[start : start + k]
        return []
