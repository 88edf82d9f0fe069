"""hybrid-router: GPU-limit-aware region queues in front of serverless GPU providers."""

__version__ = "0.1.0"
