#!/usr/bin/env python3
"""Generate chat-template parity fixtures for Finch's Swift Jinja interpreter.

Renders every template in Tests/FinchTestSupport/Fixtures/chat_templates/templates/ through
transformers' own code path (`transformers.utils.chat_template_utils.render_jinja_template`,
which `apply_chat_template(..., tokenize=False)` calls) for a set of conversations, and a list of
small snippet templates that pin down jinja2 semantics, then writes cases.json next to them:

  {"now": [Y, M, D, h, m, s],        the local time strftime_now sees (frozen)
   "cases": [{"name", "template" (file) or "source" (inline), "context" (the variables as given to
              apply_chat_template; messages before its normalization), and "expected" or "error"
              ({"kind": "raise" | "other", "type", "message"})}]}

`raise` errors come from the template's raise_exception(); the Swift test requires the same
message. `other` errors (undefined values, type errors) only require that Swift throws too.

Usage: python3 reference/make_chat_template_fixtures.py [--out DIR]
"""
import argparse
import datetime as _datetime
import json
import os

import jinja2
import transformers
import transformers.utils.chat_template_utils as ctu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "chat_templates")

NOW = (2024, 9, 5, 14, 30, 7)


class _FrozenDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(*NOW)


# strftime_now() looks `datetime` up in the module at call time, so this freezes it.
ctu.datetime = _FrozenDatetime

# ---------------------------------------------------------------------------------------------
# Conversations

SYS = {"role": "system", "content": "You are a concise assistant. Answer in one sentence."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "  And of Italy? Say \"Roma\" in Italian, with an émoji 🎉\nand a second line.  "}
A2 = {"role": "assistant", "content": "It's Rome — \"Roma\" 🇮🇹.\n"}

PLAIN = {
    "user": [U1],
    "system_user": [SYS, U1],
    "multi_turn": [U1, A1, U2],
    "system_multi_turn": [SYS, U1, A1, U2],
    "system_full": [SYS, U1, A1, U2, A2],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. 'Paris'"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
        "return": {"type": "string"},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone (ünïcode ok).",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": []},
    },
}
TOOLS = [WEATHER_TOOL, TIME_TOOL]

U_WEATHER = {"role": "user", "content": "What's the weather in Paris, in celsius?"}


def tool_call(name, arguments, call_id=None):
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


# content=None is dropped by apply_chat_template before the template sees the message.
A_CALL = {"role": "assistant", "content": None,
          "tool_calls": [tool_call("get_weather", {"city": "Paris", "unit": "celsius"})]}
A_CALL_WITH_TEXT = {
    "role": "assistant",
    "content": "Let me check.",
    "tool_calls": [tool_call("get_weather", {"city": "Paris"}), tool_call("get_time", {"tz": "Europe/Paris"})],
}
T_RESULT = {"role": "tool", "content": "{\"temperature\": 22, \"sky\": \"clear\"}"}
T_RESULT2 = {"role": "tool", "content": "14:30"}
A_FINAL = {"role": "assistant", "content": "It is 22 °C and clear in Paris."}

# ---------------------------------------------------------------------------------------------
# Templates and their cases

SPECIAL = {
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2": {"eos_token": "<|im_end|>"},  # Qwen2.5's tokenizer has no bos_token
    "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>"},
}


def plain_cases(template, special, conversations=PLAIN, extra=None):
    cases = []
    for conv_name, messages in conversations.items():
        for gen in (False, True):
            cases.append({
                "name": f"{conv_name}{'_gen' if gen else ''}",
                "template": template,
                "messages": messages,
                "add_generation_prompt": gen,
                "kwargs": {**special, **(extra or {})},
            })
    return cases


def case(name, template, messages, gen=False, tools=None, **kwargs):
    return {"name": name, "template": template, "messages": messages, "add_generation_prompt": gen,
            "tools": tools, "kwargs": kwargs}


