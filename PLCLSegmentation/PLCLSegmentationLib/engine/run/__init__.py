"""Runs from files to files: training inputs, the training run, the prediction run, summaries, 4D outputs."""
