"""Integer hashing shared by dropout masks and embedding-row fingerprints."""

import jax
import jax.numpy as jnp


def mix32(x: jax.Array) -> jax.Array:
  """A bijective avalanche of uint32 values (the MurmurHash3 finaliser; wrapping arithmetic)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)
