"""Best-of-n mode end to end on CPU: a tiny random Llama with SmolLM2's tokenizer as the
policy, cheap verifier RMs.  The routed RM's pick is the argmax of its scores, the bandit
reward is the quantile-rescaled negative NLL of the picks (NLL from transformers, the
rescaling in NumPy), the CLI writes best_of_n.json, bad config keys exit 2."""
import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmbandit import cli, data  # noqa: E402
from rmbandit import config as config_lib  # noqa: E402
from rmbandit.training import best_of_n as bon  # noqa: E402
from rmbandit.training import config as train_config  # noqa: E402
from rmbandit.training import loop  # noqa: E402
from tests.test_training_loop import compilation_cache, policy_dir  # noqa: E402,F401 (shared fixtures)
from tests.torch_oracle import hf_logits  # noqa: E402

POOL = [{"name": "numbers", "kind": "verifier", "verifier": "numeric"},
        {"name": "noisy", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 0}]


def write_config(directory: pathlib.Path, policy_dir) -> pathlib.Path:
    """4 training batches of 4 prompts, 3 samples of 8 tokens, 4 test prompts per category."""
    config = {"run_dir": str(directory / "run"), "seed": 0,
              "policy": {"path": str(policy_dir), "max_prompt_tokens": 64},
              "data": {"train_per_category": 4},
              "train": {"iterations": 1, "batches_per_iteration": 4, "prompts_per_batch": 4},
              "sampling": {"num_samples": 3, "max_new_tokens": 8},
              "router": {"name": "laser"},
              "eval": {"per_category": 4},
              "pool": POOL,
              "mesh": {"data": 1, "devices": 1}}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---- the pure pieces ---------------------------------------------------------------------------

def test_pick_best_is_the_first_argmax_of_the_finite_scores():
    scores = np.array([[0.1, 0.9, 0.3], [np.nan, 0.2, 0.2], [np.nan, np.nan, np.nan], [-np.inf, -5.0, np.nan]],
                      np.float32)
    index, has = bon.pick_best(scores)
    np.testing.assert_array_equal(index[np.asarray(has)], [1, 1, 1])
    np.testing.assert_array_equal(has, [True, True, False, True])


