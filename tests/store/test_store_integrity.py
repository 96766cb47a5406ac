"""Integrity that costs what is read: per-block sha256 (format 2), format-1 stores still read, the verified
record (remembered across processes, never trusted for a changed file), parallel ``verify()``."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vision_sae_lens.backbones import TokenLayout
from vision_sae_lens.errors import StoreCorruptError
from vision_sae_lens.store import ActivationStore, StoreWriter, integrity
from vision_sae_lens.store import format as fmt

SITE = "blocks.0.hook_resid_post"
LAYOUT = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=True)  # 4 patches
BLOCK = 256  # bytes per block in these tests: a 40-row float32 shard of width 8 (1,280 bytes) has 5 blocks


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(integrity, "BLOCK_BYTES", BLOCK)
    monkeypatch.setattr(integrity, "RACY_SECONDS", 0.0)  # files written by the test count as settled


def write_store(path, n_images=20, shard_rows=40, d=8) -> ActivationStore:
    rows = np.arange(n_images * 4)
    acts = np.random.default_rng(0).standard_normal((len(rows), d)).astype(np.float32)
    writer = StoreWriter(path, backbone_id="t", sites={SITE: d}, d_model=d, layout=LAYOUT, tokens="patches",
                         dtype="float32", shard_rows=shard_rows)  # fmt: skip
    writer.append({SITE: acts}, rows // 4, rows % 4 + 1)
    return writer.finish()


def hashed_blocks(monkeypatch) -> list[tuple[str, int]]:
    """Spy on block hashing: every (file, block) hashed is appended to the returned list."""
    seen: list[tuple[str, int]] = []
    real = integrity._File.hash_block
    monkeypatch.setattr(
        integrity._File, "hash_block", lambda self, b: (seen.append((self.rel, b)), real(self, b))[1]
    )
    return seen


def flip_byte(path, offset: int, *, keep_mtime: bool = False) -> None:
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:  # a careful edit: the modification time is set back (ctime cannot be)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6), block=st.integers(1, 700)
)
def test_block_hasher_equals_sha256_of_each_block(data, cuts, block):
    hasher = integrity.BlockHasher(block)
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for lo, hi in zip(edges, edges[1:], strict=False):  # written in arbitrary pieces
        hasher.update(data[lo:hi])
    expected = b"".join(hashlib.sha256(data[i : i + block]).digest() for i in range(0, len(data), block))
    assert hasher.hexdigests() == expected.hex()


def test_manifest_lists_the_sha256_of_every_block(tmp_path, small_blocks):
    store = write_store(tmp_path / "s")
    assert (
        store.manifest["format_version"] == fmt.FORMAT_VERSION == 2 and store.manifest["block_bytes"] == BLOCK
    )
    for shard in store.manifest["shards"]:
        for entry in (*shard["files"].values(), shard["provenance"]):
            data = (store.path / entry["path"]).read_bytes()
            blocks = [hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
            assert entry["block_sha256"] == "".join(blocks) and "sha256" not in entry


def test_a_read_hashes_only_the_blocks_it_touches(tmp_path, small_blocks, monkeypatch):
    path = write_store(tmp_path / "s").path
    seen = hashed_blocks(monkeypatch)
    store = ActivationStore(path)
    store.read_rows(SITE, 0, 5)  # rows 0..4 of shard 0: 160 bytes, block 0 only
    assert seen == [(fmt.site_file(SITE, 0), 0)]
    store.read_rows(SITE, 0, 5)
    assert len(seen) == 1  # once per process
    store.gather(SITE, np.array([47]))  # shard 1, local row 7: bytes 224..255, block 0 of that file
    assert seen[-1] == (fmt.site_file(SITE, 1), 0) and len(seen) == 2
    store.gather(SITE, np.array([48]))  # local row 8: bytes 256..287, block 1
    assert seen[-1] == (fmt.site_file(SITE, 1), 1)


def test_a_corrupt_block_fails_the_reads_that_touch_it_and_only_those(tmp_path, small_blocks):
    path = write_store(tmp_path / "s").path
    flip_byte(path / fmt.site_file(SITE, 0), 3 * BLOCK + 5)  # block 3 = rows 24..31 (32 bytes each)
    store = ActivationStore(path)
    store.read_rows(SITE, 0, 24)
    store.read_rows(SITE, 32, 80)
    with pytest.raises(StoreCorruptError, match=r"blocks\.0\.hook_resid_post/000000\.bin.*bytes 768\.\.1023"):
        store.read_rows(SITE, 20, 30)
    with pytest.raises(StoreCorruptError, match="000000.bin"):
        store.gather(SITE, np.array([1, 70, 25]))
    with pytest.raises(StoreCorruptError, match="000000.bin"):
        list(store.shuffled(SITE, 8))
    with pytest.raises(StoreCorruptError, match=r"000000\.bin: checksum mismatch"):
        store.verify()


def test_the_verified_record_skips_rehashing_an_unchanged_store(tmp_path, small_blocks, monkeypatch):
    path = write_store(tmp_path / "s").path
    first = ActivationStore(path)
    assert list(first.ordered(SITE, 7))  # every site and provenance block
    first._verifier.save()
    seen = hashed_blocks(monkeypatch)
    again = ActivationStore(path)
    assert list(again.ordered(SITE, 7)) and seen == []


def test_the_record_does_not_cover_a_file_edited_with_its_mtime_set_back(tmp_path, small_blocks, monkeypatch):
    path = write_store(tmp_path / "s").path
    store = ActivationStore(path)
    store.read_rows(SITE, 0, store.n_rows)
    store._verifier.save()
    shard = path / fmt.site_file(SITE, 1)
    before = os.stat(shard)
    time.sleep(0.05)  # past the file system's timestamp granularity, so the edit gets a new ctime
    flip_byte(shard, 10, keep_mtime=True)
    after = os.stat(shard)
    assert after.st_mtime_ns == before.st_mtime_ns and after.st_size == before.st_size
    assert after.st_ctime_ns != before.st_ctime_ns  # what the record is keyed on, besides size and mtime
    seen = hashed_blocks(monkeypatch)
    reopened = ActivationStore(path)
    reopened.read_rows(SITE, 0, 40)  # shard 0 unchanged: trusted from the record
    assert seen == []
    with pytest.raises(StoreCorruptError, match="000001.bin"):
        reopened.read_rows(SITE, 40, 80)


def test_recently_changed_files_are_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "BLOCK_BYTES", BLOCK)
    path = write_store(tmp_path / "s").path  # just written: inside RACY_SECONDS
    store = ActivationStore(path)
    store.read_rows(SITE, 0, store.n_rows)
    store._verifier.save()
    seen = hashed_blocks(monkeypatch)
    ActivationStore(path).read_rows(SITE, 0, 10)
    assert seen  # hashed again: an edit in the same timestamp tick would have looked unchanged


def test_two_readers_merge_what_they_verified(tmp_path, small_blocks, monkeypatch):
    path = write_store(tmp_path / "s").path
    a, b = ActivationStore(path), ActivationStore(path)
    a.read_rows(SITE, 0, 40)
    b.read_rows(SITE, 40, 80)
    a._verifier.save()
    b._verifier.save()  # re-reads the record and adds its files to a's
    seen = hashed_blocks(monkeypatch)
    ActivationStore(path).read_rows(SITE, 0, 80)
    assert seen == []


def test_a_forged_record_behind_a_symlink_is_not_trusted(tmp_path, small_blocks, monkeypatch):
    path = write_store(tmp_path / "s").path
    store = ActivationStore(path)
    store.read_rows(SITE, 0, store.n_rows)
    store._verifier.save()
    record = store._verifier._record.path
    forged = tmp_path / "forged.json"
    forged_bytes = record.read_bytes()
    forged.write_bytes(forged_bytes)
    record.unlink()
    record.symlink_to(forged)
    flip_byte(path / fmt.site_file(SITE, 0), 0)  # the forged record still "covers" it only by its old stat
    seen = hashed_blocks(monkeypatch)
    fresh = ActivationStore(path)
    fresh.read_rows(SITE, 40, 80)
    assert seen  # the symlinked record was not read
    fresh._verifier.save()
    assert (
        forged.read_bytes() == forged_bytes and record.is_file() and not record.is_symlink()
    )  # replaced by a file of our own, the link's target left alone


def test_a_read_only_cache_only_costs_the_memory_of_the_record(tmp_path, small_blocks, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(integrity.CACHE_ENV, str(blocker / "cache"))  # cannot be created
    store = ActivationStore(write_store(tmp_path / "s").path)
    store.read_rows(SITE, 0, store.n_rows)
    store._verifier.save()  # logged, not raised
    assert store.verify()["files"] == 4


def test_format_1_stores_are_still_read_and_checked(tmp_path, small_blocks):
    """A store as format-1 code wrote it: one sha256 per file, no block_bytes, format_version 1."""
    path = write_store(tmp_path / "s").path
    manifest = json.loads((path / fmt.MANIFEST_FILE).read_text())
    manifest["format_version"] = 1
    del manifest["block_bytes"]
    for shard in manifest["shards"]:
        for entry in (*shard["files"].values(), shard["provenance"]):
            del entry["block_sha256"]
            entry["sha256"] = hashlib.sha256((path / entry["path"]).read_bytes()).hexdigest()
    text = fmt.canonical_json(manifest)
    (path / fmt.MANIFEST_FILE).write_text(text)
    meta = json.loads((path / fmt.METADATA_FILE).read_text())
    meta.update(format_version=1, manifest_sha256=hashlib.sha256(text.encode()).hexdigest())
    meta["fingerprint"] = fmt.fingerprint_of(meta)
    (path / fmt.METADATA_FILE).write_text(fmt.canonical_json(meta))
    store = ActivationStore(path)
    assert store.read_rows(SITE, 0, 80).shape == (80, 8) and store.verify()["files"] == 4
    flip_byte(path / fmt.site_file(SITE, 1), 7)
    with pytest.raises(StoreCorruptError, match="000001.bin"):
        ActivationStore(path).read_rows(SITE, 79, 80)  # one sha256 per file: the whole file is checked
    with pytest.raises(StoreCorruptError, match=r"000001\.bin: checksum mismatch"):
        store.verify()


def test_a_wrong_number_of_block_checksums_is_refused_at_open(tmp_path, small_blocks):
    path = write_store(tmp_path / "s").path
    manifest = json.loads((path / fmt.MANIFEST_FILE).read_text())
    entry = manifest["shards"][0]["files"][SITE]
    entry["block_sha256"] = entry["block_sha256"][:-64]
    text = fmt.canonical_json(manifest)
    (path / fmt.MANIFEST_FILE).write_text(text)
    meta = json.loads((path / fmt.METADATA_FILE).read_text())
    meta["manifest_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    meta["fingerprint"] = fmt.fingerprint_of(meta)
    (path / fmt.METADATA_FILE).write_text(fmt.canonical_json(meta))
    with pytest.raises(StoreCorruptError, match="4 block checksums for 5 blocks"):
        ActivationStore(path)


def test_verify_rehashes_everything_and_reports_its_throughput(tmp_path, small_blocks, monkeypatch, capsys):
    from vision_sae_lens.cli import main

    path = write_store(tmp_path / "s").path
    store = ActivationStore(path)
    store.read_rows(SITE, 0, store.n_rows)
    store._verifier.save()
    seen = hashed_blocks(monkeypatch)
    stats = ActivationStore(path).verify()
    n_blocks = sum(-(-e["bytes"] // BLOCK) for s in store.manifest["shards"]
                   for e in (*s["files"].values(), s["provenance"]))  # fmt: skip
    assert len(seen) == len(set(seen)) == n_blocks  # whatever the record says
    assert stats["bytes"] == sum(os.path.getsize(path / rel) for rel in {rel for rel, _ in seen})
    assert stats["mb_per_s"] > 0
    assert main(["verify", str(path)]) == 0
    assert "MB/s" in capsys.readouterr().out


def test_a_row_across_a_block_boundary_is_checked_in_both_blocks(tmp_path, small_blocks):
    path = write_store(
        tmp_path / "s", d=3
    ).path  # 12-byte rows: row 21 holds bytes 252..263 of blocks 0 and 1
    flip_byte(path / fmt.site_file(SITE, 0), 260)
    store = ActivationStore(path)
    store.gather(SITE, np.array([20, 3]))  # bytes 240..251 and 36..47: block 0 only, intact
    with pytest.raises(StoreCorruptError, match="bytes 256..479"):
        store.gather(SITE, np.array([21]))
    with pytest.raises(StoreCorruptError, match="bytes 256..479"):
        ActivationStore(path).read_rows(SITE, 21, 22)
