"""saev importer: every header schema and activation against saev's documented forward."""

from __future__ import annotations

import json
import shutil
import zlib

import pytest
import torch
from helpers import make_checkpoint
from kill_at import tree_bytes
from sae_lens import SAE
from saev_fixtures import (
    D_MODEL,
    D_SAE,
    TOP_K,
    header_for,
    make_weights,
    saev_forward_latents,
    write_saev,
)

from vision_sae_lens.cli import main
from vision_sae_lens.errors import ConversionError, OutputExistsError, UnsafeCheckpointError, UnsafePathError
from vision_sae_lens.fsutil import verify_sae_folder
from vision_sae_lens.hub import import_saev, load_saev_checkpoint, read_saev_checkpoint

CASES = [
    ("legacy", "Relu", None, "standard", True),
    ("1A", "Relu", None, "standard", True),
    ("1A", "TopK", None, "topk", True),
    ("1B", "TopK", None, "topk", True),
    ("1B", "Relu", None, "standard", True),
    ("2", "Relu", None, "standard", False),
    ("2", "TopK", None, "topk", False),
    ("2", "BatchTopK", None, "topk", False),  # that era: per-sample top-k at eval, no threshold
    ("3", "BatchTopK", 0.3, "jumprelu", False),
    ("4", "TopK", None, "topk", False),
    ("5", "Relu", None, "standard", False),
    ("5", "TopK", None, "topk", False),
    ("5", "BatchTopK", 0.3, "jumprelu", False),
    ("5", "BatchTopK", 0.0, "jumprelu", False),  # threshold never trained: saev falls back to ReLU
]


def _inputs(seed=123, n=256):
    return torch.randn(n, D_MODEL, generator=torch.Generator().manual_seed(seed)) * 2.0 + 0.3


@pytest.mark.parametrize(("schema", "activation", "threshold", "arch", "subtracts"), CASES)
def test_converted_latents_equal_saev(tmp_path, schema, activation, threshold, arch, subtracts):
    state = make_weights(seed=zlib.crc32(f"{schema}{activation}".encode()) % 1000, threshold=threshold)
    path = write_saev(tmp_path / "sae.pt", header_for(schema, activation), state)
    ckpt = read_saev_checkpoint(path)
    assert (ckpt.d_model, ckpt.d_sae, ckpt.activation) == (D_MODEL, D_SAE, activation)
    assert ckpt.subtracts_b_dec is subtracts
    sae = load_saev_checkpoint(path)
    assert sae.cfg.architecture() == arch
    x = _inputs()
    ref = saev_forward_latents(x, state, activation=activation, subtract_b_dec=subtracts)
    if arch == "topk":
        # saev keeps negative values inside the top k; SAELens applies ReLU to them. Check the inputs
        # exercise the common case (k positive pre-activations) rather than hide the difference.
        assert (ref != 0).sum(-1).float().mean() > TOP_K - 0.5
    got = sae.encode(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # decoding is saev's too: W_dec f + b_dec
    torch.testing.assert_close(sae.decode(got), ref @ state["W_dec"] + state["b_dec"], atol=1e-4, rtol=1e-4)


def test_topk_negative_values_difference_is_documented(tmp_path):
    state = make_weights(seed=7)
    state["b_enc"] = torch.full((D_SAE,), -50.0)  # every pre-activation negative
    path = write_saev(tmp_path / "sae.pt", header_for("5", "TopK"), state)
    x = _inputs()
    ref = saev_forward_latents(x, state, activation="TopK", subtract_b_dec=False)
    got = load_saev_checkpoint(path).encode(x)
    assert (ref < 0).any() and (got >= 0).all()
    torch.testing.assert_close(got, ref.clamp(min=0))


def test_normalisation_is_folded(tmp_path):
    """DINOv2-24K style: saev saw (x - mean) * scalar; the converted SAE takes raw x."""
    state = make_weights(seed=3)
    mean = torch.randn(D_MODEL) * 3
    scalar = 2.0181241035461426
    for schema, subtracts in [("legacy", True), ("5", False)]:
        path = write_saev(tmp_path / schema / "sae.pt", header_for(schema, "Relu"), state)
        sae = load_saev_checkpoint(path, input_mean=mean, input_scalar=scalar)
        x = _inputs() * 5 + 1
        x_norm = (x - mean) * scalar
        ref = saev_forward_latents(x_norm, state, activation="Relu", subtract_b_dec=subtracts)
        torch.testing.assert_close(sae.encode(x), ref, atol=1e-4, rtol=1e-4)
        recon_norm = ref @ state["W_dec"] + state["b_dec"]
        torch.testing.assert_close(
            sae.decode(sae.encode(x)), recon_norm / scalar + mean, atol=1e-4, rtol=1e-4
        )
        assert sae.cfg.metadata.saev_normalization_folded["scalar"] == scalar


def test_subtract_b_dec_override(tmp_path):
    state = make_weights(seed=4)
    path = write_saev(tmp_path / "sae.pt", header_for("2", "Relu"), state)
    sae = load_saev_checkpoint(path, subtract_b_dec=True)
    x = _inputs()
    torch.testing.assert_close(
        sae.encode(x),
        saev_forward_latents(x, state, activation="Relu", subtract_b_dec=True),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda h, s: h.update(schema=9), "schema=9"),
        (lambda h, s: h["cfg"]["activation"].update(cls="Gated"), "cfg.activation.cls='Gated'"),
        (lambda h, s: h["cfg"].pop("d_model"), "cfg.d_model"),
        (lambda h, s: h["cfg"]["activation"]["params"].update(top_k=0), "top_k=0"),
        (lambda h, s: s.update(extra=torch.zeros(2)), "not understood ['extra']"),
        (lambda h, s: s.update(W_enc=torch.zeros(3, 3)), "W_enc has shape (3, 3)"),
    ],
)
def test_refuses_what_it_cannot_interpret(tmp_path, mutate, field):
    header, state = header_for("5", "TopK"), make_weights(seed=5)
    mutate(header, state)
    path = write_saev(tmp_path / "sae.pt", header, state)
    with pytest.raises(ConversionError) as err:
        load_saev_checkpoint(path)
    assert field in str(err.value)


