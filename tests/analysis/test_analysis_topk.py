"""Streaming top-k over a store equals brute force over the dense (images x tokens x d_sae) tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import SITE, make_sae, noise_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.analysis import top_activating
from vision_sae_lens.errors import ImageInputError, SAEMismatchError, StoreError
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.store import StoreWriter, cache_activations

LAYOUT = TokenLayout(image_size=(16, 24), patch_size=(8, 8), has_cls=True)  # 2x3 patches + CLS = 7 tokens


def write_store(tmp_dir, acts_itd: np.ndarray, *, shard_rows: int, tokens: str = "all", skip=()):
    n_images, n_tok, d = acts_itd.shape
    token_idx = LAYOUT.token_indices(tokens).numpy()
    writer = StoreWriter(
        tmp_dir,
        backbone_id="test:none",
        sites=[SITE],
        d_model=d,
        layout=LAYOUT,
        tokens=tokens,
        dtype="float32",
        shard_rows=shard_rows,
    )
    for i in range(n_images):
        if i in skip:
            continue
        writer.append({SITE: acts_itd[i][token_idx]}, np.full(len(token_idx), i), token_idx)
    return writer.finish(n_images=n_images)


def tiny_sae(d_in: int, d_sae: int, seed: int) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn_like(sae.W_enc))
        sae.b_enc.copy_(torch.randn_like(sae.b_enc) * 0.5)
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = SITE
    return sae


def brute_force(sae, store, k: int, by: str):
    """Dense per-image scores, then a full sort by (-score, image): the reference."""
    acts = store.read_rows(SITE, 0, store.n_rows)
    image_n, token_n = (torch.as_tensor(a) for a in store.provenance(0, store.n_rows))
    return brute_force_rows(sae, acts, image_n, token_n, k, by)


def brute_force_rows(sae, acts, image_n, token_n, k: int, by: str):
    with torch.no_grad():
        feats = sae.encode(acts).float()
    out_v, out_i, out_t = [], [], []
    images = sorted(set(image_n.tolist()))
    for j in range(feats.shape[1]):
        scored = []
        for img in images:
            rows = image_n == img
            f, t = feats[rows, j], token_n[rows]
            score = float(f.max()) if by == "max" else float(f.double().mean().float())
            tok = int(t[f == f.max()].min())
            scored.append((-score, img, tok))
        scored.sort(key=lambda x: (x[0], x[1]))
        top = scored[:k] + [(float("inf"), -1, -1)] * max(0, k - len(scored))
        out_v.append([-s for s, _, _ in top])
        out_i.append([i for _, i, _ in top])
        out_t.append([t for _, _, t in top])
    return torch.tensor(out_v), torch.tensor(out_i), torch.tensor(out_t)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_images=st.integers(1, 9),
    k=st.integers(1, 6),
    batch_size=st.integers(1, 40),
    shard_rows=st.integers(3, 30),
    by=st.sampled_from(["max", "mean"]),
    duplicates=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_streaming_topk_equals_brute_force(
    tmp_path_factory, n_images, k, batch_size, shard_rows, by, duplicates, seed
):
    rng = np.random.default_rng(seed)
    # Coarse values make ties common (equal images, equal tokens, many zeros after the ReLU).
    acts = rng.integers(-2, 3, size=(n_images, LAYOUT.n_tokens, 6)).astype(np.float32)
    if duplicates and n_images > 2:
        acts[n_images - 1] = acts[0]
        acts[1, 3] = acts[1, 5]
    store = write_store(tmp_path_factory.mktemp("store"), acts, shard_rows=shard_rows)
    sae = tiny_sae(6, 10, seed)
    top = top_activating(sae, store, k=k, by=by, batch_size=batch_size, progress=False)
    values, images, tokens = brute_force(sae, store, k, by)
    torch.testing.assert_close(top.values, values.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(top.image_idx, images)
    assert torch.equal(top.token_idx, tokens)
    assert top.values.shape == (10, k)
    # The same rows cut at arbitrary places (images split across batches, unequal image lengths).
    apply_vision_facts(sae, VisionFacts(backbone="test:none", hook_name=SITE, tokens="all", layout=LAYOUT))
    acts_n = store.read_rows(SITE, 0, store.n_rows)
    image_n, token_n = (torch.as_tensor(a) for a in store.provenance(0, store.n_rows))
    keep = (
        torch.as_tensor(rng.random(len(image_n)) > 0.2)
        if duplicates
        else torch.ones(len(image_n), dtype=torch.bool)
    )
    keep[0] = True
    acts_n, image_n, token_n = acts_n[keep], image_n[keep], token_n[keep]
    cuts = (
        sorted(set(rng.integers(1, len(image_n), size=min(4, len(image_n) - 1)).tolist()))
        if len(image_n) > 1
        else []
    )
    bounds = [0, *cuts, len(image_n)]
    chunks = [(acts_n[a:b], image_n[a:b], token_n[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    streamed = top_activating(sae, iter(chunks), k=k, by=by, progress=False)
    ref_v, ref_i, ref_t = brute_force_rows(sae, acts_n, image_n, token_n, k, by)
    torch.testing.assert_close(streamed.values, ref_v.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(streamed.image_idx, ref_i)
    assert torch.equal(streamed.token_idx, ref_t)


def test_topk_skips_tokens_the_sae_does_not_cover_and_images_without_rows(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(6, LAYOUT.n_tokens, 6)).astype(np.float32)
    acts[:, 0] = 100.0  # a CLS token that would win every latent if it were scanned
    store = write_store(tmp_path / "s", acts, shard_rows=8, skip={2})
    sae = tiny_sae(6, 10, 0)
    apply_vision_facts(
        sae, VisionFacts(backbone="test:none", hook_name=SITE, tokens="patches", layout=LAYOUT)
    )
    top = top_activating(sae, store, k=5, progress=False)
    valid = top.image_idx >= 0
    assert bool((top.token_idx[valid] >= LAYOUT.n_prefix).all())
    assert 2 not in top.image_idx.tolist()
    assert bool((top.patch_idx[valid] == top.token_idx[valid] - 1).all())
    entries = top.for_latent(0, active_only=False)
    assert [e["value"] for e in entries] == sorted((e["value"] for e in entries), reverse=True)


def test_topk_over_raw_images_matches_topk_over_their_store(vit, tmp_path):
    images = noise_images(7)
    sae = make_sae(vit)
    store = cache_activations(
        vit,
        images,
        sites=[SITE],
        out_dir=tmp_path / "store",
        tokens="patches",
        dtype="float32",
        progress=False,
    )
    from_images = top_activating(sae, images, model=vit, k=3, batch_size=17 * 3, progress=False)
    from_store = top_activating(sae, store, k=3, batch_size=10, progress=False)
    torch.testing.assert_close(from_images.values, from_store.values, rtol=1e-4, atol=1e-5)
    assert torch.equal(from_images.image_idx, from_store.image_idx)
    assert torch.equal(from_images.token_idx, from_store.token_idx)


def test_topk_bad_inputs(vit, tmp_path):
    sae = make_sae(vit)
    with pytest.raises(ImageInputError, match="empty"):
        top_activating(sae, [], model=vit, progress=False)
    with pytest.raises(ValueError, match="model"):
        top_activating(sae, noise_images(2), progress=False)
    with pytest.raises(ValueError, match="k must be"):
        top_activating(sae, noise_images(2), model=vit, k=0, progress=False)
    with pytest.raises(IndexError, match="out of range"):
        top_activating(sae, noise_images(2), model=vit, k=2, progress=False).for_latent(10_000)
    store = write_store(tmp_path / "s", np.zeros((2, LAYOUT.n_tokens, 6), np.float32), shard_rows=8)
    with pytest.raises(SAEMismatchError, match="d_in"):
        top_activating(sae, store, progress=False)
    shuffled = [
        (torch.randn(3, 6), torch.tensor([1, 1, 0]), torch.tensor([0, 1, 0])),
    ]
    small = tiny_sae(6, 4, 0)
    apply_vision_facts(small, VisionFacts(backbone="test:none", hook_name=SITE, tokens="all", layout=LAYOUT))
    with pytest.raises(StoreError, match="order"):
        top_activating(small, iter(shuffled), progress=False)
