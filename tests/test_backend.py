"""`jaxft.backend`: one switch turns every CPU form on or off; the forms compute what the plain ones do."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxft import backend
from jaxft.models import dropout, matmul
from jaxft.training import steps


def test_one_switch_selects_every_cpu_form(monkeypatch):
    assert backend.is_cpu()  # the suite runs on CPU devices
    init = nn.initializers.lecun_normal()
    for value, dense_type in (("1", matmul.CpuDense), ("0", nn.Dense)):
        monkeypatch.setenv("JAXFT_CPU_FORMS", value)
        assert backend.cpu_forms() is (value == "1")
        assert type(matmul.dense(4, jnp.float32, init, "d")) is dense_type
        assert steps._guard_with_cond() is (value == "1")
        assert backend.sync_every_step()  # not a speed form: CPU collectives need it either way
    assert not backend.fused_attention("bfloat16")  # cuDNN's kernel only on a GPU


def test_the_cpu_forms_compute_what_the_plain_forms_do(monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
    rng = jax.random.PRNGKey(7)
    outputs = {}
    for value in ("1", "0"):
        monkeypatch.setenv("JAXFT_CPU_FORMS", value)
        layer = matmul.dense(6, jnp.float32, nn.initializers.lecun_normal(), "d")
        params = layer.init(jax.random.PRNGKey(1), x)
        outputs[value] = (
            np.asarray(layer.apply(params, x)),
            np.asarray(dropout.random_bits(rng, (4, 6))),
            np.asarray(dropout.dropout(rng, 0.1, x)),
        )
    np.testing.assert_allclose(outputs["1"][0], outputs["0"][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs["1"][1], outputs["0"][1])  # bit for bit jax.random.bits
    np.testing.assert_array_equal(outputs["1"][2], outputs["0"][2])
