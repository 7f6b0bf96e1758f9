"""The multi grader's ``calculate_output`` formula: parsed with ``ast`` against a whitelist, never ``eval``.

Grammar (spec §1.8): numbers, sub-grader keys, ``+ - * /``, ``^`` (power, right-associative; ``**`` too),
unary minus, parentheses, and the functions min, max (≥1 args), abs, floor, ceil, exp, sqrt, log (1 arg,
natural log). Values are floats, so a huge power overflows instead of building a huge integer.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {
    "min": (min, None),
    "max": (max, None),
    "abs": (abs, 1),
    "floor": (lambda x: float(math.floor(x)), 1),
    "ceil": (lambda x: float(math.ceil(x)), 1),
    "exp": (math.exp, 1),
    "sqrt": (math.sqrt, 1),
    "log": (math.log, 1),
}
_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: math.pow(a, b),
}
MAX_FORMULA_CHARS = 4096


class FormulaError(ValueError):
    """The formula does not parse or names something unknown (``formula_parse_error``)."""


@dataclass(frozen=True, slots=True)
class Formula:
    text: str
    tree: ast.expr

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The value for these sub-grader scores; ``ArithmeticError``/``ValueError`` on a math error."""
        return _evaluate(self.tree, values)


def parse_formula(text: str, names: set[str]) -> Formula:
    """A checked formula over ``names``; ``FormulaError`` says what is wrong."""
    if not text.strip():
        raise FormulaError("calculate_output is empty.")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"calculate_output is longer than {MAX_FORMULA_CHARS} characters.")
    try:
        tree = ast.parse(text.replace("^", "**").strip(), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"calculate_output is not a valid formula: {exc.msg} (near column {exc.offset}).") from None
    _check(tree, names)
    return Formula(text=text, tree=tree)


def _check(node: ast.expr, names: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"calculate_output may only use numbers, not {node.value!r}.")
    elif isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"calculate_output names '{node.id}', which is not a grader key (keys: {known}).")
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, names)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in FUNCTIONS:
            raise FormulaError(
                f"calculate_output calls '{node.func.id}', which is not a function (functions: {', '.join(FUNCTIONS)})."
            )
        arity = FUNCTIONS[node.func.id][1]
        if (arity is not None and len(node.args) != arity) or not node.args:
            raise FormulaError(f"calculate_output calls '{node.func.id}' with {len(node.args)} arguments.")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise FormulaError("calculate_output may not use '*' unpacking.")
            _check(arg, names)
    else:
        raise FormulaError(f"calculate_output uses '{ast.unparse(node)}', which formulas do not allow.")


def _evaluate(node: ast.expr, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.BinOp):
        return float(_OPERATORS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values)))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, values)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.Call)
    assert isinstance(node.func, ast.Name)
    function = FUNCTIONS[node.func.id][0]
    return float(function(*(_evaluate(arg, values) for arg in node.args)))
