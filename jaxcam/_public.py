"""One public function per method row (``jaxcam.gradcam``, ...), generated from the table: `explain`'s arguments,
the maps as the result, the row's options and cost in the docstring."""

from __future__ import annotations

from typing import Any

from jaxcam.methods.table import METHODS, MethodSpec


def public_function(spec: MethodSpec):
  """The public function of a row: `explain`'s arguments, returns the maps (``jaxcam.gradcam`` is this of the
  gradcam row)."""

  def method_fn(
    tap,
    x,
    /,
    target=None,
    *,
    normalize=True,
    upsample=True,
    relu=True,
    fusion="mean",
    progress=None,
    eigen_smooth=False,
    aug_smooth=False,
    **options,
  ):
    from jaxcam.api import explain

    return explain(
      spec,
      tap,
      x,
      target=target,
      normalize=normalize,
      upsample=upsample,
      relu=relu,
      fusion=fusion,
      progress=progress,
      eigen_smooth=eigen_smooth,
      aug_smooth=aug_smooth,
      **options,
    ).maps

  opts = ", ".join(f"{k}={v!r}" for k, v in spec.defaults().items())
  doc = (spec.fn.__doc__ or "").split(">>>")[0].rstrip()  # the row function's doctest runs in its own module
  method_fn.__name__ = method_fn.__qualname__ = spec.name
  method_fn.__module__ = "jaxcam"
  method_fn.__doc__ = (
    f"{spec.title} maps of `x`: ``(B, H, W, C) -> (B, H, W)`` (``(B, K, H, W)`` for (B, K) targets).\n\n"
    f"Same arguments as `jaxcam.explain` (method options: {opts or 'none'}); returns only the maps.\n"
    f"Needs: {', '.join(spec.needs) or 'activations only'}. Cost per image: {spec.cost()}.\n"
    f"Row function: `{spec.fn.__module__}.{spec.fn.__name__}`:\n\n" + doc
  )
  return method_fn


def public_functions() -> dict[str, Any]:
  """One public function per registered method, generated from the table (``jaxcam.gradcam``, ...)."""
  return {name: public_function(spec) for name, spec in METHODS.items()}
