"""LoRA as a separate params pytree, so the optimiser sees only the adapters.

``lora = init_lora(key, params, LoraConfig())`` mirrors the targeted Dense layers:
``{"layers_0": {"self_attn": {"q_proj": {"a": [in, r], "b": [r, out]}}}, ...}``.
Two ways to run the adapted model, equal up to rounding:
- ``merge_lora(params, lora, cfg)`` returns params with W + (alpha / r) a @ b: for sampling
  (merged once, each decoded token then costs no adapter product) and export;
- ``with unmerged(lora, cfg): model.apply({"params": params}, ...)`` adds
  (alpha / r) (x @ a) @ b to each adapted Dense layer's output, as peft does: for the
  training step.  Its gradient with respect to a and b costs rank-r products; through a
  merged kernel it is the full [in, out] product x^T dy of every adapted matrix, which XLA
  does not reassociate: 4.8 % of a LoRA q / v DPO step's FLOPs at SmolLM2's shape (counted
  in its compiled HLO), 4.2 % at Llama-3-8B's.  The rank-r products it adds are bound by
  memory: on XLA:CPU the two ways take the same time.
Differentiate with respect to ``lora`` only: the frozen weights get no gradient.  b starts
at zero (as in peft), so a fresh adapter leaves the model unchanged.
"""
from __future__ import annotations

import contextlib
import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rmbandit.models.layers import resolve_precision


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 16                                     # LASeR: rank 16, alpha 32, q_proj/v_proj
    alpha: float = 32.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _targets(params, config: LoraConfig):
    flat = flax.traverse_util.flatten_dict(params)
    found = {path[:-1]: value for path, value in flat.items() if path[-1] == "kernel" and path[-2] in config.targets}
    names = {path[-1] for path in found}
    absent = [t for t in config.targets if t not in names]
    if absent:
        available = sorted({p[-2] for p in flat if p[-1] == "kernel"})
        raise ValueError(f"LoRA targets {absent} match no Dense layer; available: {available}")
    return found


def init_lora(key, params, config: LoraConfig = LoraConfig()):
    targets = _targets(params, config)
    keys = jax.random.split(key, len(targets))
    lora = {}
    for k, (path, kernel) in zip(keys, sorted(targets.items())):
        fan_in, fan_out = kernel.shape
        bound = 1.0 / jnp.sqrt(fan_in)                 # peft's kaiming-uniform(a=sqrt(5)) bound
        lora[path] = {"a": jax.random.uniform(k, (fan_in, config.rank), kernel.dtype, -bound, bound),
                      "b": jnp.zeros((config.rank, fan_out), kernel.dtype)}
    return flax.traverse_util.unflatten_dict({p + (n,): v for p, ab in lora.items() for n, v in ab.items()})


def merge_lora(params, lora, config: LoraConfig = LoraConfig(), precision="auto"):
    """W + scale a @ b for every adapted kernel; ``precision`` of the a @ b products:
    "auto" follows the kernel's dtype as the models do (``layers.resolve_precision``)."""
    flat = flax.traverse_util.flatten_dict(params)
    adapters = flax.traverse_util.flatten_dict(lora)
    # in the pytree's order, not a set's (string hashes change per process): the same program
    # text in every run, so the persistent compilation cache finds it
    for path in dict.fromkeys(p[:-1] for p in adapters):
        a, b = adapters[path + ("a",)], adapters[path + ("b",)]
        kernel = flat[path + ("kernel",)]
        product = jnp.matmul(a, b, precision=resolve_precision(precision, kernel.dtype))
        flat[path + ("kernel",)] = kernel + (config.scale * product).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat)


@contextlib.contextmanager
def unmerged(lora, config: LoraConfig = LoraConfig()):
    """Inside the block, every ``nn.Dense`` call whose module path has adapters in ``lora``
    returns x @ W + scale (x @ a) @ b, its own products at the layer's precision and dtype
    (a flax method interceptor: the models and their params stay as they are)."""
    adapters = flax.traverse_util.flatten_dict(lora)
    applied = set()

    def add_adapter(call, args, kwargs, context):
        out = call(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense):
            return out
        path = tuple(module.scope.path)
        a = adapters.get(path + ("a",))
        if a is None:
            return out
        applied.add(path)
        b = adapters[path + ("b",)]
        x = jnp.asarray(args[0], module.dtype)
        low = jnp.matmul(x, a.astype(module.dtype), precision=module.precision)
        adapter = config.scale * jnp.matmul(low, b.astype(module.dtype), precision=module.precision)
        return out + adapter.astype(out.dtype)

    with nn.intercept_methods(add_adapter):
        yield
    missed = sorted("/".join(p[:-1]) for p in adapters if p[-1] == "a" and p[:-1] not in applied)
    if missed:                      # the model that ran has no such layers: the adapters fit another one
        raise ValueError(f"LoRA adapters for {missed} found no Dense layer at their path in the model that ran; "
                         "build them with init_lora on this model's params")
