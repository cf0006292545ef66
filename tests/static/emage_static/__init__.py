"""Static checks of the deployment files (compose, Dockerfiles, Kubernetes) used by tests/static."""
