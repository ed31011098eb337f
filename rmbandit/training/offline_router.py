"""Training BayesianRouter's offline router: a pair encoder + the pair head of
``routers.offline``, learnt from the pool's behaviour labels (``rewards.labels``).

Each pair (x, y, y') is encoded twice with the encoder's own tokenizer, e = Enc(x || y)
and e' = Enc(x || y'): a decoder LM reads the chat (the template's user turn x, the
assistant's turn y) and pools its final hidden states at the last token (or their mean);
a BERT sentence encoder (MiniLM) reads "x\\ny" and mean-pools, as it was trained to.

``finetune`` says what learns:

- ``frozen`` (the default, fast on a CPU): the encoder is fixed, every pair is encoded
  once and only the head trains on the cached embeddings;
- ``lora``: LoRA adapters on the encoder's projections train with the head;
- ``full``: every encoder weight trains with the head (the paper: SmolLM2-135M-Instruct,
  AdamW 2e-5, batch 8, 2 epochs, weight decay 0.01).

    config = OfflineRouterConfig(encoder="smollm2")
    router = train_offline_router(config, pairs, table)      # table: rewards.labels.PoolLabels
    router.features(prompts, a, b)    # h [N, d]: the online router's context
    router.prior_mean()               # E_bt [K, d]: the online router's prior mean
    router.route(prompts, a, b)       # [N]: the RM each pair goes to
    save(router, "runs/offline_router"); router = load("runs/offline_router", rm_names=pool_names)

The head's input standardisation (``routers.offline.input_norm``) is fitted once, on the
training pairs' embeddings before any step; when the encoder trains it stays as it was
(a fixed affine map the Dense layer adapts to).

A saved router is a directory: ``meta.json`` (config, RM names, sizes) and ``params/``
(orbax: the head, plus the LoRA adapters or the fine-tuned encoder).  A frozen encoder is
not saved: it is referenced by its path (an alias such as ``smollm2`` stays portable).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from rmbandit import text
from rmbandit.models import bert, prompt_embeddings
from rmbandit.models import lora as lora_lib
from rmbandit.rewards import embedding, labels as labels_lib, lm
from rmbandit.rewards.pool import resolve_path
from rmbandit.routers import offline as head_lib

FORMAT = "rmbandit.offline_router/1"
FINETUNE = ("frozen", "lora", "full")
POOLINGS = ("last", "mean")
DECODER_QV, BERT_QV = ("q_proj", "v_proj"), ("query", "value")     # LoRA's default targets


@dataclasses.dataclass(frozen=True)
class OfflineRouterConfig:
    encoder: str = "smollm2"              # "smollm2" | "minilm" | an HF checkpoint dir | a .gguf file
    pooling: str = "last"                 # a decoder's: "last" token or "mean"; a BERT encoder always means
    head_dim: int = 32                    # d, the feature the online router sees
    finetune: str = "frozen"              # "frozen" | "lora" | "full"
    epochs: int | None = None             # None: 2 when the encoder trains (the paper), 10 for a frozen one
    batch_size: int = 8                   # the paper's
    learning_rate: float = 2e-5           # the encoder's (LoRA adapters or full weights): the paper's
    head_learning_rate: float = 1e-3      # the freshly initialised head's
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lambda_cls: float = head_lib.LAMBDA_CLS
    max_tokens: int = 512                 # per encoded text (x || y); longer responses lose their tails first
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] | None = None   # None: q/v (a decoder's q_proj, v_proj; BERT's query, value)
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        if self.finetune not in FINETUNE:
            raise ValueError(f"OfflineRouterConfig.finetune must be one of {', '.join(map(repr, FINETUNE))}, "
                             f"got {self.finetune!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"OfflineRouterConfig.pooling must be one of {', '.join(map(repr, POOLINGS))}, "
                             f"got {self.pooling!r}")
        for key in ("head_dim", "batch_size", "max_tokens", "lora_rank") + (("epochs",) if self.epochs is not None
                                                                             else ()):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OfflineRouterConfig.{key} must be a positive integer, got {value!r}")
        for key in ("learning_rate", "head_learning_rate", "weight_decay", "max_grad_norm", "lambda_cls",
                    "lora_alpha"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"OfflineRouterConfig.{key} must be a non-negative number, got {value!r}")
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"OfflineRouterConfig.encoder must be 'smollm2', 'minilm', a checkpoint directory or "
                             f"a .gguf file, got {self.encoder!r}")
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    @property
    def num_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        # a frozen encoder's head: 10 epochs at 1e-3, d = 32 did as well as any of 2-40 epochs,
        # 1e-3 / 3e-3, d 16-64 on held-out tasks of the suite's train split
        return 10 if self.finetune == "frozen" else 2

    def lora(self, bert_encoder: bool) -> lora_lib.LoraConfig:
        targets = self.lora_targets or (BERT_QV if bert_encoder else DECODER_QV)
        return lora_lib.LoraConfig(self.lora_rank, self.lora_alpha, targets)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "the config") -> OfflineRouterConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in raw if key not in valid]
        if unknown:
            raise ValueError(f"{source} has unknown offline-router keys {unknown}; valid keys: {', '.join(valid)}")
        return cls(**raw)


# ---- the encoder --------------------------------------------------------------------------

def _is_bert(path) -> bool:
    config = pathlib.Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "bert"
    except json.JSONDecodeError:
        return False            # the decoder loader reports the broken config


class PairEncoder:
    """Enc(x || y) [N, D] with a decoder LM or a BERT sentence encoder, and the same as a
    pure, differentiable function of the encoder's params (``embed``) for fine-tuning."""

    def __init__(self, path, pooling: str = "last", max_tokens: int = 512, dtype: str = "float32"):
        self.path = resolve_path(path)
        self.is_bert = _is_bert(self.path)
        self.pooling = "mean" if self.is_bert else pooling
        if self.is_bert:
            self._sentences = embedding.SentenceEncoder(self.path)
            self._sentences.max_length = min(max_tokens, self._sentences.model.config.max_position_embeddings)
            self.model, self.tokenizer = self._sentences.model, self._sentences.tokenizer
            self.dim = self.model.config.hidden_size
        else:
            self._lm = lm.LoadedLM(self.path, dtype)
            self.model, self.tokenizer = self._lm.model, self._lm.tokenizer
            self.dim = self.model.config.hidden_size
            self._pool = functools.partial(_pooled, pooling=self.pooling)     # one object: LoadedLM jits it once
        self.max_tokens = max_tokens

    @property
    def params(self):
        return (self._sentences if self.is_bert else self._lm).params

    @params.setter
    def params(self, value):
        (self._sentences if self.is_bert else self._lm).params = value

    def with_params(self, params) -> "PairEncoder":
        """A copy that encodes with ``params``; the model, tokenizer and compiled calls are
        shared (they take the params as an argument), this encoder's params are untouched."""
        other = copy.copy(self)
        inner = "_sentences" if self.is_bert else "_lm"
        setattr(other, inner, copy.copy(getattr(self, inner)))
        other.params = params
        return other

    def _bert_texts(self, prompts, responses) -> list[str]:
        return [f"{p}\n{r}" for p, r in zip(prompts, responses)]

    def inputs(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids and mask [N, T] of x || y (a decoder's left-padded, BERT's right-padded)."""
        if self.is_bert:
            return text.encode_texts(self.tokenizer, self._bert_texts(prompts, responses),
                                     self._sentences.max_length)
        rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        return text.encode_slots(self.tokenizer, lambda s: text.chat_text(self.tokenizer, s["prompt"], s["response"]),
                                 rows, self.max_tokens)

    def embed(self, params, input_ids, attention_mask):
        """Pure: params and a batch of ``inputs`` -> float32 [B, D]."""
        if self.is_bert:
            return bert.sentence_embeddings(self.model, params, input_ids, attention_mask)
        return _pooled(self.model, params, input_ids, attention_mask, self.pooling)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Enc(x || y) [N, D] with the current ``params``, micro-batched, no gradient."""
        if self.is_bert:
            return self._sentences(self._bert_texts(prompts, responses))
        enc = self.inputs(prompts, responses)
        return self._lm.run(self._pool, enc["input_ids"], enc["attention_mask"])


def _pooled(model, params, input_ids, attention_mask, pooling):
    return prompt_embeddings(model, params, input_ids, attention_mask, pooling).astype(jnp.float32)


def encode_pairs(encoder: PairEncoder, prompts, a, b) -> tuple[np.ndarray, np.ndarray]:
    """(Enc(x || a), Enc(x || b)), each [N, D]: both responses in one encoder call."""
    if len(prompts) == 0:
        return np.zeros((0, encoder.dim), np.float32), np.zeros((0, encoder.dim), np.float32)
    out = encoder(list(prompts) * 2, list(a) + list(b))
    return out[:len(prompts)], out[len(prompts):]


# ---- the router -----------------------------------------------------------------------------

@dataclasses.dataclass
class OfflineRouter:
    config: OfflineRouterConfig
    rm_names: tuple[str, ...]
    head: dict                    # the pair head's variables (routers.offline)
    encoder: PairEncoder | None   # its params are the trained ones; None: trained from embeddings alone
    trained_encoder: Any = None   # what trained in the encoder (LoRA adapters, full params) or None
    history: list = dataclasses.field(default_factory=list)   # per epoch: mean loss, l_bt, l_cls

    def embed(self, prompts, a, b) -> tuple[np.ndarray, np.ndarray]:
        _check_texts(prompts, a, b)
        if self.encoder is None:
            raise ValueError("this router was trained from embeddings without its encoder; load it with "
                             f"load(directory) (it loads {self.config.encoder!r}), or route embeddings with "
                             "routers.offline.bt_scores(router.head, e, e2)")
        return encode_pairs(self.encoder, prompts, a, b)

    def features(self, prompts, a, b) -> np.ndarray:
        """h [N, d] of each pair: the online router's context."""
        return np.asarray(head_lib.features(self.head, *self.embed(prompts, a, b)))

    def scores(self, prompts, a, b) -> np.ndarray:
        """BT scores [N, K]: each RM's ability on each pair."""
        return np.asarray(head_lib.bt_scores(self.head, *self.embed(prompts, a, b)))

    def route(self, prompts, a, b) -> np.ndarray:
        """[N]: the index (into ``rm_names``) of the RM each pair goes to."""
        return self.scores(prompts, a, b).argmax(1)

    def prior_mean(self) -> np.ndarray:
        """E_bt [K, d]: the online router's prior mean."""
        return np.asarray(head_lib.prior_mean(self.head))


def _check_texts(prompts, a, b):
    if isinstance(prompts, str) or isinstance(a, str) or isinstance(b, str):
        raise TypeError("prompts and responses are lists of strings; wrap a single pair's texts in lists")
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"{len(prompts)} prompts but {len(a)} and {len(b)} responses; give one of each per pair")


