"""Data safety of the store: kills at every write point, two writers, tampering, escaping paths,
changed images on resume, bad arguments."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SITES, TINY_ID, TINY_KWARGS, build_tiny, random_images
from kill_at import count_points, run_killed, tree_bytes

from vision_sae_lens.errors import (
    OutputLockedError,
    StoreCorruptError,
    StoreMismatchError,
    UnsafePathError,
)
from vision_sae_lens.fsutil import DirLock
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store import ActivationStore, StoreWriter, cache_activations
from vision_sae_lens.store import format as fmt
from vision_sae_lens.train.verify import verify_path

REPO = Path(__file__).resolve().parents[2]


def _cache(model, images, out, **kw):
    return cache_activations(
        model,
        images,
        sites=SITES,
        out_dir=out,
        shard_images=3,
        batch_size=2,
        loader_threads=1,
        progress=False,
        **kw,
    )


def _image_folder(root: Path, n: int = 6) -> Path:
    for i, img in enumerate(random_images(n, seed=5)):
        (root / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        img.save(root / ("a" if i % 2 else "b") / f"{i:02d}.png")
    return root


# ----------------------------------------------------------------------------- kill -9 + resume
@pytest.mark.slow
def test_kill_at_every_write_and_rename_point_then_resume_equals_uninterrupted(tiny_model, tmp_path):
    folder = _image_folder(tmp_path / "images", n=7)  # labelled: labels.bin is written too
    ref = _cache(tiny_model, f"imagefolder:{folder}", tmp_path / "ref")
    expected = tree_bytes(ref.path)
    points = count_points(
        lambda: _cache(tiny_model, f"imagefolder:{folder}", tmp_path / "count"), tmp_path / "log"
    )
    named = {Path(target).name for _, target in points}
    for name in (
        "recording.json",
        "manifest.json",
        "metadata.json",
        "labels.bin",
        "000000.bin",
        "000002.json",
    ):
        assert name in named, f"no write point for {name}"
    assert len(points) > 20
    for at in range(1, len(points) + 1):
        out = tmp_path / f"k{at}"
        outcome = run_killed(lambda out=out: _cache(tiny_model, f"imagefolder:{folder}", out), at=at)
        assert outcome == "killed", (at, points[at - 1], outcome)
        store = _cache(tiny_model, f"imagefolder:{folder}", out)  # the same command resumes
        got = tree_bytes(store.path)
        assert got.keys() == expected.keys(), (at, points[at - 1], sorted(set(got) ^ set(expected)))
        assert got == expected, (at, points[at - 1])


# ---------------------------------------------------------------------------------- two writers
_PAUSING_CHILD = """
import os, sys, time
from pathlib import Path
real = os.replace
def replace(src, dst, *a, **k):
    real(src, dst, *a, **k)
    if str(dst).endswith("000000.json"):  # shard 0 committed: hold the store here until released
        Path(sys.argv[1], "paused").write_text(str(os.getpid()))
        while not Path(sys.argv[1], "release").exists():
            time.sleep(0.05)
