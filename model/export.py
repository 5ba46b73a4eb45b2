"""JAX -> LiteRT: one `.tflite` with an `infer` and a `train` signature, no TensorFlow.

Route (shared/notes/litert.md): `jax.export` -> StableHLO -> litert-converter's MLIR passes ->
TFLite flatbuffer; then int8 weights for the frozen base with ai-edge-quantizer (dynamic-range
kernels for `infer`, weight-only with float compute for `train`: `quantize_int8`).

- `infer(device part..., context_1xT, allowed_V) -> (ids_1xK, scores_1xK)`: the top-k words
  after the context, restricted to `allowed_V` (1 = may be suggested), so one call serves
  next-word prediction (all words) and completion of a partial word (words with its prefix).
  Scores are log-probabilities under the full (unrestricted) distribution.
- `train(device part..., adam mu..., adam nu..., count, lr, adam, tokens_BxT, targets_BxT) ->
  (new device part..., new mu..., new nu..., new count, loss)`: one step on the device part,
  base frozen and baked in: Adam when the scalar `adam` is 1, plain SGD when it is 0 (the
  moments are updated either way). Stateless: the runtime keeps the arrays. Federated rounds
  use SGD: a fresh Adam's first steps move every coordinate by about the learning rate, so
  every phone pushes the ten thousand rare-word rows the same way and the average is that
  push, not the users' signal (bench/client_optimizer).

Graph constraints: the recurrence is unrolled (no while loops), embedding lookups are one-hot
matmuls (-> EMBEDDING_LOOKUP, which int8 shrinks), the loss uses one-hot cross-entropy.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from model import network, partition, train
from model.config import DevicePart, ModelConfig
from model.types import Array, Params
from model.vocab import BOS, PAD

__all__ = [
    "ExportSpec",
    "infer_fn",
    "train_fn",
    "adam_init",
    "to_litert",
    "quantize_int8",
    "export",
    "STATE_PREFIXES",
    "op_names",
    "export_checkpoint",
]

# Names of the optimiser-state inputs of `train`: Adam's first and second moments.
STATE_PREFIXES = ("mu.", "nu.")
# Adam hyper-parameters of on-device training (the learning rate is an input per step).
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class ExportSpec:
    """Static shapes of the exported signatures."""

    context_len: int = 16  # words of context for `infer` (left-padded with <pad>)
    top_k: int = 3  # suggestions returned by `infer`
    train_batch: int = 8  # rows per `train` step
    train_len: int = 16  # tokens per row of `train`


def _device_names(config: ModelConfig) -> list[str]:
    return sorted(partition.device_names(config))


def infer_fn(config: ModelConfig, base: Params, spec: ExportSpec):
    """f(*device arrays sorted by name, context_1xT, allowed_V) -> (ids_1xK, scores_1xK)."""
    model = network.SplitLM(config)
    names = _device_names(config)

    def f(*args):
        device = dict(zip(names, args[: len(names)], strict=True))
        context_1xT, allowed_V = args[len(names) :]
        logits_1xTxV = model.apply(
            {"params": {**base, **device}}, context_1xT, onehot=True, unroll=spec.context_len
        )
        logits_V = logits_1xTxV[0, -1]
        never = jnp.zeros_like(logits_V).at[PAD].set(1.0).at[BOS].set(1.0)
        logp_V = jax.nn.log_softmax(jnp.where(never > 0, -1e9, logits_V))
        masked_V = jnp.where((allowed_V > 0) & (never == 0), logp_V, -1e9)
        scores, ids = jax.lax.top_k(masked_V[None, :], spec.top_k)
        return ids.astype(jnp.int32), scores

    return f


def adam_init(device: Params) -> dict[str, np.ndarray]:
    """Zero Adam state for a device part, as named arrays (`mu.*`, `nu.*`, `count`)."""
    out = {
        f"{p}{k}": np.zeros_like(np.asarray(v)) for p in STATE_PREFIXES for k, v in device.items()
    }
    out["count"] = np.zeros((), np.float32)
    return out


def _step(
    device: Params, grads: Params, mu: Params, nu: Params, count: Array, lr: Array, adam: Array
):
    # Written out (Kingma & Ba 2015, bias-corrected) rather than through optax so the state is
    # a flat list of named arrays with a float step count, which LiteRT signatures need;
    # `tests/test_export.py` checks it against optax.adam step for step.
    count = count + 1.0
    mu = {k: ADAM_B1 * mu[k] + (1 - ADAM_B1) * grads[k] for k in device}
    nu = {k: ADAM_B2 * nu[k] + (1 - ADAM_B2) * grads[k] ** 2 for k in device}
    c1, c2 = 1 - ADAM_B1**count, 1 - ADAM_B2**count
    direction = {
        k: adam * (mu[k] / c1) / (jnp.sqrt(nu[k] / c2) + ADAM_EPS) + (1.0 - adam) * grads[k]
        for k in device
    }
    new = {k: device[k] - lr * direction[k] for k in device}
    return new, mu, nu, count


def train_fn(config: ModelConfig, base: Params, spec: ExportSpec):
    """f(*device, *mu, *nu, count, lr, adam, tokens_BxT, targets_BxT) ->
    (*device, *mu, *nu, count, loss); `adam` 1 = Adam step, 0 = SGD step.

    No dropout on the device: the step is deterministic, so LiteRT and JAX agree exactly.
    """
    model = network.SplitLM(config)
    names = _device_names(config)
    n = len(names)

    def loss_fn(device, tokens, targets):
        logits = model.apply(
            {"params": {**base, **device}}, tokens, onehot=True, unroll=spec.train_len
        )
        total, count = train.loss_and_counts(logits, targets, onehot_labels=True)
        return total / jnp.maximum(count, 1.0)

    def f(*args):
        device = dict(zip(names, args[:n], strict=True))
        mu = dict(zip(names, args[n : 2 * n], strict=True))
        nu = dict(zip(names, args[2 * n : 3 * n], strict=True))
        count, lr, adam, tokens, targets = args[3 * n :]
        loss, grads = jax.value_and_grad(loss_fn)(device, tokens, targets)
        new, mu, nu, count = _step(device, grads, mu, nu, count, lr, adam)
        return (
            *[new[k] for k in names],
            *[mu[k] for k in names],
            *[nu[k] for k in names],
            count,
            loss,
        )

    return f


def _lower(fn, example_args: list) -> bytes:
    exported = jax.export.export(jax.jit(fn), platforms=["cpu"])(*example_args)
    return exported.mlir_module_serialized


def to_litert(signatures: dict[str, tuple]) -> bytes:
    """Convert {name: (fn, example_args, input_names, output_names)} into one flatbuffer."""
    from litert_converter.mlir import ir, passmanager
    from litert_converter.mlir._mlir_libs import converter_api_ext as conv

    pipeline = (
        "builtin.module(vhlo-legalize-stablehlo,reconcile-unrealized-casts,"
        "func.func(stablehlo-legalize-composite-to-call),inline,symbol-dce,strip-debuginfo)"
    )
    with ir.Context() as ctx:
        conv.prepare_mlir_context(ctx)
        modules = []
        for name, (fn, args, in_names, out_names) in signatures.items():
            module = ir.Module.parse(_lower(fn, args))
            passmanager.PassManager.parse(pipeline).run(module.operation)
            conv.set_signature(
                module.operation,
                signature_name=name,
                input_names=list(in_names),
                output_names=list(out_names),
            )
            modules.append(module)
        merged = conv.merge_modules(modules) if len(modules) > 1 else modules[0]
        cfg = conv.ConvertToTFLConfig()
        cfg.model_origin_framework = "JAX"
        conv.run_convert_to_tfl_passes(merged, passmanager.PassManager(), cfg)
        return bytes(conv.export_flatbuffer_to_bytes(merged.operation))


def _outputs_of(flatbuffer: bytes, signature: str) -> list[str]:
    """Names of every tensor the ops of one signature's subgraph produce."""
    from litert_converter import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.SubgraphsLength()):
        sg = model.Subgraphs(i)
        if (sg.Name() or b"").decode() == signature:
            return sorted(
                {
                    sg.Tensors(sg.Operators(j).Outputs(o)).Name().decode()
                    for j in range(sg.OperatorsLength())
                    for o in range(sg.Operators(j).OutputsLength())
                }
            )
    return []


