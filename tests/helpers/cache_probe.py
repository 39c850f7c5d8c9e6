"""Run in a fresh process by tests/test_compile_cache.py: enable jaxcam's compilation cache, explain a small net,
print JAX's cache events as JSON (the cache must be on before the first compilation, so everything is in main)."""

from __future__ import annotations

import collections
import json


def main() -> None:
  import jax

  counts: collections.Counter = collections.Counter()
  jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event]))
  import jaxcam
  from jaxcam import compile_cache
  from tests import nets

  path = compile_cache.enable()
  module = nets.ConvNet()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = module.init(jax.random.key(1), x)
  jax.block_until_ready(jaxcam.gradcam(jaxcam.linen_tap(module, variables, "body_2"), x))
  events = {name: counts[f"/jax/compilation_cache/{event}"] for name, event in _EVENTS.items()}
  print(json.dumps({"path": path, **events}))


_EVENTS = {"hits": "cache_hits", "misses": "cache_misses", "requests": "compile_requests_use_cache"}

if __name__ == "__main__":
  main()