os.replace = replace
from vision_sae_lens.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_second_cache_process_into_same_store_is_refused_naming_the_first(tmp_path):
    folder = _image_folder(tmp_path / "images", n=6)
    out = tmp_path / "store"
    args = ["cache", "--model", TINY_ID, "--random-init", "--model-kwargs", json.dumps(TINY_KWARGS)]
    args += ["--images", f"imagefolder:{folder}", "--sites", *SITES, "--out", str(out), "--shard-images", "2"]
    args += ["--batch-size", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSING_CHILD, str(tmp_path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (tmp_path / "paused").exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        second = subprocess.run(
            [sys.executable, "-m", "vision_sae_lens", *args], env=env, capture_output=True, text=True
        )
        assert second.returncode == 1
        assert "OutputLockedError" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert not (out / fmt.METADATA_FILE).exists()
    finally:
        (tmp_path / "release").write_text("go")
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    store = ActivationStore(out)
    store.verify()
    # Byte for byte the store one undisturbed process records alone (same seed, same settings).
    alone = cache_activations(
        build_tiny(0),
        f"imagefolder:{folder}",
        sites=SITES,
        out_dir=tmp_path / "alone",
        shard_images=2,
        batch_size=2,
        progress=False,
    )
    assert tree_bytes(out) == tree_bytes(alone.path)
    assert not list(out.rglob("*.tmp"))


def test_lock_held_refuses_cache_at_once_and_names_owner(tiny_model, tmp_path):
    out = tmp_path / "store"
    with DirLock(out, what="cache run"), pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
        _cache(tiny_model, random_images(3), out)
    assert not (out / fmt.RECORDING_FILE).exists()
    _cache(tiny_model, random_images(3), out).verify()  # released: the same command now works


def test_writers_use_unique_temp_names(tmp_path):
    from vision_sae_lens.fsutil import temp_name

    names = {temp_name(tmp_path / "manifest.json") for _ in range(50)}
    assert len(names) == 50 and all(n.name.endswith(".tmp") for n in names)


# ------------------------------------------------------------------------------------- tampering
def _small_store(path: Path, *, labels: bool = True) -> ActivationStore:
    layout = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=True)
    writer = StoreWriter(
        path,
        backbone_id="timm:test",
        sites=["blocks.0.hook_resid_post"],
        d_model=4,
        layout=layout,
        tokens="patches",
        dtype="float32",
        shard_rows=8,
    )
    rows = np.random.default_rng(0).standard_normal((24, 4)).astype(np.float32)
    writer.append({"blocks.0.hook_resid_post": rows}, np.repeat(np.arange(6), 4), np.tile(np.arange(1, 5), 6))
    return writer.finish(labels=[0, 1, 0, 1, 0, 1] if labels else None)


def _rewrite(path: Path, *, manifest=None, metadata=None) -> None:
    """Edit a store consistently, as a careful attacker would: manifest hash and fingerprint redone."""
    meta = json.loads((path / fmt.METADATA_FILE).read_text())
    if manifest is not None:
        text = fmt.canonical_json(manifest)
        (path / fmt.MANIFEST_FILE).write_text(text)
        if metadata is None:
            meta["manifest_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    if metadata is not None:
        meta.update(metadata)
    meta["fingerprint"] = fmt.fingerprint_of(meta)
    (path / fmt.METADATA_FILE).write_text(fmt.canonical_json(meta))


def test_shard_edited_with_its_manifest_entry_is_caught(tmp_path):
    store = _small_store(tmp_path / "s")
    manifest = json.loads((store.path / fmt.MANIFEST_FILE).read_text())
    entry = manifest["shards"][1]["files"]["blocks.0.hook_resid_post"]
    shard = store.path / entry["path"]
    data = bytearray(shard.read_bytes())
    data[:4] = np.float32(123.0).tobytes()
    shard.write_bytes(bytes(data))
    entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (store.path / fmt.MANIFEST_FILE).write_text(fmt.canonical_json(manifest))  # metadata left alone
    with pytest.raises(StoreCorruptError, match="manifest_sha256"):
        ActivationStore(store.path)
    with pytest.raises(StoreCorruptError, match="manifest_sha256"):
        verify_path(store.path)
    with pytest.raises(StoreCorruptError, match="manifest_sha256"):
        store.verify()  # an already-open store re-reads the manifest


@pytest.mark.parametrize(
    "bad", ["../outside.bin", "/etc/passwd", "shards/blocks.0.hook_resid_post/000000.bin"]
)
def test_manifest_paths_must_stay_inside_the_store_where_the_format_puts_them(tmp_path, bad):
    store = _small_store(tmp_path / "s")
    (tmp_path / "outside.bin").write_bytes(
        (store.path / store.manifest["shards"][1]["files"]["blocks.0.hook_resid_post"]["path"]).read_bytes()
    )
    manifest = json.loads((store.path / fmt.MANIFEST_FILE).read_text())
    manifest["shards"][1]["files"]["blocks.0.hook_resid_post"]["path"] = bad
    _rewrite(store.path, manifest=manifest)
    with pytest.raises(StoreCorruptError, match="stay inside the store"):
        ActivationStore(store.path)


@pytest.mark.parametrize(
    "change",
    [{"dtype": "float16"}, {"site_dims": {"blocks.0.hook_resid_post": 8}}, {"n_rows": 23}],
    ids=["dtype", "site_dims", "n_rows"],
)
def test_mis_shaped_store_is_refused_at_open(tmp_path, change):
    store = _small_store(tmp_path / "s")
    _rewrite(store.path, metadata=change)
    with pytest.raises(StoreCorruptError, match="mis-shaped|rows"):
        ActivationStore(store.path)


def test_labels_are_checksummed(tmp_path):
    store = _small_store(tmp_path / "s")
    assert store.labels.tolist() == [0, 1, 0, 1, 0, 1]
    labels = store.path / fmt.LABELS_FILE
    labels.write_bytes(np.array([1, 1, 1, 1, 1, 1], dtype="<i4").tobytes())
    with pytest.raises(StoreCorruptError, match="labels.bin"):
        _ = ActivationStore(store.path).labels
    with pytest.raises(StoreCorruptError, match="labels.bin"):
        store.verify()


def test_verify_command_reports_ok_and_fails_on_a_flipped_byte(tmp_path, capsys):
    from vision_sae_lens.cli import main

    store = _small_store(tmp_path / "s")
    assert main(["verify", str(store.path)]) == 0
    assert "store ok" in capsys.readouterr().out
    shard = store.path / store.manifest["shards"][0]["provenance"]["path"]
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["verify", str(store.path)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


# ------------------------------------------------------------------------------ names and dirs
@pytest.mark.parametrize("site", ["../x", "/abs", "a/b", "..", "_provenance"])
def test_site_names_that_would_escape_or_collide_are_refused(tmp_path, site):
    layout = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=True)
    with pytest.raises((UnsafePathError, ValueError)):
        StoreWriter(tmp_path / "s", backbone_id="x", sites=[site], d_model=4, layout=layout, tokens="patches")
    assert not (tmp_path / "x").exists() and not (tmp_path / "s").exists()


def test_foreign_non_empty_directory_is_refused_and_untouched(tiny_model, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(StoreMismatchError, match="not empty"):
        _cache(tiny_model, random_images(3), out)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_shard_images_zero_is_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="shard_images must be >= 1"):
        cache_activations(tiny_model, random_images(2), sites=SITES, out_dir=tmp_path / "s", shard_images=0)
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- changed images
def test_resume_with_changed_images_is_refused(tiny_model, tmp_path):
    folder = _image_folder(tmp_path / "images", n=6)
    out = tmp_path / "store"
    spec = f"imagefolder:{folder}"
    # Interrupted after the first shard: kill at the rename of shard 1's first file.
    points = count_points(lambda: _cache(tiny_model, spec, tmp_path / "count"), tmp_path / "log")
    at = next(i for i, (kind, t) in enumerate(points, 1) if kind == "replace" and t.endswith("000001.bin"))
    assert run_killed(lambda: _cache(tiny_model, spec, out), at=at) == "killed"
    target = folder / "b" / "00.png"
    random_images(1, seed=99)[0].save(target)  # same name, new content
    with pytest.raises(StoreMismatchError, match="images changed"):
        _cache(tiny_model, spec, out)
    assert not (out / fmt.METADATA_FILE).exists()

    # Restored bytes but a new mtime still count as changed (size + mtime identify a file's state).
    out2 = tmp_path / "store2"
    _cache(tiny_model, spec, out2)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(StoreMismatchError, match="images changed"):
        _cache(tiny_model, spec, out2)
    # Files added or removed change the dataset itself (settings differ).
    os.utime(target, ns=(time.time_ns(), time.time_ns()))
    out3 = tmp_path / "store3"
    _cache(tiny_model, spec, out3)
    random_images(1, seed=7)[0].save(folder / "a" / "99.png")
    with pytest.raises(StoreMismatchError, match="delete|another output"):
        _cache(tiny_model, spec, out3)
