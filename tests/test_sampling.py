"""Token choice, stop sequences and incremental decoding."""

import torch

from dscoder.infer.sampling import IncrementalDecoder, SamplingParams, find_stop, held_back, next_token


def test_greedy_picks_the_argmax_and_sampling_is_seeded():
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    assert next_token(logits, SamplingParams(), None) == 1
    params = SamplingParams(temperature=1.0)
    draws = [next_token(logits, params, torch.Generator().manual_seed(s)) for s in range(200)]
    again = [next_token(logits, params, torch.Generator().manual_seed(s)) for s in range(200)]
    assert draws == again and {1, 3} <= set(draws)


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    for s in range(100):
        g = torch.Generator().manual_seed(s)
        assert next_token(logits, SamplingParams(temperature=1.0, top_k=2), g) in (0, 1)
        assert next_token(logits, SamplingParams(temperature=1.0, top_p=0.5), g) == 0


def test_stop_sequences_across_boundaries():
    assert find_stop("abc\ndef", ("\n",)) == 3
    assert find_stop("print(1)\n\ndef", ("\n\n", "def")) == 8
    assert find_stop("no stop here", ("###",)) is None
    assert held_back("value = 1\n#", ("\n##",)) == 2
    assert held_back("value", ("\n##",)) == 0


def test_incremental_decoding_never_splits_characters(trained_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    text = "naïve café 漢字 🦙 done\n"
    ids = tok.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
