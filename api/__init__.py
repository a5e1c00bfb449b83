"""The small HTTP API: submit manifests, watch batches, fetch outputs. No torch here."""
