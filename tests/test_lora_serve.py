"""Serving LoRA adapters (`dscoder serve --lora NAME=DIR`, dscoder/infer/lora.py): each adapter
generates what peft's merged model generates, alone or in one batch with the base and another
adapter, never from a row or an answer cached under another; the server picks adapters by
`model`; bad flags are one line."""

import json
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dscoder import model as model_lib
from dscoder.cli import main
from dscoder.infer import lora, prompts
from dscoder.infer.engine import Engine, Sequence, served_name
from dscoder.infer.sampling import SamplingParams

peft = pytest.importorskip("peft")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
from test_server import KEY, start

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    path = argv[1]\n"  # over 16 tokens: rows reuse it
OTHER = "class Handler:\n    def __init__(self, name):\n        self.name = name\n\n    def run(self"
NEW = 12
ADAPTERS = {
    "a": {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "gate_proj", "down_proj"]},
    "b": {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["k_proj", "o_proj", "up_proj", "lm_head"]},
}


def make_adapter(model, folder, config, seed=0):
    """A peft adapter of `model` with random, non-zero lora_B weights (peft starts them at zero),
    large enough to change a tiny model's greedy answer whatever its base weights."""
    torch.manual_seed(seed)
    tuned = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn_like(weight) * 8)
    tuned.save_pretrained(str(folder))
    return tuned


def greedy_ids(model, ids, stops, n=NEW):
    """Greedy tokens after `ids` by full forwards of a transformers model, until a stop token."""
    out = []
    with torch.no_grad():
        while len(out) < n:
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
    return out


@pytest.fixture(scope="module")
def folders(tiny_base_model, tmp_path_factory):
    """Adapter folders a and b, and peft's merged model of each (float32)."""
    root, merged = tmp_path_factory.mktemp("adapters"), {}
    for seed, (name, config) in enumerate(ADAPTERS.items()):
        model, _ = model_lib.load(tiny_base_model, dtype="float32")
        merged[name] = make_adapter(model, root / name, peft.LoraConfig(**config), seed).merge_and_unload().eval()
    return {name: root / name for name in ADAPTERS}, merged


@pytest.fixture(scope="module")
def engine(tiny_base_model, folders):
    adapters = lora.read([(name, folder) for name, folder in folders[0].items()], served_name(tiny_base_model))
    return Engine.load(tiny_base_model, dtype="float32", adapters=adapters)


@pytest.fixture(scope="module")
def expected(engine, folders):
    """What the base (None) and each merged adapter generate greedily for a prompt's ids."""
    models = {None: engine.model, **folders[1]}

    def ids_for(adapter, prompt_ids):
        return greedy_ids(models[adapter], list(prompt_ids), set(engine.stop_token_ids))

    return ids_for


def run(engine, text_or_ids, adapter=None, n=NEW):
    ids = engine.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    return Sequence(ids, SamplingParams(max_new_tokens=n), adapter=adapter)


def test_each_adapter_generates_what_its_merged_model_generates(engine, expected):
    ids = engine.encode(PROMPT)
    outputs = {}
    for adapter in (None, "a", "b"):
        (s,) = engine.generate([run(engine, ids, adapter)])
        assert s.token_ids == expected(adapter, ids), adapter
        outputs[adapter] = tuple(s.token_ids)
    assert len(set(outputs.values())) == 3  # each adapter changes the answer


def test_the_base_and_two_adapters_share_one_batch(engine, expected):
    texts = [PROMPT, OTHER]
    jobs = [(text, adapter) for text in texts for adapter in (None, "a", "b")]
    engine.prompt_cache = None  # every row computed in this batch, none taken from an earlier test
    try:
        together = engine.generate([run(engine, text, adapter) for text, adapter in jobs])
    finally:
        engine.prompt_cache = 1
    assert len(jobs) <= engine.max_rows  # all six decoded in the same steps
    assert [s.token_ids for s in together] == [expected(adapter, engine.encode(text)) for text, adapter in jobs]


def test_rows_and_answers_cached_under_one_adapter_serve_only_that_adapter(engine, expected):
    ids = engine.encode("def parse_config(path, *, strict=False):\n    with open(path) as handle:\n")  # new here
    (first,) = engine.generate([run(engine, ids, "a")])
    (again,) = engine.generate([run(engine, ids, "a")])
    assert again.cached_tokens == len(ids) and again.token_ids == first.token_ids  # a's answer, reused for a
    (other,) = engine.generate([run(engine, ids, "b")])
    assert other.cached_tokens == 0 and other.token_ids == expected("b", ids)
    typed = ids + first.token_ids[:3]  # a's suggestion typed: its answer goes on for a, not for the base
    (continued,) = engine.generate([run(engine, typed, "a")])
    assert continued.cached_tokens == len(typed) and continued.token_ids[: NEW - 3] == first.token_ids[3:]
    (base,) = engine.generate([run(engine, typed)])
    assert base.cached_tokens == 0 and base.token_ids == expected(None, typed)
    warmed = engine.encode("import json\n\n\ndef load(name):\n    return json.loads(name)\n" * 3)
    (held,) = engine.generate([run(engine, warmed, "a")])
    assert held.cached_tokens == 0 and held.token_ids == expected("a", warmed)
    assert engine.warm(warmed, stop=lambda: False, adapter="b") == len(warmed)  # computed ahead again, for b
    (warm_b,) = engine.generate([run(engine, warmed, "b")])
    assert warm_b.cached_tokens == len(warmed) - 1 and warm_b.token_ids == expected("b", warmed)


