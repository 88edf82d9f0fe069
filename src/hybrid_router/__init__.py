"""hybrid-router: GPU-limit-aware region queues in front of serverless GPU providers."""

__version__ = "0.1.0"

# Where the client and the CLI find the router unless told (HYBRID_ROUTER_URL, --url).
DEFAULT_URL = "http://127.0.0.1:8000"
