"""Parameter-efficient fine-tuning layers, and how they reach an encoder that knows nothing of them.

`wrap(model, peft)` returns `model` run under `flax.linen.intercept_methods`, so the encoder's forward pass
has no branch for any method (which parameters train is `jaxft.strategies.peft`'s business). The encoder
offers what the interceptor needs:

- a class attribute `dense_targets` on the encoder module: the Dense layers low-rank methods may adapt,
  by the target names configs use (`"query"`, ..., `"output"`), as module paths below that module in which
  `*` stands for any one name (`"encoder/layer_*/output/dense"`). Several layers share a local name
  (`dense`), so the path, not the name, tells them apart;
- identity methods the interceptor overrides: `residual_branch(out)` (a sublayer's output just before its
  residual add), `extend_inputs(vectors)` (the input vectors before position embeddings; positions added
  go right after the first), `extend_keys_values(keys, values)` (positions added go first), and
  `plain_keys_values()`, True unless the interceptor alters keys or values, so that an attention that
  would otherwise skip projecting them (a single-query shortcut) projects them.

A new encoder family gets every method here by declaring those names. New parameters keep the names and
places they had when the encoder built them itself, so checkpoints and exports read the same: a LoRA path
is the sibling `<name>_lora` of the Dense it adapts, an adapter is the child `adapter` of the module whose
`residual_branch` it follows, and prompt or prefix vectors are parameters of the hooked module itself,
drawn as its weights are (normal, `module.config.initializer_range` wide).

Dropout inside a LoRA path is on exactly when the model is given a `"dropout"` RNG, which every caller in
this package passes if and only if it runs with `deterministic=False`.
"""

import fnmatch
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxft.models.dropout import Dropout

# `peft` below is a `jaxft.strategies.peft.PeftConfig`, read by its fields (models do not import strategies):
# method, lora_rank, lora_dropout, lora_scale, lora_on(target), adapter_size, num_virtual_tokens.
_CHANGES_NOTHING = ("none", "bitfit")  # methods that only choose which parameters train


class LoraDelta(nn.Module):
    """The low-rank path `dropout(x) @ A @ B * scale` added to a Dense layer's output."""

    features: int
    peft: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        # A as in the reference implementation (Kaiming-uniform); B zero, so the path starts at exactly 0.
        a = self.param(
            "lora_a", nn.initializers.he_uniform(), (x.shape[-1], self.peft.lora_rank), jnp.float32
        )
        b = self.param("lora_b", nn.initializers.zeros, (self.peft.lora_rank, self.features), jnp.float32)
        x = Dropout(self.peft.lora_dropout)(x, deterministic=deterministic)
        return (
            (x @ a.astype(self.dtype)) @ b.astype(self.dtype) * jnp.asarray(self.peft.lora_scale, self.dtype)
        )


class Adapter(nn.Module):
    """Houlsby bottleneck `x + up(gelu(down(x)))`; `up` starts at zero: the adapter starts as the identity."""

    size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda n, init, name: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name=name
        )
        h = jax.nn.gelu(dense(self.size, nn.initializers.normal(1e-3), "down")(x), approximate=False)
        return x + dense(x.shape[-1], nn.initializers.zeros, "up")(h)


def _new_vector_init(module: nn.Module):
    """Prompt and prefix vectors start as the module's own weights do: normal, `initializer_range` wide."""
    return nn.initializers.normal(stddev=module.config.initializer_range)


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(map(fnmatch.fnmatchcase, path, pattern))


