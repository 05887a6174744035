"""How a run lives and dies, whatever it trains: the scaffold every training command shares
(scaffold.py), the workdir's lock, stop requests and signals, the watchdog, checkpoints (the
only code that talks to Orbax), the metrics writer and console, the trackers (W&B, MLflow) and
the plots of a run's curves."""
