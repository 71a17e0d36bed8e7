"""Making an exported folder: the recipe, optimum-intel's export, GGUF conversion, calibration, the inventory."""
