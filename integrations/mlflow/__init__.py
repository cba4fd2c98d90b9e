"""MLflow: live callback, deployments target ``tracker-sched``, run context provider."""
