"""Worker sides of the built-in model families (each found through its spec in jobs.families)."""
