"""Hugging Face export: transformers' LlamaForCausalLM reproduces the megatron model's logits."""
import json

import pytest
import torch

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_export import export_hf

from .helpers import loaded_model, megatron_logits, relative_error

TOKENS = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))


def _hf_logits(directory):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.mark.parametrize("compression", ["dense", "w4", "s50:nm2/4", "s50+w4"])
def test_exported_logits_match_megatron(tmp_path, compression):
    loaded = loaded_model(compression)
    summary = export_hf(loaded, tmp_path, progress=False)
    assert summary["files"] == ["model.safetensors"]
    expected = megatron_logits(loaded.model, TOKENS)
    actual = _hf_logits(tmp_path)
    assert actual.shape == expected.shape == (2, 32, 384)
    assert relative_error(expected, actual) <= 1e-4
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["megatron_csl"]["compression"] == compression
    assert config["megatron_csl"]["activation_quantization"] is None
    assert config["num_key_value_heads"] == 2 and config["vocab_size"] == 384


def test_master_weights_differ_from_compressed_and_match_the_dense_forward(tmp_path):
    loaded = loaded_model("s50+w4")
    (tmp_path / "m").mkdir()
    export_hf(loaded, tmp_path / "m", weights="master", progress=False)
    master = _hf_logits(tmp_path / "m")
    compressed = megatron_logits(loaded.model, TOKENS)
    assert relative_error(compressed, master) > 1e-2  # the export really skipped compression
    dense = loaded_model("dense")
    dense.model.load_state_dict(loaded.model.state_dict())
    assert relative_error(megatron_logits(dense.model, TOKENS), master) <= 1e-4
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["megatron_csl"]["weights"] == "master"


def test_activation_quantization_is_declared(tmp_path):
    loaded = loaded_model("w4a8")
    summary = export_hf(loaded, tmp_path, progress=False)
    assert any("cannot express activation quantization" in n for n in summary["notes"])
    config = json.loads((tmp_path / "config.json").read_text())
    act = config["megatron_csl"]["activation_quantization"]
    assert act["a_bits"] == 8 and act["applied_in_this_export"] is False


def test_bad_weights_choice(tmp_path):
    with pytest.raises(ConversionError, match="--weights 'latent'"):
        export_hf(loaded_model("w4"), tmp_path, weights="latent")


def test_sharded_safetensors_with_index(tmp_path):
    loaded = loaded_model("dense")
    summary = export_hf(loaded, tmp_path, max_shard_size=60_000, progress=False)
    assert len(summary["files"]) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(summary["files"])
    assert relative_error(megatron_logits(loaded.model, TOKENS), _hf_logits(tmp_path)) <= 1e-4


def test_exported_tokenizer_matches_sentencepiece_on_every_document_of_a_real_corpus(tmp_path):
    """A Llama-like tokenizer trained by the project on the shipped Wikipedia corpus: the export's
    tokenizer (as AutoTokenizer loads it) gives SentencePiece's ids on all 10,033 documents, adds
    no BOS, and decodes like SentencePiece."""
    import gzip
    import json as _json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from megatron_csl.data.reference_files import WIKI_CORPUS
    from megatron_csl.data.tokenizer import train_tokenizer

    report = train_tokenizer([str(WIKI_CORPUS)], str(tmp_path / "wiki"), vocab_size=4096, threads=1,
                             progress=False)
    loaded = loaded_model("dense", tokenizer_model=report.model_path, vocab_size=4096,
                          padded_vocab_size=4096)
    out = tmp_path / "hf"
    out.mkdir()
    summary = export_hf(loaded, out, progress=False)
    assert not [n for n in summary["notes"] if "tokenizer" in n], summary["notes"]
    assert (out / "tokenizer.model").read_bytes() == open(report.model_path, "rb").read()
    tok = AutoTokenizer.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=report.model_path)

    assert tok(" one").input_ids == sp.encode(" one") and len(sp.encode(" one")) == 2  # the reported case
    with gzip.open(WIKI_CORPUS, "rt", encoding="utf-8") as f:
        texts = [_json.loads(line)["text"] for line in f]
    assert len(texts) == 10_033
    expected = sp.encode(texts)
    got = tok(texts).input_ids  # default call: no special tokens added, as in training
    differ = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not differ, f"{len(differ)} documents differ, first: {texts[differ[0]][:80]!r}"
    sample = expected[::50]
    assert tok.batch_decode(sample) == sp.decode(sample)
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert tok.eos_token_id == 2


def test_tokenizer_export_without_a_converter_keeps_tokenizer_model_and_says_so(tmp_path, monkeypatch):
    import transformers

    from megatron_csl.convert.hf_export import export_tokenizer
    from megatron_csl.data.reference_files import WIKI_CORPUS
    from megatron_csl.data.tokenizer import train_tokenizer

    model = train_tokenizer([str(WIKI_CORPUS)], str(tmp_path / "t"), vocab_size=400, sample_docs=300,
                            threads=1, progress=False).model_path

    def no_converter(*args, **kwargs):
        raise ValueError("Couldn't instantiate the backend tokenizer")

    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "from_pretrained", no_converter)
    out = tmp_path / "hf"
    out.mkdir()
    ids, notes = export_tokenizer(model, out)
    assert ids["eos_token_id"] == 2 and sorted(p.name for p in out.iterdir()) == ["tokenizer.model"]
    assert len(notes) == 1 and "only tokenizer.model is exported" in notes[0]
