"""Dense layers whose three products are in the forms XLA:CPU multiplies fastest.

XLA:CPU hands a dot to YNNPACK only when its left operand contracts its last axis and every operand is
row-major, and in bf16 only as bf16 x bf16 -> float32 (`IsDotSupportedByYnn` in XLA's
`backends/cpu/ynn_support.cc`); a bf16 dot in any other form is converted to float32 first, a float32 one
goes to Eigen or behind a layout copy. A Flax `Dense` fits none of that for its weight gradient: autodiff's
`xᵀ g` contracts the tokens, the left operand's first axis, and in bf16 its forward result is bf16 too.

`CpuDense` is `flax.linen.Dense` (the same parameters) with a custom VJP that writes all three products in
those forms: float32 results (rounded once to a bf16 compute dtype), and for the weight gradient the
activations copied transposed, through a transpose of rank 3 and a reshape, which XLA materialises
row-major (a 2-D transpose reaches the dot as a column-major layout instead). `dense` picks it on CPU for
float32 and bf16; other backends multiply Flax's products natively and keep `flax.linen.Dense`. What it
saves per training step, in bf16 and in float32, is measured in bench/README.md.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxft import backend

_CANONICAL = (((1,), (0,)), ((), ()))  # [M, K] x [K, N]
_RHS_TRANSPOSED = (((1,), (1,)), ((), ()))  # [M, N] x [K, N] -> [M, K]
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def _transposed_copy(x):
    """`[..., K]` -> `[K, M]`, M the product of the leading axes, as a row-major copy."""
    k = x.shape[-1]
    if x.ndim == 2:  # a 2-D transpose becomes a column-major layout; through rank 3 it is a copy
        x = x[:, :, None]
        return jnp.transpose(x, (1, 0, 2)).reshape(k, -1)
    return jnp.moveaxis(x, -1, 0).reshape(k, -1)


def _forward(x, kernel, bias):
    kernel = kernel.astype(x.dtype)
    k, n = kernel.shape
    y = lax.dot_general(x.reshape(-1, k), kernel, _CANONICAL, preferred_element_type=jnp.float32)
    return (y + bias).astype(x.dtype).reshape(*x.shape[:-1], n), kernel


@jax.custom_vjp
def _dense(x, kernel, bias):
    return _forward(x, kernel, bias)[0]


def _dense_fwd(x, kernel, bias):
    y, compute_kernel = _forward(x, kernel, bias)
    return y, (x, compute_kernel)


def _dense_bwd(residuals, g):
    x, kernel = residuals  # the kernel in the compute dtype, as the forward used it
    g = g.reshape(-1, kernel.shape[1]).astype(x.dtype)
    dx = lax.dot_general(g, kernel, _RHS_TRANSPOSED, preferred_element_type=jnp.float32)
    dkernel = lax.dot_general(_transposed_copy(x), g, _CANONICAL, preferred_element_type=jnp.float32)
    dbias = jnp.sum(g.astype(jnp.float32), axis=0)
    return dx.astype(x.dtype).reshape(x.shape), dkernel, dbias


_dense.defvjp(_dense_fwd, _dense_bwd)


class DenseParams(nn.Module):
    """The parameters of a `flax.linen.Dense` with `features` outputs and float32 parameters, named,
    shaped and initialised as `dense`'s layer holds them (`kernel` `[in, features]`, `bias` zeros),
    returned unapplied: for a layer that uses them in another order of products."""

    features: int
    kernel_init: Callable

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


class CpuDense(nn.Dense):
    """`flax.linen.Dense` for float32 or bf16 compute with its three products in the forms above.

    The same parameters. In bf16 the kernel is rounded to bf16 for the products, the bias is added to the
    float32 product before it is rounded, and the kernel and bias gradients are float32 sums of bf16
    products; in float32 it computes what Flax's `Dense` does.
    """

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        else:
            bias = jnp.zeros((self.features,), jnp.float32)
        dtype = jnp.float32 if self.dtype is None else self.dtype
        # float32 in, float32 gradients out of the VJP; the casts carry them to any other parameter dtype.
        return _dense(inputs.astype(dtype), kernel.astype(jnp.float32), bias.astype(jnp.float32))


def dense(features: int, dtype, kernel_init, name: str, *, use_bias: bool = True) -> nn.Dense:
    """A Dense layer with float32 parameters computing in `dtype`: `CpuDense` on CPU for float32 and bf16.

    On other backends, and for other dtypes, Flax's `Dense` (`jaxft.backend.cpu_forms` decides).
    `use_bias=False` leaves the bias out (no `bias` parameter), as a PyTorch `Linear(..., bias=False)`.
    """
    dtype = jnp.float32 if dtype is None else dtype
    cls = CpuDense if jnp.dtype(dtype) in _DTYPES and backend.cpu_forms() else nn.Dense
    return cls(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name
    )
