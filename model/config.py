"""Typed configuration: frozen dataclasses with named presets (`tiny()` for tests, `default()`)."""

from dataclasses import dataclass, replace

__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "DevicePart", "GROUPS", "replace"]

# Parameter groups a device part is made of (name -> parameter names). Adapters ("lora",
# "embed_update") exist only when their rank is non-zero; the others are base tensors that an
# FTTE-style subset may hand to devices.
GROUPS: dict[str, tuple[str, ...]] = {
    "head": ("head_kernel", "head_bias", "head_out_bias"),
    "lora": ("lora_xa", "lora_xb", "lora_ha", "lora_hb"),
    "embed_update": ("emb_a", "emb_b"),
    "embed_rows": ("emb_rows",),
    "lstm_bias": ("lstm_b",),
    "lstm_proj": ("lstm_wp",),
    # The rest of the base: only "full" trains them (the reference that device parts are
    # measured against, e.g. for training memory); no phone is sent these.
    "lstm_kernels": ("lstm_wx", "lstm_wh"),
    "embedding": ("embedding",),
}
ADAPTER_GROUPS = ("lora", "embed_update", "embed_rows")


@dataclass(frozen=True)
class DataConfig:
    """Which text each role gets, and how much of it."""

    # Users hash (sha256 of the sender id, mod 100) into [0, public_pct) public,
    # [public_pct, 100 - heldout_pct) federated and the rest held-out.
    public_pct: int = 15
    heldout_pct: int = 15
    # Cap per user (first messages chronologically) so the top senders (top 10 write 42% of
    # words) do not dominate training or evaluation.
    max_messages_per_user: int = 400
    # Conversations with fewer turns are dropped (mostly one sender's lone greeting).
    min_turns: int = 2
    # Vocabulary: this many public (wordfreq) words plus <pad>, <unk>, <bos>, <eos>.
    vocab_size: int = 10_000
    # Shakespeare is evaluation only; cap speeches per speaker to keep evaluation quick.
    shakespeare_max_per_speaker: int = 20
    # Keep only users whose hash bucket is below this (1.0 = all); tests use a small slice.
    user_fraction: float = 1.0

    @staticmethod
    def default() -> "DataConfig":
        return DataConfig()

    @staticmethod
    def tiny() -> "DataConfig":
        return DataConfig(
            max_messages_per_user=40, user_fraction=0.1, shakespeare_max_per_speaker=2
        )


