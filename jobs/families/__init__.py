"""Built-in model families: torch-free specs, registered through the genfarm.models entry point."""
