"""SentencePiece vocabularies: training on a small corpus, Chinese round trips, the tensor layout."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from taisu_etl.models import ModelError
from taisu_etl.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, SentencePieceTokenizer, train_sentencepiece
from taisu_etl.synthweb import scenes as sw

CORPUS = [p.caption for p in sw.make_pairs(400, seed=2, mismatch_rate=0.0)] + [
    "北京故宫的红墙，2023年秋天拍摄。",
    "iPhone 15 手机壳（透明）",
    "“你好”，世界！",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(iter(CORPUS), tmp_path_factory.mktemp("tok") / "zh", vocab_size=50000)


def test_small_corpus_gets_a_smaller_vocabulary(bpe: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert bpe.name == "zh.model" and bpe.with_suffix(".vocab").is_file()
    tok = SentencePieceTokenizer(bpe)
    assert 300 < tok.vocab_size < 50000  # 256 byte pieces + what the corpus supports


def test_warns_when_the_vocabulary_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        train_sentencepiece(CORPUS[:50], tmp_path / "small", vocab_size=5000, model_type="char")
    assert "supports only" in caplog.text and "not the 5000 asked for" in caplog.text


def test_chinese_round_trips(bpe: Path) -> None:
    tok = SentencePieceTokenizer(bpe, context_length=64)
    for text in CORPUS[-3:] + ["从未见过的字：龘靐齉", "红色背景上有一个蓝色的圆形"]:
        ids = tok([text])[0]
        assert tok.decode(ids) == text


def test_tensor_layout(bpe: Path) -> None:
    tok = SentencePieceTokenizer(bpe, context_length=16)
    out = tok(["一个红色的圆形", "画面中间有一个大的红色圆形，背景是蓝色，" * 3])
    assert out.dtype == torch.long and out.shape == (2, 16)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID)
    first = out[0].tolist()
    n = first.index(EOS_ID)
    assert first[0] == BOS_ID and all(i > EOS_ID for i in first[1:n]) and first[n + 1 :] == [0] * (15 - n)
    assert out[1, 0] == BOS_ID and out[1, -1] == EOS_ID and PAD_ID not in out[1].tolist()  # cut, EOS kept
    assert tok("一个红色的圆形", context_length=8).shape == (1, 8)
    assert pickle.loads(pickle.dumps(tok))(["一个"]).tolist() == tok(["一个"]).tolist()


def test_foreign_model_ids_are_shifted_to_free_zero(tmp_path: Path) -> None:
    # A SentencePiece model trained with the library defaults (unk=0, bos=1, eos=2, no pad).
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / "plain"), vocab_size=100,
                                   model_type="char", hard_vocab_limit=False, minloglevel=2)  # fmt: skip
    tok = SentencePieceTokenizer(tmp_path / "plain.model", context_length=12)
    assert (tok.bos_id, tok.eos_id, tok.offset) == (2, 3, 1)
    row = tok(["圆形"])[0].tolist()
    end = row.index(3)
    assert row[0] == 2 and all(i > 3 for i in row[1:end]) and row[end + 1 :] == [0] * (11 - end)
    assert tok.decode(row) == "圆形"


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        SentencePieceTokenizer(tmp_path / "missing.model")
    with pytest.raises(ModelError, match="no captions"):
        train_sentencepiece(iter(["", "  "]), tmp_path / "empty", vocab_size=100)
    with pytest.raises(ModelError, match="model type"):
        train_sentencepiece(iter(CORPUS), tmp_path / "x", model_type="wordpiece")
