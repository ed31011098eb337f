"""The one table of model families: every record is consistent with transformers and
GGUF, and loading / export / GGUF reading go through it."""
import pytest

from rmbandit.models import ModelConfig, decoder_for
from rmbandit.models.export import hf_config_dict
from rmbandit.models.registry import FAMILIES, family, gguf_family

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_each_family_names_real_transformers_classes(model_type):
    fam = FAMILIES[model_type]
    assert fam.model_type == model_type
    for labels in (None, 1):
        assert hasattr(transformers, fam.hf_class(labels)), fam.hf_class(labels)
    config = ModelConfig.from_hf_dict({"model_type": model_type, **TINY})
    assert type(decoder_for(config)) is fam.decoder
    for feature, value in fam.features.items():        # the features reach the config
        if feature in ("attention_bias", "qk_norm"):
            assert getattr(config, feature) == value
    exported = hf_config_dict(config)
    assert exported["architectures"] == [fam.hf_class()]
    assert ModelConfig.from_hf_dict(exported) == config                        # export reads back the same
    # and transformers builds the same architecture from it
    hf_config = transformers.AutoConfig.for_model(**exported)
    assert hf_config.model_type == model_type


def test_classifier_config_exports_the_classifier_class():
    config = ModelConfig.from_hf_dict({"model_type": "qwen3", **TINY, "architectures": ["Qwen3ForSequenceClassification"],
                                       "id2label": {"0": "LABEL_0"}})
    exported = hf_config_dict(config)
    assert exported["architectures"] == ["Qwen3ForSequenceClassification"]
    assert ModelConfig.from_hf_dict(exported).num_labels == 1


def test_gguf_architectures_come_from_the_families():
    assert {a: gguf_family(a).model_type for a in ("llama", "qwen2", "qwen3")} == {
        "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
    assert gguf_family("llama").gguf_permuted_qk and not gguf_family("qwen2").gguf_permuted_qk
    with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'gemma2'; rmbandit.models reads "
                                         r"\['llama', 'qwen2', 'qwen3'\]"):
        gguf_family("gemma2")
    with pytest.raises(ValueError, match="unsupported model_type 'bert'; rmbandit.models implements gemma2, llama"):
        family("bert")