def template_cases():
    cases = []

    t = "HuggingFaceTB-SmolLM2-135M-Instruct.jinja"
    cases += plain_cases(t, SPECIAL["smollm2"])

    for t in ("meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja"):
        sp = SPECIAL["llama3"]
        cases += plain_cases(t, sp, extra={"date_string": "26 Jul 2024"})
        cases.append(case("no_date_string", t, [SYS, U1], True, **sp))  # 3.2: strftime_now, 3.1: default date
        cases.append(case("tools", t, [SYS, U_WEATHER], True, TOOLS, date_string="01 Jan 2025", **sp))
        cases.append(case("tools_no_system", t, [U_WEATHER], True, TOOLS, **sp))
        cases.append(case("tools_in_system", t, [SYS, U_WEATHER], True, TOOLS, tools_in_user_message=False, **sp))
        cases.append(case("tool_call_and_result", t, [SYS, U_WEATHER, A_CALL, T_RESULT, A_FINAL], False, TOOLS, **sp))
        cases.append(case("ipython_mapping_content", t,
                          [U_WEATHER, A_CALL, {"role": "ipython", "content": {"temperature": 22}}], True, TOOLS, **sp))
        cases.append(case("error_two_tool_calls", t, [U_WEATHER, A_CALL_WITH_TEXT], False, TOOLS, **sp))
        cases.append(case("error_tools_without_user", t, [SYS], True, TOOLS, **sp))
    t = "meta-llama-Llama-3.1-8B-Instruct.jinja"
    cases.append(case("builtin_tools", t, [SYS, U_WEATHER], True, TOOLS,
                      builtin_tools=["brave_search", "code_interpreter", "wolfram_alpha"], **SPECIAL["llama3"]))
    cases.append(case("builtin_tool_call", t, [U_WEATHER, {"role": "assistant", "tool_calls": [
        tool_call("brave_search", {"query": "weather Paris"})]}, {"role": "ipython", "content": "sunny"}], True,
        builtin_tools=["brave_search"], **SPECIAL["llama3"]))

    t = "Qwen-Qwen2.5-7B-Instruct.jinja"
    cases += plain_cases(t, SPECIAL["qwen2"])
    sp = SPECIAL["qwen2"]
    cases.append(case("tools", t, [U_WEATHER], True, TOOLS, **sp))
    cases.append(case("tools_system", t, [SYS, U_WEATHER], True, TOOLS, **sp))
    cases.append(case("tool_calls_and_results", t,
                      [SYS, U_WEATHER, A_CALL_WITH_TEXT, T_RESULT, T_RESULT2, A_FINAL], False, TOOLS, **sp))
    cases.append(case("tool_call_no_tools_list", t, [U_WEATHER, A_CALL, T_RESULT], True, **sp))
    cases.append(case("tool_first", t, [T_RESULT, U1], True, **sp))
    cases.append(case("system_later", t, [U1, A1, SYS, U2], True, **sp))

    sp = SPECIAL["mistral"]
    t = "mistralai-Mistral-7B-Instruct-v0.2.jinja"
    cases += plain_cases(t, sp, {k: v for k, v in PLAIN.items() if not k.startswith("system")})
    cases.append(case("error_system", t, [SYS, U1], True, **sp))
    cases.append(case("error_not_alternating", t, [U1, U2], True, **sp))
    cases.append(case("error_tool_role", t, [U1, A1, T_RESULT], True, **sp))

    t = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
    cases += plain_cases(t, sp)
    a_call = {"role": "assistant", "tool_calls": [tool_call("get_weather", {"city": "Paris"}, "abcDEF123")]}
    t_result = {"role": "tool", "content": "22", "tool_call_id": "abcDEF123"}
    cases.append(case("tools", t, [SYS, U1, A1, U_WEATHER], True, TOOLS, **sp))
    cases.append(case("tool_call_and_result", t, [U_WEATHER, a_call, t_result, A_FINAL], False, TOOLS, **sp))
    cases.append(case("error_not_alternating", t, [SYS, U1, U2], True, **sp))
    cases.append(case("error_bad_tool_call_id", t,
                      [U_WEATHER, {"role": "assistant", "tool_calls": [tool_call("get_weather", {}, "short")]}], **sp))
    cases.append(case("error_unknown_role", t, [U1, {"role": "critic", "content": "hm"}], **sp))

    sp = SPECIAL["gemma"]
    for t in ("google-gemma-2-2b-it.jinja", "google-gemma-7b-it.jinja"):
        cases += plain_cases(t, sp, {k: v for k, v in PLAIN.items() if not k.startswith("system")})
        cases.append(case("error_system", t, [SYS, U1], True, **sp))
        cases.append(case("error_not_alternating", t, [U1, A1, A2], True, **sp))

    for extra in EXTRA_TEMPLATES:
        cases += plain_cases(extra, {"bos_token": "<s>", "eos_token": "</s>"},
                             {"system_user": PLAIN["system_user"], "system_full": PLAIN["system_full"]})
        cases.append(case("tools", extra, [SYS, U_WEATHER, A_CALL, T_RESULT, A_FINAL], False, TOOLS,
                          bos_token="<s>", eos_token="</s>"))
    # A calling turn with text and two calls with ids (as agent datasets hold them; Mistral Small
    # wants 9-character ids), their results, and the answer: templates that need a turn's content
    # (Qwen3, Phi-3.5, ...) render it; Phi-3.5 has no tool syntax and skips the tool turns.
    a_calls = {"role": "assistant", "content": "Let me check.",
               "tool_calls": [tool_call("get_weather", {"city": "Paris"}, "abcDEF123"),
                              tool_call("get_time", {"tz": "Europe/Paris"}, "xyzUVW789")]}
    results = [{"role": "tool", "content": "{\"temperature\": 22}", "tool_call_id": "abcDEF123"},
               {"role": "tool", "content": "14:30", "tool_call_id": "xyzUVW789"}]
    for extra in EXTRA_TEMPLATES:
        cases.append(case("tools_with_text", extra, [SYS, U_WEATHER, a_calls] + results + [A_FINAL], False, TOOLS,
                          bos_token="<s>", eos_token="</s>"))
    cases.append(case("tools_with_text_no_thinking", "Qwen-Qwen3-0.6B.jinja", [SYS, U_WEATHER, a_calls] + results + [A_FINAL, U2],
                      True, TOOLS, bos_token="<s>", eos_token="</s>", enable_thinking=False))
    # Gemma 2 has no system or tool role: its template raises, as transformers does.
    cases.append(case("error_tools", "google-gemma-2-2b-it.jinja", [U_WEATHER, a_calls] + results + [A_FINAL], False, TOOLS,
                      **SPECIAL["gemma"]))
    reasoning = {"role": "assistant", "content": "Paris.", "thinking": "The user asks about France."}
    for extra, name, kwargs in EXTRA_KWARGS:
        cases.append(case(name, extra, [SYS, U1, reasoning, U2], True, bos_token="<s>", eos_token="</s>", **kwargs))
    return cases


