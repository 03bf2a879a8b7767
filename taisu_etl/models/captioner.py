"""Chinese captions from an open_clip CoCa model (TaiSu's generated-caption half).

Decoding is done here rather than with `CoCa.generate`: that returns one sequence per image for
beam search (TaiSu keeps several captions per image), samples with the global torch RNG (not
reproducible per call), and goes through transformers' deprecated BeamSearchScorer. The model is
the same; only the search loop is ours, batched over images and beams.
"""

from __future__ import annotations

from taisu_etl.models import _torchvision_shim  # noqa: F401  (must precede torchvision/open_clip)


import torch
import torch.nn.functional as F

from taisu_etl.models._loading import Loaded, LoadedModel, autocast, detokenise

METHODS = ("beam", "sample")


class CaptionGenerator(LoadedModel):
    """Writes `num_captions` captions per image, by beam search or nucleus sampling."""

    kind = "coca"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        tok = loaded.tokenizer
        self.sot_id = int(getattr(tok, "sot_token_id", getattr(tok, "bos_id", 49406)))
        self.eot_id = int(getattr(tok, "eot_token_id", getattr(tok, "eos_id", 49407)))
        self.pad_id = int(getattr(self.model, "pad_id", 0))
        # The text tower has context_length positions; BOS takes one.
        self.max_new_tokens = int(loaded.config["multimodal_cfg"].get("context_length", loaded.context_length)) - 1

    # ------------------------------------------------------------------ decoding

    def _next_logprobs(self, image_embs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(next token | image, tokens) [N,V] in float32; special ids that never come next are masked."""
        _, token_embs = self.model._encode_text(tokens)
        logits = self.model.text_decoder(image_embs, token_embs)[:, -1].float()
        logits[:, self.pad_id] = float("-inf")
        logits[:, self.sot_id] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    def generate(
        self,
        pixels: torch.Tensor,
        *,
        num_captions: int = 1,
        method: str = "beam",
        beam_width: int = 4,
        top_p: float = 0.9,
        temperature: float = 1.0,
        max_len: int = 30,
        seed: int = 0,
    ) -> list[list[str]]:
        """For each image, `num_captions` decoded captions (best first for beam search).

        Beam search keeps max(beam_width, num_captions) beams and returns the best distinct
        finished captions (length-normalised log-probability). Sampling draws each caption with
        nucleus (top_p) sampling from a generator seeded with `seed`: same inputs, same captions.
        `max_len` counts tokens after BOS and is capped by the model's context length.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if num_captions < 1 or beam_width < 1 or max_len < 1:
            raise ValueError("num_captions, beam_width and max_len must be at least 1")
        if not 0.0 < top_p <= 1.0 or temperature <= 0:
            raise ValueError("top_p must be in (0, 1] and temperature > 0")
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be [N,3,H,W], not {list(pixels.shape)}")
        if len(pixels) == 0:
            return []
        steps = min(max_len, self.max_new_tokens)
        with torch.inference_mode(), autocast(self.device):
            _, image_embs = self.model._encode_image(pixels.to(self.device))
            if method == "beam":
                ids = self._beam(image_embs, num_captions, max(beam_width, num_captions), steps)
            else:
                ids = self._sample(image_embs, num_captions, top_p, temperature, steps, seed)
        return [[detokenise(self.tokenizer, seq) for seq in per_image] for per_image in ids]

    def _beam(self, image_embs: torch.Tensor, num_captions: int, k: int, steps: int) -> list[list[list[int]]]:
        n = image_embs.shape[0]
        embs = image_embs.repeat_interleave(k, dim=0)
        tokens = torch.full((n * k, 1), self.sot_id, dtype=torch.long, device=self.device)
        # Only the first beam of each image is live at the start, or all k would be the same.
        scores = torch.full((n, k), float("-inf"), device=self.device)
        scores[:, 0] = 0.0
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        done = [False] * n
        for step in range(steps):
            logp = self._next_logprobs(embs, tokens)  # [n*k, V]
            vocab = logp.shape[1]
            if step + 1 == steps:  # out of room: every beam must end here
                forced = torch.full_like(logp, float("-inf"))
                forced[:, self.eot_id] = logp[:, self.eot_id]
                logp = forced
            cand = (scores.view(n * k, 1) + logp).view(n, k * vocab)
            top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)
            next_beam = torch.zeros(n, k, dtype=torch.long, device=self.device)
            next_tok = torch.full((n, k), self.eot_id, dtype=torch.long, device=self.device)
            next_score = torch.full((n, k), float("-inf"), device=self.device)
            top_scores_l, top_idx_l = top_scores.tolist(), top_idx.tolist()
            for i in range(n):
                filled = 0
                for score, flat in zip(top_scores_l[i], top_idx_l[i]):
                    if score == float("-inf") or filled == k:
                        break
                    beam, tok = divmod(flat, vocab)
                    if tok == self.eot_id:
                        seq = tokens[i * k + beam, 1:].tolist()
                        # Length-normalised, so short captions do not win just by being short.
                        finished[i].append((score / (len(seq) + 1), seq))
                        continue
                    next_beam[i, filled], next_tok[i, filled], next_score[i, filled] = beam, tok, score
                    filled += 1
                if len(finished[i]) >= k:
                    best_live = max(next_score[i].tolist()) / (step + 2)
                    done[i] = done[i] or best_live < min(s for s, _ in finished[i])
            if all(done):
                break
            rows = (torch.arange(n, device=self.device)[:, None] * k + next_beam).view(-1)
            tokens = torch.cat([tokens[rows], next_tok.view(-1, 1)], dim=1)
            scores = next_score
        out = []
        for i in range(n):
            ranked = sorted(finished[i], key=lambda item: -item[0])
            seen: dict[tuple[int, ...], None] = {}
            for _, seq in ranked:
                seen.setdefault(tuple(seq), None)
            chosen = [list(seq) for seq in seen][:num_captions]
            # Fewer distinct endings than asked for (a tiny vocabulary): repeat the best.
            while len(chosen) < num_captions:
                chosen.append(chosen[0] if chosen else [])
            out.append(chosen)
        return out

    def _sample(
        self, image_embs: torch.Tensor, num_captions: int, top_p: float, temperature: float, steps: int, seed: int
    ) -> list[list[list[int]]]:
        n = image_embs.shape[0]
        embs = image_embs.repeat_interleave(num_captions, dim=0)
        rows = embs.shape[0]
        gen = torch.Generator(device="cpu").manual_seed(seed)  # CPU draws: the same on any device
        tokens = torch.full((rows, 1), self.sot_id, dtype=torch.long, device=self.device)
        ended = torch.zeros(rows, dtype=torch.bool)
        for step in range(steps):
            logp = self._next_logprobs(embs, tokens).cpu() / temperature
            if step + 1 == steps:
                choice = torch.full((rows,), self.eot_id, dtype=torch.long)
            else:
                probs = torch.softmax(logp, dim=-1)
                sorted_p, order = probs.sort(dim=-1, descending=True)
                # Keep the smallest set of tokens whose mass reaches top_p (always the top one).
                drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                picked = torch.multinomial(sorted_p, 1, generator=gen).squeeze(1)
                choice = order.gather(1, picked[:, None]).squeeze(1)
            choice = torch.where(ended, torch.full_like(choice, self.eot_id), choice)
            tokens = torch.cat([tokens, choice.to(self.device)[:, None]], dim=1)
            ended |= choice == self.eot_id
            if bool(ended.all()):
                break
        seqs = [row[1:] for row in tokens.tolist()]
        return [seqs[i * num_captions : (i + 1) * num_captions] for i in range(n)]
