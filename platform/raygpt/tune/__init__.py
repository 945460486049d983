"""Hyperparameter sweeps on Ray Tune: every trial is a Ray Train run of one experiment config.

    sweep_config.py    the sweep YAML, typed and checked before Ray starts
    search_space.py    `key: {loguniform: [low, high]}` and friends, checked, then as Tune domains
    sweep.py           the Tuner: trials, concurrency from the cluster, resume
    report.py          evaluations from Ray Train to Tune; finished trials to the sweep folder
    early_stopping.py  ASHA whose rungs survive a resumed sweep
    results.py         the trial table, the best trial as a training YAML, the val-loss plot

Checking a sweep (sweep_config, search_space, results) imports no Ray.
"""
