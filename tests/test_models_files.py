"""Checkpoint files as they really come: truncated or corrupt safetensors, config.json with
a missing key, a wrong type or broken JSON.  Each is an error naming the file and the fix,
raised before any weight loads."""
import json

import pytest

from rmbandit.models import ModelConfig, load_pretrained
from rmbandit.models.bert import BertConfig, load_encoder
from rmbandit.models.registry import FAMILIES


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint("llama_tied_mha")[1]


def _header_length(file) -> int:
    return 8 + int.from_bytes(file.read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["length prefix", "mid header", "first tensor", "last byte"])
def test_truncated_safetensors_is_named_with_the_fix(checkpoint, where):
    file = checkpoint / "model.safetensors"
    data = file.read_bytes()
    header = _header_length(file)
    cut = {"length prefix": 5, "mid header": header // 2, "first tensor": header + 100,
           "last byte": len(data) - 1}[where]
    file.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=f"{file}.* is truncated or corrupt .*download it again, or export"):
        load_pretrained(checkpoint)


def test_corrupt_safetensors_header_and_truncated_shard(checkpoint):
    file = checkpoint / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:8] + b"#" * 20 + data[28:])                  # the JSON header overwritten
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupt"):
        load_pretrained(checkpoint)
    # a sharded checkpoint: the second shard is cut; the error comes before any tensor is read
    from safetensors.numpy import load_file, save_file
    file.write_bytes(data)
    tensors = load_file(file)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, part in halves.items():
        save_file({n: tensors[n] for n in part}, checkpoint / shard)
    file.unlink()
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: shard for shard, part in halves.items() for n in part}}))
    load_pretrained(checkpoint)                                             # intact shards load
    second = checkpoint / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-7])
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors is truncated or corrupt"):
        load_pretrained(checkpoint)


def test_config_missing_key_wrong_type_and_invalid_json(checkpoint):
    file = checkpoint / "config.json"
    raw = json.loads(file.read_text())
    file.write_text(json.dumps({k: v for k, v in raw.items() if k != "hidden_size"}))
    with pytest.raises(ValueError, match=f"{file} lacks the required key 'hidden_size'"):
        load_pretrained(checkpoint)
    file.write_text(json.dumps({**raw, "num_hidden_layers": "2"}))
    with pytest.raises(ValueError, match=f"{file}: 'num_hidden_layers' must be a positive integer, got '2'"):
        load_pretrained(checkpoint)
    file.write_text('{\n  "model_type": "llama"\n  "vocab_size": 97\n}')        # a lost comma on line 2
    with pytest.raises(ValueError, match=f"{file} is not valid JSON: Expecting ',' delimiter at line 3, column 3"):
        load_pretrained(checkpoint)
    file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        load_pretrained(checkpoint)
    file.write_text(json.dumps({k: v for k, v in raw.items() if k != "model_type"}))
    with pytest.raises(ValueError, match="has no 'model_type'"):
        load_pretrained(checkpoint)


def test_unknown_model_type_lists_the_known_ones():
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'; rmbandit.models implements "
                                         + ", ".join(sorted(FAMILIES))):
        ModelConfig.from_hf_dict({"model_type": "gpt2"})


def test_bert_config_errors_name_file_and_key(tmp_path):
    raw = dict(model_type="bert", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4)
    file = tmp_path / "config.json"
    file.write_text(json.dumps({k: v for k, v in raw.items() if k != "num_attention_heads"}))
    with pytest.raises(ValueError, match=f"{file} lacks the required key 'num_attention_heads'"):
        BertConfig.from_pretrained(tmp_path)
    file.write_text("{\n  'vocab_size': 97\n}")
    with pytest.raises(ValueError, match=f"{file} is not valid JSON: .* at line 2, column 3"):
        load_encoder(tmp_path)
    file.write_text(json.dumps({**raw, "hidden_size": 30}))
    with pytest.raises(ValueError, match="hidden_size 30 is not a multiple of num_attention_heads 4"):
        BertConfig.from_pretrained(tmp_path)
