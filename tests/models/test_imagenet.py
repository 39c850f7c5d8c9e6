"""`jaxcam.models.imagenet`: class-name lookup and its errors."""

from __future__ import annotations

import pytest

from jaxcam import models


@pytest.mark.fast
def test_imagenet_lookup_errors():
  with pytest.raises(KeyError, match="Closest: 'Egyptian cat'"):
    models.imagenet_class("egyptian kat")
  with pytest.raises(ValueError, match=r"\[0, 1000\)"):
    models.imagenet_class(1000)
  with pytest.raises(KeyError, match="Closest: 'resnet50'"):
    models.get_model("resnet05")
  with pytest.raises(ValueError, match="never downloads"):
    models.resnet50(pretrained=True)
