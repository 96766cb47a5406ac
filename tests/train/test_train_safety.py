"""Data safety of training: kills at every write/rename point, locked out-dir, atomic and sealed SAE
folders, safe --overwrite and run names, damaged and pickled checkpoints, bad sizes, full disk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import D_IN, SITE
from kill_at import count_points, run_killed, tree_bytes
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens.cli import main  # noqa: E402
from vision_sae_lens.errors import (  # noqa: E402
    OutputLockedError,
    SAEFolderCorruptError,
    SAEFolderError,
    TrainingError,
    UnsafeCheckpointError,
    UnsafePathError,
)
from vision_sae_lens.fsutil import SAE_CHECKSUMS_FILE, DirLock, verify_sae_folder  # noqa: E402
from vision_sae_lens.train import TrainConfig, train_sae  # noqa: E402
from vision_sae_lens.train import checkpoint as ckpt  # noqa: E402

BATCH, STEPS, EVERY = 128, 30, 10
PACKAGE = Path(__file__).resolve().parents[2] / "vision_sae_lens"


def _cfg(store, **kw):
    base = dict(
        store=store,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
        training_tokens=BATCH * STEPS,
        batch_size=BATCH,
        lr=1e-3,
        checkpoint_every_tokens=BATCH * EVERY,
        keep_checkpoints=2,
        max_eval_rows=1024,
        name="run",
    )
    return TrainConfig(**{**base, **kw})


def _train(store, out, **kw):
    return train_sae(_cfg(store, **kw), out_dir=out, resume=True, progress=False)


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run = _train(store, out)
    return run, tree_bytes(run.path)


# ----------------------------------------------------------------------------- kill -9 + resume
@pytest.mark.slow
def test_kill_at_each_write_and_rename_point_then_resume_equals_uninterrupted(store, reference, tmp_path):
    _, expected = reference
    points = count_points(lambda: _train(store, tmp_path / "count"), tmp_path / "log")
    names = {Path(t).name for _, t in points}
    for name in (
        "progress.json",
        ckpt.CHECKPOINT_MANIFEST,
        ckpt.FINISHED_FILENAME,
        SAE_CHECKSUMS_FILE,
        "10",
        "20",
        "run",
    ):
        assert name in names, f"no write point for {name}"
    # Every rename, and the first write (fsync) inside each folder being assembled.
    chosen, seen = [], set()
    for i, (kind, target) in enumerate(points, 1):
        folder = Path(target).parent.name
        if kind == "replace" or folder not in seen:
            chosen.append(i)
            seen.add(folder)
    for at in chosen:
        out = tmp_path / f"k{at}"
        assert run_killed(lambda out=out: _train(store, out), at=at) == "killed", points[at - 1]
        run = _train(store, out)  # `train --resume`: the same command, continued
        assert tree_bytes(run.path) == expected, (at, points[at - 1])
        assert not list(out.rglob("*.tmp")), at
        assert ckpt.list_checkpoints(out / "checkpoints" / "run") == [10, 20]


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(store, reference, tmp_path, caplog):
    _, expected = reference
    out = tmp_path / "r"
    outcome = run_killed(lambda: _train(store, out), at=_point(store, tmp_path, "train_state.json"))
    assert outcome == "killed"
    root = out / "checkpoints" / "run"
    assert ckpt.list_checkpoints(root) == [10, 20]
    weights = root / "20" / "trainer" / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        run = _train(store, out)
    assert str(weights) in caplog.text and "step 20" in caplog.text
    assert tree_bytes(run.path) == expected  # resumed from step 10: still the same end


def _point(store, tmp_path, name: str) -> int:
    points = count_points(lambda: _train(store, tmp_path / "count"), tmp_path / "log")
    return next(i for i, (kind, t) in enumerate(points, 1) if kind == "replace" and Path(t).name == name)


class _Evil:
    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def test_resume_refuses_a_pickled_trainer_state(store, tmp_path):
    out = tmp_path / "r"
    assert run_killed(lambda: _train(store, out), at=_point(store, tmp_path, "train_state.json")) == "killed"
    state_dir = out / "checkpoints" / "run" / "20" / "trainer"
    state = torch.load(state_dir / "trainer_state.pt", weights_only=True)
    state["extra"] = _Evil()
    torch.save(state, state_dir / "trainer_state.pt")
    ckpt._write_checkpoint_manifest(state_dir.parent)  # consistent checksums: only the pickle is wrong
    with pytest.raises(UnsafeCheckpointError, match="trainer_state.pt"):
        _train(store, out)


def test_safe_trainer_state_loader_restores_what_sae_lens_restores(store, tmp_path):
    """The weights_only loader against SAELens' own SAETrainer.load_trainer_state."""
    out = tmp_path / "r"
    assert run_killed(lambda: _train(store, out), at=_point(store, tmp_path, "train_state.json")) == "killed"
    from vision_sae_lens import compat
    from vision_sae_lens.train.build import build_trainer

    state_dir = out / "checkpoints" / "run" / "20" / "trainer"
    ours, theirs = (build_trainer(_cfg(store), "cpu") for _ in range(2))
    compat.load_trainer_state(ours, state_dir)
    theirs.load_trainer_state(state_dir)
    for name in (*compat.TRAINER_COUNTERS,):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name
    assert ours.n_training_steps == 20
    assert _same(ours.optimizer.state_dict(), theirs.optimizer.state_dict())
    assert _same(ours.lr_scheduler.state_dict(), theirs.lr_scheduler.state_dict())
    assert _same(
        {k: s.state_dict() for k, s in ours.coefficient_schedulers.items()},
        {k: s.state_dict() for k, s in theirs.coefficient_schedulers.items()},
    )
    assert ours.activation_scaler.scaling_factor == theirs.activation_scaler.scaling_factor


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ------------------------------------------------------------------------------ folders, names
def test_final_folder_is_sealed_and_verified(reference, capsys):
    run, _ = reference
    assert verify_sae_folder(run.path)
    assert main(["verify", str(run.path)]) == 0 and "SAE folder ok" in capsys.readouterr().out


