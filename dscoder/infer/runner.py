"""The model runner: a Llama forward over a KV cache allocated once and written in place.

The cache holds `rows` sequences of up to `length` tokens each, per layer one keys and one
values tensor (rows, kv_heads, length, head_dim). A prefill writes a prompt's keys and values
at their positions in its row and returns the logits of its last token; a decode step takes one
token for each of several rows, writes its keys and values behind each row's last and attends
over that row's positions only. Nothing is concatenated or copied between steps (transformers'
DynamicCache concatenates every layer's keys and values at every step), and a row keeps its
tokens after its sequence ends, so the next prompt that starts the same way continues from them
(the scheduler chooses rows; see scheduler.py).

The weights are the Hugging Face `LlamaForCausalLM`'s own modules (dense or quantize.QuantLinear);
only the order of calls is ours. Attention is torch's scaled_dot_product_attention over views of
the cache (grouped-query attention included). Each row may run under a LoRA adapter (lora.py):
every projection then adds that adapter's term to that row's output, so rows of different
adapters share a forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from dscoder import kernels
from dscoder.errors import UserError
from dscoder.infer import lora

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds the attention scores' memory


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token keeps in the cache."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8


def free_bytes(device: torch.device) -> int | None:
    """Memory the device can still give (a CPU: MemAvailable), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(config, dtype: torch.dtype, rows: int, length: int, device: torch.device) -> None:
    """A UserError, with the numbers, when the cache cannot fit in the device's free memory."""
    need = rows * length * bytes_per_token(config, dtype)
    free = free_bytes(device)
    if free is not None and need > free:
        raise UserError(
            f"the KV cache for {rows} sequences of {length} tokens needs {need / 2**30:.1f} GiB; "
            f"{free / 2**30:.1f} GiB are free (lower --context or --max-batch)"
        )


class KVCache:
    """Keys and values for `rows` sequences of up to `length` tokens, allocated once."""

    def __init__(self, config, rows: int, length: int, dtype: torch.dtype, device: torch.device):
        self.rows, self.length = rows, length
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (rows, heads, length, head_dim)
        # torch.empty: memory pages are taken as positions are written, not up front
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]


