"""Shell-style brace expansion of shard patterns such as ``shards/{00000..00009}.tar``."""

from __future__ import annotations

import re

__all__ = ["expand_braces"]

_BRACE_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{00..02}`` ranges (zero-padded) and ``{a,b}`` lists.

    Example:
        >>> expand_braces("shards/{00000..00002}.tar")
        ['shards/00000.tar', 'shards/00001.tar', 'shards/00002.tar']
        >>> expand_braces("{a,b}-{1..2}.tar")
        ['a-1.tar', 'a-2.tar', 'b-1.tar', 'b-2.tar']
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, end = 0, -1
    for position in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[position], 0)
        if depth == 0:
            end = position
            break
    if end < 0:
        raise ValueError(f"Unbalanced braces in {pattern!r}.")
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = _BRACE_RANGE.match(body)
    if match:
        first, last = match.groups()
        padded = any(
            len(v.lstrip("-")) > 1 and v.lstrip("-").startswith("0") for v in (first, last)
        )
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        options = [f"{i:0{width}d}" for i in range(int(first), int(last) + step, step)]
    else:
        options, depth, current = [], 0, ""
        for char in body:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if char == "," and depth == 0:
                options.append(current)
                current = ""
            else:
                current += char
        options.append(current)
        if len(options) == 1:  # "{x}" is no expansion, as in bash
            return [f"{head}{{{body}}}{rest}" for rest in expand_braces(tail)]
    return [
        head + expanded + rest
        for option in options
        for expanded in expand_braces(option)
        for rest in expand_braces(tail)
    ]