def quantize_int8(flatbuffer: bytes) -> bytes:
    """int8 weights for the baked-in constants: dynamic-range for `infer`, weight-only for
    `train`.

    Dynamic-range kernels also quantise their float inputs to int8 on the fly, which in the
    backward pass means the gradients: a phone's SGD update after 36 steps pointed 0.83
    (cosine) the way of the exact one and was 23% longer, and federated rounds made the model
    worse. Weight-only int8 dequantises the weights and computes in float32, so `train`
    matches JAX (cosine 0.9999) at the same file size; `infer` keeps the faster int8 kernels.
    """
    import re

    from ai_edge_quantizer import quantizer, recipe, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    train_ops = _outputs_of(flatbuffer, "train")
    if train_ops:  # an op's scope is its output names, each followed by ";"
        manager.add_weight_only_config(
            regex="^(?:" + "|".join(re.escape(n) for n in train_ops) + ");",
            operation_name=recipe.TFLOperationName.ALL_SUPPORTED,
            num_bits=8,
            algorithm_key=recipe.AlgorithmName.MIN_MAX_UNIFORM_QUANT,
        )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "float.tflite"
        path.write_bytes(flatbuffer)
        q = quantizer.Quantizer(str(path), manager.get_quantization_recipe())
        result = q.quantize()
        return bytes(result.quantized_model)


