"""``plcl cohort``: a saved model over a whole cohort on a Slurm cluster (slurm), its progress
(status), and one table of its results with a QC page (collect)."""
