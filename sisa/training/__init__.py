"""Training: one pure single-shard step, the shard ensemble under vmap, the stage loop."""
