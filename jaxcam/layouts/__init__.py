"""Layouts: how a tapped layer's value becomes the channels-last grid ``(B, h, w, C)`` that every method reads, and
how a perturbed or replaced grid goes back into the model.

- `identity()` (the default): the value already is the grid. A tuple, dict or dataclass value is refused with
  its fields listed (pick one with `pick`).
- `tokens(prefix=1, grid=None)`: transformer tokens ``(B, P + N, D)``: the P prefix tokens (CLS, distillation,
  registers) are dropped, the N patch tokens laid out on a square grid (or ``grid=(h, w)``); downstream the prefix
  is kept as it was and the patch tokens come from the grid.
- `channels_first()`: a ``(B, C, h, w)`` layer (Equinox, PyTorch-style models) moved to channels-last and back.
- `sequence()`: a 1-D layer ``(B, L, C)`` as a ``(B, L, 1, C)`` grid; the default for taps with
  ``input_layout="NLC"`` (time series, audio), whose maps come back as ``(B, L_in)``.
- `pick(selector, then=None)`: a layer returning a tuple / dict / dataclass (Hugging Face encoder layers, scanned
  blocks returning ``(x, None)``): the field `selector` (an index, a key or attribute name, or a path of them),
  then an inner layout.
- `transform(fn)`: pytorch-grad-cam's ``reshape_transform``, any function ``value -> grid`` that is linear (a
  reshape, transpose, slice, concatenation); downstream the change of the grid is mapped back through its
  transpose (`jax.vjp`), so entries the grid does not show are left as they were.

A plain function given as ``layout=`` is taken as `transform(fn)`. Layouts are static (hashable): define them once.
"""

from jaxcam.layouts.fields import Pick, Transform, as_layout, pick, transform
from jaxcam.layouts.fields import select as select  # used by the adapters (output=)
from jaxcam.layouts.grids import (
  ChannelsFirst,
  Identity,
  Sequence,
  Tokens,
  channels_first,
  identity,
  sequence,
  tokens,
)
from jaxcam.layouts.grids import describe as describe  # used in error messages elsewhere

__all__ = [
  "ChannelsFirst",
  "Identity",
  "Pick",
  "Sequence",
  "Tokens",
  "Transform",
  "as_layout",
  "channels_first",
  "identity",
  "pick",
  "sequence",
  "tokens",
  "transform",
]
