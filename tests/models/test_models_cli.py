"""`tokenizer train` and `models info`: output, and one `error:` line with exit 2 for user errors."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from taisu_etl.models.cli import app, train_from_captions
from taisu_etl.models.tokenizer import SentencePieceTokenizer
from taisu_etl.synthweb import scenes as sw

runner = CliRunner()


def test_tokenizer_train_from_file(tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(p.caption for p in sw.make_pairs(300, seed=4)) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["tokenizer", "train", "--captions-file", str(captions), "--out", str(tmp_path / "zh.model"),
                                 "--vocab-size", "2000", "--limit", "200"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "zh.model").is_file()
    tok = SentencePieceTokenizer(tmp_path / "zh.model")
    assert tok.decode(tok(["蓝色背景上有一个红色的圆形"])[0]) == "蓝色背景上有一个红色的圆形"


def test_train_from_captions_library_call(tmp_path: Path) -> None:
    model = train_from_captions((p.caption for p in sw.make_pairs(100, seed=5)), tmp_path / "lib", vocab_size=500)
    assert model == tmp_path / "lib.model" and model.is_file()


def test_tokenizer_train_from_the_ledger(tmp_path: Path, monkeypatch) -> None:
    """Without --captions-file the captions come from the ledger: those that passed the text filter."""
    from taisu_etl.db.ledger import Ledger, NewSample
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.vocab import Stage, State

    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("TAISU_DB_URL", raising=False)
    (tmp_path / "var").mkdir()
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'var' / 'ledger.db'}", require_schema=False)
    upgrade(ledger.engine)
    pairs = sw.make_pairs(200, seed=6)
    ledger.add_samples(NewSample(caption=p.caption, source="s.csv", url=f"http://a.example.com/{i}.jpg") for i, p in enumerate(pairs))
    ledger.add_samples([NewSample(caption="垃圾广告加微信", source="s.csv", url="http://a.example.com/spam.jpg")])
    ledger.move(list(range(1, 201)), from_state=State.INGESTED, to_state=State.TEXT_OK, stage=Stage.TEXT, reason="ok")
    assert sum(1 for _ in ledger.iter_captions()) == 200  # the still-ingested spam caption is not used
    ledger.dispose()
    result = runner.invoke(app, ["tokenizer", "train", "--out", str(tmp_path / "zh"), "--vocab-size", "500", "--model-type", "char"])
    assert result.exit_code == 0, result.output
    tok = SentencePieceTokenizer(tmp_path / "zh.model")
    assert tok.decode(tok(["红色的圆形"])[0]) == "红色的圆形"


def test_tokenizer_train_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tokenizer", "train", "--out", str(tmp_path / "x"), "--captions-file", str(tmp_path / "no.txt")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_models_info() -> None:
    result = runner.invoke(app, ["models", "info", "tiny-clip", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "model id:   tiny-clip@" in result.output and "device:     cpu" in result.output and "parameters:" in result.output
    result = runner.invoke(app, ["models", "info", "builtin:tiny-coca", "--device", "cpu"])
    assert result.exit_code == 0 and "CoCa" in result.output


def test_models_info_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "info", f"builtin:tiny-clip={tmp_path / 'none.pt'}"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and f"error: checkpoint file {tmp_path / 'none.pt'} does not exist" in result.output
    result = runner.invoke(app, ["models", "info", "nonsense"])
    assert result.exit_code == 2 and result.output.startswith("error: bad model spec")
