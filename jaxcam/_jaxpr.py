"""Small helpers shared by the jaxpr walks (CAM's head check, the structured-derivative detection)."""

from __future__ import annotations

CALL_PRIMITIVES = frozenset(
  {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "checkpoint", "remat", "remat2"}
)


def is_literal(v) -> bool:
  return type(v).__name__ == "Literal"


def flags(variables, table: dict) -> list[bool]:
  """``table[v]`` (default False) for each variable; literals are never flagged."""
  return [(not is_literal(v)) and table.get(v, False) for v in variables]


def inner_jaxpr(eqn):
  """The jaxpr a call-like equation (pjit, custom_jvp_call, checkpoint, ...) runs, or None."""
  if eqn.primitive.name not in CALL_PRIMITIVES:
    return None
  sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  return None if sub is None else getattr(sub, "jaxpr", sub)
