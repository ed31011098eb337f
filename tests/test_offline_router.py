"""BayesianRouter's offline router: the pair head and its losses against NumPy, training
on a problem whose right RM depends on the pair, fine-tuning a tiny encoder, saving and
loading, and the errors bad input gets."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit import data
from rmbandit.rewards import labels as labels_lib
from rmbandit.routers import offline as head_lib
from rmbandit.training import offline_router as router_lib
from rmbandit.training.offline_router import OfflineRouterConfig


# ---- realistic inputs ---------------------------------------------------------------------

def lm_like_embeddings(n, dim, seed=0, types=None, signal=0.0):
    """Two encodings per pair as an LM's last hidden states look: norms in the hundreds, one
    big direction shared by every text, a small per-text spread; ``types`` [n] adds a
    per-type direction of size ``signal`` (the pair's kind, which decides the right RM)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    common *= 300.0 / np.linalg.norm(common)
    out = []
    for _ in range(2):
        e = common + rng.normal(scale=2.0, size=(n, dim))
        if types is not None:
            e[np.arange(n), types] += signal
        out.append(e)
    return out


def numpy_head(variables, e, e2):
    """The paper's equations in float64: h = gelu(W [(e + e' ; |e - e'|) - mean] / std + b),
    s = h E_bt^T, z = h E_cls^T."""
    v = jax.tree.map(lambda x: np.asarray(x, np.float64), variables)
    x = np.concatenate([e + e2, np.abs(e - e2)], axis=1)
    x = (x - v["input_norm"]["mean"]) / v["input_norm"]["std"]
    pre = x @ v["params"]["fuse"]["kernel"] + v["params"]["fuse"]["bias"]
    h = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))     # flax's gelu (tanh form)
    return h, h @ v["params"]["bt"].T, h @ v["params"]["cls"].T


def numpy_losses(s, z, delta, lambda_cls=0.2):
    """L_bt over every (i, n, n') with delta^n = 1, delta^n' = 0, and L_cls over all (i, n),
    written as loops over the samples."""
    terms = [-math.log(1 / (1 + math.exp(-(s[i, n] - s[i, m]))))
             for i in range(len(delta)) for n in range(delta.shape[1]) for m in range(delta.shape[1])
             if delta[i, n] == 1 and delta[i, m] == 0]
    l_bt = sum(terms) / len(terms) if terms else 0.0
    bce = [-(d * math.log(1 / (1 + math.exp(-v))) + (1 - d) * math.log(1 - 1 / (1 + math.exp(-v))))
           for d, v in zip(delta.ravel(), z.ravel())]
    l_cls = sum(bce) / len(bce)
    return l_bt, l_cls, l_bt + lambda_cls * l_cls, len(terms)


@pytest.fixture
def head_problem():
    n, dim, k = 12, 24, 4
    e, e2 = lm_like_embeddings(n, dim)
    delta = (np.random.default_rng(1).random((n, k)) < 0.5).astype(np.float64)
    delta[0], delta[1] = 1.0, 0.0                  # rows with no disagreement pair
    variables = head_lib.init_head(jax.random.key(0), e, e2, num_rms=k, dim=8)
    return variables, e, e2, delta


