"""The generation engine the web chat and the server share (provisioner/scripts/_engine.py), run by the chat
env's python: the chat template's thinking switch (in _loader.encode, which every chat path uses), and a
queued request stopped before it starts."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from provisioner.model.smoke import SCRIPTS
from tests.serve.running import TINY

# Qwen3's way: a template that writes an empty think block unless thinking is on.
THINKING_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")

SCRIPT = r'''
import json, sys, threading
sys.path.insert(0, sys.argv[1])
import _engine, _loader
loaded = _loader.load(sys.argv[2], quant="none")
engine = _engine.Engine(loaded, max_waiting=1)
hello = [{"role": "user", "content": "Hello! How are you?"}]
tok = loaded.tokenizer
# the shared loading path (smoke chat, terminal chat, web chat, server): no thinking unless asked
text = lambda enc: tok.decode(enc["input_ids"][0])
out = {"default": text(_loader.encode(tok, hello)),
       "thinking": text(_loader.encode(tok, hello, {"enable_thinking": True}))}
out["tokens"] = [engine.prompt_tokens(hello), engine.prompt_tokens(hello, {"enable_thinking": True})]

# one running (an endless reply), one waiting and stopped while it waits, then the running one stopped
started, results = threading.Event(), {}
def job(name, messages, on_text=lambda t: None):
    done = threading.Event()
    def finished(result, error):
        results[name] = (result["stop_reason"] if result else None, type(error).__name__ if error else None)
        done.set()
    j = _engine.Job(messages, 100000, False, on_text, finished)
    return j, done
sing, sing_done = job("sing", [{"role": "user", "content": "Sing for me."}], lambda t: started.set())
wait, wait_done = job("waiting", hello)
engine.submit(sing)
started.wait(120)
engine.submit(wait)
try:
    engine.submit(job("third", hello)[0])
except _engine.Busy as e:
    results["third"] = ("busy", e.retry_after)
wait.stop.set()
sing.stop.set()
sing_done.wait(120); wait_done.wait(120)
out["results"] = results
out["counters"] = engine.counters()
print(json.dumps(out))
'''


def test_thinking_is_off_unless_asked_and_stopped_jobs_are_counted(chat_env_python: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny-thinking"
    shutil.copytree(TINY, model)
    (model / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    done = subprocess.run([str(chat_env_python), "-c", SCRIPT, str(SCRIPTS), str(model)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["default"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")   # thinking off
    assert out["thinking"].endswith("<|im_start|>assistant\n")                         # asked for
    assert out["tokens"][0] > out["tokens"][1]
    assert out["results"]["third"][0] == "busy" and out["results"]["third"][1] >= 1
    assert out["results"]["waiting"] == [None, "Stopped"]         # dropped before it started
    assert out["results"]["sing"] == ["interrupted", None]        # ended by its flag
    assert out["counters"] | {"generated_tokens": 0} == {
        "active": 0, "waiting": 0, "max_waiting": 1, "completed": 0, "stopped": 2, "failed": 0,
        "generated_tokens": 0}