# ---- training -----------------------------------------------------------------------------

class Batch(NamedTuple):
    a: Any            # embeddings [B, D] (frozen) or (input_ids, mask) [B, T] of x || y
    b: Any            # the same for x || y'
    delta: jax.Array  # [B, K]
    weights: jax.Array   # [B]: 0 on padding rows


def make_optimizer(config: OfflineRouterConfig) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; the head and the encoder at their own rates."""
    adamw = functools.partial(optax.adamw, weight_decay=config.weight_decay)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                       optax.multi_transform({"head": adamw(config.head_learning_rate),
                                              "encoder": adamw(config.learning_rate)},
                                             lambda tree: {name: name for name in tree}))


def _encoder_params(config: OfflineRouterConfig, encoder: PairEncoder, base, trained):
    if config.finetune == "lora":
        return lora_lib.merge_lora(base, trained, config.lora(encoder.is_bert))
    return trained if config.finetune == "full" else base


def make_train_step(config: OfflineRouterConfig, encoder: PairEncoder | None) -> Callable:
    """``step(trained, opt_state, base, input_norm, batch) -> (trained, opt_state, metrics)``,
    jitted; ``trained`` is {"head": params} plus {"encoder": adapters or params} when the
    encoder trains (the frozen base never gets a gradient)."""
    optimizer = make_optimizer(config)

    def loss_fn(trained, base, norm, batch: Batch):
        if config.finetune == "frozen":
            e, e2 = batch.a, batch.b
        else:
            params = _encoder_params(config, encoder, base, trained["encoder"])
            ids = jnp.concatenate([batch.a[0], batch.b[0]])      # both responses in one forward
            mask = jnp.concatenate([batch.a[1], batch.b[1]])
            e, e2 = jnp.split(encoder.embed(params, ids, mask), 2)
        variables = {"params": trained["head"], "input_norm": norm}
        return head_lib.head_loss(variables, e, e2, batch.delta, batch.weights, config.lambda_cls)

    @jax.jit
    def step(trained, opt_state, base, norm, batch: Batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained, base, norm, batch)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, {**metrics, "loss": loss}

    return step


def _batches(n: int, size: int, rng: np.random.Generator):
    """Row indices of each batch of one shuffled epoch, the last padded (weights 0)."""
    order = rng.permutation(n)
    for start in range(0, n, size):
        rows = order[start:start + size]
        weights = np.ones(size, np.float32)
        weights[len(rows):] = 0.0
        yield np.concatenate([rows, np.repeat(rows[:1], size - len(rows))]), weights


def _batch_tokens(enc: dict, rows: np.ndarray, n: int, left: bool, multiple: int = 32):
    """((ids, mask) of x || a, (ids, mask) of x || b) for ``rows``, from ``enc`` of all 2N
    texts (a's then b's), cut to the columns these rows use (rounded up to a bucket: few
    compiled shapes)."""
    both = np.concatenate([rows, rows + n])
    ids, mask = enc["input_ids"][both], enc["attention_mask"][both]
    keep = text.bucket(int(mask.sum(1).max()), multiple, cap=ids.shape[1])
    cut = slice(ids.shape[1] - keep, None) if left else slice(0, keep)
    ids, mask = ids[:, cut], mask[:, cut]
    return (ids[:len(rows)], mask[:len(rows)]), (ids[len(rows):], mask[len(rows):])


def check_training_data(pairs: Sequence, table: labels_lib.PoolLabels, embeddings=None) -> np.ndarray:
    """The behaviour labels delta [N, K] of ``pairs``, after every check (before any model loads)."""
    if not isinstance(table, labels_lib.PoolLabels):
        raise TypeError(f"labels must be a rewards.labels.PoolLabels (every RM on the pairs), got "
                        f"{type(table).__name__}; make one with rewards.labels.label_with_pool or load one")
    if len(pairs) == 0:
        raise ValueError("train_offline_router got no pairs; build them with data.make_pairs(tasks) and label "
                         "them with rewards.labels.label_with_pool")
    labels_lib.check_pairs(table, pairs)
    delta = table.correct
    if delta.shape[1] < 2:
        raise ValueError(f"the label table has {delta.shape[1]} RM(s) ({list(table.rm_names)}); routing needs "
                         "at least 2")
    if embeddings is not None:
        shapes = [np.shape(x) for x in embeddings]
        if len(shapes) != 2 or any(len(s) != 2 or s[0] != len(pairs) for s in shapes) or shapes[0] != shapes[1]:
            raise ValueError(f"embeddings must be (e, e2), each [N={len(pairs)}, D] (encode_pairs' output), got "
                             f"shapes {shapes}")
    return delta


def train_offline_router(config: OfflineRouterConfig, pairs: Sequence, table: labels_lib.PoolLabels, *,
                         encoder: PairEncoder | None = None, embeddings=None,
                         log: Callable[[str], None] = lambda message: None) -> OfflineRouter:
    """Train the router on ``pairs`` (``data.Pair``: prompt, chosen, rejected) and the pool's
    labels of them (``table``: ``rewards.labels.PoolLabels`` made from the same pairs).

    ``encoder``: an already loaded ``PairEncoder`` for ``config.encoder`` (shared across
    runs); ``embeddings``: (e, e2) of the pairs from ``encode_pairs`` with that encoder
    (frozen only: the pairs are then not encoded again; without ``encoder`` too, the
    router routes embeddings only, through ``routers.offline``)."""
    delta = check_training_data(pairs, table, embeddings)
    if embeddings is not None and config.finetune != "frozen":
        raise ValueError(f"precomputed embeddings fit a frozen encoder only; finetune={config.finetune!r} "
                         "encodes the pairs in every step: drop embeddings=")
    if encoder is None and embeddings is None:
        encoder = PairEncoder(config.encoder, config.pooling, config.max_tokens, config.dtype)
    # chosen first: the head is symmetric in the two responses, so their order is no signal
    prompts, a, b = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    rng = np.random.default_rng(config.seed)
    if embeddings is None:
        log(f"encoding {len(pairs)} pairs with {encoder.path}")
        e, e2 = encode_pairs(encoder, prompts, a, b)
    else:
        e, e2 = (np.asarray(x, np.float32) for x in embeddings)

    key_head, key_lora = jax.random.split(jax.random.key(config.seed))
    head = head_lib.init_head(key_head, e, e2, len(table.rm_names), config.head_dim)
    base = None if encoder is None else encoder.params
    trained = {"head": head["params"]}
    if config.finetune == "lora":
        trained["encoder"] = lora_lib.init_lora(key_lora, base, config.lora(encoder.is_bert))
    elif config.finetune == "full":
        trained["encoder"] = base
    if config.finetune == "frozen":
        inputs, base = (e, e2), None
    else:
        tokens = encoder.inputs(prompts * 2, a + b)
        if config.finetune == "full":
            base = None           # the trained copy is the encoder
    step = make_train_step(config, encoder)
    opt_state = make_optimizer(config).init(trained)
    history = []
    for epoch in range(config.num_epochs):
        totals, batches = {}, 0
        for rows, weights in _batches(len(pairs), config.batch_size, rng):
            if config.finetune == "frozen":
                sides = tuple(x[rows] for x in inputs)
            else:
                sides = _batch_tokens(tokens, rows, len(pairs), left=not encoder.is_bert)
            batch = Batch(*sides, jnp.asarray(delta[rows], jnp.float32), jnp.asarray(weights))
            trained, opt_state, metrics = step(trained, opt_state, base, head["input_norm"], batch)
            for name in ("loss", "l_bt", "l_cls"):
                totals[name] = totals.get(name, 0.0) + float(metrics[name])
            batches += 1
        history.append({name: value / batches for name, value in totals.items()})
        log(f"epoch {epoch + 1}/{config.num_epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()))
    if config.finetune != "frozen":       # the caller's encoder (maybe shared by other runs) stays as it was
        encoder = encoder.with_params(_encoder_params(config, encoder, encoder.params, trained["encoder"]))
    return OfflineRouter(config, tuple(table.rm_names), {"params": trained["head"], "input_norm": head["input_norm"]},
                         encoder, trained.get("encoder"), history)


# ---- saving and loading ---------------------------------------------------------------------

def save(router: OfflineRouter, directory, overwrite: bool = False) -> pathlib.Path:
    """``directory``/meta.json + ``directory``/params (orbax).  meta.json is written last,
    so a directory without it is an interrupted save."""
    directory = pathlib.Path(directory).absolute()
    if (directory / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a saved offline router; pass overwrite=True to "
                              "replace it, or save to another directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)
    tree = {"head": router.head}
    if router.trained_encoder is not None:
        tree["encoder"] = router.trained_encoder
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "params", tree, force=True)
    checkpointer.wait_until_finished()
    num_rms, head_dim = router.head["params"]["bt"].shape
    meta = {"format": FORMAT, "config": dataclasses.asdict(router.config), "rm_names": list(router.rm_names),
            "embed_dim": int(router.head["input_norm"]["mean"].shape[0] // 2), "head_dim": int(head_dim),
            "history": router.history}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def read_meta(directory) -> dict:
    """meta.json of a saved router, checked (no model loads)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no offline router at {directory}; train one with "
                                "training.offline_router.train_offline_router and save it (or run "
                                "experiments/offline_router.py)")
    file = directory / "meta.json"
    if not file.is_file():
        raise ValueError(f"{directory} is not an offline router directory (no meta.json): pass the directory "
                         "training.offline_router.save wrote, or save the router again (an interrupted save "
                         "leaves no meta.json)")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); the file is truncated: save the router again") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not an offline router's meta.json (format {FORMAT!r}); pass the directory "
                         "training.offline_router.save wrote")
    missing = [k for k in ("config", "rm_names", "embed_dim", "head_dim") if k not in meta]
    if missing:
        raise ValueError(f"{file} lacks {missing}; save the router again")
    return meta


