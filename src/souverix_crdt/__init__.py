"""souverix-crdt: replicated fleet state for a federation of Souverix control planes."""
