"""The products of one decode step on XLA:CPU, by operand and result dtype, side by side in
one run: 90 products [16, 576] x [576, 1536] (SmolLM2-135M's MLP shape at 16 rows), the
fastest of 5 calls of one jitted program each:

- float32 x float32 -> float32 (a float32 policy);
- bfloat16 x bfloat16 -> float32 (``layers.BF16_WEIGHTS``: what ``with_bfloat16_weights`` runs);
- bfloat16 x bfloat16 -> bfloat16 (a bfloat16 model's products);
- the ``BF16_BF16_F32`` dot-algorithm preset on float32 operands, weights stored bfloat16.

    python experiments/benchmarks/bf16_products.py
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

ROWS, PRODUCTS = 16, 90
f32, bf16 = jnp.float32, jnp.bfloat16


def fastest_ms(fn, *args, calls: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main():
    base = jnp.ones((576, 1536), f32) * 1e-3
    weights = {dtype: [(base + i * 1e-6).astype(dtype) for i in range(PRODUCTS)] for dtype in (f32, bf16)}
    x = jnp.ones((ROWS, 576), f32)
    variants = {
        "float32 x float32 -> float32": (lambda x, ws: sum(jnp.dot(x, w).sum() for w in ws), f32),
        "bfloat16 x bfloat16 -> float32": (lambda x, ws: sum(
            jnp.dot(x.astype(bf16), w, preferred_element_type=f32).sum() for w in ws), bf16),
        "bfloat16 x bfloat16 -> bfloat16": (lambda x, ws: sum(
            jnp.dot(x.astype(bf16), w).astype(f32).sum() for w in ws), bf16),
        "BF16_BF16_F32 preset, bfloat16 weights": (lambda x, ws: sum(jnp.dot(
            x, w.astype(f32), precision=jax.lax.DotAlgorithmPreset.BF16_BF16_F32).sum() for w in ws), bf16),
    }
    for name, (fn, dtype) in variants.items():
        print(f"{name:40s} {fastest_ms(jax.jit(fn), x, weights[dtype]):6.1f} ms for {PRODUCTS} products")


if __name__ == "__main__":
    main()
