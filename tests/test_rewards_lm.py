"""LM-based RMs against transformers + PyTorch on tiny random checkpoints: sequence
classifiers (Llama, Qwen3, Gemma 2), implicit DPO / log-likelihood rewards, judges."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmbandit.models import load_pretrained  # noqa: E402
from rmbandit.models.functions import classifier_scores  # noqa: E402
from rmbandit.rewards import lm  # noqa: E402
from rmbandit.text import RESPONSE_SHARE, chat_prompt, encode_prompt_response  # noqa: E402
from tests.torch_oracle import save_perturbed  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0)
FAMILIES = {"llama": ("LlamaConfig", {}), "qwen3": ("Qwen3Config", dict(head_dim=16)),
            "gemma2": ("Gemma2Config", dict(head_dim=8, sliding_window=4, attn_logit_softcapping=2.0,
                                            final_logit_softcapping=3.0))}


def _tiny(tmp_path, family, head="classifier", vocab=97, seed=0, tokenizer=None):
    cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, cls)(vocab_size=vocab, num_labels=1, **TINY, **extra)
    auto = (transformers.AutoModelForSequenceClassification if head == "classifier"
            else transformers.AutoModelForCausalLM)
    model = auto.from_config(config).eval()
    save_perturbed(model, tmp_path, lambda n: n.endswith("norm.weight"))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_classifier_head_matches_transformers(tmp_path, family):
    hf = _tiny(tmp_path, family)
    model, params = load_pretrained(tmp_path)
    assert model.config.num_labels == 1
    rng = np.random.default_rng(0)
    lengths = [5, 9, 12]
    ids = np.zeros((3, 12), np.int64)
    mask = np.zeros((3, 12), np.int64)
    for i, n in enumerate(lengths):                       # left padded, as the RMs batch
        ids[i, 12 - n:] = rng.integers(1, 97, n)
        mask[i, 12 - n:] = 1
    ours = np.asarray(classifier_scores(model, params, jnp.asarray(ids), jnp.asarray(mask)))[:, 0]
    with torch.no_grad():                                  # HF on each unpadded sequence
        want = [hf(input_ids=torch.tensor(ids[i:i + 1, 12 - n:])).logits[0, 0].item()
                for i, n in enumerate(lengths)]
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)


def test_sequence_classifier_rm_scores_the_chat_like_transformers(tmp_path, smol_tokenizer):
    hf = _tiny(tmp_path, "llama", vocab=len(smol_tokenizer), tokenizer=smol_tokenizer)
    rm = lm.sequence_classifier(tmp_path, name="tiny-rm", micro_batch=2)
    prompts = ["What is 2 + 3?", "Name a colour.", "Say hi."]
    responses = ["5", "Blue is a colour that many people like.", ""]      # empty response allowed
    got = rm.score(prompts, responses)
    with torch.no_grad():
        want = [hf(input_ids=torch.tensor([smol_tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=True,
            return_dict=True)["input_ids"]])).logits[0, 0].item() for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert (rm.cost.calls, rm.cost.items) == (2, 3)       # two micro-batches of 2
    assert rm.cost.seconds > 0


def _torch_response_logprob(hf, tokenizer, prompt, response):
    p = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
    r = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(hf(input_ids=ids).logits[0, :-1], -1)
    picked = logp[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)]
    return picked.sum().item(), picked.mean().item()


def test_implicit_dpo_and_log_likelihood_rewards(tmp_path, smol_tokenizer):
    vocab = len(smol_tokenizer)
    policy = _tiny(tmp_path / "policy", "qwen3", head="lm", vocab=vocab, seed=1, tokenizer=smol_tokenizer)
    reference = _tiny(tmp_path / "ref", "qwen3", head="lm", vocab=vocab, seed=2, tokenizer=smol_tokenizer)
    prompts, responses = ["What is 7 * 6?", "Capital of France?"], ["42", "Paris, of course."]
    rm = lm.implicit_dpo(tmp_path / "policy", tmp_path / "ref", beta=0.5)
    want = [0.5 * (_torch_response_logprob(policy, smol_tokenizer, p, r)[0]
                   - _torch_response_logprob(reference, smol_tokenizer, p, r)[0]) for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(rm.score(prompts, responses), want, atol=2e-4, rtol=0)
    loglik = lm.log_likelihood(tmp_path / "policy")
    want = [_torch_response_logprob(policy, smol_tokenizer, p, r)[1] for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(loglik.score(prompts, responses), want, atol=2e-5, rtol=0)


def test_judges_read_the_verdict_token(tmp_path, smol_tokenizer):
    hf = _tiny(tmp_path, "llama", head="lm", vocab=len(smol_tokenizer), tokenizer=smol_tokenizer)
    tok = smol_tokenizer

    def torch_next(text):
        ids = tok(chat_prompt(tok, text), add_special_tokens=False).input_ids
        with torch.no_grad():
            return torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0, -1], -1).numpy()

    yes, no, a_id, b_id = (tok(w, add_special_tokens=False).input_ids[0] for w in ("Yes", "No", "A", "B"))
    pointwise = lm.judge(tmp_path, "pointwise")
    logp = torch_next(lm.POINTWISE_RUBRIC.format(prompt="2+2?", response="4"))
    np.testing.assert_allclose(pointwise.score(["2+2?"], ["4"]), [logp[yes] - logp[no]], atol=1e-4)

    pairwise = lm.judge(tmp_path, "pairwise")
    ab = torch_next(lm.PAIRWISE_RUBRIC.format(prompt="2+2?", a="4", b="5"))
    ba = torch_next(lm.PAIRWISE_RUBRIC.format(prompt="2+2?", a="5", b="4"))
    p_ab = 1 / (1 + np.exp(-(ab[a_id] - ab[b_id])))
    p_ba = 1 / (1 + np.exp(-(ba[a_id] - ba[b_id])))
    got = pairwise.prefer(["2+2?", "2+2?"], ["4", "5"], ["5", "4"])
    np.testing.assert_allclose(got[0], 0.5 * (p_ab + 1 - p_ba), atol=1e-4)
    np.testing.assert_allclose(got[0] + got[1], 1.0, atol=1e-6)       # both orders: no position bias left
    with pytest.raises(TypeError, match="pairwise judge"):
        pairwise.score(["x"], ["y"])


def test_bad_rm_checkpoints(tmp_path, smol_tokenizer):
    _tiny(tmp_path / "lm", "llama", head="lm", vocab=len(smol_tokenizer), tokenizer=smol_tokenizer)
    with pytest.raises(ValueError, match="not a \\*ForSequenceClassification"):
        lm.sequence_classifier(tmp_path / "lm")
    _tiny(tmp_path / "small", "llama", vocab=97, tokenizer=smol_tokenizer)      # another model's tokenizer
    with pytest.raises(ValueError, match="tokenizer of another model"):
        lm.sequence_classifier(tmp_path / "small")
    with pytest.raises(ValueError, match="judge mode"):
        lm.judge(tmp_path / "lm", "listwise")


def test_over_long_input_keeps_the_question_and_the_response_start(smol_tokenizer):
    tok = smol_tokenizer
    prompt = "Some context: " + "word " * 300 + "What is the final question?"
    response = "answer " * 300
    enc = encode_prompt_response(tok, [prompt, "hi"], [response, ""], max_length=128)
    assert enc["input_ids"].shape == (2, 128)
    row, resp = enc["input_ids"][0], enc["response_mask"][0].astype(bool)
    assert resp.sum() == 128 - enc["prompt_lengths"][0] >= RESPONSE_SHARE * 128   # the response fills the rest
    assert row[resp][0] == tok("answer", add_special_tokens=False).input_ids[0]      # from its start
    asked = tok.decode(row[~resp])
    assert asked.startswith("<|im_start|>system") and "Some context:" in asked       # the template and the
    assert asked.endswith("What is the final question?<|im_end|>\n<|im_start|>assistant\n")   # question's ends
    assert enc["response_mask"][1].sum() == 1 and enc["input_ids"][1, -1] == tok.eos_token_id   # empty -> EOS


def test_judge_long_response_never_pushes_the_question_out(tmp_path, smol_tokenizer):
    """Two questions, one 20,000-character response: the judge reads both questions and
    the rubric's answer line, so the scores differ (before, both kept the last 1024
    tokens, all response, and scored alike)."""
    _tiny(tmp_path, "llama", head="lm", vocab=len(smol_tokenizer), tokenizer=smol_tokenizer)
    response = ("The answer is 42 because " * 800)[:20_000]
    questions = ["What is six times seven?", "Which city is the capital of France?"]
    pointwise = lm.judge(tmp_path, "pointwise", max_length=256, micro_batch=2)
    scores = pointwise.score(questions, [response, response])
    assert np.all(np.isfinite(scores)) and abs(scores[0] - scores[1]) > 1e-4
    pairwise = lm.judge(tmp_path, "pairwise", max_length=256, micro_batch=4)
    other = ("Paris has been the capital for centuries. " * 500)[:20_000]
    prefs = pairwise.prefer(questions, [response, response], [other, other])
    assert abs(prefs[0] - prefs[1]) > 1e-6


def test_sequence_classifier_reads_the_question_past_a_long_response(tmp_path, smol_tokenizer):
    _tiny(tmp_path, "llama", vocab=len(smol_tokenizer), tokenizer=smol_tokenizer)
    response = ("The answer is 42 because " * 800)[:20_000]
    rm = lm.sequence_classifier(tmp_path, max_length=128, micro_batch=2)
    scores = rm.score(["What is six times seven?", "Which city is the capital of France?"], [response, response])
    assert abs(scores[0] - scores[1]) > 1e-5


def test_bad_judge_rubrics_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"pointwise judge rubric has the fields \['prompt'\]; it needs exactly "
                                         r"\{prompt\}, \{response\}"):
        lm.judge(tmp_path / "missing", "pointwise", rubric="Is this good? {prompt}")
    with pytest.raises(ValueError, match="pairwise judge rubric has the fields"):
        lm.judge(tmp_path / "missing", "pairwise", rubric="{prompt} {response}")
    with pytest.raises(ValueError, match="not a valid format string"):
        lm.judge(tmp_path / "missing", "pointwise", rubric="{prompt} {response} {")


def test_rm_under_a_mesh_equals_single_device(tmp_path, smol_tokenizer):
    from rmbandit import parallel

    _tiny(tmp_path, "qwen3", vocab=len(smol_tokenizer), tokenizer=smol_tokenizer)
    prompts = ["What is 2 + 3?", "Name a colour.", "Say hi.", "Is 7 prime?", "Spell cat."]
    responses = ["5", "Blue.", "Hi there, nice to meet you!", "Yes, 7 is prime.", "c-a-t"]
    want = lm.sequence_classifier(tmp_path, micro_batch=2).score(prompts, responses)
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    loaded = lm.LoadedLM(tmp_path, mesh=mesh)
    assert tuple(loaded.params["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.spec) == ("fsdp", "tensor")
    sharded = lm.sequence_classifier(tmp_path, micro_batch=2, lm=loaded)
    np.testing.assert_allclose(sharded.score(prompts, responses), want, atol=1e-5)
    assert sharded.cost.calls == 2                         # micro-batches rounded up to 4 rows (data x fsdp)


def test_lm_options_are_checked_before_any_model_loads(tmp_path):
    missing = tmp_path / "no-checkpoint-here"              # loading it would be another error
    with pytest.raises(TypeError, match="sequence_classifier\\(\\) got an unknown option 'micro_btach' \\(did you "
                                        "mean 'micro_batch'\\?\\); its options: name, max_length, batch_size"):
        lm.sequence_classifier(missing, micro_btach=2)
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        lm.judge(missing, max_length=0)
    with pytest.raises(ValueError, match="dtype must be a float dtype .*got 'int8'"):
        lm.implicit_dpo(missing, missing, dtype="int8")
    assert lm.LMOptions(dtype="bfloat16").micro_batch == 16
