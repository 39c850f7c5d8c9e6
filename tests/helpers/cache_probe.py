"""Run in a fresh process by tests/test_compile_cache.py: enable jaxcam's caches, explain with a small net of the
tests' own (its program cannot be named: traced every time) and a small ResNet of jaxcam's class (its program is
stored, then loaded), print JAX's cache events, jaxcam's program events and the maps as JSON (the cache must be on
before the first compilation, so everything is in main)."""

from __future__ import annotations

import collections
import json


def main() -> None:
  import jax

  counts: collections.Counter = collections.Counter()
  jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event]))
  import jaxcam
  from jaxcam import compile_cache
  from jaxcam.models.resnet import ResNet
  from tests import nets

  path = compile_cache.enable()
  module = nets.ConvNet()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = module.init(jax.random.key(1), x)
  convnet = jaxcam.gradcam(jaxcam.linen_tap(module, variables, "body_2"), x)
  resnet = ResNet(layers=(1, 1, 1, 1), num_classes=10, input_size=32)
  xr = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  variables = resnet.init(jax.random.key(3), xr[:1])
  shipped = jaxcam.gradcam(jaxcam.linen_tap(resnet, variables, "layer3"), xr)
  events = {name: counts[f"/jax/compilation_cache/{event}"] for name, event in _EVENTS.items()}
  maps = {"convnet_maps": convnet.tolist(), "resnet_maps": shipped.tolist()}
  print(json.dumps({"path": path, **events, "programs": dict(compile_cache.STATS), **maps}))


_EVENTS = {"hits": "cache_hits", "misses": "cache_misses", "requests": "compile_requests_use_cache"}

if __name__ == "__main__":
  main()
