"""``--positions`` and ``--metric`` values: the library's own selector and metric names, as Python
expressions read safely (literals, names and calls of selectors and metrics only; nothing is evaluated).

Positions: a selector of :mod:`hooks_mm.selectors`, by its class name or in lower case, bare or
called: ``image`` (= ``Image()``), ``"Last()"``, ``"Image(0) | Last()"``, ``"First(4, of=Image())"``,
``"~Text()"``, an int list ``"[3, 5]"`` (``Positions``). Metrics: a factory of
:mod:`hooks_mm.sweep.metrics`, bound to the model and batch of the command:
``answer_logprob``, ``"kl_to_clean(positions=LastN(1, of=Text()))"``,
``"logit_diff(correct=5, wrong=7)"``, ``"modality_nll(modality='text')"``.

Example::

    parse_selector("Image(0) | Last()")       # Union(a=Image(i=0), b=Last())
    metric = parse_metric("kl_to_clean", model, inputs)
"""

from __future__ import annotations

import ast
from typing import Any, Callable

from hooks_mm.cli.options import OptionError
from hooks_mm.selectors import SELECTORS, Selector, Where, as_selector
from hooks_mm.sweep import metrics as sweep_metrics

# metric name -> which way it gets worse: "lowers" (a log-prob, a logit difference) or "raises" (a KL, an NLL)
METRICS: dict[str, str] = {
    "answer_logprob": "lowers",
    "logit_diff": "lowers",
    "kl_to_clean": "raises",
    "modality_nll": "raises",
}
_LITERALS = (ast.Constant, ast.List, ast.Tuple)


def _selector_class(name: str) -> type[Selector] | None:
    if name in SELECTORS:
        return SELECTORS[name]
    folded = name.replace("_", "").lower()
    return next((cls for key, cls in SELECTORS.items() if key.lower() == folded), None)


def _names_hint() -> str:
    return ", ".join(sorted(SELECTORS))


class _Reader:
    """Evaluates the allowed subset of Python: constants, lists, ``range``, selector names and calls, ``| & ~``."""

    def __init__(self, option: str, text: str):
        self.option, self.text = option, text

    def fail(self, problem: str) -> OptionError:
        return OptionError(f"{self.option} {self.text!r}: {problem}")

    def call(self, fn: Callable[..., Any], node: ast.Call, label: str) -> Any:
        args = [self.value(a) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self.fail("**kwargs are not supported: write each keyword, e.g. of=Text().")
            kwargs[kw.arg] = self.value(kw.value)
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise self.fail(f"{label}: {e}") from None

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return ~self.selector(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitOr, ast.BitAnd)):
            a, b = self.selector(node.left), self.selector(node.right)
            return a | b if isinstance(node.op, ast.BitOr) else a & b
        if isinstance(node, ast.Name):
            return self.call(self.named(node.id), ast.Call(func=node, args=[], keywords=[]), node.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "range":
                return self.call(range, node, "range")
            return self.call(self.named(node.func.id), node, node.func.id)
        raise self.fail(
            f"{ast.unparse(node)!r} is not allowed here: use selector names and calls ({_names_hint()}), "
            'ints, lists, | & ~, e.g. "Image(0) | Last()".'
        )

    def named(self, name: str) -> type[Selector]:
        cls = Where if name.lower() == "where" else _selector_class(name)
        if cls is Where:
            raise self.fail("Where(...) takes a Python function: use it from Python, or the named selectors here.")
        if cls is None:
            raise self.fail(f"unknown selector {name!r}: use one of {_names_hint()} (or lower case: image, last, ...).")
        return cls

    def selector(self, node: ast.AST) -> Selector:
        v = self.value(node)
        try:
            return as_selector(v)
        except TypeError:
            raise self.fail(f'{ast.unparse(node)!r} is not a selector: e.g. image, "Last()", "[3, 5]".') from None


def _parse(option: str, text: str) -> ast.expr:
    try:
        return ast.parse(str(text).strip(), mode="eval").body
    except SyntaxError as e:
        raise OptionError(f'{option} {text!r}: not an expression ({e.msg}): e.g. "Image(0) | Last()".') from None


def parse_selector(text: str, option: str = "--positions") -> Selector:
    """A selector from its expression, e.g. ``"image"``, ``"Last()"``, ``"Image(0) | After(Image())"``."""
    reader = _Reader(option, text)
    return reader.selector(_parse(option, text))


def _metric_call(text: str) -> tuple[ast.Call, str]:
    node = _parse("--metric", text)
    call = node if isinstance(node, ast.Call) else ast.Call(func=node, args=[], keywords=[])
    name = call.func.id if isinstance(call.func, ast.Name) else ast.unparse(call.func)
    if name not in METRICS:
        raise OptionError(f"--metric {text!r}: unknown metric {name!r}: use one of {', '.join(METRICS)}.")
    return call, name


def metric_name(text: str) -> str:
    """The metric named in ``text`` (an error for a typo or bad syntax, before any model loads)."""
    return _metric_call(text)[1]


def parse_metric(text: str, model: Any, inputs: Any, targets: Any = None) -> tuple[Callable, str]:
    """``(metric, name)``: the metric factory named in ``text`` called on ``model`` and ``inputs`` (the
    command's batch) and the expression's arguments; ``answer_logprob`` scores ``targets`` (the right
    answers, on an organism) unless the expression gives its own."""
    call, name = _metric_call(text)
    factory = getattr(sweep_metrics, name)
    given = {kw.arg for kw in call.keywords} | ({"targets"} if call.args else set())
    default = (
        {"targets": targets} if name == "answer_logprob" and targets is not None and "targets" not in given else {}
    )

    def bound(*args: Any, **kwargs: Any) -> Any:
        return factory(model, inputs, *args, **default, **kwargs)

    try:
        return _Reader("--metric", text).call(bound, call, name), name
    except KeyError as e:  # modality_nll(modality="...") of an unknown modality
        raise OptionError(f"--metric {text!r}: unknown name {e}: e.g. modality_nll(modality='text').") from None
