"""The `openai` package against a running `serve` (bin/tests/serve.rs starts it): every endpoint the
package has, streamed and not, and each served method. Prints one JSON object for the test to check."""

import json
import sys

from openai import OpenAI

base, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
methods = sys.argv[4].split(",")
client = OpenAI(base_url=base + "/v1", api_key="none")
messages = [{"role": "user", "content": prompt}]
out = {"models": [m.id for m in client.models.list().data]}
model = out["models"][0]

chat = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
out["chat"] = {
    "text": chat.choices[0].message.content,
    "role": chat.choices[0].message.role,
    "finish_reason": chat.choices[0].finish_reason,
    "usage": chat.usage.model_dump(exclude_none=True),
    "hierspec": chat.model_extra.get("hierspec"),
}

text, finish, usage, roles = "", None, None, []
for c in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True):
    if c.choices:
        d = c.choices[0].delta
        roles += [d.role] if d.role else []
        text += d.content or ""
        finish = c.choices[0].finish_reason or finish
    if c.usage:
        usage = c.usage.model_dump(exclude_none=True)
out["chat_stream"] = {"text": text, "finish_reason": finish, "usage": usage, "roles": roles}

comp = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
out["completion"] = {"text": comp.choices[0].text, "finish_reason": comp.choices[0].finish_reason, "usage": comp.usage.model_dump(exclude_none=True)}
text = "".join(c.choices[0].text for c in client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True) if c.choices)
out["completion_stream"] = {"text": text}

out["methods"] = {}
for m in methods:
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, extra_body={"method": m})
    out["methods"][m] = {"text": r.choices[0].message.content, "hierspec": r.model_extra.get("hierspec")}

# Sampling with a seed repeats itself.
seeded = [
    client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0.8, top_p=0.9, seed=7).choices[0].message.content
    for _ in range(2)
]
out["seeded"] = seeded

# Stop strings cut the text before them.
stop = out["chat"]["text"].split()[1] if len(out["chat"]["text"].split()) > 1 else None
if stop:
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, stop=[stop])
    out["stop"] = {"stop": stop, "text": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason}

print(json.dumps(out))
