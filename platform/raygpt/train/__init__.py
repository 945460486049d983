"""Training: the per-step math, and the Ray Train layer that runs it on workers.

    step.py     optimizer, schedule, precision, one step, MFU (bench/ runs it in a bare loop)
    expert_load.py  a mixture of experts' router losses in the loss, its expert load logged
    state.py    training checkpoints, their metadata, resuming
    batches.py  each rank's micro-batches from the shared window stream
    run_log.py  metrics.jsonl and the loss plot
    launch.py   every check first, then a Ray Train TorchTrainer
    loop.py     what each Ray Train worker runs, phase by phase
    metrics.py  training numbers on Ray's Prometheus endpoint

Only launch.py, loop.py and metrics.py import Ray.
"""