def test_int8_weights_take_adapters_too(tiny_base_model, folders):
    adapters = lora.read([(name, folder) for name, folder in folders[0].items()], served_name(tiny_base_model))
    engine = Engine.load(tiny_base_model, dtype="bfloat16", quantize=8, adapters=adapters)
    alone = [engine.generate([run(engine, PROMPT, adapter)])[0].token_ids for adapter in (None, "a", "b")]
    engine.prompt_cache = None
    together = engine.generate([run(engine, PROMPT, adapter) for adapter in (None, "a", "b")])
    assert [s.token_ids for s in together] == alone and len({tuple(ids) for ids in alone}) == 3


@pytest.fixture(scope="module")
def server(engine):
    server, thread, url = start(engine)
    yield url, openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    server.should_exit = True
    thread.join(timeout=10)


def test_requests_pick_an_adapter_by_model(engine, server, folders):
    url, client = server
    listed = client.models.list().model_dump()["data"]
    assert [m["id"] for m in listed] == [engine.name, "a", "b"]
    assert [(m.get("parent"), m.get("root")) for m in listed[1:]] == [(engine.name, str(folders[0][n])) for n in "ab"]
    local = {adapter: engine.generate([run(engine, PROMPT, adapter)])[0].text for adapter in (None, "a", "b")}
    for model, adapter in ((engine.name, None), ("a", "a"), ("b", "b")):
        reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW, temperature=0)
        assert reply.choices[0].text == local[adapter] and reply.model == model
    with ThreadPoolExecutor(6) as pool:  # concurrent requests for all three: one batch, each its own answer
        asked = [engine.name, "a", "b"] * 2
        texts = list(
            pool.map(
                lambda m: (
                    client.completions.create(model=m, prompt=PROMPT, max_tokens=NEW, temperature=0).choices[0].text
                ),
                asked,
            )
        )
    assert texts == [local[None], local["a"], local["b"]] * 2
    chat = client.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.model == "b"
    headers = {"Authorization": f"Bearer {KEY}"}
    for model, adapter in (("a", "a"), (None, None)):  # llama.cpp's routes take `model` too
        body = {"prompt": PROMPT, "n_predict": NEW, "temperature": 0} | ({"model": model} if model else {})
        answer = httpx.post(url + "/completion", json=body, headers=headers).json()
        assert answer["content"] == local[adapter] and answer["model"] == (model or engine.name)
    fim = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n    return y\n", "n_predict": 8, "editor_rules": False}
    ids = prompts.insertion(engine, fim["input_prefix"], fim["input_suffix"], 8).ids
    for adapter in ("a", "b"):
        answer = httpx.post(url + "/infill", json=fim | {"model": adapter}, headers=headers).json()
        assert answer["content"] == engine.generate([run(engine, ids, adapter, 8)])[0].text


def test_an_unknown_model_is_a_404_naming_the_served_ones(engine, server):
    url, _ = server
    headers = {"Authorization": f"Bearer {KEY}"}
    chat = {"messages": [{"role": "user", "content": "x"}]}
    for path, body in (
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", chat),
        ("/completion", {"prompt": "x"}),
        ("/infill", {"input_prefix": "x"}),
    ):
        reply = httpx.post(url + path, json=body | {"model": "c", "max_tokens": 2, "n_predict": 2}, headers=headers)
        error = reply.json()["error"]
        assert reply.status_code == 404 and error["code"] == "model_not_found", path
        assert error["message"] == f"the model 'c' does not exist (this server has '{engine.name}', 'a', 'b')"


def test_without_adapters_llama_routes_ignore_the_model_name(tiny_base_model):
    from fastapi.testclient import TestClient

    from dscoder.infer.server import create_app

    with TestClient(create_app(Engine.load(tiny_base_model))) as client:
        body = {"prompt": "def f():", "n_predict": 2, "model": "whatever-an-editor-sends"}
        assert client.post("/completion", json=body).status_code == 200
        assert client.post("/v1/completions", json=body | {"max_tokens": 2}).status_code == 404


