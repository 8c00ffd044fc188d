"""Training: the LightningModules, their losses and optimiser, the run-folder rules (LightningCLI) and checkpoint IO."""
