"""The split language model: a CIFG-LSTM with recurrent projection and a small output head.

Anchor: Hard et al. 2018, "Federated Learning for Mobile Keyboard Prediction" (Gboard): one
CIFG-LSTM layer (Greff et al. 2017) with a projection (Sak et al. 2014) and input/output
embeddings tied (Press & Wolf 2017). Parameter groups:

- base (frozen on devices, trained centrally on public text): `embedding`, `lstm`;
- device part (trained on phones, aggregated): the groups named by `config.device_groups`
  (`model.config.GROUPS`): the `head`, LoRA adapters (Hu et al. 2021) on the LSTM kernels,
  and a low-rank update `emb_a @ emb_b` of the tied embedding. Adapters start as a zero
  update, so an untrained device part reproduces the base exactly.

Written with the LiteRT export in mind (shared/notes/litert.md): the recurrence is a
`lax.scan` that can be fully unrolled, embedding lookups can be one-hot matmuls, and the state
resets on `<bos>`/`<pad>` so a left-padded context equals a fresh message.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig
from model.types import Array
from model.vocab import BOS, PAD

__all__ = ["SplitLM", "init_params", "attach_device_part"]


class SplitLM(nn.Module):
    """tokens_BxT -> logits_BxTxV. Call with `deterministic=False` and a 'dropout' rng to train."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        gates = 3 if c.cifg else 4
        g = gates * c.hidden_dim
        self.embedding = self.param(
            "embedding", nn.initializers.normal(c.embed_dim**-0.5), (c.vocab_size, c.embed_dim)
        )
        self.lstm = {
            "wx": self.param("lstm_wx", nn.initializers.lecun_normal(), (c.embed_dim, g)),
            "wh": self.param("lstm_wh", nn.initializers.orthogonal(), (c.proj_dim, g)),
            "b": self.param("lstm_b", _gate_bias(c), (g,)),
            "wp": self.param("lstm_wp", nn.initializers.lecun_normal(), (c.hidden_dim, c.proj_dim)),
        }
        if c.lora_rank:
            # B starts at zero so the adapted model equals the base at initialisation.
            r = c.lora_rank
            self.lora = {
                "xa": self.param("lora_xa", nn.initializers.normal(r**-0.5), (c.embed_dim, r)),
                "xb": self.param("lora_xb", nn.initializers.zeros, (r, g)),
                "ha": self.param("lora_ha", nn.initializers.normal(r**-0.5), (c.proj_dim, r)),
                "hb": self.param("lora_hb", nn.initializers.zeros, (r, g)),
            }
        if c.embed_rank:
            # A low-rank update of the tied embedding (input lookup and output projection).
            self.emb_a = self.param("emb_a", nn.initializers.zeros, (c.vocab_size, c.embed_rank))
            self.emb_b = self.param(
                "emb_b", nn.initializers.normal(c.embed_rank**-0.5), (c.embed_rank, c.embed_dim)
            )
        if c.embed_rows:
            # A sparse update: full-width deltas for the first `embed_rows` ids only.
            self.emb_rows = self.param(
                "emb_rows", nn.initializers.zeros, (c.embed_rows, c.embed_dim)
            )
        self.head_kernel = self.param(
            "head_kernel", nn.initializers.lecun_normal(), (c.proj_dim, c.embed_dim)
        )
        self.head_bias = self.param("head_bias", nn.initializers.zeros, (c.embed_dim,))
        self.out_bias = self.param("head_out_bias", nn.initializers.zeros, (c.vocab_size,))
        self.drop = nn.Dropout(c.dropout)

    def embed(self, tokens_BxT: Array, onehot: bool) -> Array:
        # The embedding update stays factorised (E + A B is never formed): a lookup of A's
        # rows times B costs r*E per token instead of V*r*E per call.
        if onehot:  # exports as EMBEDDING_LOOKUP, which the int8 quantiser shrinks
            oh_BxTxV = jax.nn.one_hot(tokens_BxT, self.config.vocab_size)
            x = oh_BxTxV @ self.embedding
            if self.config.embed_rank:
                x = x + (oh_BxTxV @ self.emb_a) @ self.emb_b
            if self.config.embed_rows:
                x = x + oh_BxTxV[..., : self.config.embed_rows] @ self.emb_rows
            return x
        x = jnp.take(self.embedding, tokens_BxT, axis=0)
        if self.config.embed_rank:
            x = x + jnp.take(self.emb_a, tokens_BxT, axis=0) @ self.emb_b
        if self.config.embed_rows:
            k = self.config.embed_rows
            row = jnp.take(self.emb_rows, jnp.minimum(tokens_BxT, k - 1), axis=0)
            x = x + jnp.where((tokens_BxT < k)[..., None], row, 0.0)
        return x

    def features(
        self, tokens_BxT: Array, deterministic: bool = True, onehot: bool = False, unroll: int = 1
    ) -> Array:
        """Projected LSTM outputs h_BxTxP (before the head)."""
        c = self.config
        x_BxTxE = self.drop(self.embed(tokens_BxT, onehot), deterministic=deterministic)
        wx, wh = self.lstm["wx"], self.lstm["wh"]
        # Input contributions for all steps at once; only the recurrent part is sequential.
        xg_BxTxG = x_BxTxE @ wx + self.lstm["b"]
        if c.lora_rank:  # factorised LoRA: W x + B (A x), never forming W + AB
            xg_BxTxG = xg_BxTxG + (x_BxTxE @ self.lora["xa"]) @ self.lora["xb"]
        keep_BxT = ((tokens_BxT != BOS) & (tokens_BxT != PAD)).astype(x_BxTxE.dtype)
        # A zero start state that depends on the input: a constant one gets folded by the
        # LiteRT converter into a constant left operand of the LoRA matmul, which int8
        # quantisation then turns into an int8 x float BATCH_MATMUL that LiteRT cannot run.
        zero_Bx1 = keep_BxT[:, :1] * 0.0
        carry = (jnp.tile(zero_Bx1, (1, c.hidden_dim)), jnp.tile(zero_Bx1, (1, c.proj_dim)))
        wp = self.lstm["wp"]

        def step(carry, inp):
            cell_BxH, h_BxP = carry
            xg_BxG, keep_B = inp
            cell_BxH = cell_BxH * keep_B[:, None]
            h_BxP = h_BxP * keep_B[:, None]
            z = xg_BxG + h_BxP @ wh
            if c.lora_rank:
                z = z + (h_BxP @ self.lora["ha"]) @ self.lora["hb"]
            if c.cifg:
                f, o, g = jnp.split(z, 3, axis=-1)
                f = jax.nn.sigmoid(f)
                i = 1.0 - f
            else:
                i, f, o, g = jnp.split(z, 4, axis=-1)
                i, f = jax.nn.sigmoid(i), jax.nn.sigmoid(f)
            cell_BxH = f * cell_BxH + i * jnp.tanh(g)
            h_BxP = (jax.nn.sigmoid(o) * jnp.tanh(cell_BxH)) @ wp
            return (cell_BxH, h_BxP), h_BxP

        xs = (jnp.swapaxes(xg_BxTxG, 0, 1), jnp.swapaxes(keep_BxT, 0, 1))
        _, h_TxBxP = jax.lax.scan(step, carry, xs, unroll=unroll)
        return self.drop(jnp.swapaxes(h_TxBxP, 0, 1), deterministic=deterministic)

    def head(self, h_BxTxP: Array) -> Array:
        z_BxTxE = h_BxTxP @ self.head_kernel + self.head_bias
        logits = z_BxTxE @ self.embedding.T + self.out_bias
        if self.config.embed_rank:
            logits = logits + (z_BxTxE @ self.emb_b.T) @ self.emb_a.T
        if self.config.embed_rows:
            rest = self.config.vocab_size - self.config.embed_rows
            pad = [(0, 0)] * (z_BxTxE.ndim - 1) + [(0, rest)]
            logits = logits + jnp.pad(z_BxTxE @ self.emb_rows.T, pad)
        return logits

    def __call__(
        self, tokens_BxT: Array, deterministic: bool = True, onehot: bool = False, unroll: int = 1
    ) -> Array:
        return self.head(self.features(tokens_BxT, deterministic, onehot, unroll))


