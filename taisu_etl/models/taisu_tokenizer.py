"""TaiSu's own caption tokenizer: CogView's SentencePiece BPE with SOT 50000 / EOT 50001.

The rules, from TaiSu's `semantic_filtering/utils/sp_tokenizer.py` (repository ksOAn6g5/TaiSu,
`SentencepieceChineseTokenizer.tokenize`, used with context_length 52 by `cleaner.py`):

- a caption goes to SentencePiece as it is (`EncodeAsIds(text)`): no lowercasing, no whitespace
  handling of its own; whatever normalisation the .model file carries is all there is;
- the ids are SentencePiece's raw ids, not shifted (0 is both SentencePiece's id 0 and padding);
- each row is [50000, ids..., 50001, 0, 0, ...]; a caption with more than context-2 pieces keeps
  its first context-2 pieces and 50001 sits in the last position.

The text tower pools at `argmax` of the ids, so EOT (50001) must be the largest id of every row:
a SentencePiece model with more than 50,000 pieces would collide with SOT/EOT and is refused. A
smaller model (as trained here for tests) keeps its raw ids; rows of the 50,002-row embedding
between its size and 50,000 are simply never used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from taisu_etl.models.errors import ModelError

if TYPE_CHECKING:
    import sentencepiece

SOT_ID = 50000
EOT_ID = 50001
PAD_ID = 0
VOCAB_SIZE = 50002  # rows of the text tower's token embedding: SentencePiece's 50,000 plus SOT, EOT
CONTEXT_LENGTH = 52


class TaisuTokenizer:
    """Callable like open_clip's tokenizers: `tok(texts, context_length=None) -> LongTensor [N, ctx]`."""

    sot_token_id = SOT_ID
    eot_token_id = EOT_ID
    pad_id = PAD_ID

    def __init__(self, model_proto: bytes, source: str, context_length: int = CONTEXT_LENGTH) -> None:
        import sentencepiece as spm

        self.model_file = source
        self._proto = model_proto
        self.sp: sentencepiece.SentencePieceProcessor = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"tokenizer {source} is not a SentencePiece model ({exc})") from exc
        self.pieces = self.sp.get_piece_size()
        if self.pieces > SOT_ID:
            raise ModelError(
                f"tokenizer {source} has {self.pieces:,} pieces, but TaiSu's text tower reserves ids {SOT_ID} "
                f"and {EOT_ID} for SOT/EOT, so at most {SOT_ID:,} fit; give TaiSu's cog-pretrain.model"
            )
        if context_length < 2:
            raise ModelError(f"context_length must be at least 2 (SOT and EOT), not {context_length}")
        self.context_length = context_length
        # What the model sees, for the same checks as the other tokenizers.
        self.vocab_size = VOCAB_SIZE
        self.sha256 = hashlib.sha256(model_proto).hexdigest()

    # Pickled as the model bytes: the file may have come from the object store.
    def __getstate__(self) -> dict[str, object]:
        return {"model_proto": self._proto, "source": self.model_file, "context_length": self.context_length}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["model_proto"], state["source"], state["context_length"])  # type: ignore[misc, arg-type]

    def encode(self, text: str) -> list[int]:
        """SentencePiece's raw ids of `text` (no SOT/EOT)."""
        return list(self.sp.encode(text))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        if ctx < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), not {ctx}")
        out = torch.full((len(texts), ctx), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text)[: ctx - 2], EOT_ID]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of `ids` without SOT, EOT and padding (as TaiSu's `decode`)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.sp.decode([int(i) for i in ids if int(i) not in (PAD_ID, SOT_ID, EOT_ID)])
