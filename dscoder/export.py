"""GGUF export: a model folder as one file that llama.cpp, Ollama and LM Studio run.

The file is written with `gguf`, llama.cpp's own Python writer, in the layout llama.cpp's
converter gives a DeepSeek-Coder checkpoint: the `llama` architecture; query and key weights
permuted to llama.cpp's rotary layout; the byte-level BPE vocabulary with
`tokenizer.ggml.pre = "deepseek-coder"` (the pre-tokenizer llama.cpp must apply, or prompts
tokenize wrongly), token types, BOS/EOS, the FIM prefix/suffix/middle ids (llama.cpp's
`/infill` builds the released PSM prompt from them), `<|EOT|>` as the end of a turn; the linear
RoPE scaling factor and base (without them a long-context model produces garbage past its
original context); and the chat template.

Types: f16 (every matrix in float16), q8_0 (every matrix in blocks of 32 int8 values with one
scale) and q4_0 (blocks of 32 4-bit values, the output head at q8_0). Norms stay float32.
Tensors are converted and written one at a time, so memory stays near one matrix.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from dscoder import artifacts, formats
from dscoder import model as model_lib
from dscoder import tokenizer as tokenizer_lib
from dscoder.errors import UserError

log = logging.getLogger("dscoder")

TYPES = ("f16", "q8_0", "q4_0")
BLOCK = 32  # values per q8_0 / q4_0 block
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def tensor_names(num_layers: int) -> dict[str, str]:
    """The GGUF name of each weight, by its name in the model folder."""
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for i in range(num_layers):
        for ours, theirs in LAYER_NAMES.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    return names


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Query/key rows from transformers' rotate-half order to llama.cpp's interleaved pairs.
    (out, in) -> (out, in)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def vocabulary(folder: Path, rows: int) -> dict:
    """Tokens, types, merges and special ids of the folder's tokenizer, padded to the embedding's
    `rows` as llama.cpp's converter pads them; "warnings" lists what the file will lack."""
    gguf = tokenizer_lib.gguf_module()
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder}: no tokenizer.json (the export carries the vocabulary)")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(
            f"{path}: a {model.get('type')} tokenizer; the export supports the byte-level BPE of DeepSeek-Coder"
        )
    if data.get("pre_tokenizer") != json.loads(tokenizer_lib.deepseek_pre_tokenizer().__getstate__()):
        raise UserError(
            f"{path}: its pre-tokenizer is not DeepSeek-Coder's, and llama.cpp would split text "
            "differently (tokenizer.ggml.pre = deepseek-coder)"
        )
    by_id = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    if max(by_id) >= rows:
        raise UserError(f"{path}: token id {max(by_id)} does not fit the model's {rows} embedding rows")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(rows)]
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(rows)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {t: i for i, t in by_id.items()}
    config = (
        json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    eos = config.get("eos_token") or formats.EOS
    eos = eos["content"] if isinstance(eos, dict) else eos
    special = {
        "bos": ids.get(formats.BOS),
        "eos": ids.get(eos),
        "pad": ids.get(formats.EOS),
        "fim_pre": ids.get(formats.FIM_BEGIN),
        "fim_suf": ids.get(formats.FIM_HOLE),
        "fim_mid": ids.get(formats.FIM_END),
        "eot": ids.get(formats.EOT),
    }
    warnings = []
    if None in (special["fim_pre"], special["fim_suf"], special["fim_mid"]):
        warnings.append(
            "the tokenizer lacks the FIM tokens, so the file has none and llama.cpp's /infill will "
            "refuse it (completion and chat work)"
        )
    if special["bos"] is None or special["eos"] is None:
        raise UserError(f"{path}: the vocabulary lacks {formats.BOS if special['bos'] is None else eos}")
    return {
        "tokens": tokens,
        "types": token_types,
        "merges": merges,
        "special": special,
        "add_bos": config.get("add_bos_token", True),
        "chat_template": config.get("chat_template"),
        "warnings": warnings,
    }


def _plan(hf_cfg, kind: str, gguf) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """(our name, GGUF name, GGML type, shape) of every tensor, checked against the type's block size."""
    q = gguf.GGMLQuantizationType
    matrix = {"f16": q.F16, "q8_0": q.Q8_0, "q4_0": q.Q4_0}[kind]
    head = q.Q8_0 if kind == "q4_0" else matrix
    shapes = model_lib.expected_shapes(_dense(hf_cfg))
    plan = []
    for ours, theirs in tensor_names(hf_cfg.num_hidden_layers).items():
        shape = shapes.get(ours)
        if shape is None:  # tied embeddings: no output.weight
            continue
        chosen = q.F32 if len(shape) == 1 else head if theirs == "output.weight" else matrix
        if chosen in (q.Q8_0, q.Q4_0) and shape[-1] % BLOCK:
            raise UserError(
                f"--type {kind}: {ours} has rows of {shape[-1]} values, not a multiple of the "
                f"{BLOCK}-value blocks (use --type f16)"
            )
        plan.append((ours, theirs, chosen, shape))
    return plan


def _dense(hf_cfg):
    """The config as a dense model's (expected_shapes then names each weight once)."""
    import copy

    dense = copy.copy(hf_cfg)
    dense.quantization_config = None
    return dense


class _Weights:
    """The folder's weights one at a time as float32 arrays, quantized ones dequantized."""

    def __init__(self, folder: Path, hf_cfg):
        from safetensors import safe_open

        from dscoder import quantize

        self.files = [safe_open(str(f), framework="pt") for f in sorted(folder.glob("*.safetensors"))]
        if not self.files:
            raise UserError(f"{folder}: has no safetensors weights (made with --no-weights?)")
        self.where = {name: f for f in self.files for name in f.keys()}
        self.quantized = quantize.of_config(hf_cfg)

    def get(self, name: str) -> np.ndarray:
        import torch

        from dscoder import quantize

        if name in self.where:
            return self.where[name].get_tensor(name).to(torch.float32).numpy()
        base = name.removesuffix(".weight")
        qweight, scales = (
            self.where[f"{base}.qweight"].get_tensor(f"{base}.qweight"),
            self.where[f"{base}.scales"].get_tensor(f"{base}.scales"),
        )
        bits = quantize.layer_bits(base, self.quantized["bits"])
        return quantize.dequantize(qweight, scales, bits, torch.float32).numpy()


def export(folder: Path, out: Path, kind: str, force: bool = False) -> dict:
    """Write the GGUF file; returns what `describe` reads back from it."""
    gguf = tokenizer_lib.gguf_module()
    if kind not in TYPES:
        raise UserError(f"--type {kind}: expected one of {', '.join(TYPES)}")
    if out.suffix != ".gguf":
        raise UserError(f"--out {out}: expected a file name ending in .gguf")
    artifacts.check_output(out, force, folder=False)
    hf_cfg = model_lib.load_config(folder)
    model_lib.check_weights(folder, hf_cfg)
    vocab = vocabulary(folder, hf_cfg.vocab_size)
    plan = _plan(hf_cfg, kind, gguf)
    weights = _Weights(folder, hf_cfg)
    for warning in vocab["warnings"]:
        log.warning("%s: %s", folder, warning)
    q = gguf.GGMLQuantizationType
    with artifacts.output_path(out, force=True) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _metadata(writer, gguf, folder, hf_cfg, kind, vocab)
        for _, theirs, qtype, shape in plan:
            if qtype in (q.F32, q.F16):
                dtype = np.float32 if qtype == q.F32 else np.float16
                writer.add_tensor_info(theirs, shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
                writer.add_tensor_info(theirs, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        from dscoder.console import progress

        for ours, theirs, qtype, _ in progress(plan, desc="export", unit="tensor"):
            w = weights.get(ours)
            if theirs.endswith("attn_q.weight"):
                w = permute(w, hf_cfg.num_attention_heads)
            elif theirs.endswith("attn_k.weight"):
                w = permute(w, hf_cfg.num_key_value_heads)
            if qtype == q.F32:
                w = w.astype(np.float32)
            elif qtype == q.F16:
                w = w.astype(np.float16)
            else:
                w = gguf.quants.quantize(w, qtype)
            writer.write_tensor_data(np.ascontiguousarray(w))
        writer.close()
    return describe(out)


def _metadata(writer, gguf, folder: Path, hf_cfg, kind: str, vocab: dict) -> None:
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    factor = float(rope.get("factor", 1.0)) if rope.get("rope_type", "default") == "linear" else 1.0
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise UserError(f"{folder}/config.json: RoPE scaling {rope.get('rope_type')!r}; the export supports linear")
    name = folder.resolve().parent.name if folder.resolve().name == "final" else folder.resolve().name
    writer.add_name(name)
    writer.add_context_length(hf_cfg.max_position_embeddings)
    writer.add_embedding_length(hf_cfg.hidden_size)
    writer.add_block_count(hf_cfg.num_hidden_layers)
    writer.add_feed_forward_length(hf_cfg.intermediate_size)
    writer.add_head_count(hf_cfg.num_attention_heads)
    writer.add_head_count_kv(hf_cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(hf_cfg.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(hf_cfg.vocab_size)
    if factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[kind]
    writer.add_file_type(int(file_type))
    if kind != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("deepseek-coder")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    special = vocab["special"]
    writer.add_bos_token_id(special["bos"])
    writer.add_eos_token_id(special["eos"])
    if special["pad"] is not None:
        writer.add_pad_token_id(special["pad"])
    writer.add_add_bos_token(bool(vocab["add_bos"]))
    writer.add_add_eos_token(False)
    if special["eot"] is not None:
        writer.add_eot_token_id(special["eot"])
    if None not in (special["fim_pre"], special["fim_suf"], special["fim_mid"]):
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, special["fim_pre"])
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, special["fim_suf"])
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, special["fim_mid"])
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])