def _gate_bias(c: ModelConfig):
    # Forget-gate bias 1 (Jozefowicz et al. 2015) so early gradients flow through time.
    def init(key, shape, dtype=jnp.float32):
        b = jnp.zeros(shape, dtype)
        return (
            b.at[: c.hidden_dim].set(1.0)
            if c.cifg
            else b.at[c.hidden_dim : 2 * c.hidden_dim].set(1.0)
        )

    return init


def init_params(config: ModelConfig, key: Array) -> dict:
    """A fresh full parameter tree (flat dict of named arrays)."""
    model = SplitLM(config)
    variables = model.init(key, jnp.zeros((1, 2), jnp.int32))
    return dict(variables["params"])


def attach_device_part(params: dict, config: ModelConfig, key: Array) -> dict:
    """`params` (of `config.without_adapters()` or a sibling) plus fresh zero-update adapters.

    Parameters the new config has but `params` lacks are initialised (adapters: a zero update);
    parameters it no longer has are dropped; the rest are kept as they are.
    """
    fresh = init_params(config, key)
    extra = [k for k in fresh if k not in params and not k.startswith(("lora_", "emb_"))]
    if extra:
        raise ValueError(f"parameters {extra} are missing and are not adapters")
    return {k: params.get(k, v) for k, v in fresh.items()}
