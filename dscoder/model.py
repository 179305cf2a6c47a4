"""Model presets and the model folder format.

DeepSeek-Coder ships as `LlamaForCausalLM` (docs/deepseek-coder.md#model): RMSNorm,
SwiGLU, RoPE, untied embeddings, head_dim 128. The released 1.3B/6.7B/33B configs and tiny CPU
presets live in one table. A model folder is a Hugging Face folder (config.json,
model.safetensors, generation_config.json, tokenizer files) in the released layout, so our
checkpoints and the released ones are interchangeable.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from dscoder import artifacts
from dscoder import tokenizer as tokenizer_lib
from dscoder.config import AT_LEAST_ONE, POSITIVE, Range
from dscoder.errors import UserError

DType = Literal["float32", "bfloat16", "float16"]
RELEASED_VOCAB_TOKENS = 32022  # learned 32,000 + 22 added tokens in the released tokenizer
RELEASED_EMBEDDING_ROWS = 32256


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a Llama-style DeepSeek-Coder model."""

    hidden_size: Annotated[int, AT_LEAST_ONE]
    """Width of the residual stream."""
    intermediate_size: Annotated[int, AT_LEAST_ONE]
    """Width of the SwiGLU feed-forward layer."""
    num_hidden_layers: Annotated[int, AT_LEAST_ONE]
    """Number of transformer blocks."""
    num_attention_heads: Annotated[int, AT_LEAST_ONE]
    """Query heads per block."""
    num_key_value_heads: Annotated[int, AT_LEAST_ONE]
    """Key/value heads per block (fewer than query heads means grouped-query attention)."""
    max_position_embeddings: Annotated[int, AT_LEAST_ONE] = 16384
    """Longest sequence the positions are set up for."""
    rope_theta: Annotated[float, Range(0, 1e12, low_open=True)] = 100000.0
    """RoPE base frequency."""
    rope_factor: Annotated[float, Range(0, 1024, low_open=True)] = 4.0
    """Linear RoPE scaling factor (1.0: no scaling); the released models use 4 after the long-context step."""
    rms_norm_eps: Annotated[float, POSITIVE] = 1e-6
    """RMSNorm epsilon."""
    dtype: DType = "bfloat16"
    """Parameter dtype the weights are created and saved in."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Preset:
    """A named model size with the learning rate it was trained at."""

    config: ModelConfig
    max_lr: float
    about: str


PRESETS: dict[str, Preset] = {
    "deepseek-coder-1.3b": Preset(
        ModelConfig(
            hidden_size=2048,
            intermediate_size=5504,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
        ),
        max_lr=5.3e-4,
        about="released 1.3B layout",
    ),
    "deepseek-coder-6.7b": Preset(
        ModelConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
        max_lr=4.2e-4,
        about="released 6.7B layout",
    ),
    "deepseek-coder-33b": Preset(
        ModelConfig(
            hidden_size=7168,
            intermediate_size=19200,
            num_hidden_layers=62,
            num_attention_heads=56,
            num_key_value_heads=8,
        ),
        max_lr=3.5e-4,
        about="released 33B layout (grouped-query attention)",
    ),
    # CPU presets: pretraining-time layouts (no RoPE scaling yet; `train extend` adds it).
    "tiny": Preset(
        ModelConfig(
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            rope_factor=1.0,
            dtype="float32",
        ),
        max_lr=3e-3,
        about="a few million parameters; trains in minutes on 2 CPU cores",
    ),
    "small": Preset(
        ModelConfig(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=2048,
            rope_factor=1.0,
            dtype="float32",
        ),
        max_lr=6e-4,
        about="tens of millions of parameters; a CPU-sized real model",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (choose from: {', '.join(PRESETS)})")
    return PRESETS[name]


def embedding_rows(num_tokens: int) -> int:
    """Rows of the (padded) embedding: 32,256 for the released vocabulary, as released; a
    multiple of 64 for trained vocabularies (friendly to matrix kernels)."""
    if num_tokens == RELEASED_VOCAB_TOKENS:
        return RELEASED_EMBEDDING_ROWS
    return 64 * math.ceil(num_tokens / 64)


def hf_config(cfg: ModelConfig, tokenizer):
    """The transformers `LlamaConfig` for `cfg` with the tokenizer's vocabulary and ids."""
    from transformers import LlamaConfig

    if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
        raise UserError(
            f"hidden_size {cfg.hidden_size}, num_attention_heads {cfg.num_attention_heads} and "
            f"num_key_value_heads {cfg.num_key_value_heads} must divide evenly"
        )
    rope_scaling = {"type": "linear", "factor": cfg.rope_factor} if cfg.rope_factor != 1.0 else None
    return LlamaConfig(
        vocab_size=embedding_rows(len(tokenizer)),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=False,
        attention_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        torch_dtype=cfg.dtype,
        architectures=["LlamaForCausalLM"],
    )


