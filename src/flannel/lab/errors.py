"""Errors of the lab, kept inside the flannel error tree so callers catch FlannelError alone."""

from __future__ import annotations

from flannel.errors import LabError, LabPrereqError

__all__ = ["LabError", "LabPrereqError"]