class ModelRunner:
    """Prefill and decode steps of a `LlamaForCausalLM` over a KVCache, each row under the base
    weights or one of `adapters` (by name)."""

    def __init__(self, model, cache: KVCache, adapters: dict[str, lora.Adapter] | None = None):
        self.model, self.cache = model, cache
        self.lora = lora.Deltas(model, adapters) if adapters else None
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = next(model.parameters()).device
        # one query over a bfloat16 cache on a CPU: our kernel (torch's attention is slow for one query)
        self.attend = (
            self.device.type == "cpu" and cache.keys[0].dtype == torch.bfloat16 and kernels.library() is not None
        )
        self.dense_rows = kernels.max_rows() if self.attend else 0  # bfloat16 decode products on our kernel
        # the rotary embedding of every position, computed once: computed per call, a position's
        # cos and sin would depend on where it falls in the call's vectors (and cost time per step)
        dtype = next(model.parameters()).dtype
        every = torch.arange(cache.length, device=self.device).unsqueeze(0)
        with torch.inference_mode():
            cos, sin = model.model.rotary_emb(torch.empty(1, dtype=dtype, device=self.device), every)
        self.cos, self.sin = cos[0], sin[0]  # (length, head_dim)

    def _project(self, linear, x: torch.Tensor, groups: list) -> torch.Tensor:
        """A linear layer of the model on x (B, T, in), plus the LoRA terms of the rows in `groups`
        (lora.Deltas.groups); a few rows of bfloat16 on our kernel."""
        rows = x.shape[0] * x.shape[1]
        if (
            rows <= self.dense_rows
            and type(linear) is torch.nn.Linear
            and linear.bias is None
            and linear.weight.dtype == torch.bfloat16
            and linear.weight.is_contiguous()
        ):
            y = kernels.bf16_matvec(x.reshape(rows, -1).contiguous(), linear.weight).view(*x.shape[:2], -1)
        else:
            y = linear(x)
        return self.lora.add(linear, x, y, groups) if groups else y

    def prefill(
        self, row: int, ids: list[int], start: int, stop=None, chunk: int = PREFILL_CHUNK, adapter: str | None = None
    ) -> tuple[torch.Tensor | None, int]:
        """Compute the keys and values of `ids` at positions start.. in `row` (positions before
        `start` must already hold this prompt's tokens, computed under the same `adapter`), in
        forwards of at most `chunk` tokens. Returns the last token's logits (V,) float32 and how
        many tokens were computed; with `stop`, called between forwards, it may end early: (None,
        tokens computed so far)."""
        end = start + len(ids)
        if end > self.cache.length:
            raise UserError(f"the prompt has {end} tokens; the context is {self.cache.length}")
        logits, count = None, -(-len(ids) // chunk)
        for index in range(count):  # chunks of equal size
            at = index * len(ids) // count
            if index and stop is not None and stop():
                return None, at
            chunk_ids = ids[at : (index + 1) * len(ids) // count]
            logits = self._forward(torch.tensor([chunk_ids], device=self.device), [row], [start + at], [adapter])
        return logits[0], len(ids)

    def copy(self, source: int, row: int, length: int, stop=None) -> bool:
        """Copy the keys and values of the first `length` positions of row `source` into `row`,
        a layer at a time; with `stop`, called between layers, it may end early: False then
        (`row` holds nothing usable)."""
        for index, (keys, values) in enumerate(zip(self.cache.keys, self.cache.values)):
            if index and stop is not None and stop():
                return False
            keys[row, :, :length] = keys[source, :, :length]
            values[row, :, :length] = values[source, :, :length]
        return True

    def decode(
        self, rows: list[int], ids: list[int], positions: list[int], adapters: list[str | None] | None = None
    ) -> torch.Tensor:
        """One token per row, at `positions` (each row's length so far), each row under its
        adapter in `adapters` (None: the base): logits (len(rows), V)."""
        if max(positions) >= self.cache.length:
            raise UserError(f"a sequence reached the context of {self.cache.length} tokens")
        return self._forward(
            torch.tensor(ids, device=self.device).unsqueeze(1), rows, positions, adapters or [None] * len(rows)
        )

    def _forward(
        self, ids: torch.Tensor, rows: list[int], starts: list[int], adapters: list[str | None]
    ) -> torch.Tensor:
        """ids (B, T): T new tokens for each of B rows, the b-th starting at starts[b] under
        adapters[b] (T > 1 only for a single row). Returns the logits of each row's last token (B, V)."""
        inner = self.model.model
        batch, width = ids.shape
        groups = self.lora.groups(adapters, self.device) if self.lora is not None else []

        def project(linear, h: torch.Tensor) -> torch.Tensor:
            return self._project(linear, h, groups)

        positions = torch.tensor(starts, device=self.device).unsqueeze(1) + torch.arange(width, device=self.device)
        x = inner.embed_tokens(ids)
        cos, sin = self.cos[positions], self.sin[positions]
        mask = None
        if width > 1 and starts[0] > 0:  # a prompt continuing cached tokens: causal, shifted
            mask = torch.arange(starts[0] + width, device=self.device) <= positions[0].unsqueeze(1)
        for index, layer in enumerate(inner.layers):
            keys, values = self.cache.keys[index], self.cache.values[index]
            attention = layer.self_attn
            h = layer.input_layernorm(x)
            q = project(attention.q_proj, h).view(batch, width, self.heads, self.head_dim).transpose(1, 2)
            k = project(attention.k_proj, h).view(batch, width, self.kv_heads, self.head_dim).transpose(1, 2)
            v = project(attention.v_proj, h).view(batch, width, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            outputs = []
            for b, (row, start) in enumerate(zip(rows, starts)):
                keys[row, :, start : start + width] = k[b]
                values[row, :, start : start + width] = v[b]
                if self.attend:  # a token's numbers the same however its prompt was split or cached
                    out = kernels.attend_bf16(
                        q[b].transpose(0, 1).float(), keys[row], values[row], start, self.heads // self.kv_heads
                    )
                    outputs.append(out.to(q.dtype).transpose(0, 1)[None])
                    continue
                outputs.append(
                    F.scaled_dot_product_attention(
                        q[b : b + 1],
                        keys[row : row + 1, :, : start + width],
                        values[row : row + 1, :, : start + width],
                        attn_mask=mask,
                        is_causal=width > 1 and mask is None,
                        enable_gqa=self.kv_heads != self.heads,
                    )
                )
            out = outputs[0] if batch == 1 else torch.cat(outputs)
            x = x + project(attention.o_proj, out.transpose(1, 2).reshape(batch, width, self.heads * self.head_dim))
            mlp, h = layer.mlp, layer.post_attention_layernorm(x)
            x = x + project(mlp.down_proj, mlp.act_fn(project(mlp.gate_proj, h)) * project(mlp.up_proj, h))
        return project(self.model.lm_head, inner.norm(x[:, -1:]))[:, 0].float()
