"""torch models that workers run. Imported only inside worker processes."""