def test_tampered_sae_folder_is_refused_by_evaluate_and_verify(reference, store, tmp_path, capsys):
    import shutil

    from vision_sae_lens.train.evaluate import evaluate_sae

    run, _ = reference
    folder = tmp_path / "copy"
    shutil.copytree(run.path, folder)
    weights = folder / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SAEFolderCorruptError, match="sae_weights.safetensors"):
        evaluate_sae(folder, store)
    assert main(["verify", str(folder)]) == 1 and "sae_weights.safetensors" in capsys.readouterr().err


def test_corrupt_cfg_json_is_named(reference, store, tmp_path):
    import shutil

    from vision_sae_lens.train.evaluate import evaluate_sae

    run, _ = reference
    folder = tmp_path / "copy"
    shutil.copytree(run.path, folder, ignore=shutil.ignore_patterns(SAE_CHECKSUMS_FILE))
    (folder / "cfg.json").write_text('{"d_in": 32, "d_sae"')
    with pytest.raises(SAEFolderError, match=r"cfg\.json is not valid JSON"):
        evaluate_sae(folder, store)


def test_sweep_name_escaping_out_dir_with_overwrite_deletes_nothing(store, tmp_path, capsys):
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'[defaults]\nstore = "{store.path}"\nsite = "{SITE}"\ntraining_tokens = {BATCH * 4}\nbatch_size = {BATCH}\n'
        '[[sae]]\narchitecture = "topk"\nd_sae = 64\nk = 4\nname = "../x"\n'
    )
    assert main(["train", "--config", str(sweep), "--out-dir", str(tmp_path / "out"), "--overwrite"]) == 1
    assert "UnsafePathError" in capsys.readouterr().err
    assert (victim / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["/tmp/abs", "a/../../b", "..", "a\\b", ""])
def test_unsafe_run_names_are_refused(store, name):
    with pytest.raises(UnsafePathError):
        _cfg(store, name=name)


