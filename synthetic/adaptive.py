"""The adaptive designs live in :mod:`synthetic.designs.adaptive`; this module
re-exports every name of it (private helpers included), so that
``from synthetic.adaptive import ...`` and ``synthetic.adaptive.X`` keep working.
Patch :mod:`synthetic.designs.adaptive`, not this module, to change what runs."""

from synthetic.designs import adaptive as _impl

globals().update({k: v for k, v in vars(_impl).items() if not (k.startswith("__") and k.endswith("__"))})
__all__ = list(_impl.__all__)
