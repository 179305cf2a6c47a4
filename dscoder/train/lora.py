"""LoRA and QLoRA: adapt a model by training low-rank updates of its projections while the
base stays frozen (Hu et al., 2021), the base optionally in bf16 or in dscoder's int8/int4
(QLoRA-style: Dettmers et al., 2023). Built on peft, so an adapter is PEFT's folder
(`adapter_config.json`, `adapter_model.safetensors`) that `PeftModel.from_pretrained`, vLLM's
`--lora-modules` and `dscoder serve --lora` load unchanged.

Every stage's loop trains an adapter as it trains a whole model (same FIM, packing, resume,
checkpoints); only the adapter is saved. `merge` folds an adapter into its base: a plain
model folder, for `export-gguf` and any engine.

```
RUN/final/   adapter_config.json adapter_model.safetensors tokenizer files dscoder.json
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from dscoder.config import NON_NEGATIVE, Range
from dscoder.errors import UserError

log = logging.getLogger("dscoder")

# --lora-targets names and the projection each one is in a LLaMA block
TARGETS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters instead of full fine-tuning (rank 0: train every weight)."""

    rank: Annotated[int, NON_NEGATIVE] = 0
    """Rank of each adapter (0: full fine-tuning)."""
    alpha: Annotated[float, Range(0, 65536)] = 0.0
    """Scale numerator: updates are multiplied by alpha / rank (0: twice the rank)."""
    targets: str = "q,k,v,o,gate,up,down"
    """Comma-separated projections that get adapters: q, k, v, o (attention), gate, up, down (MLP)."""
    dropout: Annotated[float, Range(0, 0.9)] = 0.05
    """Dropout on the adapters' inputs."""
    base: Literal["auto", "float32", "bfloat16", "int8", "int4"] = "auto"
    """How the frozen base is held: auto (bfloat16 under bf16 precision, else float32), or int8/int4
    (dscoder's quantization, QLoRA-style; the adapters stay float32)."""


def modules(cfg: LoraConfig) -> list[str]:
    """The projection names `cfg.targets` selects; a UserError for an unknown or empty list."""
    names = [t.strip() for t in cfg.targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise UserError(f"--lora-targets {cfg.targets!r}: expected some of {','.join(TARGETS)}")
    return [TARGETS[t] for t in dict.fromkeys(names)]


def check(cfg: LoraConfig, hf_cfg, precision: str, strategy: str = "auto") -> None:
    """Everything about the LoRA settings that can be refused before a file is written."""
    if not cfg.rank:
        return
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UserError("--lora-rank needs the peft package (pip install 'dscoder[train]')") from None
    shapes = layer_shapes(hf_cfg)
    for name in modules(cfg):
        smallest = min(shapes[name])
        if cfg.rank > smallest:
            raise UserError(
                f"--lora-rank {cfg.rank} exceeds the {name} layer ({shapes[name][0]} x "
                f"{shapes[name][1]}): at most {smallest}"
            )
    if cfg.base == "bfloat16" and precision != "bf16":
        raise UserError("--lora.base bfloat16 needs --loop.precision bf16 (the frozen base computes in bf16)")
    if strategy == "fsdp":
        raise UserError("LoRA runs with data parallelism only: use --parallel.strategy ddp (the adapters are small)")


def layer_shapes(hf_cfg) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection of a LLaMA block."""
    hidden, inner, head = hf_cfg.hidden_size, hf_cfg.intermediate_size, hf_cfg.hidden_size // hf_cfg.num_attention_heads
    kv = getattr(hf_cfg, "num_key_value_heads", None) or hf_cfg.num_attention_heads
    return {
        "q_proj": (hidden, hidden),
        "k_proj": (kv * head, hidden),
        "v_proj": (kv * head, hidden),
        "o_proj": (hidden, hidden),
        "gate_proj": (inner, hidden),
        "up_proj": (inner, hidden),
        "down_proj": (hidden, inner),
    }


def base_dtype(cfg: LoraConfig, precision: str) -> str:
    if cfg.base == "auto":
        return "bfloat16" if precision == "bf16" else "float32"
    return cfg.base


def wrap(hf_model, cfg: LoraConfig, precision: str, base_folder: Path):
    """The peft model that trains `cfg`'s adapters on the frozen `hf_model` (from `base_folder`)."""
    import peft
    import torch

    held = base_dtype(cfg, precision)
    hf_model.to(torch.bfloat16 if held in ("bfloat16", "int8", "int4") and precision == "bf16" else torch.float32)
    peft_cfg = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha or 2 * cfg.rank,
        lora_dropout=cfg.dropout,
        target_modules=modules(cfg),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(Path(base_folder).resolve()),
    )
    model = peft.get_peft_model(hf_model, peft_cfg)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # the adapters and their optimizer state stay float32
    if held in ("int8", "int4"):
        _quantize_base(model, 8 if held == "int8" else 4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "LoRA rank %d on %s (base %s): %s trainable parameters of %s (%.2f%%)",
        cfg.rank,
        ",".join(modules(cfg)),
        held,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model


def _quantize_base(model, bits: int) -> None:
    """Replace every frozen linear layer (the adapted projections' base layers, the other
    projections, the head) by dscoder's quantized layer, in place."""
    from torch import nn

    from dscoder import quantize

    group = quantize.DEFAULT_GROUP_SIZE
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or ".lora_" in name:
            continue
        b = quantize.layer_bits("lm_head" if name.endswith("lm_head") else name, bits)
        layer = quantize.QuantLinear(
            *quantize.quantize_weight(module.weight.detach(), b, group if b == 4 else None),
            b,
            group if b == 4 else None,
            module.weight.dtype,
        ).to(module.weight.device)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)


