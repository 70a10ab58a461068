"""Operating the workspace: the tracking server, its PostgreSQL, and `mmlab doctor`."""
