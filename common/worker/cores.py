"""How many vCPUs an Azure VM size has, read from its name.

Azure names current sizes by a documented convention ("Azure virtual machine sizes naming
conventions"): `[Family][Sub-family][# of vCPUs][-constrained vCPUs][additive features]
[accelerator][version]`, so Standard_D4s_v5 has 4 vCPUs, Standard_E32-8s_v5 8 active ones,
Standard_HB120rs_v3 120. Older families named before the convention (A0-A11, D1-D14,
DS1-DS14, Dv2/DSv2, G, GS) do not follow it (Standard_D3_v2 has 4): for them, and any
name this does not understand, None — each task then counts the cores on its node.

No request is made: the Batch data plane does not say how many cores a size has, and the
management API that does needs another sign-in.
"""
from __future__ import annotations

import re

_SIZE = re.compile(r"^standard_([a-z]+)(\d+)(?:-(\d+))?([a-z]*)(?:_(.*))?$", re.IGNORECASE)
_LEGACY_FAMILIES = {"a", "d", "ds", "g", "gs"}  # their numbers are not vCPU counts


def vm_cores(vm_size: str | None) -> int | None:
    """vCPUs of `vm_size` (active ones for a constrained size), or None when unknown."""
    match = _SIZE.match((vm_size or "").strip())
    if not match:
        return None
    family, number, constrained, _features, rest = match.groups()
    family = family.lower()
    version = (rest or "").lower()
    if family in _LEGACY_FAMILIES and (not rest or version.startswith(("v2", "promo"))):
        if not (family == "a" and version.startswith("v2")):  # Av2 follows the convention
            return None
    cores = int(constrained or number)
    return cores if cores > 0 else None
