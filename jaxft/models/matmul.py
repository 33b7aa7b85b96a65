"""Dense-layer matmuls in the one form XLA:CPU multiplies fast in bfloat16.

XLA:CPU hands a dot to YNNPACK, whose bf16 kernels use AMX or AVX512-BF16 where the CPU has them, only when
it is bf16 x bf16 -> float32, its left operand contracts its last axis and every operand is row-major
(`IsDotSupportedByYnn` in XLA's `backends/cpu/ynn_support.cc`). Any other dot is converted to float32 first.
A Flax `Dense` in bf16 gives none of its three products that form: the forward's result is bf16, and
autodiff's weight gradient `xᵀ g` contracts the tokens, the left operand's first axis. So a bf16 step ran no
faster than a float32 one (bench/README.md).

`MixedDense` is `flax.linen.Dense` (the same parameters) with a custom VJP that writes all three products in
that form: float32 products rounded to bf16 once, and for the weight gradient the activations copied
transposed (through a rank-3 transpose, which XLA materialises row-major; a 2-D one becomes a column-major
layout and the product float32 again). `dense` picks it for bf16 compute on CPU; other backends multiply
Flax's bf16 products natively and keep `flax.linen.Dense`. Measured in bench/README.md: the MiniLM-L6
training step at batch 32 x 128 in bf16 took 1,073 ms against 2,021 with Flax's `Dense`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_CANONICAL = (((1,), (0,)), ((), ()))  # [M, K] x [K, N]
_RHS_TRANSPOSED = (((1,), (1,)), ((), ()))  # [M, N] x [K, N] -> [M, K]


def _transposed_copy(x):
    """`[..., K]` -> `[K, M]`, M the product of the leading axes, as a row-major copy XLA keeps bf16."""
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
def _mixed_dense(x, kernel, bias):
    return _forward(x, kernel, bias)[0]


def _mixed_dense_fwd(x, kernel, bias):
    y, rounded_kernel = _forward(x, kernel, bias)
    return y, (x, rounded_kernel)


def _mixed_dense_bwd(residuals, g):
    x, kernel = residuals  # the kernel rounded to bf16, as the forward used it
    g = g.reshape(-1, kernel.shape[1]).astype(x.dtype)
    dx = lax.dot_general(g, kernel, _RHS_TRANSPOSED, preferred_element_type=jnp.float32)
    dkernel = lax.dot_general(_transposed_copy(x), g, _CANONICAL, preferred_element_type=jnp.float32)
    dbias = jnp.sum(g.astype(jnp.float32), axis=0)
    return dx.astype(x.dtype).reshape(x.shape), dkernel, dbias


_mixed_dense.defvjp(_mixed_dense_fwd, _mixed_dense_bwd)


class MixedDense(nn.Dense):
    """`flax.linen.Dense` in bf16 with its three products in the form above; the same parameters.

    The kernel is rounded to bf16 for the products, the bias is added to the float32 product before it is
    rounded, and the kernel and bias gradients are float32 sums of bf16 products.
    """

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        else:
            bias = jnp.zeros((self.features,), jnp.float32)
        return _mixed_dense(inputs.astype(jnp.bfloat16), kernel, bias)


def dense(features: int, dtype, kernel_init, name: str) -> nn.Dense:
    """A Dense layer with float32 parameters computing in `dtype`: `MixedDense` for bf16 on CPU.

    On other backends, and for other dtypes, Flax's `Dense`, whose bf16 products XLA runs natively there.
    """
    cls = nn.Dense
    if dtype is not None and jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu":
        cls = MixedDense
    return cls(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name)
