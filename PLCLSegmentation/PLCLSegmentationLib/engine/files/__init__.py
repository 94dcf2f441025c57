"""Files in and out, no torch: volumes and label maps, 4D (cine) files, dataset folders, integrity
checks, run folders."""