def counts(model) -> dict[str, int]:
    """Trainable and total parameters (for the run's record and report)."""
    return {
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# --- adapter folders ---------------------------------------------------------------------------------


def save(folder: Path, model, state: dict, tokenizer_dir: Path, record: dict) -> None:
    """Write the adapter (from the trainable `state`, keyed as `model.named_parameters`) in PEFT's
    format into `folder`, with the tokenizer and what made it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dscoder import artifacts

    config = model.peft_config["default"]
    config.save_pretrained(str(folder))
    named = dict(model.named_parameters())
    weights = get_peft_model_state_dict(model, state_dict={k: state.get(k, named[k]) for k in named})
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in weights.items()},
        str(folder / WEIGHTS),
        metadata={"format": "pt"},
    )
    artifacts.copy_tokenizer(tokenizer_dir, folder)
    artifacts.write_manifest(folder, "adapter", base=config.base_model_name_or_path, **record)


def load_weights(model, folder: Path) -> None:
    """Set the adapter weights of `model` to those saved in `folder`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(Path(folder) / WEIGHTS)))
    missing = [k for k in getattr(result, "unexpected_keys", [])]
    if missing:
        raise UserError(f"{folder}: adapter weights for layers this run does not have ({missing[0]})")


# --- merging ---------------------------------------------------------------------------------------


def merge(base: Path, adapter: Path, out: Path, force: bool = False) -> Path:
    """Fold `adapter` into the dense model `base` and write a plain model folder `out` (the
    adapter read and checked against the base by dscoder/adapters.py first)."""
    import torch
    from peft import PeftModel

    from dscoder import adapters, artifacts, quantize
    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.train import checkpoint

    found = adapters.read_folder("adapter", adapter, f"--adapter {adapter}")
    hf_cfg = model_lib.load_config(base)
    if quantize.of_config(hf_cfg) is not None:
        raise UserError(
            f"{base} is quantized: merge into the dense base it was made from, then quantize "
            "the merged model (`dscoder model quantize`)"
        )
    artifacts.check_output(out, force, folder=True)
    model, _ = model_lib.load(base, dtype="float32")
    adapters.check({"adapter": found}, model, str(base))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    eos = tokenizer_lib.load(adapter).eos_token_id  # instruction tuning ends answers at <|EOT|>
    merged.config.eos_token_id = merged.generation_config.eos_token_id = eos
    stored = str(getattr(hf_cfg, "dtype", None) or "float32").removeprefix("torch.")  # kept as the base keeps it
    dtype = getattr(torch, stored, torch.float32)
    with artifacts.output_dir(out, force=force) as tmp:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged.state_dict().items()}
        checkpoint.write_model(tmp, merged, state, adapter)
        artifacts.write_manifest(tmp, "model", merged_from={"base": str(base), "adapter": str(adapter)})
    return out
