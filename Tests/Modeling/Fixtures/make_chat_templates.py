"""Writes chat_templates.json: common Hugging Face chat templates rendered by jinja2 exactly as transformers 4.38's
apply_chat_template renders them (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), raise_exception,
messages, add_generation_prompt and the special tokens). Run: python3 make_chat_templates.py (needs jinja2 3.x)."""
import json
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = {
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    "chatml_qwen2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "whitespace_control": "{%- for m in messages -%}\n    {{- m.role | upper ~ ': ' ~ (m.content | trim) -}}\n    {%- if not loop.last %}\n\n{% endif -%}\n{%- endfor -%}\n{# a comment #}\n  {% if add_generation_prompt %}ASSISTANT:{% endif %}",
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2?  "}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}, {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}],
]

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "additional_special_tokens": []}


def raise_exception(message):
    raise TemplateError(message)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.globals["raise_exception"] = raise_exception
cases = []
for name, source in TEMPLATES.items():
    template = env.from_string(source)
    for i, messages in enumerate(CONVERSATIONS):
        for add in (False, True):
            try:
                out = {"rendered": template.render(messages=messages, add_generation_prompt=add, **SPECIAL)}
            except TemplateError as e:
                out = {"error": str(e)}
            cases.append({"template": name, "conversation": i, "add_generation_prompt": add, **out})
with open("chat_templates.json", "w") as f:
    json.dump({"templates": TEMPLATES, "conversations": CONVERSATIONS, "special_tokens": SPECIAL, "cases": cases,
               "written_by": "jinja2 3.1.6 with transformers 4.38's settings (make_chat_templates.py)"}, f, indent=1, ensure_ascii=False)
print(len(cases), "cases")
