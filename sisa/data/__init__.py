"""Data: data set registry, deletion-stable partition, the run's data store."""