# Other real templates (llama.cpp's models/templates) that exercise macros, reverse loops, string
# methods and more; not required by the issue but cheap to keep honest.
EXTRA_TEMPLATES = [
    "Qwen-Qwen3-0.6B.jinja",
    "HuggingFaceTB-SmolLM3-3B.jinja",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "ibm-granite-granite-3.3-2B-Instruct.jinja",
    "ByteDance-Seed-OSS.jinja",
    "openai-gpt-oss-120b.jinja",
    # issue 22: Phi-3.5 (no tool support: its tool case raises), DeepSeek V3.2 / V4 (`from_json`),
    # functionary v3.1 (tool schemas as text)
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "deepseek-ai-DeepSeek-V3.2.jinja",
    "deepseek-ai-DeepSeek-V4.jinja",
    "meetkai-functionary-medium-v3.1.jinja",
]
EXTRA_KWARGS = [
    ("Qwen-Qwen3-0.6B.jinja", "no_thinking", {"enable_thinking": False}),
    ("HuggingFaceTB-SmolLM3-3B.jinja", "no_thinking", {"enable_thinking": False}),
    ("ByteDance-Seed-OSS.jinja", "thinking_budget", {"thinking_budget": 1000}),
    ("openai-gpt-oss-120b.jinja", "reasoning_high", {"reasoning_effort": "high"}),
]

# ---------------------------------------------------------------------------------------------
# Snippets: one jinja2 behaviour each

MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1", "reasoning": "R", "tool_calls": None}, {"role": "user", "content": "U2"}]

