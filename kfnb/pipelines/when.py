"""``--when`` expressions: Argo's ``when`` (govaluate) over step outputs, never `eval`.

``evaluate.accuracy >= 0.97 && train.loss < 0.1`` names outputs as ``STEP.NAME``;
comparisons (``== != < <= > >=``), ``&&``, ``||``, ``!``, parentheses, numbers,
strings, ``true``/``false``. The text is tokenised here, the references replaced by
placeholders, and the rest parsed by Python's `ast` restricted to those nodes.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""(?P<string>"[^"\\]*"|'[^'\\]*')"""
    r"|(?P<ref>[a-z][a-z0-9-]*[a-z0-9]?\.[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|!|<|>|\(|\))"
    r"|(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)"
    r"|(?P<word>true|false)"
    r"|(?P<minus>-)"
    r"|(?P<space>\s+)"
)
_PYTHON_OP = {"&&": " and ", "||": " or ", "!": " not ", "!=": "!="}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class WhenError(ValueError):
    """A ``--when`` that does not parse, or cannot be evaluated on the outputs it names."""


@dataclass(frozen=True)
class When:
    """A parsed ``--when``: its text, the ``(step, output)`` pairs it reads, and its tree."""

    text: str
    refs: tuple[tuple[str, str], ...]
    tree: ast.Expression

    def evaluate(self, outputs: Mapping[str, Mapping[str, Any]]) -> bool:
        """True or False on the steps' ``outputs`` ({step: {name: value}})."""
        values = {}
        for i, (step, name) in enumerate(self.refs):
            if name not in outputs.get(step, {}):
                raise WhenError(f"--when {self.text!r}: step {step} wrote no output {name!r}")
            values[f"_ref{i}"] = outputs[step][name]
        try:
            return bool(_value(self.tree.body, values))
        except TypeError as err:
            raise WhenError(f"--when {self.text!r} cannot compare these values: {err}") from None

    def argo(self) -> str:
        """The expression as Argo's ``when``, references as task output parameters."""
        out = []
        for kind, token in _tokens(self.text):
            if kind == "ref":
                step, name = token.split(".", 1)
                out.append(f"{{{{tasks.{step}.outputs.parameters.{name}}}}}")
            else:
                out.append(token)
        return "".join(out)


def _tokens(text: str) -> list[tuple[str, str]]:
    found, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise WhenError(
                f"--when {text!r}: cannot read {text[pos : pos + 12]!r}: write STEP.OUTPUT "
                "compared with ==, !=, <, <=, >, >= to numbers or strings, joined by && or ||"
            )
        kind = match.lastgroup or ""
        found.append((kind, match.group()))
        pos = match.end()
    return found


def parse_when(text: str) -> When:
    """Parse ``text``; `WhenError` in one line when it is not such an expression."""
    refs: list[tuple[str, str]] = []
    python = []
    for kind, token in _tokens(text):
        if kind == "ref":
            step, name = token.split(".", 1)
            python.append(f"_ref{len(refs)}")
            refs.append((step, name))
        elif kind == "op":
            python.append(_PYTHON_OP.get(token, token))
        elif kind == "word":
            python.append("True" if token == "true" else "False")
        else:
            python.append(token)
    if not refs:
        raise WhenError(
            f"--when {text!r} names no output: compare STEP.OUTPUT, e.g. "
            "'evaluate.accuracy >= 0.97'"
        )
    try:
        tree = ast.parse("".join(python).strip(), mode="eval")
    except SyntaxError:
        raise WhenError(
            f"--when {text!r} does not parse: e.g. 'evaluate.accuracy >= 0.97 && train.loss < 0.1'"
        ) from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise WhenError(f"--when {text!r}: only comparisons, &&, || and ! are allowed")
    return When(text, tuple(refs), tree)


_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
    ast.Compare, ast.Constant, ast.Name, ast.Load, *_COMPARE,
)  # fmt: skip


def _value(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, values)
        return (not operand) if isinstance(node.op, ast.Not) else -operand
    if isinstance(node, ast.BoolOp):
        parts = (_value(v, values) for v in node.values)
        return all(parts) if isinstance(node.op, ast.And) else any(parts)
    if isinstance(node, ast.Compare):
        left = _value(node.left, values)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _value(right_node, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise WhenError(f"unexpected {type(node).__name__} in a --when expression")
