"""Chat templates rendered as transformers renders them, with limits on the work a template may do.

A chat template comes with a checkpoint (often from the Hub): untrusted code. Jinja's immutable sandbox keeps it
from reaching Python, but not from allocating: `{{ 'a' * 10**10 }}`, a string doubled in a loop, or nested loops
run until memory or patience ends. Here every value a template makes passes a check: repetition and powers
before they are computed, and so are the widths and precisions of string formatting (`%`, the `format` filter,
`str.format`: `'%0200000000d' % 1` would make a 200 MB string); concatenation (`~`), `+`, calls, filters,
attribute and item reads after, against `TemplateLimits.chars`; every loop step and call against a time limit; and
the output as it is written. A template past a limit stops with one `ValueError` that names the limit.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
import threading
import time
from typing import Any, Iterable, Iterator

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from markupsafe import EscapeFormatter, Markup


@dataclasses.dataclass(frozen=True)
class TemplateLimits:
    """What one rendering may do: `chars` bounds the output and every string, list or mapping a template makes
    (a 128k-token context is about 500k characters); `seconds` bounds its time; integers past `int_bits` bits
    (and powers that would make them) are refused."""

    chars: int = 4_000_000
    seconds: float = 10.0
    int_bits: int = 65_536


LIMITS = TemplateLimits()


class LimitExceeded(SecurityError):
    pass


# a %-format conversion: its width and precision (digits, or '*' for one taken from the values)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?(?:[a-zA-Z%]|$)")


class _BoundedFormatter(SandboxedFormatter):
    """Jinja's `str.format` formatter with every field's format spec (its nested fields filled in) checked before
    the field is formatted."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._env.check_widths(re.findall(r"\d+", format_spec), f"the format spec {format_spec!r}")
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    pass


