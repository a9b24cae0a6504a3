"""tileproc's engine: read -> cut -> share -> apply -> stitch -> write."""
