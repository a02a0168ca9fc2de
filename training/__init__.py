"""Training: the data cache and its loaders (SyncNet expert, generator); losses and loops come next."""
