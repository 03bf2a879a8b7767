"""TaiSu's released LiT pair through the `taisu-lit` spec, against an independent re-implementation.

Nothing can be downloaded here, so the files are built in this test from the architecture facts
alone (not from the product's code): OpenAI CLIP's RN101 and ViT-B/32 image towers (`visual.*`
keys, OpenAI's shapes, float16 as OpenAI stores them) and TaiSu's text tower (width 512, 12 layers,
8 heads, context 52, vocabulary 50,002, saved as {"weights": state_dict}), with random weights,
plus a SentencePiece model trained here. The references below are plain torch ops written from
those facts (both image towers, including the RN101, are hand-written here; open_clip is not
used as the reference), and TaiSu's tokenizer rules are re-implemented from its description.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from taisu_etl.models import CaptionGenerator, ClipScorer, ModelError, parse_spec
from taisu_etl.models.spec import taisu_lit_spec
from taisu_etl.stages.model_config import ModelConfig, ScoreConfig
from taisu_etl.storage.local import LocalObjectStore

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SOT, EOT = 50000, 50001

CAPTIONS = [
    "一只小猫在草地上玩耍", "海边的日落非常美丽", "两个孩子在公园里放风筝", "红色的跑车停在路边",
    "厨房里有新鲜的水果和蔬菜", "Hello World 你好世界", "雪山下的湖泊倒映着蓝天白云", "城市夜景灯火辉煌",
    "一杯热咖啡放在木桌上", "老人在河边钓鱼", "小狗 在 沙发上 睡觉", "春天的樱花盛开了",
]
TEXTS = CAPTIONS[:4] + [
    "", "  前后有空格  ", "MixedCase English words", "换行\n之后", "很长的句子" * 30,  # > 50 pieces: cut
]


# --- the files, from the architecture facts -------------------------------------------------

Layout = dict[str, tuple[int, ...]]


def _block_layout(pre: str, d: int) -> Layout:
    return {
        f"{pre}ln_1.weight": (d,), f"{pre}ln_1.bias": (d,),
        f"{pre}attn.in_proj_weight": (3 * d, d), f"{pre}attn.in_proj_bias": (3 * d,),
        f"{pre}attn.out_proj.weight": (d, d), f"{pre}attn.out_proj.bias": (d,),
        f"{pre}ln_2.weight": (d,), f"{pre}ln_2.bias": (d,),
        f"{pre}mlp.c_fc.weight": (4 * d, d), f"{pre}mlp.c_fc.bias": (4 * d,),
        f"{pre}mlp.c_proj.weight": (d, 4 * d), f"{pre}mlp.c_proj.bias": (d,),
    }  # fmt: skip


def _bn_layout(name: str, c: int) -> Layout:
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,), f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": ()}  # fmt: skip


def rn_layout(blocks: tuple[int, ...] = (3, 4, 23, 3), width: int = 64, embed: int = 512, res: int = 224) -> Layout:
    """OpenAI's ModifiedResNet: 3-conv stem, bottlenecks (expansion 4, downsample on the first
    block of a stage), attention pool over (res/32)^2 + 1 positions of width*32 channels."""
    out: Layout = {"visual.conv1.weight": (width // 2, 3, 3, 3), "visual.conv2.weight": (width // 2, width // 2, 3, 3),
                   "visual.conv3.weight": (width, width // 2, 3, 3)}  # fmt: skip
    for i, c in ((1, width // 2), (2, width // 2), (3, width)):
        out |= _bn_layout(f"visual.bn{i}", c)
    inplanes = width
    for stage, count in enumerate(blocks):
        planes = width * 2**stage
        for b in range(count):
            pre = f"visual.layer{stage + 1}.{b}."
            out |= {f"{pre}conv1.weight": (planes, inplanes, 1, 1), f"{pre}conv2.weight": (planes, planes, 3, 3),
                    f"{pre}conv3.weight": (planes * 4, planes, 1, 1)}  # fmt: skip
            out |= _bn_layout(f"{pre}bn1", planes) | _bn_layout(f"{pre}bn2", planes) | _bn_layout(f"{pre}bn3", planes * 4)
            if b == 0:
                out[f"{pre}downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                out |= _bn_layout(f"{pre}downsample.1", planes * 4)
            inplanes = planes * 4
    c = width * 32
    out["visual.attnpool.positional_embedding"] = ((res // 32) ** 2 + 1, c)
    for proj in ("q", "k", "v"):
        out |= {f"visual.attnpool.{proj}_proj.weight": (c, c), f"visual.attnpool.{proj}_proj.bias": (c,)}
    out |= {"visual.attnpool.c_proj.weight": (embed, c), "visual.attnpool.c_proj.bias": (embed,)}
    return out


def vit_layout(width: int = 768, layers: int = 12, patch: int = 32, res: int = 224, embed: int = 512) -> Layout:
    out: Layout = {"visual.class_embedding": (width,), "visual.positional_embedding": ((res // patch) ** 2 + 1, width),
                   "visual.proj": (width, embed), "visual.conv1.weight": (width, 3, patch, patch),
                   "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
                   "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,)}  # fmt: skip
    for i in range(layers):
        out |= _block_layout(f"visual.transformer.resblocks.{i}.", width)
    return out


def text_layout(width: int = 512, layers: int = 12, ctx: int = 52, vocab: int = 50002, embed: int = 512) -> Layout:
    out: Layout = {"token_embedding.weight": (vocab, width), "positional_embedding": (ctx, width),
                   "ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, embed),
                   "logit_scale": ()}  # fmt: skip
    for i in range(layers):
        out |= _block_layout(f"transformer.resblocks.{i}.", width)
    return out


def random_weights(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Weights of sane scale (activations neither vanish nor blow up), float16 as OpenAI stores them."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    out: dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        if key == "logit_scale":
            t = torch.tensor(math.log(1 / 0.07))
        elif key.endswith("running_mean"):
            t = 0.1 * randn(*shape)
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(*shape, generator=gen)
        elif len(shape) == 1 and key.endswith("weight"):  # norms; residual branches start small
            t = (0.2 if re.search(r"layer\d\.\d+\.bn3", key) else 1.0) + 0.1 * randn(*shape)
        elif len(shape) == 1 and key != "visual.class_embedding":
            t = 0.1 * randn(*shape)
        elif len(shape) == 4:
            t = randn(*shape) * math.sqrt(2 / math.prod(shape[1:]))
        elif key == "token_embedding.weight":
            t = 0.02 * randn(*shape)
        elif key in ("visual.proj", "text_projection") or "positional_embedding" in key or key == "visual.class_embedding":
            t = randn(*shape) * shape[-1] ** -0.5
        else:  # Linear weights [out, in]
            t = randn(*shape) * shape[1] ** -0.5
        out[key] = t.half()
    return out


def train_sp(prefix: Path, pieces: int = 300) -> Path:
    import sentencepiece as spm

    corpus = CAPTIONS * 4 + ["the quick brown fox jumps over the lazy dog", "中文分词测试句子"] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(prefix), vocab_size=pieces,
                                   model_type="bpe", hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return prefix.with_suffix(".model")


def _openai_extras() -> dict[str, torch.Tensor]:
    # What else an OpenAI CLIP state dict holds besides visual.*: TaiSu's loader ignores it.
    return {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408),
            "text_projection": torch.zeros(512, 512, dtype=torch.half), "logit_scale": torch.tensor(4.6)}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("taisu-lit")
    torch.save(random_weights(rn_layout(), 1) | _openai_extras(), root / "RN101.pt")
    torch.save(random_weights(vit_layout(), 2) | _openai_extras(), root / "ViT-B-32.pt")
    torch.save({"weights": random_weights(text_layout(), 3)}, root / "text.pt")
    return {"RN101": root / "RN101.pt", "ViT-B-32": root / "ViT-B-32.pt", "text": root / "text.pt",
            "sp": train_sp(root / "sp")}  # fmt: skip


@pytest.fixture(scope="module")
def scorers(files: dict[str, Path]) -> Iterator[dict[str, ClipScorer]]:
    """Each full-size pair loaded once through the spec (loading is the slow part)."""
    yield {tower: ClipScorer.load(parse_spec(_spec_text(files, tower)), device="cpu") for tower in ("RN101", "ViT-B-32")}


def _load(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in torch.load(path, weights_only=True).items()}


# --- the references -----------------------------------------------------------------------


def ref_tokenize(sp_model: Path, texts: list[str], ctx: int = 52) -> torch.Tensor:
    """TaiSu's rule: raw SentencePiece ids, SOT first, EOT after the pieces or in the last slot
    when the pieces are cut to ctx-2, zeros after."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.Load(str(sp_model))
    rows = []
    for text in texts:
        pieces = sp.EncodeAsIds(text)
        if len(pieces) > ctx - 2:
            row = [SOT] + pieces[: ctx - 2] + [EOT]
        else:
            row = [SOT] + pieces + [EOT] + [0] * (ctx - 2 - len(pieces))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def _ln(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    n, lq, d = q.shape
    lk, dh = k.shape[1], d // heads
    q, k, v = (t.reshape(n, -1, heads, dh).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, lq, d)


def _block(x: torch.Tensor, p: dict[str, torch.Tensor], pre: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    h = _ln(x, p, pre + "ln_1")
    q, k, v = (h @ p[pre + "attn.in_proj_weight"].T + p[pre + "attn.in_proj_bias"]).chunk(3, dim=-1)
    x = x + _heads_attention(q, k, v, heads, mask) @ p[pre + "attn.out_proj.weight"].T + p[pre + "attn.out_proj.bias"]
    h = _ln(x, p, pre + "ln_2") @ p[pre + "mlp.c_fc.weight"].T + p[pre + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ p[pre + "mlp.c_proj.weight"].T + p[pre + "mlp.c_proj.bias"]


def _layers(p: dict[str, torch.Tensor], prefix: str) -> Iterator[str]:
    n = len({k[len(prefix):].split(".")[0] for k in p if k.startswith(prefix)})
    return (f"{prefix}{i}." for i in range(n))


def ref_text(p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    width, length = p["ln_final.weight"].shape[0], tokens.shape[1]
    x = p["token_embedding.weight"][tokens] + p["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for pre in _layers(p, "transformer.resblocks."):
        x = _block(x, p, pre, width // 64, causal)
    x = _ln(x, p, "ln_final")
    return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ p["text_projection"]


def ref_vit(p: dict[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    w = p["visual.conv1.weight"]
    x = F.conv2d(img, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([p["visual.class_embedding"].expand(len(img), 1, -1), x], dim=1) + p["visual.positional_embedding"]
    x = _ln(x, p, "visual.ln_pre")
    for pre in _layers(p, "visual.transformer.resblocks."):
        x = _block(x, p, pre, w.shape[0] // 64, None)
    return _ln(x[:, 0], p, "visual.ln_post") @ p["visual.proj"]


def ref_resnet(p: dict[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    def bn(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p[f"{name}.weight"],
                            p[f"{name}.bias"], training=False, eps=1e-5)  # fmt: skip

    x = img
    for i, stride in ((1, 2), (2, 1), (3, 1)):
        x = F.relu(bn(F.conv2d(x, p[f"visual.conv{i}.weight"], stride=stride, padding=1), f"visual.bn{i}"))
    x = F.avg_pool2d(x, 2)
    for stage in (1, 2, 3, 4):
        for pre in _layers(p, f"visual.layer{stage}."):
            # Stride 2 on the first block of stages 2-4, as an average pool (after conv2, and
            # before the downsample conv).
            stride = 2 if stage > 1 and pre.endswith(".0.") else 1
            out = F.relu(bn(F.conv2d(x, p[pre + "conv1.weight"]), pre + "bn1"))
            out = F.relu(bn(F.conv2d(out, p[pre + "conv2.weight"], padding=1), pre + "bn2"))
            if stride > 1:
                out = F.avg_pool2d(out, stride)
            out = bn(F.conv2d(out, p[pre + "conv3.weight"]), pre + "bn3")
            identity = x
            if pre + "downsample.0.weight" in p:
                identity = F.avg_pool2d(x, stride) if stride > 1 else x
                identity = bn(F.conv2d(identity, p[pre + "downsample.0.weight"]), pre + "downsample.1")
            x = F.relu(out + identity)
    tokens = x.flatten(2).transpose(1, 2)  # [N, HW, C]
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + p["visual.attnpool.positional_embedding"]

    def lin(t: torch.Tensor, name: str) -> torch.Tensor:
        return t @ p[f"visual.attnpool.{name}.weight"].T + p[f"visual.attnpool.{name}.bias"]

    # Only the mean token's output is the embedding: it queries all tokens.
    pooled = _heads_attention(lin(tokens[:, :1], "q_proj"), lin(tokens, "k_proj"), lin(tokens, "v_proj"),
                              x.shape[1] // 64, None)  # fmt: skip
    return lin(pooled[:, 0], "c_proj")


def _spec_text(files: dict[str, Path], tower: str) -> str:
    return f"taisu-lit:visual={files[tower]},text={files['text']},sp={files['sp']}"


# --- tokenizer ----------------------------------------------------------------------------


def test_tokenizer_reproduces_taisu_ids(files: dict[str, Path]) -> None:
    from taisu_etl.models.taisu_tokenizer import TaisuTokenizer

    tok = TaisuTokenizer(files["sp"].read_bytes(), str(files["sp"]))
    got, want = tok(TEXTS), ref_tokenize(files["sp"], TEXTS)
    assert got.shape == (len(TEXTS), 52) and torch.equal(got, want)
    assert (got[:, 0] == SOT).all() and got[-1, -1] == EOT  # the long caption is cut, EOT kept last
    assert torch.equal(tok(TEXTS[:2], context_length=8), ref_tokenize(files["sp"], TEXTS[:2], ctx=8))
    assert tok.decode(got[0]) == TEXTS[0]


def test_tokenizer_with_too_many_pieces_is_refused(files: dict[str, Path], small: dict[str, Path], tmp_path: Path) -> None:
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = pb.ModelProto()
    proto.ParseFromString(files["sp"].read_bytes())
    for i in range(50001 - len(proto.pieces)):
        proto.pieces.add(piece=f"extra{i}", score=0.0, type=pb.ModelProto.SentencePiece.USER_DEFINED)
    big = tmp_path / "big.model"
    big.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match=re.escape(f"tokenizer {big} has 50,001 pieces")):
        ClipScorer.load(taisu_lit_spec(str(small["visual"]), str(small["text"]), str(big)), device="cpu")


# --- the towers against the references ----------------------------------------------------


@pytest.mark.parametrize("tower", ["RN101", "ViT-B-32"])
def test_embeddings_and_scores_equal_reference(files: dict[str, Path], scorers: dict[str, ClipScorer], tower: str) -> None:
    scorer = scorers[tower]
    assert scorer.model_id.startswith(f"taisu-lit-{tower}@") and scorer.context_length == 52 and scorer.image_size == 224
    n = 1 if tower == "RN101" else 2  # RN101 at 224 px costs seconds per image on a shared CPU
    pixels = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    image = scorer.encode_images(pixels)
    visual = _load(files[tower])
    with torch.inference_mode():
        want_image = F.normalize((ref_resnet if tower == "RN101" else ref_vit)(visual, pixels), dim=-1)
    torch.testing.assert_close(image, want_image, rtol=1e-4, atol=2e-5)
    if tower != "RN101":
        return  # the text tower is the same file for both
    texts = TEXTS[:6]
    text = scorer.encode_texts(texts)
    with torch.inference_mode():
        want_text = F.normalize(ref_text(_text_weights(files), ref_tokenize(files["sp"], texts)), dim=-1)
    torch.testing.assert_close(text, want_text, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(image @ text.T, want_image @ want_text.T, rtol=1e-4, atol=2e-5)  # the scores
    assert text.abs().sum() > 0 and not torch.allclose(text[0], text[1])


def _text_weights(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    weights = torch.load(files["text"], weights_only=True)["weights"]
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def test_preprocess_is_clips_transform(scorers: dict[str, ClipScorer]) -> None:
    scorer = scorers["RN101"]
    rng = np.random.default_rng(0)
    for w, h in ((300, 200), (224, 400), (500, 500)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        # Short side to 224 (long side floored), bicubic; centre crop 224 (offsets rounded).
        scale = 224 / min(w, h)
        size = (224, int(h * scale)) if w <= h else (int(w * scale), 224)
        resized = np.asarray(img.resize(size, Image.BICUBIC), dtype=np.float32) / 255
        top, left = round((size[1] - 224) / 2), round((size[0] - 224) / 2)
        crop = resized[top:top + 224, left:left + 224]
        want = torch.from_numpy(((crop - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1).astype(np.float32))
        torch.testing.assert_close(scorer.preprocess(img), want, rtol=0, atol=1e-5)


# --- errors, store, recipe ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> dict[str, Path]:
    """A small pair in the same layout (errors do not need the full size)."""
    root = tmp_path_factory.mktemp("taisu-lit-small")
    torch.save(random_weights(vit_layout(width=64, layers=1, res=64, embed=32), 4), root / "visual.pt")
    torch.save({"weights": random_weights(text_layout(width=64, layers=1, embed=32), 5)}, root / "text.pt")
    return {"visual": root / "visual.pt", "text": root / "text.pt", "sp": files["sp"]}


def _edited(src: Path, dst: Path, edit, wrapped: bool) -> Path:  # type: ignore[no-untyped-def]
    obj = torch.load(src, weights_only=True)
    state = obj["weights"] if wrapped else obj
    edit(state)
    torch.save(obj, dst)
    return dst


def _rename(old: str, new: str):  # type: ignore[no-untyped-def]
    return lambda s: s.__setitem__(new, s.pop(old))


@pytest.mark.parametrize(("tower", "edit", "message"), [
    ("visual", lambda s: s.pop("visual.transformer.resblocks.0.ln_2.bias"), "visual.transformer.resblocks.0.ln_2.bias is missing"),
    ("visual", lambda s: s.__setitem__("visual.ln_post.weight", torch.zeros(63)), "visual.ln_post.weight is [63] but [64] is expected"),
    ("visual", lambda s: s.clear(), "has no visual.* keys"),
    ("text", _rename("transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.fc.weight"),
     "transformer.resblocks.0.mlp.c_fc.weight is missing; transformer.resblocks.0.mlp.fc.weight is not part of the tower"),
    ("text", lambda s: s.__setitem__("token_embedding.weight", torch.zeros(49408, 64)), "token_embedding.weight has 49,408 rows"),
    ("text", lambda s: s.__setitem__("text_projection", torch.zeros(64, 16)), "text_projection gives 16 dims"),
])  # fmt: skip
def test_layout_errors_name_the_key(small: dict[str, Path], tmp_path: Path, tower: str, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    paths = dict(small)
    paths[tower] = _edited(small[tower], tmp_path / f"{tower}.pt", edit, wrapped=tower == "text")
    with pytest.raises(ModelError) as err:
        ClipScorer.load(taisu_lit_spec(str(paths["visual"]), str(paths["text"]), str(paths["sp"])), device="cpu")
    assert message in str(err.value) and str(paths[tower]) in str(err.value)


def test_file_errors(small: dict[str, Path], tmp_path: Path) -> None:
    unwrapped = tmp_path / "text-unwrapped.pt"
    torch.save(torch.load(small["text"], weights_only=True)["weights"], unwrapped)
    with pytest.raises(ModelError, match=re.escape(f"text tower checkpoint {unwrapped} has no 'weights' entry")):
        ClipScorer.load(taisu_lit_spec(str(small["visual"]), str(unwrapped), str(small["sp"])), device="cpu")
    with pytest.raises(ModelError, match="tokenizer file .*nope.model does not exist"):
        ClipScorer.load(taisu_lit_spec(str(small["visual"]), str(small["text"]), str(tmp_path / "nope.model")), device="cpu")
    with pytest.raises(ModelError, match="lacks text="):
        parse_spec(f"taisu-lit:visual={small['visual']},sp={small['sp']}")
    with pytest.raises(ModelError, match="cannot write captions"):
        CaptionGenerator.load(taisu_lit_spec(str(small["visual"]), str(small["text"]), str(small["sp"])), device="cpu")


def test_store_keys_and_recipe_config(small: dict[str, Path], tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    for name in ("visual", "text", "sp"):
        store.put(f"models/taisu/{name}", small[name].read_bytes())
    config = ScoreConfig(model=ModelConfig(arch="taisu-lit", checkpoint="store:models/taisu/visual",
                                           text_checkpoint="store:models/taisu/text", tokenizer="sentencepiece:store:models/taisu/sp"))
    from_store = ClipScorer.load(config.model.spec(), device="cpu", store=store)
    from_files = ClipScorer.load(parse_spec(f"taisu-lit:visual={small['visual']},text={small['text']},sp={small['sp']}"), device="cpu")
    assert from_store.model_id == from_files.model_id  # the id hashes contents, not where they came from
    assert from_store.model_id.startswith("taisu-lit-ViT-w64-p32-l1@")
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(from_store.encode_images(pixels), from_files.encode_images(pixels), rtol=0, atol=0)
    torch.testing.assert_close(from_store.encode_texts(TEXTS[:3]), from_files.encode_texts(TEXTS[:3]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs text_checkpoint"):
        ModelConfig(arch="taisu-lit", checkpoint="v.pt", tokenizer="sentencepiece:sp.model")


def test_bench_writer_uses_taisus_layout(tmp_path: Path) -> None:
    from taisu_etl.models.taisu_lit import write_random_checkpoints

    spec = write_random_checkpoints(tmp_path, CAPTIONS * 4, visual="RN101", sp_pieces=200)
    visual = torch.load(spec.checkpoint, weights_only=True)
    text = torch.load(spec.text_checkpoint, weights_only=True)["weights"]
    assert {k: tuple(v.shape) for k, v in visual.items()} == rn_layout()
    assert {k: tuple(v.shape) for k, v in text.items()} == text_layout()


def test_models_info_cli(small: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from taisu_etl.models.cli import app

    spec = f"taisu-lit:visual={small['visual']},text={small['text']},sp={small['sp']}"
    result = CliRunner().invoke(app, ["models", "info", spec, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "taisu-lit-ViT-w64-p32-l1@" in result.output and "CLIP (scores)" in result.output and "52 tokens" in result.output
    bad = CliRunner().invoke(app, ["models", "info", spec.replace("text=", "txt="), "--device", "cpu"])
    assert bad.exit_code == 2 and "error: bad option 'txt=" in bad.output


def test_score_stage_with_taisu_lit_from_a_recipe(small: dict[str, Path], tmp_path: Path) -> None:
    """The stage loads the pair from its config and stores, per sample, the cosine of the two towers."""
    import io

    from taisu_etl.db.ledger import Ledger
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.stages.score import caption_of, score_shard
    from taisu_etl.synthweb import make_pairs
    from taisu_etl.synthweb.seeding import seed_checked_pairs
    from taisu_etl.vocab import State

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}", shards=1, require_schema=False)
    upgrade(ledger.engine)
    try:
        store = LocalObjectStore(tmp_path / "objects")
        seed_checked_pairs(ledger, store, make_pairs(12, seed=3, split="heldout"), size=(64, 64))  # no JPEG draft scaling
        model = ModelConfig(arch="taisu-lit", checkpoint=str(small["visual"]), text_checkpoint=str(small["text"]),
                            tokenizer=f"sentencepiece:{small['sp']}")  # fmt: skip
        report = score_shard(ledger, store, ScoreConfig(model=model, device="cpu", workers=0, group_size=4), progress=lambda _: None)
        assert report.seen == 12
        scorer = ClipScorer.load(model.spec(), device="cpu")
        rows = [r for state in (State.ACCEPTED, State.SCORE_REJECTED)
                for r in ledger.scan(state=state, columns=("id", "object_key", "caption", "caption_clean", "score", "score_model"))]
        assert len(rows) == 12 and all(r["score_model"] == scorer.model_id for r in rows)
        pixels = torch.stack([scorer.preprocess(Image.open(io.BytesIO(store.get(r["object_key"]))).convert("RGB")) for r in rows])
        want = (scorer.encode_images(pixels) * scorer.encode_texts([caption_of(r) for r in rows])).sum(-1)
        torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), want, rtol=0, atol=2e-5)
    finally:
        ledger.dispose()


def test_caption_stage_retrieval_check_with_taisu_lit(small: dict[str, Path], tmp_path: Path) -> None:
    """The caption stage loads the pair from the score config for its retrieval check: each kept
    caption's recorded score is the cosine of that image and caption under TaiSu's towers."""
    import io

    from taisu_etl.db.ledger import Ledger
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.stages.caption import caption_shard
    from taisu_etl.stages.model_config import CaptionConfig
    from taisu_etl.synthweb import make_pairs
    from taisu_etl.synthweb.seeding import seed_checked_pairs
    from taisu_etl.text import TextFilter, TextFilterConfig
    from taisu_etl.vocab import State

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}", shards=1, require_schema=False)
    upgrade(ledger.engine)
    try:
        store = LocalObjectStore(tmp_path / "objects")
        seed_checked_pairs(ledger, store, make_pairs(4, seed=24, split="heldout"), size=(64, 64), state=State.ACCEPTED)
        model = ModelConfig(arch="taisu-lit", checkpoint=str(small["visual"]), text_checkpoint=str(small["text"]),
                            tokenizer=f"sentencepiece:{small['sp']}")  # fmt: skip
        # Every candidate the text filter passes is kept (no group check, no minimum), so the
        # recorded score is the pair's cosine whatever random weights make of it.
        config = CaptionConfig(workers=0, batch_size=4, num_captions=2, check_group=1, min_score=-1.0, device="cpu")
        report = caption_shard(ledger, store, config, ScoreConfig(model=model, device="cpu"), TextFilter(TextFilterConfig()))
        assert report.seen == 4
        scorer = ClipScorer.load(model.spec(), device="cpu")
        rows = list(ledger.scan(state=State.CAPTIONED, columns=("id", "object_key", "gen_caption")))
        assert len(rows) == 4
        kept = [r for r in rows if r["gen_caption"]]
        assert kept, "the tiny CoCa wrote no caption that passed the text filter"
        for row in rows:
            assert ledger.events(row["id"])[-1]["details"]["scorer"] == scorer.model_id
        for row in kept:
            pixels = scorer.preprocess(Image.open(io.BytesIO(store.get(row["object_key"]))).convert("RGB"))[None]
            want = float((scorer.encode_images(pixels) * scorer.encode_texts([row["gen_caption"]])).sum())
            assert ledger.events(row["id"])[-1]["details"]["score"] == pytest.approx(want, abs=2e-5)
    finally:
        ledger.dispose()
