"""`taisu-etl tokenizer ...` and `taisu-etl models ...` (mounted by the main CLI).

Heavy imports (torch, open_clip, sentencepiece) happen inside the commands, so `taisu-etl --help`
stays fast. User errors print one `error: ...` line on stderr and exit with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Annotated, Optional

import typer

from taisu_etl.errors import TaisuError
from taisu_etl.models.errors import ModelError

tokenizer_app = typer.Typer(help="Chinese SentencePiece vocabularies for the text towers.", no_args_is_help=True)
models_app = typer.Typer(help="CLIP/CoCa models: the committed tiny ones and your own checkpoints.", no_args_is_help=True)
# Both under one app too, for `python -m taisu_etl.models.cli` and tests.
app = typer.Typer(help="taisu-etl model tools.", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(models_app, name="models")


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except (TaisuError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def train_from_captions(captions: Iterable[str], out: str | Path, vocab_size: int = 50000, *, limit: int | None = None,
                        model_type: str = "bpe") -> Path:  # fmt: skip
    """Train TaiSu's caption vocabulary (BPE, 50k pieces by default) from any caption source.

    `out` is the output prefix or the .model path; returns the .model path. The lead's ledger
    reader and the `--captions-file` option both end here.
    """
    from taisu_etl.models.tokenizer import train_sentencepiece

    out = Path(out)
    prefix = out.with_suffix("") if out.suffix == ".model" else out
    if limit is not None:
        captions = islice(captions, limit)
    return train_sentencepiece(captions, prefix, vocab_size=vocab_size, model_type=model_type)


def _read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


@tokenizer_app.command("train")
def tokenizer_train(
    out: Annotated[Path, typer.Option("--out", help="output: PREFIX (writes PREFIX.model and PREFIX.vocab) or PREFIX.model")],
    captions_file: Annotated[Optional[Path], typer.Option("--captions-file", help="train on this UTF-8 file, one caption per line, instead of the ledger")] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="TOML recipe naming the ledger (else TAISU_* settings)")] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="pieces (TaiSu: 50000); smaller corpora get fewer")] = 50000,
    limit: Annotated[Optional[int], typer.Option("--limit", help="use at most this many captions")] = None,
    model_type: Annotated[str, typer.Option("--model-type", help="bpe | unigram | char")] = "bpe",
) -> None:
    """Train a SentencePiece vocabulary on the ledger's captions that passed the text filter
    (web, then generated), or on a file of captions."""
    with _user_errors():
        if captions_file is not None:
            if not captions_file.is_file():
                raise ModelError(f"captions file {captions_file} does not exist")
            captions: Iterable[str] = _read_lines(captions_file)
        else:
            from taisu_etl.config import load_settings
            from taisu_etl.services import open_ledger

            captions = open_ledger(load_settings(recipe)).iter_captions()
        model = train_from_captions(captions, out, vocab_size, limit=limit, model_type=model_type)
        from taisu_etl.models.tokenizer import SentencePieceTokenizer

        typer.echo(f"wrote {model} ({SentencePieceTokenizer(model).vocab_size} ids)")


@models_app.command("build-tiny")
def models_build_tiny(
    out: Annotated[Optional[Path], typer.Option("--out", help="output folder (default: the package's models/tiny)")] = None,
    clip_epochs: Annotated[int, typer.Option("--clip-epochs")] = 12,
    coca_epochs: Annotated[int, typer.Option("--coca-epochs")] = 8,
    coca_extra_epochs: Annotated[int, typer.Option("--coca-extra-epochs", help="CoCa's second, gentler stage")] = 6,
    n_train: Annotated[int, typer.Option("--n-train", help="synthetic training pairs")] = 30000,
    threads: Annotated[int, typer.Option("--threads")] = 2,
) -> None:
    """Retrain the tiny CLIP and CoCa models on the synthetic web (10-20 minutes on 2 CPU cores)."""
    with _user_errors():
        from taisu_etl.models.build_tiny import TINY_DIR, build

        written = build(out or TINY_DIR, n_train=n_train, clip_epochs=clip_epochs, coca_epochs=coca_epochs,
                        coca_extra_epochs=coca_extra_epochs, threads=threads)
        for what, path in written.items():
            typer.echo(f"{what}: {path}")


@models_app.command("info")
def models_info(
    spec: Annotated[str, typer.Argument(help="tiny-clip | tiny-coca | ARCH=CHECKPOINT[,tokenizer=T][,context_length=N] | taisu-lit:visual=PATH,text=PATH,sp=PATH")],
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """Load a model and print its id, parameter count and device."""
    with _user_errors():
        from taisu_etl.models import parse_spec
        from taisu_etl.models._loading import load_model

        parsed = parse_spec(spec)
        loaded = load_model(parsed, device=device, store=None, kind="any")
        kind = "CoCa (captions)" if "multimodal_cfg" in loaded.config else "CLIP (scores)"
        params = sum(p.numel() for p in loaded.model.parameters())
        typer.echo(f"model id:   {loaded.model_id}")
        typer.echo(f"kind:       {kind}")
        typer.echo(f"parameters: {params:,}")
        typer.echo(f"image size: {loaded.image_size}")
        typer.echo(f"context:    {loaded.context_length} tokens")
        typer.echo(f"device:     {loaded.device}")


if __name__ == "__main__":
    try:
        app()
    except TaisuError as exc:  # pragma: no cover - the commands handle their own
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