SNIPPETS = [
    # markupsafe: `safe` / `escape` give Markup; Markup + str escapes the str (functionary v3.1's tools)
    "{{ 'a<b'|safe + '<c>' }}|{{ '<x>' + 'y&'|safe }}|{{ ('p'|safe + '\"') + ('q'|safe) + \"'\" }}|{{ 'a'|safe ~ '<' }}",
    "{{ '<'|escape }}|{{ ('<'|escape)|escape }}|{{ '<'|forceescape|forceescape }}|{{ ('x'|safe + '<')|length }}|{{ ('x'|safe + '<')|upper }}",
    "{% set m = 'a'|safe %}{{ m + '<' }}|{{ ['<'|safe, 'b']|join('&') }}|{{ 'a'|safe == 'a' }}|{{ ('a'|safe) in 'cab' }}|{{ {'k': 1}|tojson|safe + '\"' }}",
    "{{ 'a'|safe + 1 }}",
    "{% macro m(x, y='<') %}{{ x + y }}{% endmacro %}{{ m('a'|safe) }}|{{ m('a') }}|{{ m('b'|safe, y='&'|safe) }}|{% set ns = namespace(v='c'|safe) %}{{ ns.v + '>' }}",
    # whitespace control, trim_blocks, lstrip_blocks
    "a\n  {% if true %}\n    b\n  {% endif %}\nc\n",
    "a  {%- if true -%}  b  {%- endif -%}  c",
    "x {{- ' y ' -}} z",
    "  {# comment #}\nline\n  {#- c2 -#}  after",
    "{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n",
    "a\n    {%+ if true %}kept indent{% endif %}\n",
    "{% if true +%}\nno trim after plus\n{% endif %}",
    "{% raw %}{{ not a var }}{% endraw %}\n{%- raw -%}  x  {%- endraw %}",
    "line1\r\nline2\r\n{{ 'x' }}\n\n",
    "{{ 'a' }}\n{{ 'b' }}\n",
    "\t{% if true %}tab{% endif %}",
    # literals and printing
    "{{ 1 }} {{ 1.0 }} {{ 1e16 }} {{ 1.5e-7 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 0x1F }} {{ 1_000 }}",
    "{{ none }} {{ true }} {{ false }} {{ [1, 'a', none, true, 2.5] }} {{ {'k': \"it's\", 'n': [1]} }} {{ (1,) }} {{ (1, 'x') }} {{ () }}",
    "{{ 'tab\\there' }}|{{ \"q'q\" }}|{{ ['q\\'q', 'd\"d', 'b\\\\s', 'n\\nl'] }}|{{ '\\u00e9\\x41' }}",
    "{{ 'a' 'b' }} {{ 'x' ~ 1 ~ none ~ undefined_var }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ 3 * 'x' }}",
    # operators
    "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1,2] < [1,3] }} {{ 'a' != 'a' }}",
    "{{ 'b' in 'abc' }} {{ 'x' not in ['x'] }} {{ 'k' in {'k': 1} }} {{ 2 in [1, 2] }} {{ '' in 'abc' }}",
    "{{ not 0 }} {{ 1 and 'x' }} {{ 0 or '' or 'z' }} {{ none or [] }} {{ 'a' if false else 'b' }} [{{ 'a' if false }}]",
    "{{ -3|abs }} {{ - 3 ** 2 }} {{ (1 + 2) * 3 }} {{ 1 + 2 * 3 - 4 / 2 }} {{ 2 ** 3 ** 2 }}",
    # subscripts and slices
    "{{ messages[0].content }} {{ messages[-1]['role'] }} {{ messages[1:]|length }} {{ messages[::-1][0].content }} {{ messages[1:3]|map(attribute='content')|join(',') }}",
    "{{ 'hello'[1:4] }} {{ 'hello'[::-2] }} {{ 'hello'[-3:] }} {{ [1,2,3,4,5][1::2] }} {{ [1,2,3][5:] }} {{ 'héllo'[1] }} {{ [1,2,3][-10:2] }}",
    "{{ messages[10] is defined }} {{ messages.foo is defined }} {{ {'a': 1}.a }} {{ {'a': 1}['b'] is defined }} {{ none.x is defined }}",
    # loops
    "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}",
    "{% for m in messages %}[{{ loop.previtem.role if loop.previtem is defined else '-' }}>{{ loop.nextitem.role if loop.nextitem is defined else '-' }}]{% endfor %}",
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.content }} {% endfor %}",
    "{% for x in [] %}never{% else %}empty{% endfor %}|{% for x in none_var %}{% else %}undef{% endfor %}",
    "{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for k in {'z': 1, 'y': 2} %}{{ k }}{% endfor %}",
    "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}{% for c in 'héy' %}[{{ c }}]{% endfor %}",
    "{% for i in range(3) %}{% for j in range(i) %}{{ loop.index }}{% endfor %}|{{ loop.index }} {% endfor %}",
    "{% for x in [1,2,3] %}{{ loop.cycle('a', 'b') }}{% endfor %} {% for x in [1,1,2] %}{{ loop.changed(x) }}{% endfor %}",
    "{{ range(5)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }}",
    # scoping
    "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }} {% endfor %}{{ x }}",
    "{% for i in [1, 2] %}{% if i == 2 %}[{{ y }}]{% endif %}{% set y = i %}{% endfor %}",
    "{% if true %}{% set z = 5 %}{% endif %}{{ z }}",
    "{% set ns = namespace(total=0, items=[]) %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }} {{ ns.items }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (3, 4) %}{% set c, d = t %}{{ c + d }}",
    "{% set block %}  inner {{ 1 + 1 }}  {% endset %}[{{ block }}]{% set up | upper %}shout{% endset %}{{ up }}",
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', punct='?') }} {{ greet(name='Cy') }}",
    "{% set v = 3 %}{% macro m() %}{{ v }}{% endmacro %}{{ m() }}{% set v = 9 %}{{ m() }}",
    "{% with a = 5 %}{{ a }}{% endwith %}[{{ a }}]{% filter upper %}up {{ 'x' }}{% endfilter %}",
    "{% generation %}gen {{ 1 }}{% endgeneration %}",
    # tests
    "{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 'a' is string }} {{ 1 is string }} {{ {} is mapping }} {{ [] is mapping }}",
    "{{ 'abc' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 1 is integer }} {{ 1.0 is float }}",
    "{{ true is true }} {{ 1 is true }} {{ false is false }} {{ true is boolean }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 2 is in [1, 2] }}",
    "{{ 'a' is eq 'a' }} {{ 1 is ne 2 }} {{ 2 is gt 1 }} {{ 2 is ge 3 }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ none is sameas none }} {{ 'upper' is filter }}",
    "{{ undefined_thing is iterable }} {{ undefined_thing is sequence }} {{ undefined_thing is none }} {{ messages is not none }} {{ raise_exception is callable }}",
    # string methods
    "{{ '  x y  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a\\n\\n'.rstrip('\\n') }}|{{ '\\u3000wide\\u3000'.strip() }}",
    "{{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ 'x</think>y</think>z'.split('</think>')[-1] }} {{ '  a b  c  '.split(none, 1) }}",
    "{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'Ab'.upper() }}{{ 'Ab'.lower() }} {{ 'aXbX'.replace('X', '-') }} {{ 'ab'.replace('', '.') }}",
    "{{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count('l') }} {{ '-'.join(['a', 'b']) }} {{ 'a\\nb\\r\\nc'.splitlines() }} {{ '42'.isdigit() }} {{ 'ab'.center(6) }}|",
    "{{ '{} + {} = {}'.format(1, 2, 3) }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{name}!'.format(name='x') }} {{ '{:>5}|{:<4}|{:^5}|{:.2f}|{:05d}'.format('r', 'l', 'c', 3.14159, 42) }}",
    "{{ '%s and %d' % ('x', 3) }} {{ '%05.1f%%' % 3.14159 }} {{ '%-4s|' % 'a' }} {{ '%(a)s-%(b)s' % {'a': 1, 'b': 2} }} {{ '%r' % 'q' }}",
    # dict methods
    "{{ {'a': 1, 'b': 2}.keys()|list }} {{ {'a': 1}.values()|list }} {{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z') }} {{ {'a': 1}.get('z', 'dflt') }} {{ {'a': 1}.items()|list }}",
    # filters
    "{{ '  pad  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'hello world'|title }}|{{ 'hello-world (x)'|title }}|{{ 'aBC'|capitalize }}|{{ 'a'|upper }}{{ 'B'|lower }}",
    "{{ [1, 2, 3]|length }} {{ 'héllo'|length }} {{ {'a': 1}|count }} {{ [3, 1, 2]|first }} {{ [3, 1, 2]|last }} {{ 'abc'|first }} {{ []|first is defined }}",
    "{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [3, 1, 2]|sort(reverse=true) }} {{ messages|sort(attribute='role')|map(attribute='content')|join }}",
    "{{ [1, 2, 2, 'a', 'A']|unique|list }} {{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }} {{ [1, 2, 3]|sum }} {{ [1, 5, 3]|max }} {{ [4, 2, 8]|min }} {{ ['a', 'B']|max }}",
    "{{ x|default('dflt') }} {{ ''|default('dflt') }} {{ ''|default('dflt', true) }} {{ none|d('n') }} {{ false|default('f', boolean=true) }}",
    "{{ '3'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '2.5'|float }} {{ 'y'|float }} {{ 5|float }} {{ '0x1A'|int(base=16) }} {{ ' 42 '|int }}",
    "{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(method='floor') }} {{ 5|round }} {{ -1.5|round }}",
    "{{ [1, 2]|join(', ') }} {{ messages|map(attribute='role')|join('/') }} {{ messages|join(',', attribute='content') }} {{ ['a', 'b']|map('upper')|list }}",
    "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }} {{ messages|rejectattr('role', 'in', ['user', 'system'])|list|length }} {{ [0, 1, '', 'x']|select|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [{'a': 1}, {}]|selectattr('a', 'defined')|list }}",
    "{{ {'b': 2, 'a': 1}|items|list }} {{ {'b': 2, 'a': 1}|dictsort }} {{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ 'a b  c'|wordcount }} {{ 42|string ~ '!' }} {{ 'ab'|list }}",
    "{{ 'line1\\nline2\\n\\nline4'|indent }}|{{ 'a\\nb'|indent(2, first=true) }}|{{ 'a\\n\\nb'|indent('> ', blank=true) }}",
    "{{ '<a href=\"x\">&\\'</a>'|escape }} {{ '<b>'|safe }} {{ 'x'|e }} {{ 'a long sentence here'|truncate(9) }} {{ 'a long sentence here'|truncate(9, true) }} {{ 'short'|truncate(3, leeway=0) }}",
    "{{ 'hi'|center(8) }}|{{ [1, [2, 3]]|pprint }}|{{ '%s-%s'|format('a', 'b') }}|{{ 'abc'|replace('b', 'X') }}|{{ 'aaa'|replace('a', 'b', 2) }}",
    # tojson (transformers' override: json.dumps, ensure_ascii=False)
    "{{ {'b': 1, 'a': [1, 2.5, none, true, 'é\"\\n\\t<>&']}|tojson }}",
    "{{ {'b': 1, 'a': {'c': []}, 'd': {}}|tojson(indent=4) }}|{{ [1, 2]|tojson(indent=2) }}|{{ {'x': 1}|tojson(indent='\\t') }}",
    "{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }} {{ {'k': 'é🎉'}|tojson(ensure_ascii=true) }} {{ [1, {'a': 2}]|tojson(separators=(',', ':')) }} {{ 'str'|tojson }} {{ 1.0|tojson }} {{ 1e20|tojson }}",
    "{{ tools|tojson }}",
    "{{ {'ctl': '\\x01\\x1f\\x7f', 'uni': '\\u2028'}|tojson }} {{ {'n': -0.0, 'big': 12345678901234567890.0}|tojson }}",
    # globals
    "{{ strftime_now('%Y-%m-%d %H:%M:%S|%d %b %Y|%A %B %j|%I%p') }}",
    "{{ dict(a=1, b='x') }} {{ dict({'c': 3}, d=4) }} {{ namespace(a=1).a }}",
    "{% set d = {0: 'zero', 512: 'half', 16: 'x'} %}{{ d[512] }} {{ d|dictsort }} {{ d }} {{ d|tojson }} {{ 16 in d }} {% for k, v in d|items %}{{ k + 1 }}{% endfor %}",
    "[{{ none|selectattr('type', 'equalto', 'x')|list }}] [{{ none|select|list }}] [{{ ''|reject|list }}]",
    "{{ messages|map(attribute='missing', default='dflt')|join(',') }} {{ {'a': {'b': [5, 6]}}|attr('keys') is defined }} {{ [{'a': {'b': [5, 6]}}]|map(attribute='a.b.1')|list }}",
    "{%- set ns = namespace(found=false) -%}{%- for m in messages[::-1] -%}{%- if not ns.found and m.role == 'user' -%}{%- set ns.found = true -%}{{ m.content }}{%- endif -%}{%- endfor -%}",
    "{{ messages[0]['content'] is string and messages[0].content|length > 0 }} {{ (messages|last).role }} {{ messages|length - 1 }} {{ not messages[0].tool_calls is defined }}",
    "{{ messages[2] }}",
    "{% for (k, v) in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}{% print 'p', 1 %}{% print 'q' %}{% for x in [1] %}{{ loop.depth }}{{ loop.depth0 }}{% endfor %}",
    "{% if false %}a{% elif none %}b{% elif 0 %}c{% else %}d{% endif %}{% if 1 %}e{% elif 2 %}f{% endif %}",
    # errors
    "{{ raise_exception('Custom failure: ' ~ messages|length) }}",
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
    "{{ undefined_var.attr }}",
    "{{ messages[0].missing.attr }}",
    "{{ 'a' + 1 }}",
    "{{ 1 + undefined_var }}",
    "{{ 1 < 'a' }}",
    "{{ messages.append(1) }}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{{ 1 / 0 }}",
    "{% for x in 5 %}{% endfor %}",
    "{{ {'a': 1}|tojson(indent=none) }}{{ undefined_var|tojson }}",
    "{{ range(100001)|length }}",
]


