"""saev ``sae.pt`` files written byte for byte as saev does, for every header schema, and a
reference implementation of saev's documented forward (independent of the importer).

saev's ``dump``: ``json.dumps(header) + "\\n"`` then ``torch.save(sae.state_dict(), fd)`` into the
same file. Headers follow saev's ``saev/nn/modeling.py`` across its history.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

D_MODEL, EXP = 16, 4
D_SAE = D_MODEL * EXP
TOP_K = 6


def make_weights(seed: int, *, threshold: float | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "W_enc": torch.randn(D_MODEL, D_SAE, generator=g) * 0.4,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1 + 0.05,
        "W_dec": torch.randn(D_SAE, D_MODEL, generator=g) * 0.4,
        "b_dec": torch.randn(D_MODEL, generator=g) * 0.5,
    }
    if threshold is not None:
        sd["activation.threshold"] = torch.tensor(threshold)
    return sd


def header_for(schema: str, activation: str) -> dict:
    """Header JSON saev wrote for ``schema`` in legacy, 1A, 1B, 2, 3, 4, 5."""
    act_params = {} if activation == "Relu" else {"top_k": TOP_K}
    if schema == "legacy":
        assert activation == "Relu"
        return {
            "d_vit": D_MODEL,
            "exp_factor": EXP,
            "n_reinit_samples": 1024,
            "sparsity_coeff": 4e-4,
            "ghost_grads": False,
            "l1_coeff": 4e-4,
            "seed": 0,
        }
    if schema == "1A":
        cfg = {
            "d_vit": D_MODEL,
            "exp_factor": EXP,
            "n_reinit_samples": 1024,
            "seed": 0,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
            "sparsity_coeff": 4e-4,
            **act_params,
        }
        return {"schema": 1, "cfg": cfg, "cls": activation, "commit": "abc1234", "lib": "0.1.0"}
    if schema in ("1B", "2"):
        cfg = {
            "d_vit": D_MODEL,
            "exp_factor": EXP,
            "n_reinit_samples": 1024,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
            "seed": 0,
            "activation": {"cls": activation, "params": act_params},
        }
        head = {"schema": 1 if schema == "1B" else 2, "cfg": cfg, "commit": "abc1234", "lib": "0.2.0"}
        if schema == "1B":
            head["cls"] = "SparseAutoencoderConfig"
        return head
    if schema in ("3", "4"):
        params = dict(act_params, sparsity={"coeff": 4e-4} if activation == "Relu" else {})
        cfg = {
            "d_model": D_MODEL,
            "d_sae": D_SAE,
            "activation": {"cls": activation, "params": params},
            "reinit_blend": 0.8,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
        }
        return {"schema": int(schema), "cfg": cfg, "commit": "def5678", "lib": "1.0.0"}
    if schema == "5":
        sparsity = (
            {"cls": "L1Sparsity", "params": {"key": "l1-sparsity", "coeff": 4e-4}}
            if activation == "Relu"
            else {"cls": "NoSparsity", "params": {"key": "no-sparsity"}}
        )
        key = {"Relu": "relu", "TopK": "top-k", "BatchTopK": "batch-top-k"}[activation]
        params = {
            "key": key,
            **act_params,
            "sparsity": sparsity,
            "aux": {"cls": "AuxK", "params": {"key": "auxk", "k_aux": 512, "alpha": 0.03125}},
        }
        if activation == "BatchTopK":
            params["momentum"] = 0.1
        cfg = {
            "d_model": D_MODEL,
            "d_sae": D_SAE,
            "activation": {"cls": activation, "params": params},
            "reinit_blend": 0.8,
            "reinit_enc_dec_tranpose": True,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
        }
        return {"schema": 5, "cfg": cfg, "commit": "unknown", "lib": "1.2.0"}
    raise ValueError(schema)


def write_saev(path: Path, header: dict, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, fd)
    return path


def saev_forward_latents(
    x: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    activation: str,
    subtract_b_dec: bool,
    top_k: int = TOP_K,
) -> torch.Tensor:
    """saev's eval-mode encoder: h = (x [- b_dec]) @ W_enc + b_enc, then its activation."""
    x_in = x - state["b_dec"] if subtract_b_dec else x
    h = x_in @ state["W_enc"] + state["b_enc"]
    if activation == "Relu":
        return torch.relu(h)
    if activation == "TopK" or (activation == "BatchTopK" and "activation.threshold" not in state):
        _, idx = torch.topk(h, top_k, dim=-1, sorted=False)
        mask = torch.zeros_like(h).scatter(-1, idx, 1.0)
        return mask * h  # saev keeps the raw value (no ReLU after top-k)
    theta = state["activation.threshold"]
    if theta <= 0:
        return torch.where(h > 0, h, torch.zeros_like(h))
    return torch.where(h > theta, h, torch.zeros_like(h))
