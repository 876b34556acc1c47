"""Test vectors for delegations, revocations and envelopes, and the script that writes them."""
