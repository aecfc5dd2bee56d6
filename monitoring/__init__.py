"""MangaAssist monitoring: metric definitions, drift, dashboards and alert rules."""
