#!/usr/bin/env python3
"""Writes Tests/Modeling/Fixtures/chat-templates/NAME.expected.json: every template NAME.jinja rendered by jinja2 for
every case of conversations.json, exactly as transformers' apply_chat_template renders (render_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, generation]), its tojson
(json.dumps with ensure_ascii=False), raise_exception, strftime_now pinned to 2024-07-26, messages/tools/documents/
add_generation_prompt and the special tokens of NAME.json, then continue_final_message's cut. Needs only jinja2 3.x
(Debian: python3-jinja2). Run from the repository root: python3 ops/chat-reference.py"""
import datetime
import glob
import json
import os

import jinja2
from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Modeling", "Fixtures", "chat-templates")
PINNED = datetime.datetime(2024, 7, 26)


class Generation(Extension):
    """transformers' AssistantTracker: {% generation %}…{% endgeneration %} renders its body (as a call block)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return PINNED.strftime(fmt)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(template, case, tools, special):
    messages = case["messages"]
    kwargs = dict(special)
    kwargs.update(case.get("kwargs", {}))
    rendered = template.render(messages=messages, tools=tools if case.get("tools") else None, documents=None,
                               add_generation_prompt=case.get("add_generation_prompt", False), **kwargs)
    if case.get("continue_final_message"):
        final = messages[-1]["content"]
        if isinstance(final, list):
            final = next(b["text"] for b in reversed(final) if "text" in b)
        if final.strip() not in rendered:
            raise ValueError("continue_final_message is set but the final message does not appear in the chat after applying the chat template!")
        loc = rendered.rindex(final.strip())
        if rendered[loc:loc + len(final.lstrip())] == final:
            rendered = rendered[:loc + len(final.lstrip())]
        else:
            rendered = rendered[:loc + len(final.strip())]
    return rendered


def main():
    conversations = json.load(open(os.path.join(HERE, "conversations.json")))
    env = environment()
    for path in sorted(glob.glob(os.path.join(HERE, "*.jinja"))):
        name = os.path.basename(path)[:-len(".jinja")]
        meta = json.load(open(os.path.join(HERE, name + ".json")))
        template = env.from_string(open(path, encoding="utf-8").read())
        out = {}
        for case in conversations["cases"]:
            try:
                out[case["name"]] = {"rendered": render(template, case, conversations["tools"], meta["special_tokens"])}
            except (TemplateError, ValueError, TypeError) as e:
                out[case["name"]] = {"error": str(e)}
        with open(os.path.join(HERE, name + ".expected.json"), "w", encoding="utf-8") as f:
            json.dump({"written_by": f"ops/chat-reference.py with jinja2 {jinja2.__version__}", "cases": out}, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(name, sum("rendered" in v for v in out.values()), "rendered,", sum("error" in v for v in out.values()), "errors")


if __name__ == "__main__":
    main()
