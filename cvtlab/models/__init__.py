"""Model families; importing this module registers each with timm."""
from . import cvt  # noqa: F401
from . import lg  # noqa: F401

# The families cvtlab owns: the timm module name their models register under.
FAMILIES = ('cvt', 'lg')
