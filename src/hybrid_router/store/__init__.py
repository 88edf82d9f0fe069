"""Persistence behind one protocol in domain terms."""