class _Interceptor:
    """One forward pass's interceptor: the hooks of `peft.method`, and the declaring encoders being called."""

    def __init__(self, peft):
        self.peft = peft
        self.encoders = []  # (path, {target: pattern}) of the declaring modules being called, innermost last
        self.hooks = {
            "lora": {"__call__": self._lora_dense, "plain_keys_values": self._lora_plain_keys_values},
            "adapter": {"residual_branch": self._adapter},
            "prompt": {"extend_inputs": self._prompt},
            "prefix": {"extend_keys_values": self._prefix, "plain_keys_values": lambda *_: False},
        }[peft.method]

    def __call__(self, next_fun, args, kwargs, context):
        module, hook = context.module, self.hooks.get(context.method_name)
        declared = getattr(type(module), "dense_targets", None)
        if declared is None:
            return next_fun(*args, **kwargs) if hook is None else hook(module, next_fun, args, kwargs)
        self.encoders.append((module.path, {t: tuple(p.split("/")) for t, p in declared.items()}))
        try:
            return next_fun(*args, **kwargs) if hook is None else hook(module, next_fun, args, kwargs)
        finally:
            self.encoders.pop()

    def _lora_dense(self, dense, next_fun, args, kwargs):
        out = next_fun(*args, **kwargs)
        if not self.encoders or not isinstance(dense, nn.Dense):
            return out
        root, patterns = self.encoders[-1]
        path = dense.path[len(root) :]
        if not any(self.peft.lora_on(t) and _matches(p, path) for t, p in patterns.items()):
            return out
        x = args[0] if args else kwargs["inputs"]
        # A sibling of the Dense in its parent's scope, whose compact method is running: `<name>_lora` there.
        lora = LoraDelta(out.shape[-1], self.peft, out.dtype, name=f"{dense.name}_lora", parent=dense.parent)
        return out + lora(x, not dense.has_rng("dropout"))

    def _lora_plain_keys_values(self, module, next_fun, args, kwargs):
        return next_fun(*args, **kwargs) and not (self.peft.lora_on("key") or self.peft.lora_on("value"))

    def _adapter(self, module, next_fun, args, kwargs):
        out = next_fun(*args, **kwargs)
        return Adapter(self.peft.adapter_size, out.dtype, name="adapter", parent=module)(out)

    def _prompt(self, module, next_fun, args, kwargs):
        """Prompt tuning: `num_virtual_tokens` trained vectors right after the first position ([CLS])."""
        vectors = next_fun(*args, **kwargs)
        shape = (self.peft.num_virtual_tokens, vectors.shape[-1])
        prompt = module.param("prompt_embeddings", _new_vector_init(module), shape, jnp.float32)
        prompt = jnp.broadcast_to(prompt, (vectors.shape[0], *shape)).astype(vectors.dtype)
        return jnp.concatenate([vectors[:, :1], prompt, vectors[:, 1:]], axis=1)

    def _prefix(self, module, next_fun, args, kwargs):
        """Prefix tuning: trained keys and values, before the real ones, that every query attends to."""
        keys, values = next_fun(*args, **kwargs)
        shape = (self.peft.num_virtual_tokens, *keys.shape[2:])

        def prepend(name, x):
            prefix = module.param(name, _new_vector_init(module), shape, jnp.float32).astype(x.dtype)
            return jnp.concatenate([jnp.broadcast_to(prefix, (x.shape[0], *shape)), x], axis=1)

        return prepend("prefix_key", keys), prepend("prefix_value", values)


class PeftModel(nn.Module):
    """`model` with a parameter-efficient method applied: its call, its parameter tree plus the method's.

    The wrapped module shares this module's scope, so its parameters sit at the top of the tree as they
    would without the wrapper.

    Attributes:
        model: the module to adapt (an encoder or a head over one).
        peft: a `jaxft.strategies.peft.PeftConfig`.
    """

    model: nn.Module
    peft: Any

    def setup(self):
        nn.share_scope(self, self.model)

    def __call__(self, *args, **kwargs):
        with nn.intercept_methods(_Interceptor(self.peft)):
            return self.model(*args, **kwargs)


def wrap(model: nn.Module, peft) -> nn.Module:
    """`model` with `peft`'s layers applied (`PeftModel`), or `model` itself for methods that add none."""
    return model if peft.method in _CHANGES_NOTHING else PeftModel(model, peft)
