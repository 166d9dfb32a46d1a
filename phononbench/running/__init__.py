"""Running the method at scale: the worker, where workers run (in this process or on Ray), the run
folder (Parquet parts, ledger, manifest, summary), the pipeline that drives a run, and the composition
root that turns settings into a potential, an engine and an executor."""
