"""Run records (metrics.json), aggregation of sweeps into tables, and plots."""
