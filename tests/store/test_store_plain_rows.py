"""Plain rows (RowLayout): a store of rows that are not image patches, and what each consumer does with it.

Stores, training, evaluation and top-k read it like any store; everything that needs an image grid
(the browser, publishing as a vision SAE, image token selections) refuses it and says why.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vision_sae_lens.errors import ConfigError, HubError, StoreError, TrainingError
from vision_sae_lens.layout import RowLayout, TokenLayout, layout_from_dict
from vision_sae_lens.metadata import vision_facts_of
from vision_sae_lens.store import ActivationStore, StoreWriter
from vision_sae_lens.store import format as fmt

D, N = 8, 3000


@pytest.fixture(scope="module")
def rows_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "rows"
    writer = StoreWriter(out, backbone_id="synthetic:test", sites=["activations"], d_model=D, layout=RowLayout(),
                         tokens="all", dtype="float32", shard_rows=1000)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(16, D, generator=g)
    codes = torch.relu(torch.randn(N, 16, generator=g) - 1.0)
    writer.append({"activations": codes @ directions}, np.arange(N), np.zeros(N, dtype=np.int64))
    return writer.finish()


def test_plain_rows_are_written_as_format_version_2_and_read_back(rows_store):
    meta = json.loads((rows_store.path / fmt.METADATA_FILE).read_text())
    assert meta["format_version"] == fmt.MIN_ROWS_VERSION == 2
    assert meta["layout"] == {"kind": "rows", "n_prefix": 0, "n_tokens": 1} and meta["token_indices"] == [0]
    assert isinstance(rows_store.layout, RowLayout) and rows_store.n_images == N
    rows_store.verify()
    batch = next(rows_store.ordered("activations", 10))
    assert batch.image_idx.tolist() == list(range(10)) and batch.token_idx.tolist() == [0] * 10
    assert next(rows_store.shuffled("activations", 64)).shape == (64, D)


def test_image_stores_are_written_at_the_current_version_without_a_layout_kind(tmp_path):
    layout = TokenLayout(image_size=(8, 8), patch_size=(4, 4), has_cls=True)
    w = StoreWriter(
        tmp_path / "img", backbone_id="x", sites=["s"], d_model=2, layout=layout, tokens="patches"
    )
    w.append({"s": np.zeros((4, 2), np.float32)}, np.zeros(4, int), np.arange(1, 5))
    store = w.finish()
    assert store.metadata["format_version"] == fmt.FORMAT_VERSION
    assert "kind" not in store.metadata["layout"]


def test_a_reader_refuses_an_unknown_version(rows_store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(rows_store.path, copy)
    meta = json.loads((copy / fmt.METADATA_FILE).read_text())
    meta["format_version"] = 3
    (copy / fmt.METADATA_FILE).write_text(fmt.canonical_json(meta))
    with pytest.raises(StoreError, match="version 3"):
        ActivationStore(copy)


@pytest.mark.parametrize(
    "edit", [{"format_version": 1}, {"layout": {"kind": "rows", "n_prefix": 0, "n_tokens": 7}}]
)
def test_a_resealed_store_whose_version_or_row_layout_is_wrong_is_refused(rows_store, tmp_path, edit):
    """Plain rows are version 2 and only version 2, with the one row layout: a store edited otherwise (every
    checksum recomputed) is refused by its meaning."""
    import shutil

    from helpers import reseal_store

    copy = tmp_path / "copy"
    shutil.copytree(rows_store.path, copy)
    reseal_store(copy, metadata=edit)
    with pytest.raises(StoreError, match="format_version|plain-row layout"):
        ActivationStore(copy)


def test_row_layout_answers_token_questions_and_refuses_image_ones():
    lay = RowLayout()
    assert lay.token_indices("all").tolist() == [0] and lay.token_mask("all").tolist() == [True]
    assert lay.n_tokens == 1 and lay.n_prefix == 0 and not lay.has_cls
    assert layout_from_dict(lay.to_dict()) == lay
    for ask in (lambda: lay.grid, lambda: lay.patch_size, lambda: lay.image_size, lambda: lay.n_patches,
                lambda: lay.patch_box(0), lambda: lay.token_indices("patches"), lambda: lay.token_mask("cls")):  # fmt: skip
        with pytest.raises(ConfigError, match="plain rows"):
            ask()
    with pytest.raises(ConfigError, match="unknown layout kind"):
        layout_from_dict({"kind": "video"})


@pytest.fixture(scope="module")
def trained(rows_store, tmp_path_factory):
    from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae

    cfg = TrainConfig(store=rows_store, site="activations", sae=build_sae_config("topk", d_in=D, d_sae=16, k=2),
                      training_tokens=4096, batch_size=256, device="cpu")  # fmt: skip
    return train_sae(cfg, out_dir=tmp_path_factory.mktemp("saes"), progress=False)


def test_training_and_evaluation_run_on_plain_rows(trained, rows_store):
    from sae_lens import SAE

    from vision_sae_lens.train import evaluate_sae

    sae = SAE.load_from_disk(str(trained.path))
    md = sae.cfg.metadata
    assert md.modality == "rows" and md.context_size == 1 and md.store_fingerprint == rows_store.fingerprint
    assert vision_facts_of(sae) is None  # not a ViT SAE: nothing splices it by image layout
    report = evaluate_sae(trained.path, rows_store, max_rows=1000)
    assert 0 < report["nmse"] < 1


def test_top_k_works_and_the_browser_refuses_plain_rows(trained, rows_store, tmp_path):
    from sae_lens import SAE

    from vision_sae_lens.analysis import build_browser, top_activating

    sae = SAE.load_from_disk(str(trained.path))
    top = top_activating(sae, rows_store, k=3, progress=False)
    assert top.values.shape[0] == 16 and bool((top.token_idx[top.values > 0] == 0).all())
    with pytest.raises(ConfigError, match="plain rows"):
        build_browser(sae, rows_store, out_dir=tmp_path / "browser", progress=False)
    assert not (tmp_path / "browser").exists()


def test_image_token_selections_and_publishing_are_refused(trained, rows_store, tmp_path):
    from vision_sae_lens.hub import push_to_hub
    from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae

    cfg = TrainConfig(store=rows_store, site="activations", sae=build_sae_config("topk", d_in=D, d_sae=8, k=2),
                      training_tokens=1024, batch_size=256, tokens="patches", device="cpu")  # fmt: skip
    with pytest.raises((ConfigError, TrainingError), match="plain rows"):
        train_sae(cfg, out_dir=tmp_path / "saes", progress=False)
    with pytest.raises(HubError, match="plain rows"):
        push_to_hub([trained.path], repo_id="user/repo", dry_run=True)
