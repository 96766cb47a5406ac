"""File-safety primitives against planted files: a symlinked or FIFO lock file, a user's own ``*.tmp``
names at start-up, JSON files that are FIFOs, ``/dev/zero`` or huge, and names that are not plain."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from helpers import D_IN, SITE, random_images, synthetic_rows, write_store
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens import fsutil
from vision_sae_lens.errors import SAEFolderError, StoreError, UnsafePathError
from vision_sae_lens.store import ActivationStore, cache_activations
from vision_sae_lens.train import TrainConfig, train_sae
from vision_sae_lens.train.checkpoint import open_sae_folder

SECRET = "user's precious file\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("acts") / "store", {SITE: synthetic_rows(1024, D_IN)})


def _train(store, out: Path):
    cfg = TrainConfig(
        store=store,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=16, k=2),
        training_tokens=256,
        batch_size=64,
        max_eval_rows=256,
        name="run",
    )
    return train_sae(cfg, out_dir=out, progress=False)


def _returns_within(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; (finished in time, what it raised or returned). A read that blocks (a FIFO
    without writer) leaves a daemon thread behind instead of hanging the suite."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("value")


# -------------------------------------------------------------------------- 1. the lock file
def test_a_symlinked_lock_file_is_refused_and_its_target_is_untouched(
    tiny_model, small_store, tmp_path, victim
):
    for out in (tmp_path / "store_out", tmp_path / "train_out"):
        out.mkdir()
        (out / fsutil.LOCK_FILE).symlink_to(victim)
    with pytest.raises(UnsafePathError, match=r"\.vsl\.lock is a symbolic link.*rm "):
        cache_activations(
            tiny_model, random_images(2), sites=[SITE], out_dir=tmp_path / "store_out", progress=False
        )
    with pytest.raises(UnsafePathError, match="symbolic link"):
        _train(small_store, tmp_path / "train_out")
    assert victim.read_text() == SECRET
    assert sorted(p.name for p in (tmp_path / "train_out").iterdir()) == [fsutil.LOCK_FILE]


def test_a_lock_file_that_is_a_fifo_or_a_folder_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / fsutil.LOCK_FILE)
    done, result = _returns_within(lambda: fsutil.DirLock(tmp_path, what="test").acquire())
    assert done and isinstance(result, UnsafePathError) and "a FIFO" in str(result)
    other = tmp_path / "other"
    (other / fsutil.LOCK_FILE).mkdir(parents=True)
    with pytest.raises(UnsafePathError, match="a directory"):
        fsutil.DirLock(other, what="test").acquire()


def test_write_atomic_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path, victim):
    (tmp_path / "eval.json").symlink_to(victim)
    fsutil.write_json_atomic(tmp_path / "eval.json", {"nmse": 0.1})
    assert victim.read_text() == SECRET and not (tmp_path / "eval.json").is_symlink()


# ------------------------------------------------------------------------ 4. start-up cleanup
USER_NAMES = (".draft.tmp", ".notes.tmp", "x.tmp", ".a.b.tmp", ".run.123.tmp")


def _plant_user_temps(folder: Path) -> None:
    for name in USER_NAMES:
        (folder / name).write_text(SECRET)
    (folder / ".cache.tmp").mkdir()
    (folder / ".cache.tmp" / "data.bin").write_text(SECRET)


def _assert_user_temps_kept(folder: Path) -> None:
    assert all((folder / name).read_text() == SECRET for name in USER_NAMES)
    assert (folder / ".cache.tmp" / "data.bin").read_text() == SECRET


def test_train_start_up_deletes_only_its_own_dead_temps(small_store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _plant_user_temps(out)
    dead = out / ".run.999999999-0123abcd.tmp"  # a killed writer's temp folder (no such pid)
    dead.mkdir()
    (dead / "cfg.json").write_text("{}")
    _train(small_store, out)
    _assert_user_temps_kept(out)
    assert not dead.exists()


def test_cache_rerun_keeps_the_users_tmp_files_in_the_store(tiny_model, tmp_path):
    out = tmp_path / "store"
    images = random_images(3)
    cache_activations(tiny_model, images, sites=[SITE], out_dir=out, progress=False)
    _plant_user_temps(out)
    (out / ".metadata.json.999999999-89abcdef.tmp").write_text("{")  # a killed writer's temp file
    cache_activations(
        tiny_model, images, sites=[SITE], out_dir=out, progress=False
    ).verify()  # takes the lock, cleans up
    _assert_user_temps_kept(out)
    assert not (out / ".metadata.json.999999999-89abcdef.tmp").exists()


def test_own_temp_names_are_recognised_and_live_writers_temps_are_kept(tmp_path):
    names = {fsutil.temp_name(tmp_path / "manifest.json").name for _ in range(20)}
    assert all(fsutil.is_own_temp(n) for n in names)
    assert not any(
        fsutil.is_own_temp(n) for n in (*USER_NAMES, ".cache.tmp", ".a.12-abc.tmp", ".a.1-ABCDEF01.tmp")
    )
    live = fsutil.temp_folder(tmp_path / "browser")  # this process is alive: a concurrent writer's folder
    (tmp_path / "link.999999999-0123abcd.tmp").symlink_to(tmp_path)  # never followed, only unlinked
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / ".x.999999999-0123abcd.tmp").write_text("nested")
    assert fsutil.remove_stale_temps(tmp_path, recursive=False) == 0  # 'link' lacks the leading dot
    (tmp_path / "link.999999999-0123abcd.tmp").rename(tmp_path / ".link.999999999-0123abcd.tmp")
    assert fsutil.remove_stale_temps(tmp_path, recursive=False, target="browser") == 0
    assert fsutil.remove_stale_temps(tmp_path, recursive=False) == 1
    assert live.is_dir() and (outside / ".x.999999999-0123abcd.tmp").exists() and tmp_path.is_dir()
    assert fsutil.remove_stale_temps(tmp_path) == 1 and not (outside / ".x.999999999-0123abcd.tmp").exists()


# ------------------------------------------------------------------------ 10. JSON reads
def test_read_json_refuses_fifos_devices_and_huge_files_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name, kind in (("fifo.json", "a FIFO"), ("zero.json", "a character device")):
        done, result = _returns_within(lambda name=name: fsutil.read_json(tmp_path / name))
        assert done and isinstance(result, UnsafePathError) and kind in str(result), (name, result)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(fsutil.MAX_JSON_BYTES + 1)  # sparse: no disk used
    with pytest.raises(UnsafePathError, match="huge.json is larger than 67,108,864 bytes"):
        fsutil.read_json(huge)
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    (tmp_path / "link.json").symlink_to(tmp_path / "ok.json")  # a link to a regular file is fine
    assert fsutil.read_json(tmp_path / "link.json") == {"a": [1, 2]}
    with pytest.raises(FileNotFoundError):
        fsutil.read_json(tmp_path / "missing.json")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_package_json_files_planted_as_special_files_fail_fast_with_the_name(small_store, tmp_path, special):
    store_copy = tmp_path / "store"
    shutil.copytree(small_store.path, store_copy)
    sae = tmp_path / "sae"
    sae.mkdir()
    for path in (store_copy / "manifest.json", sae / "cfg.json"):
        path.unlink(missing_ok=True)
        os.mkfifo(path) if special == "fifo" else path.symlink_to(special)
    (sae / "sae_weights.safetensors").write_bytes(b"")
    done, result = _returns_within(lambda: ActivationStore(store_copy))
    assert done and isinstance(result, StoreError | UnsafePathError) and "manifest.json" in str(result), (
        result
    )
    done, result = _returns_within(lambda: open_sae_folder(sae))
    assert done and isinstance(result, SAEFolderError) and "cfg.json" in str(result), result


# ------------------------------------------------------------------------ 16. names
@pytest.mark.parametrize(
    "name",
    ["a/./b", "a//b", "a/.", "x/.git/hooks", ".GIT/config", "/a", "a/", "a\x1b[31m", "a\x7fb", "a\x85b"],
)
def test_names_with_dot_parts_git_or_control_characters_are_refused(name):
    with pytest.raises(UnsafePathError, match="SAE id"):
        fsutil.check_name(name, what="SAE id", allow_slash=True)


@pytest.mark.parametrize("name", ["blocks.10.hook_resid_post", "blocks.3.hook_resid_post/run.v2", "a-b_c"])
def test_plain_names_pass(name):
    assert fsutil.check_name(name, what="SAE id", allow_slash=True) == name
