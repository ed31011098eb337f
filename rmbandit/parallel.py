"""Meshes and the logical-axis rules table: parameters and activations name their axes
logically (``embed``, ``mlp``, ``q_heads``, ...); one table maps them to mesh axes
``data`` (batch), ``fsdp`` (parameter sharding) and ``tensor`` (tensor parallelism).
The mesh is always passed in, never global."""
from __future__ import annotations

import contextlib
import warnings

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_RULES = (
    ("batch", "data"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("norm", None),
    ("labels", None),
    # activations (constrained only inside ``use_mesh``): batch over data x fsdp, as the inputs
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=LOGICAL_RULES):
    """Inside, the models' activation constraints (``nn.with_logical_constraint``) take
    effect under ``jax.jit``: their logical names map through ``rules`` onto ``mesh``.
    Outside, the constraints are no-ops, so single-device code needs no mesh."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all, multi-host included);
    ``data=-1`` takes what the other two leave."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    if devices.size == 0:
        raise ValueError("make_mesh got no devices")
    for name, size in (("fsdp", fsdp), ("tensor", tensor), ("data", data)):
        if not isinstance(size, (int, np.integer)) or size < (-1 if name == "data" else 1) or size == 0:
            raise ValueError(f"mesh axis {name} must be a positive size{' or -1 (the rest)' if name == 'data' else ''}, "
                             f"got {size!r}")
    if data == -1:
        if devices.size % (fsdp * tensor):
            raise ValueError(f"{devices.size} devices do not split into fsdp={fsdp} x tensor={tensor}")
        data = devices.size // (fsdp * tensor)
    if data * fsdp * tensor != devices.size:
        raise ValueError(f"mesh {data}x{fsdp}x{tensor} needs {data * fsdp * tensor} devices, have {devices.size}")
    return Mesh(devices.reshape(data, fsdp, tensor), MESH_AXES)


def abstract_params(model, example_inputs):
    """Parameter shapes/dtypes (ShapeDtypeStructs), unboxed by ``.value``: ``nn.unbox``
    inside ``use_mesh`` would apply sharding constraints to them."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs))["params"]
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, boxed,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_specs(model, example_inputs, rules=LOGICAL_RULES):
    """PartitionSpecs (mesh axes) for the model's parameters, from their logical names."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs))["params"]
    return nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)


def fit_spec(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """Replicate along any dimension the mesh axes do not divide (e.g. a vocabulary of 97)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else (axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        fitted.append(axes if dim % size == 0 else None)
    return PartitionSpec(*fitted)


def param_shardings(model, mesh: Mesh, example_inputs, rules=LOGICAL_RULES):
    config = getattr(model, "config", None)
    tensor = mesh.shape["tensor"]
    heads = {name: getattr(config, name, None) for name in ("num_heads", "num_kv_heads")}
    split = {name: count for name, count in heads.items() if count and count % tensor}
    if split:       # correct, but each device holds part of a head: attention needs extra collectives
        warnings.warn(f"mesh tensor={tensor} does not divide the model's {', '.join(f'{n}={c}' for n, c in split.items())}"
                      f": heads are split across devices, which costs collectives in every attention; "
                      f"choose a tensor size that divides the head counts", stacklevel=2)
    shapes = abstract_params(model, example_inputs)
    return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh)),
                        param_specs(model, example_inputs, rules), shapes,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over ``data`` and ``fsdp`` (FSDP shards the batch too)."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))
