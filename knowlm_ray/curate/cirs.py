"""CIRS: the complexity of the Python code in an answer, from its abstract syntax tree.

EasyInstruct's CodeSelector keeps code instructions by CIRS (Bi et al. 2023, "When Do
Program-of-Thoughts Work for Reasoning?"), which combines the code's *structural* complexity (the
AST's size, node variety and depth) with its *logical* complexity (Halstead difficulty and
McCabe's cyclomatic complexity). This module's definition, over all Python code blocks of a text:

* structural ``SC = log2(1 + nodes) + distinct node types / 4 + depth / 2``
* logical ``LC = halstead difficulty + cyclomatic complexity``, where difficulty is
  ``(distinct operators / 2) * (operands / distinct operands)`` (operators: operator, comparison,
  boolean and unary nodes, calls, assignments, subscripts, attributes and control statements;
  operands: names and constants) and cyclomatic complexity is 1 + the decision points
  (if / for / while / except / with / assert / comprehension ifs / boolean operands / ternaries)
* ``CIRS = sqrt(SC * LC)`` (the geometric mean: both must be high for a high score).

``print(1)`` scores ~3.2, ``x = 1`` ~3.0; a memoised recursive function with a loop and
branches (12 lines) ~24. Code is taken from
fenced blocks (```` ``` ```` / ```` ```python ````); a text without fences counts as code only if
the whole of it parses and holds a statement other than a bare expression. A fenced block that does
not parse is skipped. No code: score 0, ``blocks`` 0.
"""

from __future__ import annotations

import ast
import math
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY = ("", "python", "py", "python3", "py3")
_STATEMENTS = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.For,
    ast.While,
    ast.If,
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Import,
    ast.ImportFrom,
    ast.With,
    ast.Try,
    ast.Return,
)
_OPERATORS = (
    ast.operator,
    ast.cmpop,
    ast.boolop,
    ast.unaryop,
    ast.Call,
    ast.Assign,
    ast.AugAssign,
    ast.Subscript,
    ast.Attribute,
    ast.If,
    ast.For,
    ast.While,
    ast.Return,
    ast.FunctionDef,
    ast.Lambda,
)
_DECISIONS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.With, ast.Assert, ast.IfExp)


def code_blocks(text: str) -> list[ast.Module]:
    """The parsed Python code of ``text`` (see the module doc)."""
    trees = []
    fenced = _FENCE.findall(text)
    for lang, body in fenced:
        if lang.lower() in _PY:
            try:
                trees.append(ast.parse(body))
            except (SyntaxError, ValueError, RecursionError):
                continue
    if fenced:
        return trees
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    return [tree] if any(isinstance(n, _STATEMENTS) for n in ast.walk(tree)) else []


def _depth(node: ast.AST) -> int:
    children = list(ast.iter_child_nodes(node))
    return 1 + (max(map(_depth, children)) if children else 0)


def cirs(text: str) -> tuple[float, int]:
    """``(CIRS, number of code blocks)`` of ``text``."""
    trees = code_blocks(text)
    if not trees:
        return 0.0, 0
    nodes = [n for t in trees for n in ast.walk(t)]
    depth = max(_depth(t) for t in trees)
    sc = math.log2(1 + len(nodes)) + len({type(n).__name__ for n in nodes}) / 4 + depth / 2
    ops = [type(n).__name__ for n in nodes if isinstance(n, _OPERATORS)]
    operands = [
        n.id if isinstance(n, ast.Name) else repr(n.value) for n in nodes if isinstance(n, (ast.Name, ast.Constant))
    ]
    difficulty = (len(set(ops)) / 2) * (len(operands) / len(set(operands))) if operands else 0.0
    decisions = sum(isinstance(n, _DECISIONS) for n in nodes)
    decisions += sum(len(n.values) - 1 for n in nodes if isinstance(n, ast.BoolOp))
    decisions += sum(len(n.ifs) for n in nodes if isinstance(n, ast.comprehension))
    lc = difficulty + 1 + decisions
    return math.sqrt(sc * lc), len(trees)
