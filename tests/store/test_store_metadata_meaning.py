"""Impossible store metadata is refused at open and by ``verify`` even when every checksum was recomputed:
the checks are on meaning (types, bounds, consistency), not on hashes."""

from __future__ import annotations

import pytest
from helpers import LAYOUT, SITE, reseal_store, synthetic_rows, write_store

from vision_sae_lens.cli import main
from vision_sae_lens.errors import StoreCorruptError
from vision_sae_lens.store import ActivationStore

N_IMAGES = 64


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "acts", {SITE: synthetic_rows(N_IMAGES * 16, 32)})


HUGE_LAYOUT = {**LAYOUT.to_dict(), "image_size": [65536, 65536], "patch_size": [1, 1]}
HUGE_LAYOUT.update(grid=[65536, 65536], n_tokens=65536**2 + 1)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"n_images": -7}, "n_images is -7"),
        ({"n_images": 10**15}, "n_images is 1000000000000000"),
        ({"n_recorded_images": N_IMAGES - 1}, "n_recorded_images"),
        ({"d_model": "32"}, "d_model is '32'"),
        ({"d_model": True}, "d_model is True"),
        ({"d_model": 0}, "d_model is 0"),
        ({"site_dims": {SITE: 2**40}}, "site_dims"),
        ({"layout": HUGE_LAYOUT}, "4294967297 tokens per image"),
        ({"layout": {**LAYOUT.to_dict(), "n_tokens": 10**10}}, "disagrees with its own arithmetic"),
        ({"layout": {**LAYOUT.to_dict(), "image_size": ["32", 32]}}, "image_size"),
        ({"tokens": "everything"}, "tokens is 'everything'"),
        ({"token_indices": list(range(1, 16))}, "token_indices"),
        ({"dtype": "float64"}, "dtype is 'float64'"),
        ({"has_labels": "yes"}, "has_labels"),
        ({"n_skipped": 3}, "n_skipped"),
        ({"label_names": [1, 2]}, "label_names"),
    ],
)
def test_impossible_metadata_with_recomputed_checksums_is_refused(store, change, named, capsys):
    reseal_store(store.path, metadata=change)
    with pytest.raises(StoreCorruptError, match="does not describe a valid store") as err:
        ActivationStore(store.path)
    assert named in str(err.value)
    assert main(["verify", str(store.path)]) == 1
    assert named in capsys.readouterr().err


def test_rows_must_fit_the_recorded_images_and_tokens(store):
    # 64 images of 16 tokens hold at most 1,024 rows: say 3 images were recorded, and they cannot.
    reseal_store(store.path, metadata={"n_images": 3, "n_recorded_images": 3})
    with pytest.raises(StoreCorruptError, match="does not fit 3 recorded images of 16 tokens"):
        ActivationStore(store.path)


def _set(column: int, value: int, row: int = 5):
    def edit(prov_n2):
        prov_n2[row, column] = value
        return prov_n2

    return edit


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_set(0, N_IMAGES + 3), "image indices outside 0..63"),
        (_set(0, -1), "image indices outside"),
        (_set(1, 0), "token indices that are not among the recorded tokens"),  # CLS in a patches store
        (_set(1, 3), r"not in strictly increasing \(image, token\) order"),
    ],
)
def test_verify_reads_provenance_against_images_and_tokens(store, edit, named):
    from vision_sae_lens.store import format as fmt

    reseal_store(store.path, rows={(fmt.PROVENANCE, 0): edit})
    with pytest.raises(StoreCorruptError, match=named):
        ActivationStore(store.path).verify()
