# SPDX-License-Identifier: GPL-2.0
"""vballoon selftests harness; cases import what they need from here."""
from .case import ALL_ARCHES, DEBUG_ONLY, GiB, MiB, CaseFailure, Context, Skip, case, sh
from .guest import CaseTimeout, GuestDead, GuestError, Job
from .qmp import QMPError
from . import virtio

__all__ = ["ALL_ARCHES", "DEBUG_ONLY", "GiB", "MiB", "CaseFailure", "Context", "Skip", "case", "sh",
           "CaseTimeout", "GuestDead", "GuestError", "Job", "QMPError", "virtio"]