READ_BACK = {  # what `dscoder model info FILE.gguf` shows, by GGUF key
    "general.name": "name",
    "general.architecture": "architecture",
    "general.file_type": "file_type",
    "llama.block_count": "num_hidden_layers",
    "llama.embedding_length": "hidden_size",
    "llama.feed_forward_length": "intermediate_size",
    "llama.attention.head_count": "num_attention_heads",
    "llama.attention.head_count_kv": "num_key_value_heads",
    "llama.context_length": "max_position_embeddings",
    "llama.rope.freq_base": "rope_theta",
    "llama.rope.scaling.type": "rope_scaling",
    "llama.rope.scaling.factor": "rope_factor",
    "llama.vocab_size": "vocab_size",
    "tokenizer.ggml.model": "tokenizer_model",
    "tokenizer.ggml.pre": "tokenizer_pre",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.eot_token_id": "eot_token_id",
    "tokenizer.ggml.fim_pre_token_id": "fim_prefix_token_id",
    "tokenizer.ggml.fim_suf_token_id": "fim_suffix_token_id",
    "tokenizer.ggml.fim_mid_token_id": "fim_middle_token_id",
    "tokenizer.ggml.add_bos_token": "add_bos_token",
}


def describe(path: Path) -> dict:
    """The facts a GGUF file carries (ours or any llama.cpp model)."""
    fields, tensors = tokenizer_lib.read_gguf(
        path, lambda name: name in READ_BACK or name in ("tokenizer.ggml.tokens", "tokenizer.chat_template")
    )
    facts: dict = {"file": str(path), "bytes": path.stat().st_size}
    facts.update({label: fields[key] for key, label in READ_BACK.items() if key in fields})
    facts["tokens"] = len(fields.get("tokenizer.ggml.tokens", []))
    facts["chat_template"] = "tokenizer.chat_template" in fields
    counts: dict[str, int] = {}
    for tensor in tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    facts["tensors"] = counts
    facts["parameters"] = int(sum(int(np.prod(t.shape)) for t in tensors))
    return facts
