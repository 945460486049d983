"""The Ray Train layer: launching a TorchTrainer and the loop each worker runs."""
