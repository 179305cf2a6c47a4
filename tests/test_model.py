"""Presets, model folders and their round trip through transformers."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dscoder import model
from dscoder.errors import UserError

# docs/deepseek-coder.md, "Model"
RELEASED = {
    "deepseek-coder-1.3b": dict(
        hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16
    ),
    "deepseek-coder-6.7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
    ),
    "deepseek-coder-33b": dict(
        hidden_size=7168, intermediate_size=19200, num_hidden_layers=62, num_attention_heads=56, num_key_value_heads=8
    ),
}
RELEASED_LR = {"deepseek-coder-1.3b": 5.3e-4, "deepseek-coder-6.7b": 4.2e-4, "deepseek-coder-33b": 3.5e-4}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_presets_write_the_released_config(name, deepseek_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(deepseek_tokenizer_dir)
    hf_cfg = model.hf_config(model.get_preset(name).config, tok)
    model.save(tmp_path, hf_cfg, deepseek_tokenizer_dir)
    data = json.loads((tmp_path / "config.json").read_text())
    for field, value in RELEASED[name].items():
        assert data[field] == value, field
    expected = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=32256,
        rope_theta=100000.0,
        rope_scaling={"type": "linear", "factor": 4.0},
        max_position_embeddings=16384,
        bos_token_id=32013,
        eos_token_id=32014,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=False,
        head_dim=128,
        torch_dtype="bfloat16",
    )
    for field, value in expected.items():
        assert data[field] == value, field
    assert model.get_preset(name).max_lr == RELEASED_LR[name]
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters["rope_type"] == "linear" and loaded.rope_parameters["factor"] == 4.0
    assert not list(tmp_path.glob("*.safetensors"))


def test_parameter_counts_of_released_layouts(deepseek_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(deepseek_tokenizer_dir)
    totals = {
        name: model.count_parameters(model.hf_config(model.get_preset(name).config, tok))["total"] for name in RELEASED
    }
    # The published sizes: 1.3B, 6.7B and 33B (the hub lists 1.35B, 6.74B, 33.3B).
    assert round(totals["deepseek-coder-1.3b"] / 1e9, 2) == 1.35
    assert round(totals["deepseek-coder-6.7b"] / 1e9, 2) == 6.74
    assert round(totals["deepseek-coder-33b"] / 1e9, 1) == 33.3


def test_embedding_rows():
    assert model.embedding_rows(32022) == 32256
    assert model.embedding_rows(2009) == 2048
    assert model.embedding_rows(2048) == 2048


def test_cpu_presets_have_the_advertised_sizes(trained_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    tiny = model.count_parameters(model.hf_config(model.get_preset("tiny").config, tok))["total"]
    small = model.count_parameters(model.hf_config(model.get_preset("small").config, tok))["total"]
    assert 1e6 < tiny < 10e6
    assert 10e6 < small < 100e6


def test_init_save_load_round_trip_gives_identical_logits(trained_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    hf_cfg = model.hf_config(model.get_preset("tiny").config, tok)
    net = model.build(hf_cfg, seed=1).eval()
    assert sum(p.numel() for p in net.parameters()) == model.count_parameters(hf_cfg)["total"]
    model.save(tmp_path, hf_cfg, trained_tokenizer_dir, net)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    ids = loaded_tok("def main():\n    return 0\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(net(ids).logits, loaded(ids).logits)
    assert loaded.config.vocab_size == 2048  # 2,009 tokens padded to a multiple of 64
    assert model.describe(tmp_path)["saved_parameters"] == model.count_parameters(hf_cfg)["total"]
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)


def test_same_seed_same_weights(trained_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    hf_cfg = model.hf_config(model.get_preset("tiny").config, tok)
    a, b, c = model.build(hf_cfg, seed=3), model.build(hf_cfg, seed=3), model.build(hf_cfg, seed=4)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_preset_is_refused():
    with pytest.raises(UserError, match="unknown preset 'huge'.*tiny"):
        model.get_preset("huge")


def test_folder_without_weights_is_refused_by_load(deepseek_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(deepseek_tokenizer_dir)
    model.save(tmp_path, model.hf_config(model.get_preset("deepseek-coder-1.3b").config, tok), deepseek_tokenizer_dir)
    with pytest.raises(UserError, match="no weights"):
        model.load(tmp_path)


RELEASED_6_7B_CONFIG = {  # config.json of the released deepseek-coder-6.7b-base, as published
    "_name_or_path": "deepseek-coder-6.7b-base",
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 32013,
    "eos_token_id": 32014,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 16384,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"factor": 4.0, "type": "linear"},
    "rope_theta": 100000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "vocab_size": 32256,
}


def test_describe_reads_a_released_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_6_7B_CONFIG))
    info = model.describe(tmp_path)
    assert info["parameters"]["total"] == 6_740_512_768
    assert info["layout"]["dtype"] == "bfloat16"
    assert (info["layout"]["rope_type"], info["layout"]["rope_factor"]) == ("linear", 4.0)
    assert info["weight_bytes"]["bfloat16"] == 2 * 6_740_512_768
    assert info["saved_parameters"] is None
