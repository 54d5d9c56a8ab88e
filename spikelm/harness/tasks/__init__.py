"""Task files of spikelm's offline lm-eval tasks and the module that builds their data."""
