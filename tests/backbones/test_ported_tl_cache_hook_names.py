"""TransformerLens' ``tests/integration/test_cache_hook_names.py`` ported to hooked ViTs.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d (identical on
``main`` at 4cd36aae). TransformerLens lists, in the order they run, the sites ``run_with_cache`` fills on
the one-block SoLU model ``solu-1l``; here the same list is built per block for a tiny eager ViT of each
family, with what images and these architectures change:

* no ``unembed.hook_in`` / ``unembed.hook_out``: a ViT has no unembedding; its pooled image vector is
  ``hook_pooled``, last;
* no ``mlp.hook_mid`` / ``mlp.ln.*``: those belong to SoLU's MLP norm, which a ViT's MLP does not have;
* ``mlp.hook_in`` (the MLP's input after ``ln2``, what transcoders read) runs between ``ln2`` and
  ``mlp.hook_pre``;
* CLIP towers normalise tokens and positions together before block 0 (``ln_pre.*`` runs first, and there is
  no separate ``hook_pos_embed``); transformers' CLIP has no final norm over every token (no ``ln_final.*``).
"""

import torch
from families import images_for

ATTENTION = ["hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"]


def act_names_in_cache(model) -> list[str]:
    has = model.hook_dict.__contains__
    names = ["ln_pre.hook_scale", "ln_pre.hook_normalized"] if has("ln_pre.hook_scale") else []
    names += ["hook_embed", "hook_pos_embed"] if has("hook_pos_embed") else ["hook_embed"]
    for layer in range(model.cfg.n_layers):
        block = f"blocks.{layer}"
        names += [
            f"{block}.hook_resid_pre",
            f"{block}.ln1.hook_scale",
            f"{block}.ln1.hook_normalized",
            *(f"{block}.attn.{site}" for site in ATTENTION),
            f"{block}.hook_attn_out",
            f"{block}.hook_resid_mid",
            f"{block}.ln2.hook_scale",
            f"{block}.ln2.hook_normalized",
            f"{block}.mlp.hook_in",
            f"{block}.mlp.hook_pre",
            f"{block}.mlp.hook_post",
            f"{block}.hook_mlp_out",
            f"{block}.hook_resid_post",
        ]
    if has("ln_final.hook_scale"):
        names += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    return [*names, "hook_pooled"] if has("hook_pooled") else names


def test_cache_hook_names(tl_model):
    with torch.no_grad():
        _, cache = tl_model.run_with_cache(images_for(tl_model, 1))
    assert list(cache.keys()) == act_names_in_cache(tl_model)
