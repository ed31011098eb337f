"""The matmul FLOPs the DPO step really does, against the count its MFU uses (4 x params x
tokens processed, as ../shared/PERFORMANCE.md and ``gpu_loop.py`` count), from the step's
jaxpr: no device, no weights (abstract shapes), seconds on a CPU.

    PYTHONPATH=. python experiments/benchmarks/step_flops.py [--shape 8b] [--real-tokens] [--merged]

Prints every product with its FLOPs and share of the counted figure.  The real figure
differs from the count because the count takes the embedding table as a matmul (it is a
lookup) and the vocabulary head at every token (the step projects only the positions that
predict a response token), and leaves out attention's products and the adapters'."""
from __future__ import annotations

import argparse
import collections
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from gpu_loop import SHAPES  # noqa: E402

from rmbandit import parallel  # noqa: E402
from rmbandit.models import LlamaModel, ModelConfig  # noqa: E402
from rmbandit.training import step as step_lib  # noqa: E402


def dot_flops(jaxpr, found: collections.Counter, times: int = 1) -> collections.Counter:
    """2 x M x N x K of every dot_general, by operand shapes, nested jaxprs included (a
    scan's body counted once per iteration)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            depth = int(np.prod([lhs.shape[i] for i in contracting]))
            found[f"{lhs.dtype} {lhs.shape} x {rhs.shape}"] += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * depth * times
        for name in ("jaxpr", "call_jaxpr", "body_jaxpr"):
            if name in eqn.params:
                inner = eqn.params[name]
                dot_flops(getattr(inner, "jaxpr", inner), found,
                          times * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1))
                break
        for branch in eqn.params.get("branches", ()):
            dot_flops(branch.jaxpr, found, times)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--responses", type=int, default=2)
    parser.add_argument("--length", type=int, default=256, help="prompt and response tokens")
    parser.add_argument("--real-tokens", action="store_true", help="responses as their real tokens, as the loop runs")
    parser.add_argument("--merged", action="store_true", help="step.merge_adapters")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    model = LlamaModel(ModelConfig(model_type="llama", **SHAPES[args.shape]), dtype=jnp.bfloat16)
    params = parallel.abstract_params(model, (jnp.zeros((1, 1), jnp.int32),))
    config = step_lib.StepConfig(merge_adapters=args.merged)
    state = jax.eval_shape(lambda key, p: step_lib.init_state(key, p, config), jax.random.key(1), params)
    b, k, n = args.prompts, args.responses, args.length
    spec = jax.ShapeDtypeStruct
    batch = step_lib.PairBatch(spec((b, n), jnp.int32), spec((b, n), jnp.int32), spec((k, b, n), jnp.int32),
                               spec((k, b, n), jnp.int32), spec((b, k // 2), jnp.int32), spec((b, k // 2), jnp.int32),
                               spec((b, k // 2), jnp.float32), spec((k, b), jnp.float32))
    real = k * b * n if args.real_tokens else None
    step = step_lib.make_train_step(model, config)
    jaxpr = jax.make_jaxpr(lambda s, p, x: step(s, p, x, real))(state, params, batch)
    found = dot_flops(jaxpr.jaxpr, collections.Counter())
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    counted = 4 * n_params * b * (n + k * n)
    total = sum(found.values())
    print(f"{args.shape}: {n_params / 1e9:.3f} B params, {b} prompts x ({n} + {k} x {n}) tokens")
    print(f"counted (4 x params x tokens): {counted / 1e12:.2f} TFLOP; the step's products: {total / 1e12:.2f} TFLOP "
          f"({total / counted:.3f} of the count)")
    for shapes, flops in found.most_common(args.top):
        print(f"{flops / 1e12:9.3f} TFLOP {100 * flops / counted:6.2f} %  {shapes}")


if __name__ == "__main__":
    main()