def export(
    config: ModelConfig,
    params: Params,
    spec: ExportSpec = ExportSpec(),
    int8: bool = True,
    with_train: bool = True,
) -> bytes:
    """The `.tflite` bytes for a full parameter tree (device part passed in at run time)."""
    base, device = partition.split(params, config)
    base = {k: jnp.asarray(v) for k, v in base.items()}
    names = _device_names(config)
    dev_args = [np.asarray(device[k], np.float32) for k in names]
    sigs: dict[str, tuple] = {
        "infer": (
            infer_fn(config, base, spec),
            [
                *dev_args,
                np.zeros((1, spec.context_len), np.int32),
                np.ones((config.vocab_size,), np.float32),
            ],
            [*names, "context", "allowed"],
            ["ids", "scores"],
        )
    }
    if with_train:
        state = adam_init(device)
        sigs["train"] = (
            train_fn(config, base, spec),
            [
                *dev_args,
                *[state[f"mu.{k}"] for k in names],
                *[state[f"nu.{k}"] for k in names],
                state["count"],
                np.float32(1e-2),
                np.float32(1.0),
                np.zeros((spec.train_batch, spec.train_len), np.int32),
                np.zeros((spec.train_batch, spec.train_len), np.int32),
            ],
            [
                *names,
                *[f"mu.{k}" for k in names],
                *[f"nu.{k}" for k in names],
                "count",
                "lr",
                "adam",
                "tokens",
                "targets",
            ],
            [
                *[f"new.{k}" for k in names],
                *[f"new_mu.{k}" for k in names],
                *[f"new_nu.{k}" for k in names],
                "new_count",
                "loss",
            ],
        )
    flat = to_litert(sigs)
    return quantize_int8(flat) if int8 else flat


def op_names(flatbuffer: bytes) -> list[str]:
    """Every operator code in a model: builtin names, or `custom:<name>` for custom/Flex ops."""
    from litert_converter import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            out.append(f"custom:{(oc.CustomCode() or b'').decode()}")
        else:
            out.append(by_code.get(code, str(code)))
    return out


def export_checkpoint(
    model_dir: Path,
    out_path: Path,
    part: DevicePart | None = None,
    int8: bool = True,
    with_train: bool = True,
    spec: ExportSpec = ExportSpec(),
) -> dict:
    """Write `out_path` (.tflite) and `<out_path stem>.device.npz` (the initial device part).

    A checkpoint without adapters gets `part` attached as a zero update (default: the
    configured default device part); a checkpoint that has its own device part keeps it.
    """
    import io

    import jax

    from model import checkpoint, network
    from model.checkpoint import atomic_write_bytes

    config, params, meta = checkpoint.load(model_dir)
    if part is not None or config.device_groups == ("head",) and not config.lora_rank:
        config = config.with_device_part(part or DevicePart.default())
        params = network.attach_device_part(params, config, jax.random.key(0))
    flat = export(config, params, spec, int8=int8, with_train=with_train)
    out_path = Path(out_path)
    atomic_write_bytes(out_path, flat)
    _, device = partition.split(params, config)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in device.items()})
    device_path = out_path.with_suffix(".device.npz")
    atomic_write_bytes(device_path, buf.getvalue())
    return {
        "model": str(out_path),
        "bytes": len(flat),
        "device_part": str(device_path),
        "device_groups": list(config.device_groups),
        "lora_rank": config.lora_rank,
        "embed_rank": config.embed_rank,
        "device_params": partition.count(device),
        "int8": int8,
        "signatures": ["infer", "train"] if with_train else ["infer"],
        "ops": sorted(set(op_names(flat))),
        "source": meta.get("kind", str(model_dir)),
    }
