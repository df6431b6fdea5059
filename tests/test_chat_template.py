"""Chat templates: rendered as transformers renders them, and stopped with one clear error when a template tries
to allocate or loop without bound."""

import time
import tracemalloc

import pytest

from ttcjax.checkpoints.chat_template import TemplateLimits, render_chat_template

LLAMA_LIKE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n"
              "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " 3+4? "}]


def test_an_ordinary_template_renders_as_jinja_does():
    out = render_chat_template(LLAMA_LIKE, messages=MESSAGES, add_generation_prompt=True, bos_token="<s>")
    assert out == "<s><|system|>Be brief.\n<|user|>3+4?\n<|assistant|>"
    # what real templates use: namespaces, loop variables, tojson, string methods, slicing, raise_exception
    source = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
              "{{ loop.index }}:{{ m.content.strip().upper() }}{% if not loop.last %},{% endif %}{% endfor %}"
              "|{{ ns.n }}|{{ messages[0] | tojson }}|{{ 'ab' * 3 }}|{{ messages[-1].content[1:3] }}")
    assert render_chat_template(source, messages=MESSAGES) == \
        '1:BE BRIEF.,2:3+4?|2|{"role": "system", "content": "Be brief."}|ababab|3+'
    with pytest.raises(Exception, match="no system role"):
        render_chat_template("{{ raise_exception('no system role') }}")


LIMITS = TemplateLimits(chars=100_000, seconds=2.0, int_bits=4096)
# string formats whose width or precision alone makes a 200 MB string
WIDE_FORMATS = ("{{ '%0200000000d' % 1 }}", "{{ '%.200000000f' % 1.5 }}", "{{ '%*d' % (200000000, 1) }}",
                "{{ '%(a)200000000s' % {'a': 1} }}", "{{ '%0200000000d' | format(1) }}",
                "{{ '{:>200000000}'.format(1) }}", "{{ '{:>{}}'.format(1, '200000000') }}",
                "{{ '{x:>200000000}'.format_map({'x': 1}) }}", "{{ ('{:>200000000}' | safe).format(1) }}")


@pytest.mark.parametrize("source, what", [
    ("{{ 'a' * 10000000000 }}", "repetition"),
    ("{{ ['a'] * 10000000 }}", "repetition"),
    ("{{ 10 ** 100000000 }}", "power"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "items"),
    ("{% set s = 'ab' %}" + "{% set s = s ~ s %}" * 40 + "{{ s | length }}", "items"),
    ("{% set l = [1, 2] %}" + "{% set l = l + l %}" * 40, "items"),
    ("{{ 'a' | center(1000000000) }}", "argument"),
    ("{{ 'a'.ljust(1000000000) }}", "argument"),
    ("{% for i in range(99999) %}{{ 'x' * 99 }}{% endfor %}", "output"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}{% endfor %}{% endfor %}"
     "{% endfor %}", "took over"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    *[(source, "a width of 200,000,000") for source in WIDE_FORMATS],
])
def test_a_template_past_its_limits_stops_with_one_line_naming_the_limit(source, what):
    started = time.monotonic()
    with pytest.raises(ValueError, match="chat template went past its rendering limits") as info:
        render_chat_template(source, LIMITS)
    assert what in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - started < 3 * LIMITS.seconds


def test_string_formats_are_refused_before_they_allocate_and_render_within_the_limits():
    tracemalloc.start()
    try:
        for source in WIDE_FORMATS:
            with pytest.raises(ValueError, match="a width of 200,000,000"):
                render_chat_template(source, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # each string would have held 200 MB
    source = ("{{ '%5d|%-3s|%%|%.2f' % (42, 'ab', 3.14159) }}|{{ '{:>4}|{:.1f}|{}'.format(1, 2.25, 'x') }}|"
              "{{ '%s-%s' | format('a', 'b') }}|{{ '{a}'.format_map({'a': 7}) }}|{{ 7 % 3 }}")
    assert render_chat_template(source, LIMITS) == "   42|ab |%|3.14|   1|2.2|x|a-b|7|1"