def test_response_nll_is_the_per_token_mean_over_the_mask():
    rng = np.random.default_rng(0)
    logprobs = -rng.random((3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
    want = [-logprobs[i, :mask[i].sum()].mean() for i in range(3)]
    np.testing.assert_allclose(bon.response_nll(logprobs, mask), want, rtol=1e-6)


def test_test_batches_keep_one_category_per_batch_when_grouped():
    tasks = data.load_suite("test", size_per_category=5, categories=("arithmetic", "factual"), seed=0)
    grouped = bon.test_batches(tasks, 2, grouped=True)
    assert [len(b) for b in grouped] == [2, 2, 1, 2, 2, 1]
    assert all(len({t.category for t in b}) == 1 for b in grouped)
    assert [t for b in bon.test_batches(tasks, 4, grouped=False) for t in b] == tasks


# ---- a run -------------------------------------------------------------------------------------

class Recording:
    """An RM whose score calls are recorded (the noisy verifier draws new noise per call, so
    its scores cannot be recomputed afterwards)."""

    def __init__(self, rm, calls):
        self._rm, self._calls = rm, calls

    def __getattr__(self, name):
        return getattr(self._rm, name)

    def score(self, prompts, responses):
        scores = self._rm.score(prompts, responses)
        self._calls.append((self._rm.name, list(prompts), list(responses), np.asarray(scores)))
        return scores


def torch_nll(model, batch: bon.SampledBatch) -> np.ndarray:
    """[P, n] per-token NLL of every response from transformers' logits of prompt + response."""
    n = batch.nll.shape[1]
    prompt_ids = np.repeat(batch.prompt_ids, n, axis=0)
    prompt_mask = np.repeat(batch.prompt_mask, n, axis=0)
    ids = np.concatenate([prompt_ids, batch.tokens], 1).astype(np.int64)
    mask = np.concatenate([prompt_mask, batch.token_mask], 1).astype(np.int64)
    logits = hf_logits(model, ids, mask)[:, prompt_ids.shape[1] - 1:-1]          # the positions predicting y
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    picked = np.take_along_axis(logp, batch.tokens[..., None].astype(np.int64), -1)[..., 0]
    return (-(picked * batch.token_mask).sum(1) / batch.token_mask.sum(1)).reshape(-1, n)


def np_rescale(history: list[float], reward: float) -> float:
    """Graves et al.'s 20/80-quantile rescaling over the earlier raw rewards (0.5 without any)."""
    if not history:
        return 0.5
    low, high = np.quantile(history, [0.2, 0.8])
    if high == low:
        return 1.0 if reward > high else 0.0 if reward < low else 0.5
    return float(np.clip((reward - low) / (high - low), 0.0, 1.0))


def test_the_routed_rm_picks_its_argmax_and_the_reward_is_the_rescaled_negative_nll(tmp_path, policy_dir):
    # the policy's own weights: the reward is the sampler's NLL, compared with PyTorch's below
    config = config_lib.load(bon.BestOfNConfig, write_config(tmp_path, policy_dir), ["sampling.weights=policy"])
    runner = bon.BestOfN(config, log=lambda message: None)
    calls, batches = [], []
    runner.pool = [Recording(rm, calls) for rm in runner.pool]
    sample = runner.sample
    runner.sample = lambda *args: batches.append(sample(*args)) or batches[-1]
    model = transformers.AutoModelForCausalLM.from_pretrained(policy_dir, dtype="float32")

    state, raw_rewards, routed = runner.fresh_state(), [], set()
    for step in range(4):
        del calls[:]
        state, row = runner.learn_batch(state, step)
        batch = batches[-1]
        assert len(calls) == 1 and calls[0][0] == row["rm"]              # only the routed RM scores
        routed.add(row["rm"])
        _, prompts, responses, scores = calls[0]
        assert responses == batch.responses and prompts == [t.prompt for t in batch.tasks for _ in range(3)]
        scores = scores.reshape(4, 3)
        picks = np.argmax(np.where(np.isfinite(scores), scores, -np.inf), 1)
        nll = torch_nll(model, batch)
        np.testing.assert_allclose(batch.nll, nll, rtol=1e-4)            # the sampler's log-probs = the policy's
        want_nll = nll[np.arange(4), picks].mean()
        np.testing.assert_allclose(row["nll"], want_nll, rtol=1e-4)
        np.testing.assert_allclose(row["bandit_reward"], np_rescale(raw_rewards, -row["nll"]), rtol=0,
                                   atol=1e-3)          # float32 rewards, spans of 1e-2
        raw_rewards.append(-row["nll"])
        correct = [data.is_correct(t, batch.responses[i * 3 + p]) for i, (t, p) in enumerate(zip(batch.tasks, picks))]
        assert row["pick_accuracy"] == np.mean(correct) and row["rm_picks"][row["rm"]] == 4
    # the router's reward history holds the raw rewards, -NLL of the picks
    history = next(s.history for s in jax.tree.leaves(state["router"].bandit, is_leaf=lambda x: hasattr(x, "history")))
    np.testing.assert_allclose(np.asarray(history)[:4], raw_rewards, rtol=1e-5)
    assert routed == {"numbers", "noisy"}, "LinUCB tried only one RM in 4 batches: the test checks less than it should"

    # the test set, on crafted responses (sample j of prompt i right when (i + j) % 3 == 0, so
    # correctness varies) and with the routing forced to each RM in turn
    tasks = runner.test_tasks[:4]
    assert {t.category for t in tasks} == {"arithmetic"}
    crafted = dataclasses.replace(batches[-1], tasks=tasks, responses=[
        f"The answer is {t.answer}." if (i + j) % 3 == 0 else "The answer is 123456." for i, t in enumerate(tasks)
        for j in range(3)])
    runner.sample = lambda *args: crafted
    correct = crafted.correct()
    assert correct.any() and not correct.all(1).any() and correct.any(0).all()
    assign = runner._assign
    for forced, forced_name in enumerate(runner.rm_names):
        runner._assign = lambda *args, rm=forced: (lambda out: (out[0], out[1]._replace(
            rms=np.full_like(np.asarray(out[1].rms), rm))))(assign(*args))
        del calls[:]
        _, record = runner.test_batch(state, tasks, 0)
        assert [name for name, *_ in calls] == runner.rm_names               # every RM scores the test samples
        np.testing.assert_array_equal(record["rms"], forced)
        for name, (_, _, _, scores) in zip(runner.rm_names, calls):
            picks = np.argmax(scores.reshape(4, 3), 1)
            np.testing.assert_array_equal(record["single_rm"][name], correct[np.arange(4), picks])
        np.testing.assert_array_equal(record["routed"], record["single_rm"][forced_name])
        np.testing.assert_allclose(record["random"], correct.mean(1))
        np.testing.assert_array_equal(record["pass_at_n"], correct.any(1))
    # the numeric verifier sees the right number: its picks are all right; ties go to sample 0
    assert record["single_rm"]["numbers"].all()


@pytest.mark.parametrize("weights, casts", [("bfloat16", 1), ("policy", 0)])
def test_best_of_n_samples_with_the_configured_weights_and_takes_two_samples(tmp_path, policy_dir, monkeypatch,
                                                                             weights, casts):
    traced = []
    monkeypatch.setattr(loop, "with_bfloat16_weights",
                        lambda model, params, cast=loop.with_bfloat16_weights: traced.append(1) or cast(model, params))
    # best of 2: no pair is formed, so the training checks on pairs_per_prompt (2 > 1 pair) do not apply
    config = config_lib.load(bon.BestOfNConfig, write_config(tmp_path, policy_dir),
                             [f"sampling.weights={weights}", "sampling.num_samples=2"])
    with pytest.raises(ValueError, match="pairs_per_prompt=2 but sampling.num_samples=2"):
        train_config.check(config)
    runner = bon.BestOfN(config, log=lambda message: None)
    _, row = runner.learn_batch(runner.fresh_state(), 0)
    assert len(traced) == casts and row["rm_picks"][row["rm"]] == 4


def test_the_cli_runs_end_to_end_and_writes_the_json(tmp_path, policy_dir, capsys):
    path = write_config(tmp_path, policy_dir)
    assert cli.main(["best-of-n", "--config", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "run" / bon.RESULTS_FILE).read_text())
    methods = {"routed", "rm:numbers", "rm:noisy", "score_ensemble", "random", "pass_at_n"}
    assert set(results["accuracy"]) == methods
    categories = ("arithmetic", "multiple_choice", "format", "factual")
    for method, accuracy in results["accuracy"].items():
        assert set(accuracy) == {*categories, "all"}
        for category in categories:
            # no pick can be right where no sample is: pass@n bounds every method
            assert 0.0 <= accuracy[category] <= results["accuracy"]["pass_at_n"][category], (method, category)
        np.testing.assert_allclose(accuracy["all"], np.mean([accuracy[c] for c in categories]))
        assert method in out
    for phase in ("train", "test"):
        for category in categories:
            assert sum(results["utilisation"][phase][category].values()) == pytest.approx(1.0), (phase, category)
    assert results["train"]["batches"] == 4 and len(results["train"]["rows"]) == 4
    assert results["test"] == {"batches": 4, "prompts": 16}
    assert results["config"]["router"]["name"] == "laser"
    assert (tmp_path / "run" / bon.REWARDS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pick by" in out and "routed RM per test category" in out


@pytest.mark.parametrize("override, named", [
    ("best_of_n.test_prompt_per_batch=2", ["best_of_n.test_prompt_per_batch", "test_prompts_per_batch"]),
    ("best_of_n.test_prompts_per_batch=0", ["best_of_n.test_prompts_per_batch", "at least 1"]),
    ("sampling.num_samples=1", ["sampling.num_samples", "at least 2"]),
    ("router.name=lazer", ["router.name", "laser"]),
    ("router.name=uwo router.empty_batch_loss=null", ["router.name=uwo", "picks one RM per batch"]),
    ("router.cold_start=runs/x", ["router.cold_start", "fresh"]),
    ("policy.path=/nonexistent/policy", ["/nonexistent/policy does not exist"]),     # the setup's errors too
])
def test_a_bad_config_exits_2_naming_the_key(tmp_path, policy_dir, capsys, override, named):
    path = write_config(tmp_path, policy_dir)
    assert cli.main(["best-of-n", "--config", str(path), "--quiet", *override.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rmbandit best-of-n: error:") and all(word in err for word in named), err
    assert not (tmp_path / "run").exists()
