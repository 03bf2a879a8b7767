"""SentencePiece vocabularies for Chinese captions, in the shape open_clip's text towers expect.

TaiSu trained a 50k-piece BPE vocabulary on its own captions (context length 52): open_clip's
English BPE handles Chinese only through byte fallback (~2.4 tokens per character), and no
pretrained Chinese tokenizer can be fetched offline.

Token id layout (what the text tower sees): 0 is padding, then SentencePiece's own ids. Models
trained by `train_sentencepiece` already reserve id 0 for padding (pad=0, unk=1, bos=2, eos=3); for
any other SentencePiece model every id is shifted up by one so that 0 stays free for padding.
open_clip's CLIP text tower pools the EOT position with `pool_type` "argmax" (EOT must be the
largest id, true of open_clip's own BPE only) or "eos" with `eos_id`; with these vocabularies
use "eos" and set `eos_id` to `SentencePieceTokenizer.eos_id` (the tiny configs do).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from taisu_etl.models.errors import ModelError

log = logging.getLogger(__name__)

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3


def _lines(captions: Iterable[str]) -> Iterator[str]:
    # SentencePiece reads one sentence per item; newlines inside a caption would split it.
    for text in captions:
        text = text.replace("\r", " ").replace("\n", " ").strip()
        if text:
            yield text


def train_sentencepiece(
    captions: Iterable[str],
    out_prefix: str | Path,
    *,
    vocab_size: int = 50000,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool | None = None,
    max_sentences: int = 10_000_000,
) -> Path:
    """Train a SentencePiece model on `captions`; write `<out_prefix>.model` and `.vocab`.

    The captions are streamed to SentencePiece (its `sentence_iterator`), which keeps its own
    sample of at most `max_sentences` of them, so the corpus is never held twice. When the corpus
    supports fewer pieces than `vocab_size` (a small corpus), the vocabulary is trained smaller and
    a warning says how big it came out, rather than failing as SentencePiece does by default.

    Normalisation is off ("identity"): NFKC would turn the full-width Chinese punctuation
    "，" into ",", and decoded captions must equal the input. `byte_fallback` (default: on for
    vocabularies of 1000 pieces or more) spells characters the vocabulary lacks as UTF-8 bytes, so
    no caption decodes to "⁇".
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram", "char", "word"):
        raise ModelError(f"unknown SentencePiece model type {model_type!r}; use bpe, unigram, char or word")
    if vocab_size < 8:
        raise ModelError(f"vocab_size {vocab_size} is too small; use at least 8")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    if byte_fallback is None:
        byte_fallback = vocab_size >= 1000

    counter = {"n": 0}

    def counted() -> Iterator[str]:
        for text in _lines(captions):
            counter["n"] += 1
            yield text

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(),
            model_prefix=str(out_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            # A soft limit: a small corpus yields fewer pieces instead of an error.
            hard_vocab_limit=False,
            byte_fallback=byte_fallback,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=4096,
            minloglevel=2,
            num_threads=2,
        )
    except RuntimeError as exc:
        if counter["n"] == 0:
            raise ModelError("no captions to train a tokenizer on (all were empty)") from exc
        raise ModelError(f"SentencePiece training failed: {str(exc).strip().splitlines()[-1]}") from exc
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    got = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    if got < vocab_size:
        log.warning(
            "the corpus (%d captions) supports only %d pieces, not the %d asked for; trained %d",
            counter["n"], got, vocab_size, got,
        )
    return model_path


_CJK_SPACE = re.compile(r"(?<=[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]) (?=[\u3000-\u303f\u3400-\u9fff\uff00-\uffef])")


class SentencePieceTokenizer:
    """Callable like open_clip's tokenizers: `tok(texts, context_length=None) -> LongTensor`.

    Each row is [BOS, pieces..., EOS, 0, 0, ...]; a text too long is cut so that EOS still ends
    it (the text tower pools the EOS position).
    """

    def __init__(self, model_file: str | Path, context_length: int = 52) -> None:
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise ModelError(f"tokenizer model {path} does not exist; train one with `taisu-etl tokenizer train`")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{path} is not a SentencePiece model ({exc})") from exc
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise ModelError(f"{path} has no BOS/EOS pieces; retrain it with `taisu-etl tokenizer train`")
        self.model_file = str(path)
        self.offset = 0 if self.sp.pad_id() == PAD_ID else 1
        self.pad_id = PAD_ID
        self.sot_token_id = self.bos_id = self.sp.bos_id() + self.offset
        self.eot_token_id = self.eos_id = self.sp.eos_id() + self.offset
        self.vocab_size = self.sp.get_piece_size() + self.offset
        self.context_length = context_length

    # Pickled by file name: DataLoader workers re-open the model rather than copy its C++ state.
    def __getstate__(self) -> dict[str, object]:
        return {"model_file": self.model_file, "context_length": self.context_length}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["model_file"], state["context_length"])  # type: ignore[misc, arg-type]

    def encode(self, text: str) -> list[int]:
        """Piece ids of `text` in the model's id space (no BOS/EOS)."""
        return [i + self.offset for i in self.sp.encode(text.replace("\n", " "))]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        if ctx < 2:
            raise ValueError(f"context_length must be at least 2 (BOS and EOS), not {ctx}")
        out = torch.zeros(len(texts), ctx, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.bos_id, *self.encode(text)[: ctx - 2], self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of `ids`: stops at EOS, skips BOS and padding; no spaces between CJK characters."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id) or i < self.offset or i >= self.vocab_size:
                continue
            pieces.append(i - self.offset)
        text = self.sp.decode(pieces)
        # Vocabularies trained with a dummy prefix ("▁") put spaces between pieces; Chinese has none.
        return _CJK_SPACE.sub("", text).strip()
