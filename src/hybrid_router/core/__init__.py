"""Pure domain: no I/O, no asyncio; time is passed in as `now` (seconds since the epoch)."""
