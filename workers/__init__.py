"""The worker side: the Celery app and tasks, claiming and batching, the reconciler, the
pipelines per kind and the torch models. Only this package imports torch."""
