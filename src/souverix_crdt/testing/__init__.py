"""Public testing helpers: deterministic fleets and signed fixtures, fault injection, checks."""
