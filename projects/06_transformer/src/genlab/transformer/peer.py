"""transformers' GPT2LMHeadModel at a GPTConfig's size, holding our GPT's weights: the peer for the parity test
and the speed benchmark. GPT-2 stores its linear layers as ``Conv1D`` with the weight transposed (in, out)."""

from __future__ import annotations

import torch

from genlab.transformer.model import GPT


def gpt2_with_our_weights(model: GPT) -> torch.nn.Module:
    """A ``transformers.GPT2LMHeadModel`` of the same size as ``model`` with its weights copied in."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = model.config
    if not config.causal or not config.bias:
        raise ValueError("GPT-2 is causal and has biases: only such a GPT maps onto it")
    peer = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            bos_token_id=0,  # GPT-2's 50256 is outside a small vocabulary; nothing here uses either
            eos_token_id=0,
        )
    )
    ours = model.state_dict()
    theirs = {
        "transformer.wte.weight": ours["token_embedding.weight"],
        "transformer.wpe.weight": ours["position_embedding.weight"],
        "transformer.ln_f.weight": ours["ln_f.weight"],
        "transformer.ln_f.bias": ours["ln_f.bias"],
        "lm_head.weight": ours["token_embedding.weight"],
    }
    for i in range(config.n_layer):
        mine, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
            theirs[hf + b + ".weight"], theirs[hf + b + ".bias"] = ours[mine + a + ".weight"], ours[mine + a + ".bias"]
        for a, b in (("attention.qkv", "attn.c_attn"), ("attention.proj", "attn.c_proj"),
                     ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):  # fmt: skip
            theirs[hf + b + ".weight"] = ours[mine + a + ".weight"].t().contiguous()  # Conv1D: (in, out)
            theirs[hf + b + ".bias"] = ours[mine + a + ".bias"]
    missing, unexpected = peer.load_state_dict(theirs, strict=False)
    missing = [name for name in missing if not name.endswith(".attn.bias") and not name.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"weights did not map onto GPT-2: missing {missing}, unexpected {unexpected}")
    return peer.to(next(model.parameters()).device)