def test_overwrite_removes_only_our_own_folders(store, tmp_path):
    out = tmp_path / "out"
    mine = out / "run"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine, not the package's")
    with pytest.raises(UnsafePathError, match="did not create"):
        train_sae(_cfg(store, training_tokens=BATCH * 2), out_dir=out, overwrite=True, progress=False)
    assert (mine / "notes.txt").exists()
    with pytest.raises(TrainingError, match="not written by vision_sae_lens"):
        train_sae(_cfg(store, training_tokens=BATCH * 2), out_dir=out, resume=True, progress=False)
    (mine / "notes.txt").unlink()
    first = train_sae(_cfg(store, training_tokens=BATCH * 2), out_dir=out, overwrite=True, progress=False)
    again = train_sae(_cfg(store, training_tokens=BATCH * 2), out_dir=out, overwrite=True, progress=False)
    assert again.path == first.path and verify_sae_folder(again.path)  # our folder: replaced


def test_second_train_into_the_same_out_dir_is_refused(store, tmp_path):
    with DirLock(tmp_path, what="train run"), pytest.raises(OutputLockedError, match="pid"):
        train_sae(_cfg(store), out_dir=tmp_path, progress=False)
    assert not (tmp_path / "run").exists()


def test_lock_of_another_process_refuses_train_and_dies_with_it(store, tmp_path):
    """A real second process holds the out-dir lock: train is refused naming its pid; after that
    process is killed (-9), the kernel has released the lock and the same train runs."""
    import signal
    import subprocess

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # The bare package (no __init__, so no torch import): a light process using our real DirLock.
            "import sys, time, types; pkg = types.ModuleType('vision_sae_lens'); "
            f"pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['vision_sae_lens'] = pkg; "
            "from vision_sae_lens.fsutil import DirLock; "
            f"DirLock({str(tmp_path)!r}, what='train run').acquire(); print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid} "):
            train_sae(_cfg(store, training_tokens=BATCH * 2), out_dir=tmp_path, progress=False)
        assert not (tmp_path / "run").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run = train_sae(_cfg(store, training_tokens=BATCH * 2), out_dir=tmp_path, progress=False)
    assert verify_sae_folder(run.path)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "flags, match",
    [
        (["--d-sae", "0", "--k", "4"], "d_sae"),
        (["--d-sae", "64", "--k", "0"], "k "),
        (["--d-sae", "8", "--k", "16"], r"k \(16\) cannot exceed d_sae \(8\)"),
        (["--d-sae", "64", "--k", "4", "--training-tokens", "0"], "training_tokens"),
    ],
)
def test_bad_sizes_are_refused_before_work(store, tmp_path, capsys, flags, match):
    args = ["train", "--store", str(store.path), "--site", SITE, "--training-tokens", str(BATCH * 4)]
    args += ["--batch-size", str(BATCH), "--out-dir", str(tmp_path / "out"), *flags]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists()


def test_unwritable_out_dir_fails_before_training(store, tmp_path):
    from helpers import CountingStore

    (tmp_path / "file").write_text("a file where a folder should be")
    counting = CountingStore(store)
    with pytest.raises(TrainingError, match="cannot write into the output folder"):
        train_sae(_cfg(counting), out_dir=tmp_path / "file" / "out", progress=False)
    assert counting.batches_read == 0


def test_full_disk_during_training_gives_a_clear_error(store, tmp_path, monkeypatch):
    real_save = torch.save

    def save_to_full_disk(obj, f, *args, **kwargs):  # the kernel's own ENOSPC, through torch's writer
        return real_save(obj, "/dev/full", *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    with pytest.raises(TrainingError, match="disk .* is full.*--resume"):
        train_sae(_cfg(store), out_dir=tmp_path, progress=False)
    assert ckpt.list_checkpoints(tmp_path / "checkpoints" / "run") == []
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "run").exists()


def test_readme_says_interrupted_train_resumes_with_resume():
    text = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "an interrupted `train` resumes when re-run with `--resume`" in text
