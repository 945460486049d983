"""Ray Serve applications: the completion service (ingress + generator) and its config."""
