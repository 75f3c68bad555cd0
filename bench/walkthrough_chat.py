"""The walkthrough's chat script, as users run it: the baseline `bench/smoke_time.py` times provision against.

    python bench/walkthrough_chat.py [MODEL] [--prompt TEXT] [--max-new-tokens N]
        [--greedy] [--quant-type fp4|nf4] [--dtype float16|bfloat16|float32]

With no options it does what the walkthrough does: 4-bit bitsandbytes with float16 compute
(`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)`, so bitsandbytes'
default fp4), `device_map="auto"`, the chat template with the generation prompt, generate with the
attention mask, 512 new tokens at temperature 0.6 / top_p 0.9, decode only the new tokens. The options
exist so the benchmark can make both sides do identical work (greedy, same 4-bit type and dtype);
they change nothing else. Prints the reply, then one JSON line with the timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

t_start = time.perf_counter()

import torch  # noqa: E402 - the import time is part of what a user waits for
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402

t_imported = time.perf_counter()

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default="Qwen/Qwen1.5-7B-Chat")
parser.add_argument("--prompt", default="Hello! How are you?")
parser.add_argument("--max-new-tokens", type=int, default=512)
parser.add_argument("--greedy", action="store_true")
parser.add_argument("--quant-type", choices=("fp4", "nf4"), default=None)
parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None)
args = parser.parse_args()

model_path = args.model
quant = {"load_in_4bit": True, "bnb_4bit_compute_dtype": torch.float16}
if args.dtype:
    quant["bnb_4bit_compute_dtype"] = getattr(torch, args.dtype)
if args.quant_type:
    quant["bnb_4bit_quant_type"] = args.quant_type
quantization_config = BitsAndBytesConfig(**quant)
extra = {"dtype": getattr(torch, args.dtype)} if args.dtype else {}

t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(
    model_path, quantization_config=quantization_config, device_map="auto", **extra)
tokenizer = AutoTokenizer.from_pretrained(model_path)
t_loaded = time.perf_counter()

messages = [{"role": "user", "content": args.prompt}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
model_inputs = tokenizer([text], return_tensors="pt").to(model.device)
sampling = {"do_sample": False} if args.greedy else {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
generated_ids = model.generate(
    model_inputs.input_ids,
    attention_mask=model_inputs.attention_mask,
    max_new_tokens=args.max_new_tokens,
    **sampling,
)
generated_ids = [out[len(inp):] for inp, out in zip(model_inputs.input_ids, generated_ids)]
response = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
t_done = time.perf_counter()

print(response, file=sys.stderr)
print(json.dumps({
    "reply": response,
    "n_new_tokens": int(generated_ids[0].shape[0]),
    "import_s": t_imported - t_start,
    "load_s": t_loaded - t0,
    "generate_s": t_done - t_loaded,
    "total_s": t_done - t_start,
}))
