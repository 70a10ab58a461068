"""Shared basics every layer may use: the workspace and its files, optional extras, progress
records, statistics, the parameters cell, the one registry class. Imports nothing else of mmlab."""
