"""Model families; importing this module registers each with timm."""
from . import cvt  # noqa: F401
from . import lg  # noqa: F401
