"""Relevance propagation (LRP, AttnLRP) as a jaxpr transformation: rules attached to primitives, not modules."""

from jaxcam.lrp.core import lrp_vjp, modified_vjp, relevance
from jaxcam.lrp.rules import KINDS, Composite, Constant, Epsilon, Gradient, Identity, Uniform, attnlrp

__all__ = [
  "KINDS",
  "Composite",
  "Constant",
  "Epsilon",
  "Gradient",
  "Identity",
  "Uniform",
  "attnlrp",
  "lrp_vjp",
  "modified_vjp",
  "relevance",
]
