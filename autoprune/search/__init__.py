"""The search: engines (DEAP NSGA-II, Optuna samplers) behind one ask/tell driver, over one Optuna study."""
