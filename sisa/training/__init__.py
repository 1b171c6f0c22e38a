"""Training: one pure single-shard step, the shard ensemble mapped over lanes, the stage loop."""
