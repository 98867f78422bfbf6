"""The worker: claims tasks, runs backends, writes outputs. Never imported by the API."""
