"""Errors of the lab, kept inside the flannel error tree so callers catch FlannelError alone."""

from __future__ import annotations

from flannel.errors import FlannelError


class LabError(FlannelError):
    """Building, checking or tearing down a lab failed; the message names the step and the fix."""


class LabPrereqError(LabError):
    """The machine cannot run a lab: not root, or a program is missing (the message says what to
    install). The CLI maps it to exit code 2."""
