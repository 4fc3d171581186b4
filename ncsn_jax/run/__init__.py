"""A run's workdir, local or on gs://: its file names and their I/O (`files`), the checkpoints
(`checkpoints`) and the sampling weights restored from them or from an official `.pth` (`weights`), the
config saved beside them (`config_record`), the metrics (`metric_logging`), the image grids (`images`) and
the lock that keeps a second run out (`lock`)."""