def test_head_and_losses_match_numpy_in_float64(head_problem):
    variables, e, e2, delta = head_problem
    h_np, s_np, z_np = numpy_head(variables, e, e2)
    l_bt, l_cls, total, count = numpy_losses(s_np, z_np, delta)
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
        h, s, z = head_lib.apply_head(v64, jnp.asarray(e), jnp.asarray(e2))
        loss, metrics = head_lib.head_loss(v64, jnp.asarray(e), jnp.asarray(e2), jnp.asarray(delta))
        np.testing.assert_allclose(h, h_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s, s_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(z, z_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(head_lib.features(v64, e, e2), h_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(head_lib.bt_scores(v64, e, e2), s_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose([float(loss), float(metrics["l_bt"]), float(metrics["l_cls"])],
                                   [total, l_bt, l_cls], rtol=1e-12)
        assert float(metrics["bt_pairs"]) == count > 0
    # float32, as training runs: the same to float32 precision despite the norms in the hundreds
    loss32, _ = head_lib.head_loss(variables, jnp.asarray(e, jnp.float32), jnp.asarray(e2, jnp.float32), delta)
    np.testing.assert_allclose(float(loss32), total, rtol=1e-5)
    np.testing.assert_array_equal(head_lib.prior_mean(variables), variables["params"]["bt"])
    assert h_np.std() > 0.1          # the standardised input gives the GELU O(1) pre-activations, not saturated ones


def test_input_norm_is_the_training_pairs_mean_and_std(head_problem):
    _, e, e2, _ = head_problem
    norm = head_lib.input_norm(e, e2)
    x = np.concatenate([e + e2, np.abs(e - e2)], axis=1)
    np.testing.assert_allclose(norm["mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm["std"], x.std(0), rtol=1e-5)
    # a constant feature (std 0) is left as it is instead of dividing by zero
    e_const = e.copy()
    e_const[:, 0] = e2[:, 0] = 7.0
    assert np.isfinite(head_lib.input_norm(e_const, e2)["std"]).all()


def test_a_batch_without_disagreement_has_zero_bt_loss_and_finite_gradients(head_problem):
    variables, e, e2, _ = head_problem
    for delta in (np.ones((len(e), 4)), np.zeros((len(e), 4))):
        (loss, metrics), grads = jax.value_and_grad(head_lib.head_loss, has_aux=True)(variables, e, e2, delta)
        assert float(metrics["l_bt"]) == 0.0 and float(metrics["bt_pairs"]) == 0.0
        np.testing.assert_allclose(float(loss), 0.2 * float(metrics["l_cls"]), rtol=1e-6)
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
        assert float(jnp.abs(grads["params"]["bt"]).max()) == 0.0     # only L_bt moves E_bt


def test_padding_rows_weigh_nothing(head_problem):
    variables, e, e2, delta = head_problem
    weights = np.r_[np.ones(8), np.zeros(4)]
    junk = delta.copy()
    junk[8:] = 1 - junk[8:]
    got, _ = head_lib.head_loss(variables, e, e2, junk, jnp.asarray(weights, jnp.float32))
    want, _ = head_lib.head_loss(variables, e[:8], e2[:8], delta[:8])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_the_head_is_symmetric_in_the_two_responses(head_problem):
    variables, e, e2, _ = head_problem
    np.testing.assert_array_equal(head_lib.features(variables, e, e2), head_lib.features(variables, e2, e))


def test_routing_accuracy_and_baselines_by_hand():
    delta = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1]], bool)
    train = np.array([[0, 1, 0], [1, 1, 0]], bool)         # RM 1 is best on the training pairs
    scores = np.array([[3.0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 2, 0]])    # picks 0, 2, 0, 1
    got = router_lib.evaluate(scores, delta, train)
    assert got["pairs"] == 4 and got["solvable_pairs"] == 3
    assert got["solvable"] == {"router": 2 / 3, "best_rm": 1 / 3, "random": 4 / 9, "oracle": 1.0}
    assert got["all"] == {"router": 2 / 4, "best_rm": 1 / 4, "random": 4 / 12, "oracle": 3 / 4}


# ---- training from embeddings ----------------------------------------------------------------

@pytest.fixture(scope="module")
def suite_pairs():
    return data.make_pairs(data.load_suite("train", size_per_category=30, seed=0), seed=0)


def table_for(pairs, correct, rm_names=None):
    """A pool-label table for ``pairs`` with behaviour labels ``correct`` [N, K]."""
    k = correct.shape[1]
    return labels_lib.PoolLabels(tuple(rm_names or (f"rm{i}" for i in range(k))),
                                 np.where(correct, 0.9, 0.1).astype(np.float32), np.zeros(k), np.zeros(k),
                                 tuple(p.task.id for p in pairs), tuple(p.task.category for p in pairs), {})


def test_the_head_learns_which_rm_is_right_for_which_pair(suite_pairs):
    """Each pair has a hidden kind t (a direction in its embeddings); RM t is right on it
    95% of the time, the others 30%: the trained router must route by kind."""
    n, k = len(suite_pairs), 3
    rng = np.random.default_rng(0)
    kinds = rng.choice(k, size=n, p=[0.45, 0.3, 0.25])     # RM 0 is the best single RM
    correct = rng.random((n, k)) < 0.3
    correct[np.arange(n), kinds] = rng.random(n) < 0.95
    e, e2 = lm_like_embeddings(n, 8, seed=1, types=kinds, signal=8.0)
    train, test = np.arange(n) < 160, np.arange(n) >= 160
    pairs = [suite_pairs[i] for i in np.flatnonzero(train)]
    config = OfflineRouterConfig(head_dim=16, epochs=20)
    router = router_lib.train_offline_router(config, pairs, table_for(pairs, correct[train]),
                                             embeddings=(e[train], e2[train]))
    assert router.history[-1]["loss"] < router.history[0]["loss"]
    got = router_lib.evaluate(head_lib.bt_scores(router.head, e[test], e2[test]), correct[test], correct[train])
    assert got["solvable"]["best_rm"] < 0.65
    assert got["solvable"]["router"] > got["solvable"]["best_rm"] + 0.2, got
    assert router.prior_mean().shape == (k, 16)


# ---- a tiny real encoder ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def few_pairs(suite_pairs):
    pairs = suite_pairs[::15]                             # 16 pairs over the four categories
    correct = np.zeros((len(pairs), 3), bool)
    cats = sorted({p.task.category for p in pairs})
    for i, p in enumerate(pairs):
        correct[i, cats.index(p.task.category) % 3] = True
    return pairs, table_for(pairs, correct, ("numbers", "format", "judge"))


def word_tokenizer(texts, chat: bool = True):
    """A word-level tokenizer of ``texts``' words, with a ChatML template if ``chat``: real
    ids (and template) in milliseconds (a big vocabulary's tokenizer takes seconds to load)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = sorted({w for t in list(texts) + ["user assistant"] for w, _ in split.pre_tokenize_str(t)})
    specials = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>"]        # bos 1, eos 2, as LlamaConfig
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = split
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="<|im_end|>", pad_token="<pad>",
                                        additional_special_tokens=["<|im_start|>"])
    if chat:
        tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory, few_pairs):
    """{"llama": a tiny random Llama with a word-level ChatML tokenizer of the pairs' words,
    "bert": a tiny random BERT with the same words, no template}, saved by transformers."""
    pytest.importorskip("torch")
    from tests.torch_oracle import save_tiny, save_tiny_bert

    texts = [t for p in few_pairs[0] for t in (p.prompt, p.chosen, p.rejected)]
    out = {"llama": tmp_path_factory.mktemp("tiny_llama"), "bert": tmp_path_factory.mktemp("tiny_bert")}
    tokenizer = word_tokenizer(texts)
    save_tiny(out["llama"], "llama_tied_mha", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2)
    tokenizer.save_pretrained(out["llama"])
    tokenizer = word_tokenizer(texts, chat=False)
    save_tiny_bert(out["bert"], vocab_size=len(tokenizer), max_position_embeddings=64)
    tokenizer.save_pretrained(out["bert"])
    return out


@pytest.fixture(scope="module")
def tiny_llama(tiny_encoders):
    return tiny_encoders["llama"]


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_routing_embeds_pairs_as_training_does(tiny_encoders, few_pairs, kind):
    """The micro-batched encoder call (routing, frozen training) and the pure ``embed``
    (fine-tuning) give the same Enc(x || y): a router must see at routing time what it
    trained on."""
    pairs, _ = few_pairs
    encoder = router_lib.PairEncoder(tiny_encoders[kind], max_tokens=256)
    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs]
    batched = encoder(prompts, responses)
    enc = encoder.inputs(prompts, responses)
    direct = encoder.embed(encoder.params, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
    np.testing.assert_allclose(batched, direct, rtol=2e-5, atol=2e-5)
    assert len({tuple(np.round(row, 4)) for row in batched}) == len(pairs)       # the texts are told apart


def test_frozen_router_routes_texts_and_round_trips_bit_identically(tiny_llama, few_pairs, tmp_path):
    pairs, table = few_pairs
    config = OfflineRouterConfig(encoder=str(tiny_llama), head_dim=8, epochs=3, max_tokens=256)
    router = router_lib.train_offline_router(config, pairs, table)
    prompts, a, b = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    h = router.features(prompts, a, b)
    assert h.shape == (len(pairs), 8) and np.isfinite(h).all()
    np.testing.assert_array_equal(router.features(prompts, b, a), h)       # the order of y, y' does not matter
    directory = router_lib.save(router, tmp_path / "router")
    assert sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) < 1_000_000   # no encoder weights
    loaded = router_lib.load(directory, rm_names=table.rm_names)
    assert loaded.config == config and loaded.rm_names == table.rm_names and loaded.trained_encoder is None
    for want, got in zip(jax.tree.leaves(router.head), jax.tree.leaves(loaded.head)):
        assert want.dtype == got.dtype
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.scores(prompts, a, b), router.scores(prompts, a, b))
    np.testing.assert_array_equal(loaded.route(prompts, a, b), router.scores(prompts, a, b).argmax(1))
    assert loaded.scores([], [], []).shape == (0, 3)
    with pytest.raises(ValueError, match="3 prompts but 3 and 2 responses"):
        loaded.features(prompts[:3], a[:3], b[:2])


@pytest.mark.parametrize("kind, finetune", [("llama", "lora"), ("llama", "full"), ("bert", "lora")])
def test_finetuning_trains_the_encoder_and_keeps_the_frozen_parts(tiny_encoders, few_pairs, tmp_path, kind,
                                                                  finetune):
    pairs, table = few_pairs
    config = OfflineRouterConfig(encoder=str(tiny_encoders[kind]), finetune=finetune, head_dim=8, epochs=6,
                                 batch_size=8, learning_rate=3e-3, lora_rank=4, max_tokens=256)
    encoder = router_lib.PairEncoder(config.encoder, max_tokens=config.max_tokens)
    base = jax.tree.map(np.asarray, encoder.params)
    router = router_lib.train_offline_router(config, pairs, table, encoder=encoder)
    assert router.history[-1]["loss"] < router.history[0]["loss"] - 0.05, router.history
    same_as_base = lambda params: jax.tree.all(jax.tree.map(np.array_equal, params, base))    # noqa: E731
    assert same_as_base(encoder.params) and router.encoder is not encoder     # the caller's may be shared
    flat_base = {k: v for k, v in jax.tree_util.tree_leaves_with_path(base)}
    changed = {jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(router.encoder.params)
               if not np.array_equal(np.asarray(v), flat_base[k])}
    if finetune == "lora":      # exactly the adapted projections moved
        adapted = ("query", "value") if kind == "bert" else ("q_proj", "v_proj")
        assert changed and all(any(name in k for name in adapted) for k in changed), changed
    else:
        assert any("mlp" in k for k in changed) and any("embed_tokens" in k for k in changed)
    prompts, a, b = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    loaded = router_lib.load(router_lib.save(router, tmp_path / finetune), rm_names=table.rm_names)
    np.testing.assert_array_equal(loaded.scores(prompts, a, b), router.scores(prompts, a, b))
    shared = router_lib.load(tmp_path / finetune, rm_names=table.rm_names, encoder=encoder)
    np.testing.assert_array_equal(shared.scores(prompts, a, b), router.scores(prompts, a, b))
    assert same_as_base(encoder.params)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_training_input_is_named_before_any_model_loads(suite_pairs):
    pairs = suite_pairs[:10]
    table = table_for(pairs, np.eye(10, 3, dtype=bool))
    config = OfflineRouterConfig(encoder="/no/such/encoder")      # never reached: the data fail first
    with pytest.raises(ValueError, match="got no pairs; build them with data.make_pairs"):
        router_lib.train_offline_router(config, [], table)
    with pytest.raises(ValueError, match=r"do not match the pool-label table \(9 vs 10 pairs"):
        router_lib.train_offline_router(config, pairs[:9], table)
    with pytest.raises(ValueError, match="do not match the pool-label table"):
        router_lib.train_offline_router(config, suite_pairs[10:20], table)
    with pytest.raises(TypeError, match="must be a rewards.labels.PoolLabels"):
        router_lib.train_offline_router(config, pairs, table.correct)
    with pytest.raises(ValueError, match="routing needs at least 2"):
        router_lib.train_offline_router(config, pairs, table_for(pairs, np.ones((10, 1), bool)))
    e = np.zeros((10, 4))
    with pytest.raises(ValueError, match=r"embeddings must be \(e, e2\), each \[N=10, D\]"):
        router_lib.train_offline_router(config, pairs, table, embeddings=(e, e[:9]))
    with pytest.raises(ValueError, match="fit a frozen encoder only"):
        router_lib.train_offline_router(dataclasses.replace(config, finetune="lora"), pairs, table,
                                        embeddings=(e, e))


@pytest.mark.parametrize("field, value, message", [
    ("finetune", "Full", "finetune must be one of 'frozen', 'lora', 'full'"),
    ("pooling", "cls", "pooling must be one of 'last', 'mean'"),
    ("head_dim", 0, "head_dim must be a positive integer"),
    ("epochs", 1.5, "epochs must be a positive integer"),
    ("lambda_cls", -0.2, "lambda_cls must be a non-negative number"),
    ("encoder", "", "encoder must be 'smollm2', 'minilm'"),
])
def test_bad_configs(field, value, message):
    with pytest.raises(ValueError, match=message):
        OfflineRouterConfig(**{field: value})


@pytest.fixture(scope="module")
def saved_router(suite_pairs, tmp_path_factory):
    """A router trained from embeddings (its encoder is never loaded) and saved."""
    pairs = suite_pairs[:16]
    e, e2 = lm_like_embeddings(16, 12)
    table = table_for(pairs, np.eye(16, 3, dtype=bool))
    router = router_lib.train_offline_router(OfflineRouterConfig(head_dim=4, epochs=1), pairs, table,
                                             embeddings=(e, e2))
    return router_lib.save(router, tmp_path_factory.mktemp("saved") / "router"), table, router


def test_loading_for_another_pool_names_both_pools_and_the_fix(saved_router):
    directory, _, _ = saved_router
    with pytest.raises(ValueError, match=r"trained for the RMs \['rm0', 'rm1', 'rm2'\], but the pool has "
                                         r"\['rm0', 'rm2', 'rm1'\].*train a router for this pool"):
        router_lib.load(directory, rm_names=["rm0", "rm2", "rm1"])


def test_loading_what_is_not_a_router(saved_router, tmp_path):
    directory, _, _ = saved_router
    with pytest.raises(FileNotFoundError, match="no offline router at"):
        router_lib.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not an offline router directory \\(no meta.json\\)"):
        router_lib.load(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    meta = (broken / "meta.json").read_text()
    (broken / "meta.json").write_text(meta[:len(meta) // 2])
    with pytest.raises(ValueError, match="not valid JSON .* truncated: save the router again"):
        router_lib.load(broken)
    (broken / "meta.json").write_text(json.dumps({"format": "rmbandit.pool_labels/1"}))
    with pytest.raises(ValueError, match="is not an offline router's meta.json"):
        router_lib.load(broken)
    raw = json.loads(meta)
    raw["config"]["encoder"] = str(tmp_path / "moved_away")
    (broken / "meta.json").write_text(json.dumps(raw))
    with pytest.raises(FileNotFoundError, match="encodes pairs with .*moved_away.*which does not exist"):
        router_lib.load(broken)
    raw["config"]["finetun"] = "full"
    (broken / "meta.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown offline-router keys \\['finetun'\\]"):
        router_lib.load(broken)


def test_a_truncated_checkpoint_directory_is_named(saved_router, tmp_path):
    directory, _, _ = saved_router
    for damage in ("delete params", "truncate files"):
        broken = tmp_path / damage.replace(" ", "_")
        shutil.copytree(directory, broken)
        if damage == "delete params":
            shutil.rmtree(broken / "params")
        else:
            for file in (broken / "params").rglob("*"):
                if file.is_file() and file.stat().st_size > 0:
                    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
        with pytest.raises(ValueError, match="params is missing or truncated .*save the router again"):
            router_lib.load(broken)


def test_saving_never_overwrites_a_router_unasked(saved_router):
    directory, _, router = saved_router
    before = (directory / "meta.json").read_text()
    with pytest.raises(FileExistsError, match="already holds a saved offline router; pass overwrite=True"):
        router_lib.save(router, directory)
    assert (directory / "meta.json").read_text() == before