def check_pool(meta: dict, rm_names: Sequence[str], source) -> None:
    saved = list(meta["rm_names"])
    if list(rm_names) != saved:
        raise ValueError(f"the offline router at {source} was trained for the RMs {saved}, but the pool has "
                         f"{list(rm_names)}; an RM's embedding row only means something for the RM it was trained "
                         "on: train a router for this pool (experiments/offline_router.py on its label table), "
                         "or use the pool it was trained for")


def load(directory, rm_names: Sequence[str] | None = None, encoder: PairEncoder | None = None) -> OfflineRouter:
    """A router written by ``save``.  ``rm_names``: the pool it will route for, checked
    against the one it was trained for (in order: row n of E_bt is RM n)."""
    directory = pathlib.Path(directory).absolute()
    meta = read_meta(directory)
    if rm_names is not None:
        check_pool(meta, rm_names, directory)
    config = OfflineRouterConfig.from_dict(meta["config"], f"{directory / 'meta.json'}")
    try:
        tree = ocp.StandardCheckpointer().restore(directory / "params")
    except Exception as err:     # orbax raises many kinds for a missing or truncated checkpoint
        raise ValueError(f"{directory / 'params'} is missing or truncated ({type(err).__name__}: {err}); "
                         "save the router again") from err
    head = jax.tree.map(jnp.asarray, tree.get("head", {}))
    num_rms, head_dim, embed_dim = len(meta["rm_names"]), meta["head_dim"], meta["embed_dim"]
    try:
        shapes = (head["params"]["bt"].shape, head["input_norm"]["mean"].shape)
    except (KeyError, TypeError):
        shapes = None
    if shapes != ((num_rms, head_dim), (2 * embed_dim,)):
        raise ValueError(f"{directory / 'params'} does not hold a head for {num_rms} RMs, d={head_dim}, D={embed_dim} "
                         "as meta.json says; save the router again")
    trained = tree.get("encoder")
    if (trained is None) != (config.finetune == "frozen"):
        raise ValueError(f"{directory / 'params'} {'lacks' if trained is None else 'has'} encoder weights but the "
                         f"router's finetune is {config.finetune!r}; save the router again")
    if encoder is None:
        path = pathlib.Path(resolve_path(config.encoder))
        if not path.exists():
            raise FileNotFoundError(f"the offline router at {directory} encodes pairs with {config.encoder!r}, which "
                                    "does not exist: put that checkpoint back, or pass encoder=PairEncoder(path) of "
                                    "the same model")
        encoder = PairEncoder(config.encoder, config.pooling, config.max_tokens, config.dtype)
    if encoder.dim != embed_dim:
        raise ValueError(f"the encoder {encoder.path} gives {encoder.dim}-dim embeddings but the router was trained "
                         f"on {embed_dim}-dim ones: pass the encoder it was trained with ({config.encoder!r})")
    if trained is not None:
        trained = jax.tree.map(jnp.asarray, trained)
        encoder = encoder.with_params(_encoder_params(config, encoder, encoder.params, trained))
    return OfflineRouter(config, tuple(meta["rm_names"]), head, encoder, trained, meta.get("history", []))


# ---- evaluation ---------------------------------------------------------------------------------

def evaluate(scores, delta, train_delta) -> dict:
    """The router's pick (argmax BT score) against always-best-RM, random and the oracle,
    on the pairs some RM gets right (the paper's table) and on all pairs."""
    delta = np.asarray(delta, bool)
    choice = np.asarray(scores).argmax(1)
    out = {"pairs": int(len(delta)), "solvable_pairs": int(delta.any(1).sum())}
    for name, solvable in (("solvable", True), ("all", False)):
        out[name] = {"router": head_lib.routing_accuracy(choice, delta, solvable),
                     **head_lib.baseline_accuracies(train_delta, delta, solvable)}
    return out
