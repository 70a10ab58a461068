"""Figures the notebooks show and log, one module per area (`mmlab.plots.features`, ...)."""
