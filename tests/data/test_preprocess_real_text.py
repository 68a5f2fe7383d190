"""On real English (10,033 Wikipedia summaries in C4's format, shipped in
megatron_csl/data/reference/): the pipeline's documents equal SentencePiece's own encoding."""
import gzip
import json

from megatron_csl.data.preprocess import PreprocessConfig, preprocess
from megatron_csl.data.tokenizer import train_tokenizer

from .conftest import WIKI_CORPUS


def test_wikipedia_documents_match_sentencepiece(tmp_path):
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    report = train_tokenizer([WIKI_CORPUS], str(tmp_path / "wiki3k"), vocab_size=3000,
                             model_type="bpe", sample_docs=1500, seed=0, progress=False)
    sp = spm.SentencePieceProcessor(model_file=report.model_path)
    out = preprocess(PreprocessConfig(
        inputs=[WIKI_CORPUS], tokenizer_model=report.model_path,
        output_prefix=str(tmp_path / "wiki"), workers=2, append_eod=True, max_docs=400,
        progress=False,
    ))
    with gzip.open(WIKI_CORPUS, "rt", encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(400)]
    ds = IndexedDataset(out.dataset_prefix)
    assert out.units == 2 and len(ds) == out.documents == 400 and out.malformed == 0
    for i, ids in enumerate(sp.encode(texts)):
        assert ds[i].tolist() == ids + [sp.eos_id()]
    # real text really exercises the tokenizer: multi-byte characters and digits occur
    assert any(not t.isascii() for t in texts) and any(c.isdigit() for t in texts for c in t)
