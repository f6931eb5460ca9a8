"""LEGO chains: the synthetic reasoning task of Zhang et al. (2022), as pure Python and numpy.

A chain of ``n`` variables: variable 0 gets a literal (``a = val 1``), every next variable
is ``val`` (a copy) or ``not`` (the negation) of the previous one (``b = not a``). The
prompt lists the clauses, in chain order or shuffled, then asks for one variable
(``? c =``); resolving variable ``i`` takes ``i`` steps along the chain, and is *skill*
``i`` in Skill-It's LEGO setup. Words come from the small fixed vocabulary
:data:`LEGO_TOKENS` (no tokenizer): letters name the variables.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LEGO_TOKENS",
    "MAX_VARIABLES",
    "LegoChain",
    "decode",
    "encode",
    "lego_chain",
    "prompt_length",
]

_SPECIAL = ("<pad>", "<bos>", "<eos>", "=", ",", "?", "val", "not", "0", "1")
LEGO_TOKENS: tuple[str, ...] = _SPECIAL + tuple(string.ascii_lowercase)
"""The vocabulary: token id ``i`` is ``LEGO_TOKENS[i]`` (``<pad>`` is 0; 36 tokens)."""

MAX_VARIABLES = len(string.ascii_lowercase)
"""At most 26 variables: one letter each."""

_IDS = {token: i for i, token in enumerate(LEGO_TOKENS)}


def encode(words: str | Iterable[str]) -> list[int]:
    """Token ids of space-separated words (or of a sequence of words).

    Raises:
        ValueError: for a word outside :data:`LEGO_TOKENS`.

    Example:
        >>> encode("a = val 1")
        [10, 3, 6, 9]
    """
    tokens = words.split() if isinstance(words, str) else list(words)
    unknown = [token for token in tokens if token not in _IDS]
    if unknown:
        raise ValueError(f"Words {unknown[:5]} are not in the LEGO vocabulary {LEGO_TOKENS}.")
    return [_IDS[token] for token in tokens]


def decode(ids: Iterable[int], skip_pad: bool = True) -> str:
    """The words of token ids, space-separated (``<pad>`` left out unless ``skip_pad=False``).

    Example:
        >>> decode([1, 10, 3, 6, 9, 0, 0])
        '<bos> a = val 1'
    """
    words = [LEGO_TOKENS[int(i)] for i in ids]
    return " ".join(w for w in words if not (skip_pad and w == "<pad>"))


def prompt_length(num_variables: int) -> int:
    """Tokens of a sample: ``<bos>``, the clauses with commas, ``? x = answer <eos>``.

    Each clause is 4 words, so ``1 + 4 n + (n - 1) + 5 = 5 n + 5``.

    Example:
        >>> prompt_length(5)
        30
    """
    return 5 * num_variables + 5


@dataclass(frozen=True)
class LegoChain:
    """One LEGO sample: the chain, the order of its clauses and the question.

    Attributes:
        letters: the variable names, in chain order.
        literal: the value of variable 0 (0 or 1).
        negations: for variables ``1..n-1``, whether it is ``not`` the previous one.
        order: the chain position of each clause, in prompt order.
        skill: the variable asked for (its chain position).
    """

    letters: tuple[str, ...]
    literal: int
    negations: tuple[bool, ...]
    order: tuple[int, ...]
    skill: int

    @property
    def values(self) -> tuple[int, ...]:
        """The value of every variable, in chain order."""
        values = [self.literal]
        for negate in self.negations:
            values.append(1 - values[-1] if negate else values[-1])
        return tuple(values)

    @property
    def answer(self) -> int:
        """The value of the variable asked for."""
        return self.values[self.skill]

    def clause(self, position: int) -> list[str]:
        """The words of the clause that defines variable ``position`` (chain order)."""
        if position == 0:
            return [self.letters[0], "=", "val", str(self.literal)]
        op = "not" if self.negations[position - 1] else "val"
        return [self.letters[position], "=", op, self.letters[position - 1]]

    def words(self) -> list[str]:
        """The whole sample: ``<bos> clauses , ... ? x = answer <eos>``.

        Example:
            >>> chain = LegoChain(("a", "b", "c"), 1, (True, False), (0, 1, 2), skill=2)
            >>> " ".join(chain.words())
            '<bos> a = val 1 , b = not a , c = val b ? c = 0 <eos>'
        """
        words = ["<bos>"]
        for k, position in enumerate(self.order):
            if k:
                words.append(",")
            words += self.clause(position)
        return [*words, "?", self.letters[self.skill], "=", str(self.answer), "<eos>"]


def lego_chain(
    rng: np.random.Generator, num_variables: int, skill: int, shuffle_clauses: bool = True
) -> LegoChain:
    """Draw a chain from ``rng``: letters, the literal, the operations and the clause order.

    The draws, in this order: ``num_variables`` distinct letters, the literal (0 or 1),
    one operation per later variable (``not`` with probability 1/2), and the clause order
    (a permutation when ``shuffle_clauses``; drawn either way, so the chain itself does not
    depend on ``shuffle_clauses``).

    Example:
        >>> chain = lego_chain(np.random.default_rng(0), 5, skill=3)
        >>> len(chain.letters), sorted(chain.order), chain.answer in (0, 1)
        (5, [0, 1, 2, 3, 4], True)
    """
    letters = rng.choice(MAX_VARIABLES, size=num_variables, replace=False)
    literal = int(rng.integers(0, 2))
    negations = rng.integers(0, 2, size=num_variables - 1).astype(bool)
    order = rng.permutation(num_variables)
    return LegoChain(
        letters=tuple(string.ascii_lowercase[i] for i in letters),
        literal=literal,
        negations=tuple(bool(n) for n in negations),
        order=tuple(int(i) for i in order) if shuffle_clauses else tuple(range(num_variables)),
        skill=skill,
    )
