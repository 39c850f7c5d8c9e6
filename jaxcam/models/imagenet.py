"""ImageNet-1k class names (shipped with the package) and lookup by id or name."""

from __future__ import annotations

import functools
import importlib.resources

from jaxcam._errors import UnknownNameError, closest

__all__ = ["imagenet_classes", "imagenet_class", "class_name"]


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
  """The 1000 ImageNet class names, index = class id.

  Read once from the file shipped in the package (``jaxcam/data/imagenet_classes.txt``) and cached.

  Returns:
    A tuple of 1000 strings; ``imagenet_classes()[i]`` is the name of class ``i``.

  Examples:
    >>> from jaxcam.models import imagenet_classes
    >>> names = imagenet_classes()
    >>> len(names), names[0], names[285]
    (1000, 'tench', 'Egyptian cat')
  """
  text = importlib.resources.files("jaxcam").joinpath("data/imagenet_classes.txt").read_text("utf-8")
  names = tuple(line for line in text.splitlines() if line)
  assert len(names) == 1000, len(names)
  return names


def class_name(class_id: int) -> str:
  """Name of ImageNet class `class_id`.

  Args:
    class_id: a class id in [0, 1000) (an int, or anything ``int()`` takes: a numpy or jax integer scalar).

  Returns:
    The class name, as in `imagenet_classes`.

  Raises:
    ValueError: `class_id` is outside [0, 1000).

  Examples:
    >>> from jaxcam.models import class_name
    >>> class_name(281)
    'tabby'
  """
  names = imagenet_classes()
  if not 0 <= int(class_id) < len(names):
    raise ValueError(f"Expected an ImageNet class id in [0, 1000), got {class_id}.")
  return names[int(class_id)]


def imagenet_class(name_or_id: str | int) -> int:
  """Class id from a name ("Egyptian cat", case-insensitive) or an id given as int or digit string.

  Args:
    name_or_id: a class name (case and surrounding spaces ignored), an int id or a string of digits.

  Returns:
    The class id, an int in [0, 1000).

  Raises:
    ValueError: an id outside [0, 1000).
    UnknownNameError: a name that is no ImageNet class (the message lists the closest names).

  Examples:
    >>> from jaxcam.models import imagenet_class
    >>> imagenet_class("egyptian cat"), imagenet_class("281")
    (285, 281)
    >>> imagenet_class("egyptian kat")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxcam._errors.UnknownNameError: Expected `target` to be an ImageNet class id or name, got 'egyptian kat'.
    Closest: 'Egyptian cat', ...
  """
  if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.strip().isdigit()):
    cid = int(name_or_id)
    class_name(cid)
    return cid
  names = imagenet_classes()
  lower = {n.lower(): i for i, n in enumerate(names)}
  key = str(name_or_id).strip().lower()
  if key in lower:
    return lower[key]
  near = closest(key, list(lower), n=5)
  hint = (" Closest: " + ", ".join(repr(names[lower[n]]) for n in near) + ".") if near else ""
  raise UnknownNameError(f"Expected `target` to be an ImageNet class id or name, got {name_or_id!r}.{hint}")
