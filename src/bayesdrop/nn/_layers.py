"""Former name of :mod:`bayesdrop.nn.wrapped_layers` (kept while importers move over)."""

from .wrapped_layers import *  # noqa: F403
from .wrapped_layers import __all__ as __all__