def test_eval_scores_an_adapter_by_name(tiny_base_model, folders, server, tmp_path, capsys):
    """`eval generate --api-base URL --api-model a` samples adapter a: the same samples as the
    merged model saved as a folder of its own and evaluated locally."""
    from test_eval_api import rows, shared

    merged = tmp_path / "merged"
    shutil.copytree(tiny_base_model, merged)
    folders[1]["a"].save_pretrained(str(merged))
    common = ["--benchmark", str(shared("HumanEval.jsonl.gz")), "--limit", "2", "--max-new-tokens", "12"]
    assert main(["eval", "generate", "--model", str(merged), "--out", str(tmp_path / "local.jsonl"), *common]) == 0
    api = ["eval", "generate", "--api-base", server[0] + "/v1", "--api-key", KEY]
    assert main([*api, "--out", str(tmp_path / "none.jsonl"), *common]) != 0  # three models: which?
    assert "serves 3 models" in capsys.readouterr().err
    assert main([*api, "--api-model", "a", "--out", str(tmp_path / "a.jsonl"), *common]) == 0
    local, served = rows(tmp_path / "local.jsonl"), rows(tmp_path / "a.jsonl")
    assert local.keys() == served.keys() and [r["raw"] for r in served.values()] == [r["raw"] for r in local.values()]


def name_base(folder, name):
    """Record `name` as the adapter's base in its adapter_config.json."""
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"base_model_name_or_path": name}))


def test_bad_lora_flags_are_one_line_before_serving(tiny_base_model, folders, tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    a = folders[0]["a"]
    config = model_lib.load_config(tiny_base_model).to_dict()
    width = config["hidden_size"]
    narrow = peft.get_peft_model(  # the same layers, other widths
        LlamaForCausalLM(
            LlamaConfig(**(config | {"hidden_size": width // 2, "num_attention_heads": 2, "num_key_value_heads": 2}))
        ),
        peft.LoraConfig(r=2, target_modules=["q_proj"]),
    )
    narrow.save_pretrained(str(tmp_path / "narrow"))
    name_base(tmp_path / "narrow", "other/coder-tiny")
    deeper = config["num_hidden_layers"] + 1
    taller = peft.get_peft_model(  # a layer the base does not have
        LlamaForCausalLM(LlamaConfig(**(config | {"num_hidden_layers": deeper}))),
        peft.LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[deeper - 1]),
    )
    taller.save_pretrained(str(tmp_path / "taller"))
    name_base(tmp_path / "taller", "other/coder-deep")
    model, _ = model_lib.load(tiny_base_model)
    peft.get_peft_model(model, peft.IA3Config(target_modules=["q_proj"], feedforward_modules=[])).save_pretrained(
        str(tmp_path / "ia3")
    )
    model, _ = model_lib.load(tiny_base_model)
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(
        str(tmp_path / "dora")
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "adapter_config.json").write_text("{")
    base = served_name(tiny_base_model)
    cases = [
        (["a"], "--lora a: expected NAME=DIR"),
        ([f"a={a}", f"a={a}"], "the name 'a' is given twice"),
        ([f"{base}={a}"], f"'{base}' is the base model's name"),
        ([f"a={tmp_path / 'missing'}"], "no such folder"),
        ([f"a={tmp_path / 'empty'}"], "not a PEFT adapter folder (no adapter_config.json)"),
        ([f"a={tmp_path / 'garbled'}"], "adapter_config.json cannot be read"),
        ([f"a={tmp_path / 'ia3'}"], "its peft_type is IA3; only LORA adapters are served"),
        ([f"a={tmp_path / 'dora'}"], "uses DoRA (use_dora in adapter_config.json)"),
        (
            [f"a={tmp_path / 'narrow'}"],
            (
                f"made for another model (other/coder-tiny): its model.layers.0.self_attn.q_proj maps {width // 2} to "
                f"{width // 2} features, the base {tiny_base_model}'s maps {width} to {width}"
            ),
        ),
        (
            [f"a={tmp_path / 'taller'}"],
            (
                f"made for another model (other/coder-deep): the base {tiny_base_model} has no layer "
                f"model.layers.{deeper - 1}.self_attn.q_proj"
            ),
        ),
    ]
    for values, said in cases:
        flags = [part for value in values for part in ("--lora", value)]
        code = main(["serve", "--model", str(tiny_base_model), "--port", str(port), *flags])
        err = capsys.readouterr().err
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (values, err)
        assert "serving" not in err and "Traceback" not in err
    code = main(
        [
            "serve",
            "--upstream",
            "http://127.0.0.1:1/v1",
            "--tokenizer",
            str(tiny_base_model),
            "--port",
            str(port),
            "--lora",
            f"a={a}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--lora applies to a local --model" in err and len(err.strip().splitlines()) == 1
