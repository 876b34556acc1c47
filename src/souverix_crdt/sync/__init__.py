"""The sync protocol: messages and the sans-IO session."""
