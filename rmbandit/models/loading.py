"""Load HF checkpoint directories (single or sharded safetensors) into our Flax params.

``model, params = load_pretrained(path, dtype=jnp.float32)``.  Every tensor the model
needs must be present with the right shape; anything missing, mis-shaped or unexpected
is an error naming the tensor.
"""
from __future__ import annotations

import json
import pathlib
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from rmbandit.models.config import ModelConfig
from rmbandit.models.registry import decoder_for
from rmbandit.parallel import abstract_params

IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


# the decoders' tensors outside the layers: HF name <-> our param path (Dense kernels are
# stored transposed); ``score`` is the *ForSequenceClassification head
TOP_LEVEL = {
    "model.embed_tokens.weight": ("embed_tokens",),
    "model.norm.weight": ("norm", "scale"),
    "lm_head.weight": ("lm_head", "kernel"),
    "score.weight": ("score", "kernel"),
}


def hf_to_flax_path(name: str) -> tuple[tuple[str, ...], bool] | None:
    """HF tensor name -> (our param path, transpose?); None for a name no decoder has."""
    if name in TOP_LEVEL:
        path = TOP_LEVEL[name]
        return path, path[-1] == "kernel"
    match = _LAYER.match(name)
    if not match:
        return None
    layer, module, kind = match.groups()
    parts = tuple(module.split("."))
    if parts[-1].endswith("norm") or parts[-1].endswith("layernorm"):
        return (f"layers_{layer}", *parts, "scale"), False
    return (f"layers_{layer}", *parts, "kernel" if kind == "weight" else "bias"), kind == "weight"


def flax_to_hf_name(path: tuple[str, ...]) -> str:
    """Our param path -> its HF tensor name: the inverse of ``hf_to_flax_path``."""
    for name, ours in TOP_LEVEL.items():
        if ours == path:
            return name
    if not path[0].startswith("layers_"):
        raise ValueError(f"parameter {'/'.join(path)} has no HF tensor name")
    kind = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    return f"model.layers.{path[0].removeprefix('layers_')}.{'.'.join(path[1:-1])}.{kind}"


def safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(f"{index} lists {missing} but they are not in {path}; "
                                    "download every shard of the checkpoint")
        return [path / f for f in files]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}; "
                            "pass an HF checkpoint directory saved with safetensors")


def assemble_params(model, tensors, source: str, dtype, shardings=None, *, to_flax=None, ignore=None,
                    describe: str = "model", hf_name=".".join):
    """(HF tensor name, array [HF layout]) pairs -> our params; every check in one place.

    ``to_flax`` maps an HF name to (our param path, transpose?) (default: the decoders'
    table), ``ignore`` skips buffers the model does not need, ``hf_name`` names a missing
    param in the checkpoint's own terms.  With ``shardings`` (flat dict path -> Sharding)
    each tensor goes straight onto its sharding as it is read: every device receives only
    its shard (multi-host included, through ``make_array_from_callback``) and the host
    holds one tensor at a time."""
    to_flax = to_flax or hf_to_flax_path
    ignore = ignore or IGNORED.match
    expected = flax.traverse_util.flatten_dict(abstract_params(model, (jnp.zeros((1, 1), jnp.int32),)))
    flat = {}
    for name, array in tensors:
        if ignore(name):
            continue
        target = to_flax(name)
        if target is None or target[0] not in expected:
            raise ValueError(f"unexpected tensor {name!r} in {source} for a {describe}; "
                             "is the config from the same checkpoint?")
        key, transpose = target
        array = array.T if transpose else array
        if array.shape != expected[key].shape:
            raise ValueError(f"tensor {name!r} has shape {array.shape} but the config implies "
                             f"{expected[key].shape}; the config and the weights disagree")
        host = np.asarray(array).astype(jnp.dtype(dtype))
        if shardings is None:
            flat[key] = jnp.asarray(host)
        else:
            flat[key] = jax.make_array_from_callback(host.shape, shardings[key], lambda index: host[index])
    missing = [hf_name(k) for k in expected if k not in flat]
    if missing:
        raise ValueError(f"checkpoint {source} lacks {len(missing)} tensors the {describe} needs: {missing[:8]}")
    return flax.traverse_util.unflatten_dict(flat)


def open_safetensors(file: pathlib.Path, framework: str):
    """``safe_open`` whose failure (a truncated or corrupt file: header, or data shorter
    than the header says) is an error naming the file and the fix."""
    try:
        return safe_open(file, framework=framework)
    except SafetensorError as err:
        raise ValueError(f"{file} is truncated or corrupt ({err}); download it again, or export the "
                         "checkpoint again (an interrupted download or copy leaves such a file)") from err


def safetensors_tensors(path: pathlib.Path, framework: str = "flax"):
    """(name, array) of every tensor in a checkpoint directory.  Every file is opened (so
    its header and size are checked) before the first tensor is read: a truncated shard
    fails before any weight loads."""
    handles = [open_safetensors(file, framework) for file in safetensors_files(path)]

    def tensors():
        for handle in handles:
            with handle as f:          # "flax": jax arrays, so bf16 checkpoints load too
                for name in f.keys():
                    yield name, f.get_tensor(name)

    return tensors()


def load_pretrained(path, dtype=jnp.float32, mesh=None, precision="auto"):
    """An HF checkpoint directory or a ``.gguf`` file -> (decoder module, params of ``dtype``).

    With a ``mesh`` the parameters are sharded by ``rmbandit.parallel``'s logical rules.
    ``precision`` of the model's matmuls: see ``registry.decoder_for``."""
    path = pathlib.Path(path)
    if path.suffix == ".gguf":
        from rmbandit.models import gguf_loading
        config, tensors = gguf_loading.read_gguf(path)
    else:
        config, tensors = ModelConfig.from_pretrained(path), safetensors_tensors(path)
    model = decoder_for(config, dtype, precision)
    shardings = None
    if mesh is not None:
        from rmbandit import parallel
        shardings = flax.traverse_util.flatten_dict(
            parallel.param_shardings(model, mesh, (jnp.zeros((1, 1), jnp.int32),)))
    # a tied model's checkpoint may store its lm_head too (a copy of the embeddings):
    # transformers ties it and ignores the copy, and so do we
    tied_head = config.tie_word_embeddings and config.num_labels is None
    ignore = lambda name: bool(IGNORED.match(name)) or (tied_head and name == "lm_head.weight")   # noqa: E731
    return model, assemble_params(model, tensors, str(path), dtype, shardings, ignore=ignore,
                                  describe=f"{config.model_type} model")
