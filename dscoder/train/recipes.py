"""The three training stages of DeepSeek-Coder (paper section 3) on the one loop:
`pretrain` (packed next-token prediction with FIM), `extend` (linear RoPE scaling, longer
sequences) and `instruct` (chat template, loss on responses, EOS = `<|EOT|>`).

A run folder holds `config.json` (the resolved settings), `dscoder.json`, `tokenizer/`,
`metrics.jsonl`, `checkpoints/step-N/`, `final/` and `loss.png`. With `--lora-rank` (pretrain
and instruct), the base stays frozen and `final/` is a PEFT adapter folder (see lora.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from dscoder import artifacts, formats
from dscoder import config as config_lib
from dscoder import model as model_lib
from dscoder import tokenizer as tokenizer_lib
from dscoder.data import corpus
from dscoder.errors import UserError
from dscoder.train import checkpoint, dataset, distributed, loggers, lora, report
from dscoder.train.instruct import instruct_encoder, read_conversations
from dscoder.train.loop import Trainer
from dscoder.train.settings import TrainConfig

log = logging.getLogger("dscoder")


def check_run(run: Path, cfg: TrainConfig, resume: bool, force: bool) -> None:
    """Everything about the run folder and the settings that can be checked before any file is
    written: the folder is free (or resumable with the same settings), the device exists, the
    `--logger` package imports, every `--data` source is a finished corpus."""
    stored = run / "config.json"
    if run.exists() and not resume and not force:
        raise UserError(f"{run} already exists (use --resume to continue it or --force to replace it)")
    if run.exists() and not run.is_dir():
        raise UserError(f"{run} exists and is not a folder")
    if force and not resume:
        artifacts.check_replaceable(run)
    if resume and stored.is_file():
        try:
            previous = json.loads(stored.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{stored}: unreadable ({exc})") from None
        now = config_lib.to_dict(cfg)
        for volatile in ("max_minutes", "device", "logger"):
            previous.get("loop", {}).pop(volatile, None)
            now["loop"].pop(volatile, None)
        changed = _changed_settings(previous, json.loads(json.dumps(now)), cfg.stage)
        if changed:
            raise UserError(
                f"{run} was started with other settings ({'; '.join(changed[:3])}"
                f"{f'; {len(changed) - 3} more' if len(changed) > 3 else ''}); resume with the same ones"
            )
    model_lib.device_for(cfg.loop.device, "--loop.device")
    loggers.check(cfg.loop.logger)
    if cfg.stage != "instruct":
        if not cfg.data.sources:
            raise UserError("no training data: give --data CORPUS_DIR[:WEIGHT] (one or more)")
        for spec in cfg.data.sources:
            path, _ = dataset.parse_source(spec)
            if not corpus.is_corpus(path):
                raise UserError(f"--data {spec}: {path} is not a corpus folder (make one with `dscoder data build`)")
            corpus.shards(path)  # a UserError when the build has not finished


def _changed_settings(previous: dict, now: dict, stage: str) -> list[str]:
    """`SECTION.KEY was A, now B` for each setting that differs; a setting the stored config
    lacks (added by a later version) counts as its default."""
    from dscoder.train.settings import resolve

    def flat(tree: dict) -> dict:
        return {
            f"{section}.{key}": value
            for section, values in tree.items()
            if isinstance(values, dict)
            for key, value in values.items()
        } | {k: v for k, v in tree.items() if not isinstance(v, dict)}

    before, after = flat(previous), flat(now)
    defaults = flat(json.loads(json.dumps(config_lib.to_dict(resolve(stage, None, {})))))
    return [
        f"{key} was {before.get(key, defaults.get(key))!r}, now {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, defaults.get(key)) != after.get(key)
    ]


def prepare_run(run: Path, cfg: TrainConfig, resume: bool, force: bool) -> Path | None:
    """Make the run folder (after `check_run`); returns the checkpoint to resume from, if any."""
    if run.exists() and not resume:
        shutil.rmtree(run)
    artifacts.make_output_folder(run)
    artifacts.write_json(run / "config.json", config_lib.to_dict(cfg))
    found = checkpoint.latest(run) if resume else None
    if resume and found is None:
        log.info("%s has no checkpoint yet: starting from the beginning", run)
    return found


def _setup(run: Path, cfg: TrainConfig, resume: bool, force: bool):
    """Join the process group (under torchrun); the main process prepares the run folder."""
    wants_cuda = model_lib.device_for(cfg.loop.device, "--loop.device").type == "cuda"
    world = distributed.init("cuda" if wants_cuda else "cpu")
    found = _main_first(
        world,
        lambda: prepare_run(run, cfg, resume, force) if world.main else (checkpoint.latest(run) if resume else None),
    )
    return world, found


def _main_first(world, fn):
    """Run `fn` on the main process first (it may write caches), then on the others."""
    result = fn() if world.main else None
    distributed.barrier(world)
    return result if world.main else fn()


def check_length(cfg: TrainConfig, positions: int) -> None:
    """The sequence length against the model's positions and what FIM needs, before any work
    (experiments call it with a preset's positions before building anything)."""
    if cfg.data.seq_len > positions and cfg.stage != "extend":
        raise UserError(
            f"--seq-len {cfg.data.seq_len} exceeds the model's {positions} positions: extend the "
            "context first with `dscoder train extend`"
        )
    if cfg.fim.fit_windows and cfg.data.seq_len < dataset.MIN_FITTED_LENGTH:
        raise UserError(
            f"--seq-len {cfg.data.seq_len}: FIM pieces fitted to windows need at least "
            f"{dataset.MIN_FITTED_LENGTH} tokens"
        )


def _check_fit(hf_model, tokenizer) -> None:
    rows = hf_model.config.vocab_size
    if len(tokenizer) > rows:
        raise UserError(f"the tokenizer has {len(tokenizer):,} tokens but the model only {rows:,} embedding rows")
    for name in ("bos_token_id",):
        if getattr(hf_model.config, name) not in (None, getattr(tokenizer, name)):
            raise UserError(
                f"the tokenizer's {name} ({getattr(tokenizer, name)}) differs from the model's "
                f"({getattr(hf_model.config, name)}): they do not belong together"
            )


def _adapt(hf_model, cfg: TrainConfig, model_dir: Path | None):
    """The model the run trains: itself, or LoRA adapters on it frozen (`--lora-rank`)."""
    if not cfg.lora.rank:
        return hf_model
    if model_dir is None:
        raise UserError("--lora-rank adapts an existing model: give --model DIR instead of --preset")
    lora.check(cfg.lora, hf_model.config, cfg.loop.precision, cfg.parallel.strategy)
    return lora.wrap(hf_model, cfg.lora, cfg.loop.precision, model_dir)


def _load_model(folder: Path, cfg: TrainConfig | None = None):
    """The model to train, in float32; a LoRA run's frozen base is read in bf16 when it is held
    in bf16 or quantized from it (never a float32 copy of every weight first)."""
    import torch

    low = cfg is not None and cfg.lora.rank and lora.base_dtype(cfg.lora, cfg.loop.precision) != "float32"
    dtype = "bfloat16" if low else "float32"
    hf_model, tokenizer = model_lib.load(folder, dtype=dtype)
    return hf_model.to(getattr(torch, dtype)), tokenizer


def _corpus_data(cfg: TrainConfig, tokenizer, run: Path):
    cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run / "cache"
    folders, weights = [], []
    for spec in cfg.data.sources:
        path, weight = dataset.parse_source(spec)
        folders.append(dataset.corpus_cache(path, tokenizer, cfg.fim, cfg.loop.seed, cfg.data, cache_root))
        weights.append(weight)
    return folders, weights


def _run(
    run: Path,
    cfg: TrainConfig,
    world,
    hf_model,
    tokenizer_dir: Path,
    folders,
    weights,
    resume_from: Path | None,
    lr: float,
    record: dict,
) -> dict:
    mixture = dataset.Mixture(
        [dataset.TokenFile(f) for f in folders], weights, cfg.data.seq_len, cfg.loop.seed, cfg.data.eval_fraction
    )
    held = sum(len(f.windows(cfg.data.seq_len, cfg.data.eval_fraction, "eval")) for f in mixture.files)
    if held < cfg.loop.batch_size and world.main:
        log.warning(
            "no held-out loss will be recorded: data.eval_fraction %g of this data is %d windows of %d tokens, "
            "fewer than one batch of %d (raise --data.eval_fraction or give more data)",
            cfg.data.eval_fraction,
            held,
            cfg.data.seq_len,
            cfg.loop.batch_size,
        )
    if world.main:
        counts = lora.counts(hf_model) if cfg.lora.rank else {}
        artifacts.write_manifest(run, "run", stage=cfg.stage, config=config_lib.to_dict(cfg), **record, **counts)
    trainer = Trainer(run, hf_model, tokenizer_dir, mixture, cfg.loop, cfg.optim, cfg.parallel, lr)
    if resume_from is not None:
        trainer.resume(resume_from)
    result = trainer.run_loop()
    if world.main:
        report.plot_loss(run)
    distributed.shutdown(world)
    return result


def pretrain(
    run: Path,
    cfg: TrainConfig,
    tokenizer_dir: Path | None,
    preset: str | None,
    model_dir: Path | None,
    resume: bool = False,
    force: bool = False,
) -> dict:
    """Next-token prediction with FIM on packed corpora, from a preset or a model folder."""
    if (preset is None) == (model_dir is None):
        raise UserError("give exactly one of --preset NAME or --model DIR")
    if preset is not None and tokenizer_dir is None:
        raise UserError("--preset needs --tokenizer DIR")
    check_run(run, cfg, resume, force)
    if model_dir is not None:
        hf_model, tokenizer = _load_model(model_dir, cfg)
        tokenizer_dir = model_dir
        default_lr = 3e-4
    else:
        chosen = model_lib.get_preset(preset)
        tokenizer = tokenizer_lib.load(tokenizer_dir)
        model_cfg = config_lib.apply_overrides(chosen.config, {"dtype": "float32"})
        hf_model = model_lib.build(model_lib.hf_config(model_cfg, tokenizer), seed=cfg.loop.seed)
        default_lr = chosen.max_lr
    _check_fit(hf_model, tokenizer)
    check_length(cfg, hf_model.config.max_position_embeddings)
    hf_model = _adapt(hf_model, cfg, model_dir)
    return _train_on_corpora(
        run,
        cfg,
        hf_model,
        tokenizer,
        tokenizer_dir,
        resume,
        force,
        cfg.optim.lr or default_lr,
        {"preset": preset, "model": str(model_dir) if model_dir else None, "tokenizer": str(tokenizer_dir)},
    )


def extend(run: Path, cfg: TrainConfig, model_dir: Path, resume: bool = False, force: bool = False) -> dict:
    """Continue a model at a longer sequence length with linear RoPE scaling."""
    check_run(run, cfg, resume, force)
    if cfg.lora.rank:
        raise UserError("train extend trains every weight; LoRA adapters are for train pretrain and train instruct")
    base, tokenizer = _load_model(model_dir)
    positions = cfg.extend.max_position_embeddings or cfg.data.seq_len
    if positions < cfg.data.seq_len:
        raise UserError(f"extend.max_position_embeddings {positions} is shorter than --seq-len {cfg.data.seq_len}")
    hf_model = model_lib.with_linear_rope(base, cfg.extend.rope_factor, cfg.extend.rope_theta, positions)
    _check_fit(hf_model, tokenizer)
    return _train_on_corpora(
        run, cfg, hf_model, tokenizer, model_dir, resume, force, cfg.optim.lr or 1e-4, {"model": str(model_dir)}
    )


def _train_on_corpora(
    run: Path,
    cfg: TrainConfig,
    hf_model,
    tokenizer,
    tokenizer_dir: Path,
    resume: bool,
    force: bool,
    lr: float,
    source: dict,
) -> dict:
    """Train `hf_model` on the corpora of `cfg.data` (pretrain, extend): the run folder, its copy of
    the tokenizer in `tokenizer_dir`, the token caches, then the loop."""
    world, resume_from = _setup(run, cfg, resume, force)
    local_tokenizer = _main_first(world, lambda: artifacts.copy_tokenizer(tokenizer_dir, run / "tokenizer"))
    folders, weights = _main_first(world, lambda: _corpus_data(cfg, tokenizer, run))
    return _run(run, cfg, world, hf_model, local_tokenizer, folders, weights, resume_from, lr, source)


def instruct(
    run: Path, cfg: TrainConfig, model_dir: Path, data_file: Path, resume: bool = False, force: bool = False
) -> dict:
    """Instruction tuning: responses and `<|EOT|>` are trained; EOS becomes `<|EOT|>`."""
    check_run(run, cfg, resume, force)
    if sum(1 for _ in read_conversations(data_file)) == 0:  # every row is checked before anything is written
        raise UserError(f"{data_file}: no conversations")
    hf_model, tokenizer = _load_model(model_dir, cfg)
    _check_fit(hf_model, tokenizer)
    check_length(cfg, hf_model.config.max_position_embeddings)
    eot = tokenizer.convert_tokens_to_ids(formats.EOT)
    if eot is None or eot == tokenizer.unk_token_id:
        raise UserError(f"{model_dir}: the tokenizer has no {formats.EOT} token")
    hf_model.config.eos_token_id = eot
    hf_model.generation_config.eos_token_id = eot
    hf_model = _adapt(hf_model, cfg, model_dir)
    world, resume_from = _setup(run, cfg, resume, force)
    local_tokenizer = _main_first(
        world, lambda: artifacts.copy_tokenizer(model_dir, run / "tokenizer", eos_token=formats.EOT)
    )
    key = {
        "source": str(Path(data_file).resolve()),
        "mtime": Path(data_file).stat().st_mtime_ns if Path(data_file).exists() else 0,
        "tokenizer": dataset.tokenizer_fingerprint(tokenizer),
        "format": 2,
    }
    documents = (json.dumps(messages) for messages in read_conversations(data_file))
    cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run / "cache"
    folder = _main_first(
        world,
        lambda: dataset.build_cache(
            cache_root / f"instruct-{Path(data_file).stem}",
            key,
            documents,
            instruct_encoder(tokenizer),
            cfg.data.tokenize_batch,
            len(tokenizer),
        ),
    )
    return _run(
        run,
        cfg,
        world,
        hf_model,
        local_tokenizer,
        [folder],
        [1.0],
        resume_from,
        cfg.optim.lr or 1e-5,
        {"model": str(model_dir), "data": str(data_file)},
    )
