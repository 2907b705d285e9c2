"""Run-time model management: the V2 repository extension on a separate, guarded listener."""

from dl_inference.server.management.service import ManagementService

__all__ = ["ManagementService"]