class _BoundedCode(CodeGenerator):
    """Jinja's code generator with every `~` concatenation and every loop's iterable passed through the
    environment's checks (the sandbox already routes calls, attribute reads and the intercepted operators)."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")

    def visit_For(self, node: nodes.For, frame) -> None:
        bounded = nodes.Call(nodes.EnvironmentAttribute("bounded_iter", lineno=node.lineno), [node.iter], [], None,
                             None, lineno=node.lineno)
        super().visit_For(nodes.For(node.target, bounded, node.body, node.else_, node.test, node.recursive,
                                    lineno=node.lineno), frame)


class _Generation(Extension):
    """`{% generation %}` blocks (assistant-mask markers) render their body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment (immutable sandbox, trim_blocks / lstrip_blocks, loop controls,
    `{% generation %}`, a `tojson` that does not escape HTML, `raise_exception`, `strftime_now`) with `limits`."""

    code_generator_class = _BoundedCode
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: TemplateLimits = LIMITS):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
        self.limits = limits
        self._clock = threading.local()

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        self.filters["tojson"] = tojson
        self.filters = {name: self._bounded_filter(f) for name, f in self.filters.items()}
        self.globals["raise_exception"] = raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)

    # ---- the checks ------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        deadline = getattr(self._clock, "deadline", None)
        if deadline is not None and time.monotonic() > deadline:
            raise LimitExceeded(f"rendering took over {self.limits.seconds:g} s")

    def bounded(self, value: Any) -> Any:
        """`value`, once it is known to be within the limits."""
        self._tick()
        if isinstance(value, (str, bytes, list, tuple, dict, set)) and len(value) > self.limits.chars:
            raise LimitExceeded(f"a value of {len(value):,} items (over {self.limits.chars:,})")
        if isinstance(value, int) and value.bit_length() > self.limits.int_bits:
            raise LimitExceeded(f"an integer of over {self.limits.int_bits:,} bits")
        return value

    def _check_args(self, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.limits.chars:
                raise LimitExceeded(f"the argument {arg} (over {self.limits.chars:,})")

    def check_widths(self, widths: Iterable[Any], what: str) -> None:
        """Widths and precisions of a string format (digits as text, or integers) within `limits.chars`: each one
        makes a string that long before any check after the fact could see it."""
        for width in widths:
            if isinstance(width, str) and width.isdigit():
                width = int(width)
            if isinstance(width, int) and not isinstance(width, bool) and abs(width) > self.limits.chars:
                raise LimitExceeded(f"a width of {width:,} in {what} (over {self.limits.chars:,})")

    def check_percent(self, template: str, values: Any) -> None:
        """`template % values` checked before it is computed: the widths and precisions it writes, and those it
        takes from `values` ('*')."""
        specs = _PERCENT_SPEC.findall(template)
        self.check_widths((n for spec in specs for n in spec), f"the format {template[:40]!r}")
        if any("*" in spec for spec in specs):
            self.check_widths(values if isinstance(values, tuple) else (values,), f"the format {template[:40]!r}")

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self._tick()
            yield item

    def _bounded_filter(self, f):
        @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
        def bounded(*args, **kwargs):
            self._check_args(args, kwargs)
            if f.__name__ == "do_format" and args and isinstance(args[0], str):  # `value|format(...)`: value % (...)
                self.check_percent(args[0], tuple(args[1:]))
            return self.bounded(f(*args, **kwargs))

        return bounded

    # ---- the sandbox's hooks ---------------------------------------------------------------------------------

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                        and len(seq) * times > self.limits.chars:
                    raise LimitExceeded(f"a repetition of {len(seq) * times:,} items (over {self.limits.chars:,})")
        if operator == "%" and isinstance(left, str):
            self.check_percent(left, right)
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                and right * max(abs(left), 2).bit_length() > self.limits.int_bits:
            raise LimitExceeded(f"the power {left} ** {right} (over {self.limits.int_bits:,} bits)")
        return self.bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        __self._tick()
        __self._check_args(args, kwargs)
        return __self.bounded(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self.bounded(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self.bounded(super().getitem(obj, argument))

    def wrap_str_format(self, value: Any):
        """A string's `format` / `format_map`, read from a template, as jinja's sandbox wraps them, with each field's
        format spec checked (`_BoundedFormatter`)."""
        if super().wrap_str_format(value) is None:  # not a string's format method
            return None
        template: str = value.__self__
        formatter = (_BoundedEscapeFormatter(self, escape=template.escape) if isinstance(template, Markup)
                     else _BoundedFormatter(self))

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return self.bounded(type(template)(formatter.vformat(template, args, kwargs)))

        return wrapper

    # ---- rendering -------------------------------------------------------------------------------------------

    def render(self, template: jinja2.Template, **variables: Any) -> str:
        """`template` rendered with `variables`, within the limits (ValueError naming the limit otherwise)."""
        self._clock.deadline = time.monotonic() + self.limits.seconds
        out, size = [], 0
        try:
            for chunk in template.generate(**variables):
                size += len(chunk)
                if size > self.limits.chars:
                    raise LimitExceeded(f"an output of over {self.limits.chars:,} characters")
                self._tick()
                out.append(chunk)
        except (LimitExceeded, RecursionError, MemoryError) as e:
            what = str(e) if isinstance(e, LimitExceeded) else type(e).__name__
            raise ValueError(f"the tokenizer's chat template went past its rendering limits ({what}); check the "
                             "template (tokenizer_config.json \"chat_template\" or chat_template.jinja).") from None
        finally:
            self._clock.deadline = None
        return "".join(out)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str, limits: TemplateLimits = LIMITS) -> tuple[BoundedSandbox, jinja2.Template]:
    """The template `source` compiled in a `BoundedSandbox` (ValueError for a template that is not valid Jinja)."""
    env = BoundedSandbox(limits)
    try:
        return env, env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the tokenizer's chat template is not valid Jinja ({e}, line {e.lineno})") from e


def render_chat_template(source: str, limits: TemplateLimits = LIMITS, **variables: Any) -> str:
    env, template = compile_chat_template(source, limits)
    return env.render(template, **variables)
