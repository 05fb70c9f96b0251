"""The calculator tool's arithmetic (issue 15): an expression the model writes, evaluated
without ever running it as code.

The expression is parsed with Python's `ast` and walked by hand: numbers, + - * / // % and
bounded powers, unary signs, parentheses. Names, calls, attributes, subscripts, strings,
lambdas and every other node are refused, as are expressions over MAX_CHARS characters or
MAX_NODES nodes, and numbers beyond MAX_MAGNITUDE. A refusal is a CalculatorError whose
message is what the model sees as the tool's result.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings

MAX_CHARS = 200
MAX_NODES = 100
MAX_MAGNITUDE = 1e15  # results and intermediate values
MAX_EXPONENT = 64

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """The expression was refused or has no finite value; the message says why."""


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as the tool returns it: an integer without a
    decimal point, else a float with up to 10 significant digits."""
    return format_number(evaluate(expression))


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; CalculatorError for anything else."""
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        with warnings.catch_warnings():  # e.g. SyntaxWarning for "[1, 2](0)": refused anyway
            warnings.simplefilter("ignore")
            tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression of more than {MAX_NODES} parts")
    return _value(tree.body)


def format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.10g}"


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except ArithmeticError:
            raise CalculatorError("result out of range") from None
    raise CalculatorError(f"only numbers and + - * / // % ** are allowed, not {_name(node)}")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power before computing it when its result would be out of range."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent beyond {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    if base < 0 and not float(exponent).is_integer():
        raise CalculatorError("a negative number to a fractional power")
    if base != 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise CalculatorError("result out of range")


def _checked(value: int | float) -> int | float:
    # abs() first: it never turns an int into a float.
    if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE or not math.isfinite(value):
        raise CalculatorError("result out of range")
    return value


def _name(node: ast.AST) -> str:
    kinds = {ast.Name: "names", ast.Call: "calls", ast.Attribute: "attributes"}
    return kinds.get(type(node), type(node).__name__)