def test_refuses_batch_coupled_schema1_batchtopk(tmp_path):
    path = write_saev(tmp_path / "sae.pt", header_for("1A", "BatchTopK"), make_weights(seed=6))
    with pytest.raises(ConversionError, match="cls='BatchTopK'"):
        load_saev_checkpoint(path)


def test_refuses_pickled_code_in_state(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned','w').write('x')",))

    header = header_for("5", "Relu")
    path = tmp_path / "sae.pt"
    with open(path, "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode())
        torch.save({"W_enc": Evil()}, fd)
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle"):
        read_saev_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_not_a_saev_file(tmp_path):
    path = tmp_path / "sae.pt"
    torch.save({"W_enc": torch.zeros(2)}, path)
    with pytest.raises(ConversionError, match="JSON header"):
        read_saev_checkpoint(path)


def test_import_saev_writes_saelens_folders(tmp_path):
    states = {}
    for name, (schema, act, thr) in {"a": ("legacy", "Relu", None), "b": ("5", "BatchTopK", 0.2)}.items():
        states[name] = make_weights(seed=len(name) + ord(name), threshold=thr)
        write_saev(tmp_path / "runs" / name / "sae.pt", header_for(schema, act), states[name])
    out = import_saev(tmp_path / "runs", out_dir=tmp_path / "out")
    assert [p.name for p in out] == ["a", "b"]
    x = _inputs()
    for p, (act, sub) in zip(out, [("Relu", True), ("BatchTopK", False)], strict=True):
        sae = SAE.load_from_disk(str(p))
        ref = saev_forward_latents(x, states[p.name], activation=act, subtract_b_dec=sub)
        torch.testing.assert_close(sae.encode(x), ref, atol=1e-5, rtol=1e-5)
        assert sae.cfg.metadata.converted_from == "saev"


def test_import_saev_over_a_trained_folder_is_refused_without_overwrite(tmp_path, capsys):
    saes = tmp_path / "saes"
    trained = make_checkpoint(saes / "run1", eval_json={"nmse": 0.01})  # a sealed folder, as train writes it
    before = tree_bytes(trained)
    source = write_saev(tmp_path / "run1" / "sae.pt", header_for("5", "Relu"), make_weights(seed=8))
    with pytest.raises(OutputExistsError, match=r"run1 already exists.*--overwrite"):
        import_saev(source, out_dir=saes)
    assert (
        main(["import-saev", str(source), "--out", str(saes)]) == 1
        and "--overwrite" in capsys.readouterr().err
    )
    assert tree_bytes(trained) == before
    assert main(["import-saev", str(source), "--out", str(saes), "--overwrite"]) == 0
    assert not (trained / "eval.json").exists(), "saev weights beside the trained SAE's eval.json"
    assert SAE.load_from_disk(str(trained)).cfg.metadata.converted_from == "saev"
    verify_sae_folder(trained)
    user = saes / "run1"
    shutil.rmtree(user)
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(UnsafePathError, match="not created by vision_sae_lens"):
        import_saev(source, out_dir=saes, overwrite=True)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_two_sources_with_one_output_name_are_refused_before_writing(tmp_path):
    runs = tmp_path / "runs"
    write_saev(runs / "a" / "b" / "sae.pt", header_for("5", "Relu"), make_weights(seed=1))
    write_saev(runs / "a__b" / "sae.pt", header_for("5", "Relu"), make_weights(seed=2))
    with pytest.raises(ConversionError) as err:
        import_saev(runs, out_dir=tmp_path / "out")
    assert str(runs / "a" / "b" / "sae.pt") in str(err.value) and str(runs / "a__b" / "sae.pt") in str(
        err.value
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_header_line_without_end_is_refused(tmp_path):
    path = tmp_path / "sae.pt"
    with open(path, "wb") as f:
        f.truncate(2**21)  # 2 MiB of NUL bytes and no newline
    with pytest.raises(ConversionError, match="first line is longer"):
        read_saev_checkpoint(path)
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    with pytest.raises(UnsafePathError, match="character device"):
        read_saev_checkpoint(tmp_path / "zero.pt")
