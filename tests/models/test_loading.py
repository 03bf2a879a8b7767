"""Loading models: specs, checkpoints (file and object store), errors a user can act on, devices."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from taisu_etl.models import CaptionGenerator, ClipScorer, ModelError, ModelSpec, builtin_spec, choose_device, parse_spec
from taisu_etl.models.spec import TINY_DIR
from taisu_etl.storage.local import LocalObjectStore


def _clip_spec(checkpoint: str) -> ModelSpec:
    return ModelSpec(arch="builtin:tiny-clip", checkpoint=checkpoint, tokenizer="builtin")


def test_builtin_spec_paths_exist() -> None:
    for name in ("tiny-clip", "tiny-coca"):
        spec = builtin_spec(name)
        assert Path(spec.checkpoint).is_file() and spec.arch == f"builtin:{name}" and spec.tokenizer == "builtin"
    with pytest.raises(ModelError, match="unknown built-in model 'huge'"):
        builtin_spec("huge")


def test_parse_spec() -> None:
    assert parse_spec("tiny-clip") == builtin_spec("tiny-clip")
    assert parse_spec("ViT-B-32=/m/w.pt,tokenizer=sentencepiece:/m/zh.model,context_length=52") == ModelSpec(
        "ViT-B-32", "/m/w.pt", "sentencepiece:/m/zh.model", 52
    )
    with pytest.raises(ModelError, match="bad model spec"):
        parse_spec("ViT-B-32")


def test_scorer_embeddings(tiny_clip: ClipScorer) -> None:
    img = Image.new("RGB", (256, 256), (200, 30, 30))
    pixels = torch.stack([tiny_clip.preprocess(img)] * 2)
    assert pixels.shape == (2, 3, tiny_clip.image_size, tiny_clip.image_size)
    emb = tiny_clip.encode_images(pixels)
    txt = tiny_clip.encode_texts(["红色背景上有一个蓝色的圆形", "一个绿色的正方形"])
    for e in (emb, txt):
        assert e.dtype == torch.float32 and e.device.type == "cpu" and e.shape == (2, 128)
        assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    assert tiny_clip.encode_texts([]).shape == (0, 128)
    assert tiny_clip.model_id.startswith("tiny-clip@") and len(tiny_clip.model_id) == len("tiny-clip@") + 12


def test_preprocess_is_picklable(tiny_clip: ClipScorer, tiny_coca: CaptionGenerator) -> None:
    img = Image.new("RGB", (300, 200), (10, 200, 30))
    for model in (tiny_clip, tiny_coca):
        again = pickle.loads(pickle.dumps(model.preprocess))
        assert torch.equal(again(img), model.preprocess(img))


def test_tokenizer_is_picklable(tiny_clip: ClipScorer) -> None:
    tok = pickle.loads(pickle.dumps(tiny_clip.tokenizer))
    assert torch.equal(tok(["一个红色的圆形"]), tiny_clip.tokenizer(["一个红色的圆形"]))


def test_missing_checkpoint_says_which_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelError, match=f"checkpoint file {missing} does not exist"):
        ClipScorer.load(_clip_spec(str(missing)), device="cpu")


def test_unknown_arch() -> None:
    with pytest.raises(ModelError, match="unknown model arch 'ViT-Q-99'"):
        ClipScorer.load(ModelSpec("ViT-Q-99", ""), device="cpu")
    with pytest.raises(ModelError, match="model config file .*missing.json does not exist"):
        ClipScorer.load(ModelSpec("/no/such/missing.json", ""), device="cpu")


def test_checkpoint_of_another_arch_says_which_tensor(tmp_path: Path) -> None:
    # The same arch with a wider text tower: every text weight has another shape.
    cfg = json.loads((TINY_DIR / "tiny-clip.json").read_text())
    cfg["text_cfg"]["width"] = 64
    cfg["text_cfg"]["heads"] = 2
    arch = tmp_path / "tiny-clip-narrow.json"
    arch.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"does not fit arch .*tiny-clip-narrow.json: .* is \[.*\] in the checkpoint but \[.*\] in the arch"):
        ClipScorer.load(ModelSpec(str(arch), builtin_spec("tiny-clip").checkpoint, tokenizer="builtin"), device="cpu")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="is not a torch state dict"):
        ClipScorer.load(_clip_spec(str(bad)), device="cpu")


def test_captioner_needs_coca_arch() -> None:
    with pytest.raises(ModelError, match="not a CoCa model"):
        CaptionGenerator.load(builtin_spec("tiny-clip"), device="cpu")


def test_model_id_follows_the_weights(tmp_path: Path, tiny_clip: ClipScorer) -> None:
    state = torch.load(builtin_spec("tiny-clip").checkpoint, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    other = tmp_path / "other.pt"
    torch.save(state, other)
    changed = ClipScorer.load(_clip_spec(str(other)), device="cpu")
    random_init = ClipScorer.load(_clip_spec(""), device="cpu")
    assert len({tiny_clip.model_id, changed.model_id, random_init.model_id}) == 3
    assert random_init.model_id == ClipScorer.load(_clip_spec(""), device="cpu").model_id  # seeded init


def test_checkpoint_from_object_store(tmp_path: Path, tiny_clip: ClipScorer) -> None:
    store = LocalObjectStore(tmp_path / "store")
    store.put("models/tiny-clip.pt", Path(builtin_spec("tiny-clip").checkpoint).read_bytes())
    scorer = ClipScorer.load(_clip_spec("store:models/tiny-clip.pt"), device="cpu", store=store)
    assert scorer.model_id == tiny_clip.model_id  # same bytes, same id
    texts = ["一个黄色的星形"]
    assert torch.allclose(scorer.encode_texts(texts), tiny_clip.encode_texts(texts))
    with pytest.raises(ModelError, match="'models/missing.pt' does not exist in local:"):
        ClipScorer.load(_clip_spec("store:models/missing.pt"), device="cpu", store=store)
    with pytest.raises(ModelError, match="no store was given"):
        ClipScorer.load(_clip_spec("store:models/tiny-clip.pt"), device="cpu")


def test_choose_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    with pytest.raises(ModelError, match="'cuda' was asked for but .* sees no CUDA GPU"):
        choose_device("cuda")
    with pytest.raises(ModelError, match="'cuda:1' was asked for"):
        choose_device("cuda:1")
    with pytest.raises(ModelError, match="unknown device 'gpu0'"):
        choose_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_device("auto") == torch.device("cuda")
    with pytest.raises(ModelError, match="does not exist: torch sees 1 CUDA GPU"):
        choose_device("cuda:1")


def test_import_without_torch_names() -> None:
    # The spec half of the package must not need torch (Airflow's scheduler imports it).
    import subprocess
    import sys

    code = "import sys, taisu_etl.models, taisu_etl.models.retrieval; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
