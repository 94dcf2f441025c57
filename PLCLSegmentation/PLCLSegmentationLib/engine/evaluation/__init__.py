"""Scoring segmentations against references: Dice, HD95 and volumes (MONAI conventions), and ``plcl evaluate``."""
