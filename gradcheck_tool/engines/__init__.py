"""The engines: check (finite differences) and flow (gradient flow)."""
