"""Saving and restoring bandit states with orbax, without a hand-made target.

orbax restores a checkpoint saved without a target as nested dicts keyed by field name,
which fail later (``state.arms`` is a KeyError deep inside ``select``).  These helpers
rebuild the state type from the bandit itself: the target is ``jax.eval_shape`` of
``bandit.init`` at the arm count and width found in the checkpoint, so wrapped states
(quantile_rescale(discount(linucb())), ...) and grown ones (``add_arm``) come back as they were.

    save_state(path, state)
    state = restore_state(bandit, path)            # K and d read from the checkpoint
    state = state_from_tree(bandit, raw_tree)      # from a dict restored by other code
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from rmbandit.bandits import base


def abstract_state(bandit: base.Bandit, num_arms: int, dim: int):
    """The state's pytree of ShapeDtypeStructs, as ``bandit.init`` would build it."""
    return jax.eval_shape(lambda key: bandit.init(key, num_arms, dim), jax.random.key(0))


def _key_name(key):
    """A path entry's field name, dict key or index (NamedTuples restore as dicts)."""
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    raise TypeError(f"unexpected pytree path entry {key!r}")


def _path(path) -> str:
    return "/".join(str(_key_name(key)) for key in path)


def _lookup(tree, path):
    node = tree
    for key in path:
        name = _key_name(key)
        try:
            node = node[name] if isinstance(node, dict) else (
                getattr(node, name) if isinstance(name, str) else node[name])
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ValueError(f"the checkpoint has no entry {_path(path)}: it was saved "
                             "from another bandit (or wrapper order); build the same bandit as when it was saved") from None
    return node


def _shapes(tree) -> list[tuple[str, tuple]]:
    return sorted((_path(p), tuple(np.shape(x))) for p, x in jax.tree_util.tree_leaves_with_path(tree))


def _infer_sizes(bandit: base.Bandit, tree) -> tuple[int, int]:
    """(K, d) whose ``init`` shapes match every leaf of ``tree``: K from a per-arm leaf,
    d tried among the sizes that occur in the checkpoint."""
    shapes = _shapes(tree)
    per_arm = [s for p, s in shapes if "arms" in p.split("/")]
    if not per_arm or not per_arm[0]:
        raise ValueError(f"no per-arm statistics (a field 'arms') in the checkpoint: {shapes[:6]}")
    k = per_arm[0][0]
    sizes = sorted({n for _, s in shapes for n in s if n >= 1})
    for d in sizes:
        try:
            want = _shapes(abstract_state(bandit, k, d))
        except jax.errors.ConcretizationTypeError:
            raise                       # a bug in the bandit's init, not a wrong d: say so
        except (ValueError, TypeError):
            continue
        if want == shapes:
            return k, d
    raise ValueError(f"the checkpoint's shapes {shapes[:6]}... fit no init(num_arms={k}, dim=d) of this "
                     "bandit; build the same bandit (factory, wrappers, hyper-parameters such as "
                     "hidden sizes or history length) as when it was saved")


def state_from_tree(bandit: base.Bandit, tree, num_arms: int | None = None, dim: int | None = None):
    """Rebuild the bandit's state type from a restored tree of arrays (dicts keyed by field
    name, or the state itself).  Shapes and dtypes are checked leaf by leaf."""
    if num_arms is None or dim is None:
        k, d = _infer_sizes(bandit, tree)
        num_arms, dim = num_arms or k, dim or d
    target = abstract_state(bandit, num_arms, dim)
    leaves = []
    for path, want in jax.tree_util.tree_leaves_with_path(target):
        got = _lookup(tree, path)
        if tuple(np.shape(got)) != want.shape:
            raise ValueError(f"checkpoint entry {_path(path)} has shape {np.shape(got)}, "
                             f"but init(num_arms={num_arms}, dim={dim}) gives {want.shape}")
        leaves.append(jax.numpy.asarray(got, want.dtype))
    return jax.tree.unflatten(jax.tree.structure(target), leaves)


def save_state(directory, state) -> pathlib.Path:
    """Write ``state`` to ``directory`` (a new folder) with orbax and wait for it."""
    directory = pathlib.Path(directory).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, state)
    checkpointer.wait_until_finished()
    return directory


def restore_state(bandit: base.Bandit, directory, num_arms: int | None = None, dim: int | None = None):
    """Read a state written by ``save_state`` (or any orbax StandardCheckpointer save of a
    bandit state) back into its own type."""
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        raise FileNotFoundError(f"no bandit checkpoint at {directory}")
    raw = ocp.StandardCheckpointer().restore(directory)
    return state_from_tree(bandit, raw, num_arms, dim)
