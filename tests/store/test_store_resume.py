"""Crash safety: a recording killed at any point and re-run yields the store an uninterrupted run yields."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SITES, build_tiny, make_folder, random_images

from vision_sae_lens.errors import StoreError, StoreMismatchError
from vision_sae_lens.store import ActivationStore, cache_activations
from vision_sae_lens.store import writer as writer_mod

RECORD_KW = dict(sites=SITES, dtype="float16", batch_size=3, shard_images=4, progress=False)

# Runs in a fresh process; SIGKILLs itself at the chosen point (the writer thread is mid-shard, or a
# shard's files are renamed but its commit record is not yet written).
SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from helpers import SITES, build_tiny
from vision_sae_lens.store import cache_activations, writer
mode, count = sys.argv[1], int(sys.argv[2])
calls = {{"n": 0}}
def die_after(original):
    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if mode == "add" and calls["n"] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        return out
    return wrapped
if mode == "add":
    writer.ShardBuilder.add = die_after(writer.ShardBuilder.add)
if mode == "record":
    original = writer.fmt.write_json_atomic
    def write_json_atomic(path, obj):
        if "_records" in str(path):
            calls["n"] += 1
            if calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(path, obj)
    writer.fmt.write_json_atomic = write_json_atomic
cache_activations(build_tiny(), {images!r}, out_dir={out!r}, sites=SITES, dtype="float16", batch_size=3,
                  shard_images=4, progress=False)
"""


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def reference_store(folder, tmp_path_factory):
    return cache_activations(
        build_tiny(), f"imagefolder:{folder}", out_dir=tmp_path_factory.mktemp("ref") / "s", **RECORD_KW
    )


def test_bad_images_are_converted_or_skipped_and_listed(reference_store):
    meta = reference_store.metadata
    assert meta["n_images"] == 11 and meta["n_skipped"] == 1 and meta["n_recorded_images"] == 10
    (skip,) = meta["skipped"]
    assert skip["name"] == "dog/img99_broken.png" and skip["error"].startswith("ImageInputError")
    assert reference_store.n_rows == 10 * 16
    labels = reference_store.labels
    assert reference_store.label_names == ["cat", "dog"] and labels[skip["image_idx"]] == -1
    image_n, _ = reference_store.provenance(0, reference_store.n_rows)
    assert skip["image_idx"] not in set(image_n.tolist())


@pytest.mark.parametrize("threads", [1, 4])
def test_loader_threads_do_not_change_a_byte(folder, reference_store, tmp_path, threads):
    # The reference ran with the default thread count; the store (skipped image included) must not
    # depend on how many threads decoded the images.
    store = cache_activations(
        build_tiny(), f"imagefolder:{folder}", out_dir=tmp_path / "s", loader_threads=threads, **RECORD_KW
    )
    assert tree_bytes(store.path) == tree_bytes(reference_store.path)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "count"), [("add", 5), ("record", 2)])
def test_kill_and_resume_is_byte_identical(folder, reference_store, tmp_path, mode, count):
    out = tmp_path / "s"
    script = tmp_path / "record.py"
    tests_dir = str(Path(__file__).parents[1])  # where helpers.py lives
    script.write_text(SCRIPT.format(tests=tests_dir, images=f"imagefolder:{folder}", out=str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, str(script), mode, str(count)], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not (out / "metadata.json").exists()
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(out)
    resumed = cache_activations(build_tiny(), f"imagefolder:{folder}", out_dir=out, **RECORD_KW)
    resumed.verify()
    ref = tree_bytes(reference_store.path)
    got = {k: v for k, v in tree_bytes(out).items() if not k.endswith(".tmp")}
    assert sorted(got) == sorted(ref)
    assert all(got[k] == ref[k] for k in ref), [k for k in ref if got[k] != ref[k]]


def test_rerun_returns_complete_store_and_other_settings_are_refused(folder, reference_store, tmp_path):
    out = tmp_path / "s"
    first = cache_activations(build_tiny(), f"imagefolder:{folder}", out_dir=out, **RECORD_KW)
    again = cache_activations(build_tiny(), f"imagefolder:{folder}", out_dir=out, **RECORD_KW)
    assert again.fingerprint == first.fingerprint == reference_store.fingerprint
    with pytest.raises(StoreMismatchError, match="dtype"):
        cache_activations(
            build_tiny(), f"imagefolder:{folder}", out_dir=out, **{**RECORD_KW, "dtype": "float32"}
        )
    with pytest.raises(StoreMismatchError, match="backbone_weights_sha256"):
        cache_activations(build_tiny(seed=1), f"imagefolder:{folder}", out_dir=out, **RECORD_KW)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(StoreMismatchError, match="not empty"):
        cache_activations(build_tiny(), f"imagefolder:{folder}", out_dir=tmp_path / "other", **RECORD_KW)


def test_full_disk_gives_clear_error_and_no_complete_store(tiny_model, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = writer_mod.ShardBuilder.add

    def add(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(writer_mod.ShardBuilder, "add", add)
    out = tmp_path / "s"
    with pytest.raises(StoreError, match="disk .* is full"):
        cache_activations(tiny_model, random_images(12), out_dir=out, **RECORD_KW)
    assert not (out / "metadata.json").exists()
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(writer_mod.ShardBuilder, "add", original)
    store = cache_activations(tiny_model, random_images(12), out_dir=out, **RECORD_KW)
    assert store.n_rows == 12 * 16
    store.verify()