@dataclass(frozen=True)
class ModelConfig:
    """The split LM: a CIFG-LSTM with a recurrent projection (Gboard 2018) and a small head."""

    vocab_size: int = 10_004  # words + 4 specials
    embed_dim: int = 96  # tied input/output embedding width
    hidden_dim: int = 670  # LSTM cell units
    proj_dim: int = 96  # recurrent projection (LSTMP); the state fed back and to the head
    cifg: bool = True  # coupled input-forget gate: 3 gates instead of 4 (25% fewer weights)
    lora_rank: int = 0  # rank of LoRA adapters on the LSTM kernels (device part); 0 = none
    embed_rank: int = 0  # rank of a low-rank update of the tied embedding; 0 = none
    # A sparse update of the tied embedding: a full-width delta for the first `embed_rows` ids
    # (the 4 specials, then the most frequent words: the public wordfreq order); 0 = none.
    embed_rows: int = 0
    # Parameter groups (keys of GROUPS) that devices train; everything else is the frozen base.
    device_groups: tuple[str, ...] = ("head",)
    dropout: float = 0.2  # on embeddings and LSTM outputs, training only

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_groups", tuple(self.device_groups))  # from JSON lists
        unknown = [g for g in self.device_groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown device groups {unknown}; known: {sorted(GROUPS)}")
        if "lora" in self.device_groups and not self.lora_rank:
            raise ValueError("device group 'lora' needs lora_rank > 0")
        if "embed_update" in self.device_groups and not self.embed_rank:
            raise ValueError("device group 'embed_update' needs embed_rank > 0")
        if "embed_rows" in self.device_groups and not 0 < self.embed_rows <= self.vocab_size:
            raise ValueError("device group 'embed_rows' needs 0 < embed_rows <= vocab_size")

    def without_adapters(self) -> "ModelConfig":
        """The architecture the base is pretrained with: no adapters, head as device part."""
        return replace(self, lora_rank=0, embed_rank=0, embed_rows=0, device_groups=("head",))

    def with_device_part(self, part: "DevicePart") -> "ModelConfig":
        return replace(
            self,
            lora_rank=part.lora_rank,
            embed_rank=part.embed_rank,
            embed_rows=part.embed_rows,
            device_groups=part.groups,
        )

    @staticmethod
    def default() -> "ModelConfig":
        return ModelConfig()

    @staticmethod
    def tiny() -> "ModelConfig":
        return ModelConfig(
            vocab_size=10_004,
            embed_dim=16,
            hidden_dim=32,
            proj_dim=16,
            lora_rank=2,
            embed_rank=2,
            device_groups=("head", "lora", "embed_update"),
        )


@dataclass(frozen=True)
class TrainConfig:
    """One centralised training run (pretraining or fine-tuning)."""

    seq_len: int = 32  # tokens per packed row; messages are packed, state resets at <bos>
    batch_size: int = 64  # rows per step
    epochs: float = 8.0  # passes over the training text
    max_steps: int = 0  # if > 0, exactly this many steps instead of `epochs` passes
    peak_lr: float = 5e-3  # AdamW peak learning rate (warmup then cosine decay to 1%)
    warmup_frac: float = 0.05  # share of steps spent warming up
    weight_decay: float = 1e-5
    clip_norm: float = 1.0  # global gradient-norm clip
    seed: int = 0  # PRNG seed for initialisation, shuffling and dropout
    eval_every: int = 500  # steps between validation evaluations (0 = only at the end)

    @staticmethod
    def default() -> "TrainConfig":
        return TrainConfig()

    @staticmethod
    def tiny() -> "TrainConfig":
        return TrainConfig(seq_len=16, batch_size=8, epochs=1.0, peak_lr=1e-2, eval_every=0)


@dataclass(frozen=True)
class DevicePart:
    """Which part of the model phones train, and how (a variant of bench/device_part)."""

    name: str
    groups: tuple[str, ...]  # keys of GROUPS
    lora_rank: int = 0  # LoRA rank on the LSTM input and recurrent kernels (Hu et al. 2021)
    embed_rank: int = 0  # rank of the tied-embedding update
    embed_rows: int = 0  # ids whose embedding rows get a sparse full-width update
    peak_lr: float = 1e-2  # Adam peak learning rate, tuned per variant by bench/device_part

    # Peak learning rates below: the better of {1e-2, 3e-2} by public-validation perplexity in
    # bench/device_part (800 steps, batch 64, warmup + cosine; bench/results/device_part.json).
    @staticmethod
    def head() -> "DevicePart":
        return DevicePart("head", ("head",), peak_lr=3e-2)

    @staticmethod
    def head_lora(rank: int = 16) -> "DevicePart":
        return DevicePart(f"head+lora{rank}", ("head", "lora"), lora_rank=rank, peak_lr=1e-2)

    @staticmethod
    def head_embed(rank: int = 16) -> "DevicePart":
        return DevicePart(
            f"head+emb{rank}", ("head", "embed_update"), embed_rank=rank, peak_lr=3e-2
        )

    @staticmethod
    def head_lora_embed(lora_rank: int = 8, embed_rank: int = 8) -> "DevicePart":
        return DevicePart(
            f"head+lora{lora_rank}+emb{embed_rank}",
            ("head", "lora", "embed_update"),
            lora_rank=lora_rank,
            embed_rank=embed_rank,
            peak_lr=3e-2 if lora_rank <= 8 else 1e-2,
        )

    @staticmethod
    def head_lora_rows(lora_rank: int = 8, rows: int = 900) -> "DevicePart":
        """Head + LoRA + a sparse update of the embedding rows of the `rows` most frequent
        words: chat text is dominated by few words, whose rows a rank-r update must share."""
        groups = ("head", "lora", "embed_rows") if lora_rank else ("head", "embed_rows")
        name = f"head+lora{lora_rank}+rows{rows}" if lora_rank else f"head+rows{rows}"
        return DevicePart(name, groups, lora_rank=lora_rank, embed_rows=rows, peak_lr=1e-2)

    @staticmethod
    def full() -> "DevicePart":
        """Every parameter trainable: the reference for memory and accuracy, not a device part."""
        return DevicePart("full", tuple(g for g in GROUPS if g not in ADAPTER_GROUPS))

    @staticmethod
    def default() -> "DevicePart":
        # Budget: at most 10% of the parameters (143k). Within it, head + LoRA r8 + rank-8
        # embedding update (133,812, 9.3%, 523 KiB per float32 update) recovers the most of
        # the full fine-tune's top-1 gain (36% at 800 steps, 47% trained to convergence) and
        # has the lowest perplexity; head + LoRA r8 alone gains more per byte (23% for
        # 207 KiB) but less in all. LoRA and the embedding update add up (Hu et al. 2021).
        return DevicePart.head_lora_embed()