def snippet_context(source):
    return {"messages": MSGS, "tools": [WEATHER_TOOL] if "tools" in source else None, "documents": None,
            "add_generation_prompt": False, "bos_token": "<s>", "eos_token": "</s>"}


# ---------------------------------------------------------------------------------------------


def render(source, context):
    """Render as apply_chat_template(tokenize=False) does: normalize the messages (drop None
    values), then transformers' render_jinja_template (reasoning aliases, compiled environment)."""
    kwargs = {k: v for k, v in context.items() if k not in ("messages", "tools", "documents", "add_generation_prompt")}
    rendered, _ = ctu.render_jinja_template(
        conversations=[ctu._normalize_chat_messages(context["messages"])],
        tools=context.get("tools"),
        documents=context.get("documents"),
        chat_template=source,
        add_generation_prompt=context["add_generation_prompt"],
        **kwargs,
    )
    return rendered[0]


def outcome(source, context):
    try:
        return {"expected": render(source, context)}
    except jinja2.TemplateSyntaxError:
        raise
    except Exception as e:  # noqa: BLE001 - recorded as the expected outcome
        is_raise = type(e) is jinja2.exceptions.TemplateError
        return {"error": {"kind": "raise" if is_raise else "other", "type": type(e).__name__, "message": str(e)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    template_dir = os.path.join(args.out, "templates")

    cases = []
    for c in template_cases():
        with open(os.path.join(template_dir, c["template"]), encoding="utf-8", newline="") as f:
            source = f.read()
        context = {"messages": c["messages"], "tools": c.get("tools"), "documents": None,
                   "add_generation_prompt": c["add_generation_prompt"], **c["kwargs"]}
        stem = c["template"][: -len(".jinja")]
        cases.append({"name": f"{stem}/{c['name']}", "template": c["template"], "context": context,
                      **outcome(source, context)})
    for i, source in enumerate(SNIPPETS):
        context = snippet_context(source)
        cases.append({"name": f"snippet/{i:03d}", "source": source, "context": context, **outcome(source, context)})

    out = {
        "generator": "reference/make_chat_template_fixtures.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "now": list(NOW),
        "cases": cases,
    }
    path = os.path.join(args.out, "cases.json")
    # One case per line: readable diffs, a third of the size of an indented dump.
    header = {k: v for k, v in out.items() if k != "cases"}
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    errors = sum("error" in c for c in cases)
    print(f"wrote {path}: {len(cases)} cases ({errors} expect an error)")


if __name__ == "__main__":
    main()
