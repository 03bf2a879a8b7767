"""The `[score]` and `[caption]` tables of a recipe: which model, on what device, and which rule.

No torch import here: settings load in every process, most of which never touch a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from taisu_etl.models import ModelSpec


class ModelConfig(BaseModel):
    """A model: an open_clip architecture, a checkpoint and a tokenizer. Nothing is downloaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str = Field(
        description=(
            "open_clip built-in name (e.g. ViT-B-32), a path to an open_clip JSON config (the model "
            "name is the file stem), builtin:tiny-clip / builtin:tiny-coca (the project's tiny models), or "
            "taisu-lit (TaiSu's released LiT pair, scoring only)"
        )
    )
    checkpoint: str = Field(
        "",
        description=(
            "local file, or store:<object key> in the object store; empty only for the builtin models "
            "(taisu-lit: the OpenAI-CLIP image tower's state dict)"
        ),
    )
    text_checkpoint: str = Field("", description="taisu-lit only: TaiSu's text tower file ({'weights': ...}), a path or store:<key>")
    tokenizer: str = Field(
        "open_clip", description="open_clip | sentencepiece:<path to .model> | builtin (taisu-lit: sentencepiece:<cog-pretrain.model>)",
    )
    context_length: int | None = Field(None, ge=4, description="token context length; default: the config's")

    @model_validator(mode="after")
    def _needs_checkpoint(self) -> "ModelConfig":
        if not self.arch.startswith("builtin:") and not self.checkpoint:
            raise ValueError(f"model {self.arch!r} needs a checkpoint (a local file or store:<key>): no weights are downloaded")
        if self.arch == "taisu-lit" and (not self.text_checkpoint or not self.tokenizer.startswith("sentencepiece:")):
            raise ValueError('model "taisu-lit" needs text_checkpoint (the text tower) and tokenizer = "sentencepiece:<path>"')
        if self.arch != "taisu-lit" and self.text_checkpoint:
            raise ValueError("text_checkpoint is for arch taisu-lit only")
        return self

    def spec(self) -> "ModelSpec":
        from taisu_etl.models import ModelSpec, builtin_spec

        if self.arch.startswith("builtin:") and not self.checkpoint:
            return builtin_spec(self.arch.removeprefix("builtin:"))
        return ModelSpec(arch=self.arch, checkpoint=self.checkpoint, tokenizer=self.tokenizer, context_length=self.context_length,
                         text_checkpoint=self.text_checkpoint)


class ScoreConfig(BaseModel):
    """Image-text retrieval filtering of `image_ok` samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig = ModelConfig(arch="builtin:tiny-clip", tokenizer="builtin")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    batch_size: int = Field(64, ge=1, description="images per model forward")
    workers: int = Field(2, ge=0, description="processes that decode and preprocess images (0: in the main process)")
    prefetch_batches: int = Field(4, ge=1, description="batches decoded ahead of the model, so it never waits")
    chunk_size: int = Field(
        12_000, ge=1,
        description="samples decided together: the TaiSu rule's groups and the quantile are drawn within one chunk",
    )
    rule: Literal["taisu", "threshold", "quantile"] = Field(
        "taisu", description="taisu: rank-1 within shuffled groups; threshold: cosine >= threshold; quantile: drop the lowest share",
    )
    group_size: int = Field(120, ge=2, description="TaiSu rule: pairs per group (TaiSu used 120)")
    mode: Literal["or", "and"] = Field(
        "or", description="TaiSu rule: keep if the image ranks its caption first OR (and) the caption ranks its image first",
    )
    seed: int = Field(0, description="TaiSu rule: seed of the shuffle into groups (recorded in each event)")
    threshold: float = Field(0.2, ge=-1, le=1, description="threshold rule: minimum cosine score (meaningful for one model only)")
    quantile: float = Field(0.1, ge=0, lt=1, description="quantile rule: share of the lowest-scoring pairs dropped, per model")
    store_embeddings: bool = Field(True, description="keep image and text embeddings per shard in the object store")
    queue: str = Field("default", description="Airflow queue of the score tasks (e.g. gpu, for a GPU worker)")


class CaptionConfig(BaseModel):
    """Generated captions (TaiSu's `g`) for accepted samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig = ModelConfig(arch="builtin:tiny-coca", tokenizer="builtin")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    batch_size: int = Field(16, ge=1, description="images per generate call")
    workers: int = Field(1, ge=0, description="processes that decode and preprocess images (0: in the main process)")
    num_captions: int = Field(3, ge=1, le=16, description="candidates generated per image")
    method: Literal["beam", "sample"] = Field("beam", description="beam search (diverse groups) or top-p sampling")
    beam_width: int = Field(4, ge=1)
    top_p: float = Field(0.9, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    max_len: int = Field(30, ge=4, le=128, description="most tokens per generated caption")
    seed: int = Field(0, description="sampling seed (recorded)")
    check_group: int = Field(
        120, ge=1,
        description=(
            "retrieval check: a candidate is kept only if it ranks its own image first among this many "
            "images of the same chunk (1 turns the check off)"
        ),
    )
    min_score: float = Field(-1.0, ge=-1, le=1, description="retrieval check: minimum cosine of image and candidate")
    queue: str = Field("default", description="Airflow queue of the caption tasks (e.g. gpu)")