def build(hf_cfg, seed: int = 0):
    """A freshly initialised `LlamaForCausalLM` in the config's dtype."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_cfg)
    return model.to(getattr(torch, _dtype_name(hf_cfg)))


def _dtype_name(hf_cfg) -> str:
    dtype = getattr(hf_cfg, "dtype", None) or getattr(hf_cfg, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def save(folder: str | Path, hf_cfg, tokenizer_dir: str | Path, model=None) -> None:
    """Write a model folder: config and generation config in the released layout, the weights
    (when `model` is given) as safetensors, and the tokenizer files copied from `tokenizer_dir`."""
    from transformers import GenerationConfig

    folder = Path(folder)
    if model is not None and getattr(hf_cfg, "quantization_config", None):
        from safetensors.torch import save_file

        hf_cfg.save_pretrained(folder)
        GenerationConfig.from_model_config(hf_cfg).save_pretrained(folder)
        tensors = {name: t.contiguous() for name, t in model.state_dict().items()}
        with artifacts.output_path(folder / "model.safetensors", force=True) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    elif model is not None:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        hf_cfg.save_pretrained(folder)
        GenerationConfig.from_model_config(hf_cfg).save_pretrained(folder)
    write_released_rope_keys(folder / "config.json")
    artifacts.copy_tokenizer(tokenizer_dir, folder)


def with_linear_rope(model, factor: float, theta: float, positions: int):
    """`model` (a LlamaForCausalLM) rebuilt with linear RoPE scaling by `factor`, base `theta`
    and `positions` positions, its weights kept: the rotary embedding only takes new scaling
    when the model is built. `model` itself is left as it was."""
    import copy

    from transformers import LlamaForCausalLM

    config = copy.deepcopy(model.config)
    config.rope_parameters = {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
    config.max_position_embeddings = positions
    scaled = LlamaForCausalLM(config)
    scaled.load_state_dict(model.state_dict())
    return scaled


def write_released_rope_keys(config_path: Path) -> None:
    """Add the released `rope_theta` / `rope_scaling` keys beside transformers 5's
    `rope_parameters`, so tools that read the released layout (vLLM, llama.cpp's converter)
    see the same RoPE settings."""
    data = json.loads(config_path.read_text(encoding="utf-8"))
    rope = data.get("rope_parameters") or {}
    data["rope_theta"] = rope.get("rope_theta", data.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", "default")
    data["rope_scaling"] = None if kind == "default" else {"type": kind, "factor": rope.get("factor", 1.0)}
    data.setdefault("torch_dtype", data.get("dtype"))
    artifacts.write_text(config_path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_config(folder: str | Path):
    """The transformers config of a model folder (ours or a released download)."""
    from transformers import AutoConfig

    folder = Path(folder)
    record = artifacts.read_manifest(folder) if folder.is_dir() else None
    if record is not None and record.get("kind") == "run":
        final = folder / "final"
        where = (
            f"its model is {final}"
            if final.is_dir()
            else f"it has no final model yet (its checkpoints are in {folder / 'checkpoints'})"
        )
        raise UserError(f"{folder}: a training run, not a model folder: {where}")
    if folder.is_file():
        if folder.suffix == ".gguf":
            raise UserError(
                f"{folder}: a GGUF file, which llama.cpp, Ollama and LM Studio run; dscoder runs model "
                "folders (or, in front of llama.cpp's server, `dscoder serve --upstream URL`)"
            )
        raise UserError(f"{folder}: a file, not a model folder")
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        hint = f"; its model is {folder / 'final'}" if (folder / "final" / "config.json").is_file() else ""
        if (folder / "adapter_config.json").is_file():
            hint = (
                "; it is a LoRA adapter: give its base as the model (`serve --lora NAME=DIR` applies it) "
                "or fold it in with `dscoder model merge`"
            )
        raise UserError(f"{folder}: not a model folder (no config.json){hint}")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{folder}/config.json: cannot be read ({type(exc).__name__}: {exc})") from None


def device_for(name: str, flag: str = "--device"):
    """The torch device for `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; a UserError
    naming `flag` for anything else or for a device this machine does not have."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):
        raise UserError(f"{flag} {name!r}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise UserError(
                f"{flag} {name}: this machine has {count or 'no'} CUDA device{'s' if count != 1 else ''} "
                "(use cpu, or auto to take CUDA when there is one)"
            )
    return torch.device(name)


def expected_shapes(hf_cfg) -> dict[str, tuple[int, ...]]:
    """The shape of every weight a Llama model of this config has, by its name in the weights file."""
    hidden, inner, vocab = hf_cfg.hidden_size, hf_cfg.intermediate_size, hf_cfg.vocab_size
    head_dim = getattr(hf_cfg, "head_dim", None) or hidden // hf_cfg.num_attention_heads
    q, kv = hf_cfg.num_attention_heads * head_dim, hf_cfg.num_key_value_heads * head_dim
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not hf_cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(hf_cfg.num_hidden_layers):
        layer = f"model.layers.{i}"
        shapes.update(
            {
                f"{layer}.self_attn.q_proj.weight": (q, hidden),
                f"{layer}.self_attn.k_proj.weight": (kv, hidden),
                f"{layer}.self_attn.v_proj.weight": (kv, hidden),
                f"{layer}.self_attn.o_proj.weight": (hidden, q),
                f"{layer}.mlp.gate_proj.weight": (inner, hidden),
                f"{layer}.mlp.up_proj.weight": (inner, hidden),
                f"{layer}.mlp.down_proj.weight": (hidden, inner),
                f"{layer}.input_layernorm.weight": (hidden,),
                f"{layer}.post_attention_layernorm.weight": (hidden,),
            }
        )
    if not getattr(hf_cfg, "quantization_config", None):
        return shapes
    from dscoder import quantize as quantize_lib

    return quantize_lib.expected_shapes(hf_cfg, shapes)


def check_weights(folder: str | Path, hf_cfg) -> None:
    """A UserError when the safetensors weights do not have the shapes config.json describes
    (another model's config, a hand-edited field); folders without safetensors pass."""
    saved = saved_shapes(folder)
    if saved is None:
        return
    problems = []
    for name, shape in expected_shapes(hf_cfg).items():
        found = saved.get(name)
        if found is None:
            problems.append(f"{name} is missing")
        elif tuple(found) != shape:
            problems.append(
                f"{name} is {'x'.join(map(str, found))} in the weights but {'x'.join(map(str, shape))} by config.json"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{folder}: the weights do not match config.json: {problems[0]}{more}")


def load(folder: str | Path, dtype: str | None = None, device: str = "cpu", quantize: int | None = None):
    """`(model, tokenizer)` from a model folder, in eval mode; a quantized folder (see
    quantize.py) loads as one, and `quantize` (8 or 4 bits) quantizes a dense one as it loads."""
    import torch
    from transformers import AutoModelForCausalLM

    from dscoder import quantize as quantize_lib

    folder = Path(folder)
    hf_cfg = load_config(folder)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise UserError(f"{folder}: has no weights (made with --no-weights?)")
    check_weights(folder, hf_cfg)
    stored = quantize_lib.of_config(hf_cfg)
    if stored is not None and quantize is not None:
        raise UserError(f"--quantize: {folder} is already quantized (int{stored['bits']}); drop the flag")
    if quantize is not None:
        quantize_lib.check(quantize, None, hf_cfg)
    torch_dtype = getattr(torch, dtype or _dtype_name(hf_cfg))
    try:
        if stored is not None:
            model = quantize_lib.load_model(hf_cfg, read_tensors(folder), torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch_dtype)
    except UserError as exc:
        raise UserError(f"{folder}: {exc}") from None
    except Exception as exc:
        raise UserError(f"{folder}: cannot load the model ({type(exc).__name__}: {exc})") from None
    if quantize is not None:
        quantize_lib.quantize_model(model, quantize, None)
    return model.to(device).eval(), tokenizer_lib.load(folder)


def read_tensors(folder: str | Path) -> dict:
    """Every tensor of the folder's safetensors files, by name (CPU)."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def count_parameters(hf_cfg) -> dict[str, int]:
    """Parameters by part, computed from the config alone (works for --no-weights folders)."""
    hidden, layers = hf_cfg.hidden_size, hf_cfg.num_hidden_layers
    head_dim = getattr(hf_cfg, "head_dim", None) or hidden // hf_cfg.num_attention_heads
    q = hf_cfg.num_attention_heads * head_dim
    kv = hf_cfg.num_key_value_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden
    if getattr(hf_cfg, "attention_bias", False):
        attention += q + 2 * kv + hidden
    mlp = 3 * hidden * hf_cfg.intermediate_size
    embedding = hf_cfg.vocab_size * hidden
    parts = {
        "embedding": embedding,
        "attention": layers * attention,
        "mlp": layers * mlp,
        "norms": layers * 2 * hidden + hidden,
        "lm_head": 0 if hf_cfg.tie_word_embeddings else embedding,
    }
    parts["total"] = sum(parts.values())
    return parts


def saved_shapes(folder: str | Path) -> dict[str, list[int]] | None:
    """The shape of every tensor in the folder's safetensors files (None without them), read
    from the file headers only."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    shapes = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = f.get_slice(name).get_shape()
        except Exception as exc:
            raise UserError(f"{file}: unreadable weights ({type(exc).__name__}: {exc})") from None
    return shapes


BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}


def describe(folder: str | Path) -> dict:
    """What `dscoder model info` shows: parameters, layout and memory at each dtype."""
    cfg = load_config(folder)
    check_weights(folder, cfg)
    params = count_parameters(cfg)
    shapes = saved_shapes(folder)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2
    tokenizer_tokens = None
    if (Path(folder) / "tokenizer.json").is_file():
        tokenizer_tokens = len(tokenizer_lib.load(folder))
    return {
        "architecture": (cfg.architectures or [type(cfg).__name__])[0],
        "parameters": params,
        "saved_parameters": None if shapes is None else sum(math.prod(s) for s in shapes.values()),
        "layout": {
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "vocab_size": cfg.vocab_size,
            "tokenizer_tokens": tokenizer_tokens,
            "max_position_embeddings": cfg.max_position_embeddings,
            "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", None)),
            "rope_type": rope.get("rope_type", "default"),
            "rope_factor": rope.get("factor", 1.0),
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "dtype": _dtype_name(cfg),
        },
        "quantization": _quantization(cfg),
        "stored_bytes": sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) or None,
        "weight_bytes": {k: int(params["total"] * v) for k, v in BYTES_PER_PARAMETER.items()},
        "kv_cache_bytes_per_token_bf16": kv_bytes_per_token,
        "kv_cache_bytes_full_context_bf16": kv_bytes_per_token * cfg.max_position_embeddings,
        # fp32 weights + fp32 gradients + two fp32 AdamW moments, before activations
        "adamw_training_bytes": params["total"] * 16,
    }


def _quantization(hf_cfg) -> dict | None:
    if not getattr(hf_cfg, "quantization_config", None):
        return None
    from dscoder import quantize as quantize_lib

    return quantize_lib.describe(hf_cfg)
